"""`model.lora` on one process without DeepSpeed: what trains, the errors, the FLOPs count, and the
quantized base (GPU only: a clear error elsewhere)."""
import sys

import pytest
import torch

from coin.training.config import ConfigError, LoraConfig, ModelConfig
from coin.training.model import CoinModel, load_model


@pytest.fixture(scope="module")
def lora_lm(tiny_model_dir):
    return load_model(ModelConfig(name_or_path=tiny_model_dir, lora=LoraConfig(r=4, alpha=8.0)))


def test_only_the_adapters_train(lora_lm):
    trained = sorted(n for n, p in lora_lm.named_parameters() if p.requires_grad)
    assert len(trained) == 2 * 4 * 2  # A and B on q/k/v/o of both layers
    assert all(n.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for n in trained)
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in dict(lora_lm.named_parameters())
    assert not lora_lm.get_output_embeddings().weight.requires_grad
    assert type(lora_lm).__name__ == "LlamaForCausalLM"  # the model keeps its class (no PeftModel wrapper)


def test_flops_count_frozen_parameters_without_their_weight_gradient(lora_lm):
    cfg = lora_lm.config
    frozen = sum(p.numel() for n, p in lora_lm.named_parameters()
                 if n.startswith("model.layers.") and not p.requires_grad) + cfg.hidden_size  # + the final norm
    adapters = sum(p.numel() for p in lora_lm.parameters() if p.requires_grad)
    head = cfg.vocab_size * cfg.hidden_size
    want = 4 * frozen + 6 * adapters + 12 * cfg.num_hidden_layers * cfg.hidden_size * 100 + 4 * head * 0.25
    assert CoinModel(lora_lm).flops_per_token(100, 0.25) == pytest.approx(want)


def test_unknown_target_modules_are_a_clear_error(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"^model.lora.target_modules: \['query'\]") as info:
        load_model(ModelConfig(name_or_path=tiny_model_dir, lora=LoraConfig(target_modules=["query"])))
    assert "\n" not in str(info.value)


def test_missing_peft_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ConfigError, match=r"^model.lora: LoRA needs the peft package; install it with `pip install peft`"):
        load_model(ModelConfig(name_or_path=tiny_model_dir, lora=LoraConfig()))


def test_an_adapter_directory_is_for_inference_only(tmp_path, tiny_model_dir):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is a LoRA adapter directory; to train from it"):
        load_model(ModelConfig(name_or_path=str(tmp_path)), ds_config={"zero_optimization": {"stage": 3}})
    with pytest.raises(ConfigError, match="base_model_name_or_path: expected the base model's path"):
        load_model(ModelConfig(name_or_path=str(tmp_path)))


def test_quantized_base(tiny_model_dir):
    """GPU with bitsandbytes: a 4-bit base with adapters trains (gradients reach the adapters only).
    Elsewhere: the one-line error naming what is missing."""
    from coin.training.batch import collate
    from coin.training.config import CoinConfig
    from coin.training.model import load_tokenizer
    from coin.training.step import coin_step

    from coin_reference import make_rows

    mcfg = ModelConfig(name_or_path=tiny_model_dir, lora=LoraConfig(r=4), quantization="4bit", dtype="bf16")
    try:
        import bitsandbytes  # noqa: F401
        has_bnb = True
    except ImportError:
        has_bnb = False
    if not (torch.cuda.is_available() and has_bnb):
        want = "needs a CUDA GPU" if not torch.cuda.is_available() else "needs the bitsandbytes package"
        with pytest.raises(ConfigError, match=f"^model.quantization: 4bit: .*{want}"):
            load_model(mcfg)
        return
    lm = load_model(mcfg)
    tok = load_tokenizer(mcfg)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in collate(make_rows(tok, 2), tok.pad_token_id).items()}
    coin_step(CoinModel(lm), batch, CoinConfig()).loss.backward()
    grads = {n: p.grad for n, p in lm.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
