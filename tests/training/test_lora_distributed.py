"""LoRA and frozen heads on 2 real ranks (gloo, DeepSpeed ZeRO-3 and ZeRO-2, fp32): the gradients of
the trained parameters equal those of a single plain-PyTorch process on the concatenated global
batch (coin_reference.py, full-vocabulary logits), negatives gathered across ranks.

The frozen output head is the case that used to crash ZeRO-3's backward: the lean LM loss
recomputed (checkpointed) each chunk of head calls, and ZeRO-3 releases a frozen parameter before
the recomputation reads it (DeepSpeed #8130). The worker shows that crash on the checkpointed
path, then the frozen-head path of losses.token_losses passing."""
import pytest
import torch

from coin.training.config import CoinConfig, LoraConfig, ModelConfig, RunConfig, deepspeed_config
from distributed import run_distributed

from coin_reference import make_rows, reference_loss

WORLD, B = 2, 2
CFG = CoinConfig(pooling="last", weighting="adaptive", gather=True)
LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0)
CHUNKS = CFG.lm_loss_chunks
DS_FILES = {3: "ds_configs/cpu_zero3.json", 2: "ds_configs/cpu_zero2.json"}


def _set_adapters(lm) -> None:
    """Non-zero A and B (peft starts B at 0, which would leave A without a gradient), the same
    values on every rank and in the reference."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in sorted(lm.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _model(model_dir, case: str, ds: dict | None):
    """case lora: adapters on q/k/v/o (gradient checkpointing on); frozen_head: full parameters
    but the output head."""
    from coin.training.model import load_model

    lora = LORA if case == "lora" else None
    lm = load_model(ModelConfig(name_or_path=model_dir, gradient_checkpointing=case == "lora", lora=lora), ds)
    if case == "lora":
        _set_adapters(lm)
    else:
        lm.get_output_embeddings().requires_grad_(False)
    return lm


def _engine(model_dir, case: str, stage: int, world: int):
    import deepspeed

    from coin.training.model import CoinModel

    cfg = RunConfig()
    cfg.deepspeed.config = DS_FILES[stage]
    cfg.optim.micro_batch_size = B
    cfg.optim.max_grad_norm = 0.0
    ds = deepspeed_config(cfg, world_size=world, hidden_size=64)
    model = CoinModel(_model(model_dir, case, ds))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=ds)
    return engine


def _trained_grads(engine) -> dict:
    from deepspeed.utils import safe_get_full_grad

    return {n.removeprefix("lm."): safe_get_full_grad(p).detach().clone()
            for n, p in engine.module.named_parameters() if p.requires_grad}


def _worker(rank, world, model_dir, rows):
    import gc

    from coin.training.batch import collate
    from coin.training.gather import NegativePool
    from coin.training.losses import _chunk_ce
    from coin.training.model import load_tokenizer
    from coin.training.step import coin_step

    tok = load_tokenizer(ModelConfig(name_or_path=model_dir))
    batch = collate(rows[rank * B:(rank + 1) * B], tok.pad_token_id)
    results = {}
    # ZeRO-2 first: a ZeRO-3 model keeps transformers' HfDeepSpeedConfig alive (zero.Init for later loads)
    for stage, case in ((2, "lora"), (3, "lora"), (3, "frozen_head")):
        engine = _engine(model_dir, case, stage, world)
        out = coin_step(engine, batch, CFG, NegativePool(enabled=True))
        engine.backward(out.loss)
        results[f"zero{stage}_{case}"] = _trained_grads(engine)  # collective: every rank calls it
        results[f"zero{stage}_{case}_pool"] = float(out.metrics["pool_size"])
        engine.optimizer.zero_grad()
        if case == "frozen_head":  # what the lean loss did before: checkpointed chunks through the frozen head
            from torch.utils.checkpoint import checkpoint

            hidden = engine(batch["input_ids"], batch["attention_mask"])
            h, y = hidden[:, :-1].reshape(-1, hidden.shape[-1]), batch["input_ids"][:, 1:].reshape(-1)
            size = -(-h.shape[0] // CHUNKS)
            try:
                engine.backward(sum(checkpoint(_chunk_ce, engine.module.head, h[i * size:(i + 1) * size],
                                               y[i * size:(i + 1) * size], use_reentrant=False).sum()
                                    for i in range(CHUNKS)))
                results["checkpointed"] = "passed"
            except Exception as e:  # noqa: BLE001 - the crash is the point
                results["checkpointed"] = f"{type(e).__name__}: {e}"
        del engine
        gc.collect()
    return results if rank == 0 else None


@pytest.fixture(scope="module")
def distributed_run(tiny_model_dir):
    from coin.training.model import load_tokenizer

    rows = make_rows(load_tokenizer(ModelConfig(name_or_path=tiny_model_dir)), WORLD * B, seed=5)
    return rows, run_distributed(_worker, WORLD, args=(tiny_model_dir, rows), timeout=600)[0]


def _reference_grads(model_dir, rows, case: str) -> dict:
    lm = _model(model_dir, case, None)
    reference_loss(lm, [rows[r * B:(r + 1) * B] for r in range(WORLD)], CFG).backward()
    return {n: p.grad for n, p in lm.named_parameters() if p.requires_grad}


def _max_rel_err(got, want):
    assert got.keys() == want.keys()
    return max(float((got[n] - want[n]).norm() / want[n].norm().clamp(min=1e-12)) for n in want)


@pytest.mark.parametrize("stage", [3, 2])
def test_adapter_gradients_equal_single_process(distributed_run, tiny_model_dir, stage):
    rows, res = distributed_run
    want = _reference_grads(tiny_model_dir, rows, "lora")
    got = res[f"zero{stage}_lora"]
    assert len(want) == 2 * 4 * 2 and all(".lora_" in n for n in want)  # A and B on q/k/v/o of 2 layers
    assert all(float(g.norm()) > 0 for g in want.values())
    assert res[f"zero{stage}_lora_pool"] == WORLD * B
    assert _max_rel_err(got, want) < 1e-4


def test_frozen_head_under_zero3(distributed_run, tiny_model_dir):
    """Full parameters but a frozen output head: the checkpointed lean loss crashes ZeRO-3's
    backward; coin's frozen-head path gives the single-process gradients."""
    rows, res = distributed_run
    assert res["checkpointed"].startswith("CheckpointError"), res["checkpointed"]
    want = _reference_grads(tiny_model_dir, rows, "frozen_head")
    assert "lm_head.weight" not in want and "model.embed_tokens.weight" in want
    assert _max_rel_err(res["zero3_frozen_head"], want) < 1e-4
