"""`coin.pool: step` in one process, plain PyTorch: the two-pass step against an independent
computation of the whole step's loss with one pool (coin_reference.py), for every pooling, both
weightings, a weight warm-up and gradient checkpointing; dropout replayed in pass 2; the
settings. The 2-rank ZeRO-2/3 checks are in test_step_pool_distributed.py."""
import types

import pytest
import torch

from coin.training.batch import collate
from coin.training.config import CoinConfig, ConfigError, ModelConfig, config_from_dict
from coin.training.model import CoinModel, load_model, load_tokenizer
from coin.training.step import coin_step
from coin.training.step_pool import embed_step

from coin_reference import make_rows, reference_step_loss

A, B = 3, 2  # micro-batches of the step, pairs per micro-batch


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    mcfg = ModelConfig(name_or_path=tiny_model_dir)
    tok = load_tokenizer(mcfg)
    rows = make_rows(tok, A * B, seed=5)
    return mcfg, tok, load_model(mcfg), [rows[a * B:(a + 1) * B] for a in range(A)]


def _grads(lm):
    grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    return grads


def _pooled(lm, tok, micro, cfg, step=0):
    """The pooled step with DeepSpeed's accumulation done by hand (each loss / A); one process."""
    lm.zero_grad()
    step = embed_step(CoinModel(lm), [collate(rows, tok.pad_token_id) for rows in micro], cfg, step=step)
    for loss in step.micro_losses():
        (loss / len(micro)).backward()
    return step, _grads(lm)


def _max_rel_err(got, want):
    return max(float((got[n] - want[n]).norm() / want[n].norm().clamp(min=1e-12)) for n in want)


@pytest.mark.parametrize("pooling, weighting, warmup", [
    ("last", "adaptive", 0), ("prompt_last", "constant", 0), ("mean", "adaptive", 4),
])
def test_gradients_and_loss_equal_one_pool_reference(setup, pooling, weighting, warmup):
    _, tok, lm, micro = setup
    cfg = CoinConfig(pooling=pooling, weighting=weighting, weight=0.7, pool="step", weight_warmup_steps=warmup)
    step, got = _pooled(lm, tok, micro, cfg, step=1)
    want_loss = reference_step_loss(lm, [micro], cfg, step=1)
    want_loss.backward()
    assert _max_rel_err(got, _grads(lm)) < 1e-4
    assert float(step.out.loss) == pytest.approx(float(want_loss.detach()), rel=1e-5)
    m = step.out.metrics
    assert float(m["pool_size"]) == A * B
    batches = [collate(rows, tok.pad_token_id) for rows in micro]
    assert float(m["tokens"]) == sum(float(b["attention_mask"].sum()) for b in batches)
    labelled = [(b["labels"][:, 1:] != -100) for b in batches]
    assert float(m["ctr_weight"]) > 0
    assert float(m["label_tokens"]) == sum(float(x.sum()) for x in labelled)


def test_gradient_checkpointing(setup):
    mcfg, tok, _, micro = setup
    lm = load_model(ModelConfig(name_or_path=mcfg.name_or_path, gradient_checkpointing=True)).train()
    cfg = CoinConfig(pooling="last", weighting="constant", weight=2.0, pool="step")
    _, got = _pooled(lm, tok, micro, cfg)
    reference_step_loss(lm, [micro], cfg).backward()
    assert _max_rel_err(got, _grads(lm)) < 1e-4


def test_dropout_masks_are_replayed_in_pass_two(setup):
    """Attention dropout on: pass 2 must see pass 1's masks. With one micro-batch the pooled step
    then equals the micro-batch step run from the same RNG state, and the RNG continues as after
    one forward."""
    mcfg, tok, _, micro = setup
    lm = load_model(mcfg).train()
    for layer in lm.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model, batch, cfg = CoinModel(lm), collate(micro[0], tok.pad_token_id), CoinConfig(pool="step")
    with torch.no_grad():  # dropout is live: two forwards differ
        assert not torch.allclose(model(batch["input_ids"], batch["attention_mask"]),
                                  model(batch["input_ids"], batch["attention_mask"]))
    torch.manual_seed(3)
    _, pooled = _pooled(lm, tok, micro[:1], cfg)
    after_pooled = torch.get_rng_state()
    torch.manual_seed(3)
    coin_step(model, batch, cfg).loss.backward()
    assert _max_rel_err(pooled, _grads(lm)) < 1e-5
    assert torch.equal(after_pooled, torch.get_rng_state())


def test_the_step_must_hold_every_micro_batch_of_the_accumulation(setup):
    _, tok, _, micro = setup
    engine = types.SimpleNamespace(gradient_accumulation_steps=lambda: 2)  # what DeepSpeed's engine reports
    with pytest.raises(ValueError, match="takes the 2 micro-batches of one optimiser step"):
        embed_step(engine, [collate(rows, tok.pad_token_id) for rows in micro], CoinConfig(pool="step"))


def test_settings(tmp_path):
    base = {"data": {"train": "x.jsonl"}}
    assert config_from_dict(base, check_paths=False).coin.pool == "micro"
    cfg = config_from_dict({**base, "coin": {"pool": "step"}, "data": {"train": "x", "spread_groups": True}},
                           check_paths=False)
    assert cfg.coin.pool == "step" and cfg.data.spread_groups
    for data, match in [
        ({"coin": {"pool": "batch"}}, "coin.pool: expected one of micro, step"),
        ({"coin": {"pool": "step", "objective": "cit"}}, "coin.pool: 'step' pools contrastive negatives; it needs "
                                                           "coin.objective: coin, got 'cit'"),
        ({"coin": {"pool": "step", "weighting": "gradnorm"}}, "coin.weighting: gradnorm needs coin.pool: micro"),
        ({"data": {"train": "x", "spread_groups": True}}, "data.spread_groups: true .* needs coin.pool: step"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, **data}, check_paths=False)
