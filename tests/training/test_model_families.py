"""The step works on any LLaMA-class causal LM through the Auto classes (LLaMA, Mistral, Qwen2),
matches the independent reference on each, and gradient checkpointing changes nothing."""
import pytest
import torch

from coin.training.batch import collate
from coin.training.config import CoinConfig, ModelConfig
from coin.training.model import CoinModel, load_model, load_tokenizer
from coin.training.step import coin_step

from coin_reference import make_rows, reference_loss

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)


def _family_dir(tmp_path_factory, family: str, vocab_size: int) -> str:
    import transformers

    config_cls, model_cls = {
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(0)
    extra = {"tie_word_embeddings": True} if family == "qwen2" else {}  # small Qwen2 models tie the head
    model = model_cls(config_cls(vocab_size=vocab_size, **SMALL, **extra))
    path = tmp_path_factory.mktemp(family)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_step_matches_reference_on_other_families(family, tokenizer, tmp_path_factory):
    path = _family_dir(tmp_path_factory, family, len(tokenizer))
    lm = load_model(ModelConfig(name_or_path=path))
    assert type(lm).__name__.lower().startswith(family)
    rows = make_rows(tokenizer, 4, seed=3)
    cfg = CoinConfig(pooling="mean")
    lm.zero_grad()
    out = coin_step(CoinModel(lm), collate(rows, tokenizer.pad_token_id), cfg)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    want = reference_loss(lm, [rows], cfg)
    want.backward()
    assert torch.allclose(out.loss, want, rtol=1e-5)
    for n, p in lm.named_parameters():
        assert float((got[n] - p.grad).norm() / p.grad.norm()) < 1e-4, n


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, tokenizer):
    rows = make_rows(tokenizer, 4, seed=5)
    grads = []
    for checkpointing in (False, True):
        lm = load_model(ModelConfig(name_or_path=tiny_model_dir, gradient_checkpointing=checkpointing))
        lm.train()
        assert lm.is_gradient_checkpointing == checkpointing
        coin_step(CoinModel(lm), collate(rows, tokenizer.pad_token_id), CoinConfig()).loss.backward()
        grads.append({n: p.grad for n, p in lm.named_parameters()})
    for n in grads[0]:
        assert float((grads[0][n] - grads[1][n]).norm() / grads[0][n].norm()) < 1e-5, n
