"""Session fixtures of the evaluation tests: the tiny model (loaded once), fixture data written
in the real formats, WordNet (skips where the database is not installed)."""
import pytest


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer): the embedded tiny LLaMA, eager attention (what eval uses on CPU)."""
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer

    mcfg = ModelConfig(name_or_path=tiny_model_dir, attn_implementation="eager")
    return load_model(mcfg).eval(), load_tokenizer(mcfg)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    """(directory, rows per task): every GLUE task, 10 examples, in one of the real formats each."""
    from eval_fixtures import write_glue_dir

    root = tmp_path_factory.mktemp("glue")
    return str(root), write_glue_dir(str(root), n=10)


@pytest.fixture(scope="session")
def wordnet():
    from coin.eval.wordnet import WordNet, WordNetMissing

    try:
        return WordNet.load()
    except WordNetMissing as e:
        pytest.skip(str(e))
