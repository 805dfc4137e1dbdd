"""`coin.pool: step` on 2 real ranks (gloo), real DeepSpeed ZeRO-2 and ZeRO-3, fp32: the parameter
gradients of a pooled step, read at the accumulation boundary before the optimiser step, equal
those of ONE plain-PyTorch process computing the loss of the step's whole global batch with one
pool (coin_reference.reference_step_loss); a surrogate missing the accumulation factor does not.
Also: the training loop in that mode (pool size, skipped non-finite step, preemption)."""
import json

import pytest
import torch

from coin.training.config import CoinConfig, ModelConfig, RunConfig, deepspeed_config
from distributed import run_distributed

from coin_reference import make_rows, reference_step_loss
from trainer_helpers import read_records, run_config, train_ranks

WORLD, B = 2, 2
CPU_DS = "ds_configs/cpu_zero3.json"
CFG = CoinConfig(pooling="last", weighting="adaptive", pool="step")
CFG4 = CoinConfig(pooling="mean", weighting="constant", weight=0.7, pool="step")
CFG_GROUPS = CoinConfig(pooling="prompt_last", gather_group_size=1, pool="step")  # each rank's own pool


def _engine(model_dir, zero_stage: int, accumulation: int, gradient_checkpointing: bool = False):
    """lr 0: the weights never move, so every step's gradient has the same reference weights."""
    import deepspeed

    from coin.training.model import CoinModel, load_model

    cfg = RunConfig()
    cfg.deepspeed.config = CPU_DS
    cfg.optim.micro_batch_size = B
    cfg.optim.gradient_accumulation_steps = accumulation
    cfg.optim.lr = 0.0
    cfg.optim.max_grad_norm = 0.0
    ds = deepspeed_config(cfg, world_size=WORLD, hidden_size=64)
    if zero_stage == 2:
        ds["zero_optimization"] = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True}
    lm = load_model(ModelConfig(name_or_path=model_dir, gradient_checkpointing=gradient_checkpointing), ds)
    model = CoinModel(lm)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds)
    engine.train()  # as the trainer does (HF applies gradient checkpointing in training mode only)
    return engine


def _full_grads(engine):
    from deepspeed.utils import safe_get_full_grad

    return {n.removeprefix("lm."): safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()}


def _step(engine, batches, cfg, pool):
    """One pooled step as the trainer runs it -> (the full gradients at the boundary, before the
    optimiser; the pool size; under ZeRO-3 whether DeepSpeed's prefetch trace was complete after
    pass 1 and after the step)."""
    from coin.training import step_pool

    pooled = step_pool.embed_step(engine, batches, cfg, pool)
    offload = getattr(engine.optimizer, "parameter_offload", None)  # ZeRO-3's parameter coordinator
    def complete():
        return offload.get_param_coordinator().is_complete_trace() if offload is not None else None

    trace = [complete()]
    grads = None
    for i, loss in enumerate(pooled.micro_losses()):
        engine.backward(loss)
        if i == len(batches) - 1:
            assert engine.is_gradient_accumulation_boundary()
            grads = _full_grads(engine)  # collective
        engine.step()
    return grads, float(pooled.out.metrics["pool_size"]), trace + [complete()]


def _batches(tok, rows, rank, accumulation):
    from coin.training.batch import collate

    return [collate(rows[(rank * accumulation + a) * B:(rank * accumulation + a + 1) * B], tok.pad_token_id)
            for a in range(accumulation)]


def _worker(rank, world, model_dir, steps):
    from coin.training import step_pool
    from coin.training.gather import NegativePool
    from coin.training.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=model_dir))
    pool = NegativePool(enabled=True)
    res = {}
    engine = _engine(model_dir, zero_stage=2, accumulation=2)
    res["zero2"] = _step(engine, _batches(tok, steps["a"], rank, 2), CFG, pool)

    engine = _engine(model_dir, zero_stage=3, accumulation=2)
    res["zero3"] = _step(engine, _batches(tok, steps["a"], rank, 2), CFG, pool)
    # a second step on other data: the trace DeepSpeed recorded on the first no-grad forward was
    # invalidated by the first backward and recorded again; now pass 1 follows a complete trace
    res["zero3_second"] = _step(engine, _batches(tok, steps["b"], rank, 2), CFG, pool)

    real = step_pool.surrogate_scale
    step_pool.surrogate_scale = lambda pool_ranks, accumulation: pool_ranks  # the forgotten x accumulation
    try:
        res["wrong_scale"] = _step(engine, _batches(tok, steps["a"], rank, 2), CFG, pool)
    finally:
        step_pool.surrogate_scale = real

    engine = _engine(model_dir, zero_stage=3, accumulation=4, gradient_checkpointing=True)
    res["zero3_acc4"] = _step(engine, _batches(tok, steps["d"], rank, 4), CFG4, pool)
    local = NegativePool(enabled=True, group_size=1)
    res["rank_pools"] = _step(engine, _batches(tok, steps["d"], rank, 4), CFG_GROUPS, local)
    return res if rank == 0 else None


@pytest.fixture(scope="module")
def pooled_run(tiny_model_dir):
    from coin.training.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))
    steps = {"a": make_rows(tok, WORLD * 2 * B, seed=21), "b": make_rows(tok, WORLD * 2 * B, seed=22),
             "d": make_rows(tok, WORLD * 4 * B, seed=24)}
    return steps, run_distributed(_worker, WORLD, args=(tiny_model_dir, steps), timeout=900)[0]


def _reference_grads(model_dir, rows, cfg, accumulation, pool_ranks=None):
    from coin.training.model import load_model

    lm = load_model(ModelConfig(name_or_path=model_dir))
    step_rows = [[rows[(r * accumulation + a) * B:(r * accumulation + a + 1) * B] for a in range(accumulation)]
                 for r in range(WORLD)]
    reference_step_loss(lm, step_rows, cfg, pool_ranks).backward()
    return {n: p.grad for n, p in lm.named_parameters()}


def _max_rel_err(got, want):
    return max(float((got[n] - want[n]).norm() / want[n].norm().clamp(min=1e-12)) for n in want)


@pytest.fixture(scope="module")
def reference_a(pooled_run, tiny_model_dir):
    steps, _ = pooled_run
    return _reference_grads(tiny_model_dir, steps["a"], CFG, 2)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_accumulation_2_gradients_equal_one_process_with_one_pool(pooled_run, reference_a, stage):
    _, res = pooled_run
    grads, pool_size, _ = res[stage]
    assert pool_size == WORLD * 2 * B
    assert _max_rel_err(grads, reference_a) < 1e-4


def test_accumulation_4_with_gradient_checkpointing(pooled_run, tiny_model_dir):
    steps, res = pooled_run
    grads, pool_size, _ = res["zero3_acc4"]
    assert pool_size == WORLD * 4 * B
    assert _max_rel_err(grads, _reference_grads(tiny_model_dir, steps["d"], CFG4, 4)) < 1e-4


def test_pools_of_one_rank_over_its_micro_batches(pooled_run, tiny_model_dir):
    """gather_group_size 1: each rank's pool is its own 4 micro-batches (the scale is k x A = 4)."""
    steps, res = pooled_run
    grads, pool_size, _ = res["rank_pools"]
    assert pool_size == 4 * B
    assert _max_rel_err(grads, _reference_grads(tiny_model_dir, steps["d"], CFG_GROUPS, 4, pool_ranks=1)) < 1e-4


def test_no_grad_forwards_keep_the_zero3_trace_working(pooled_run, tiny_model_dir):
    steps, res = pooled_run
    assert res["zero3"][2][0]  # the first no-grad forward recorded a trace, the next ones prefetched along it
    grads, _, trace = res["zero3_second"]
    # the second step ran on the forward-and-backward trace recorded again in the first one: its
    # no-grad forwards followed its prefix without invalidating it
    assert trace == [True, True]
    assert _max_rel_err(grads, _reference_grads(tiny_model_dir, steps["b"], CFG, 2)) < 1e-4


def test_a_surrogate_without_the_accumulation_factor_fails(pooled_run, reference_a):
    _, res = pooled_run
    grads, _, _ = res["wrong_scale"]
    assert _max_rel_err(grads, reference_a) > 1e-2


def test_training_loop_with_step_pools(tmp_path):
    """2 ranks, accumulation 2, groups spread over a step's pool: metrics.jsonl and TensorBoard show
    the pool of 2 x 2 x 2 pairs; a NaN on rank 1 in pass 1 skips that whole step on both ranks
    (reported with the ids of rank 1's micro-batch); SIGUSR1 on rank 0 stops after its step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = run_config(tmp_path / "data", out, coin={"pool": "step"}, data={"spread_groups": True},
                     optim={"gradient_accumulation_steps": 2, "max_steps": 6},
                     logging={"log_every": 1, "eval_every": 2}, output={"save_every": 0, "export": False})
    # pass-1 forwards per rank: step 1 = 1, 2; step 2 = 3, 4 (NaN: skipped); then 5, 6; 7, 8; 9 (stop), 10
    results = run_distributed(train_ranks, WORLD, args=(cfg, {"pool_nan_calls": {1: [4]}, "pool_stop_at": 9}))
    assert [r["status"] for r in results] == ["preempted", "preempted"] and [r["step"] for r in results] == [4, 4]

    train = read_records(out)
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["pool_size"] == 8 and r["samples"] == 8 for r in train)
    assert [r["consumed_samples"] for r in train] == [8, 24, 32, 40]  # the skipped step's 8 examples counted
    (event,) = read_records(out, "nonfinite")
    assert event["step"] == 1 and event["in_row"] == 1
    culprit = [r for r in event["ranks"] if r["rank"] == 1]
    assert len(culprit) == 1 and len(culprit[0]["ids"]) == B
    assert [e["step"] for e in read_records(out, "eval")] == [2]  # a preempted step saves, nothing else
    assert [e["step"] for e in read_records(out, "preempted")] == [4]
    assert (out / "checkpoints" / "step_00000004" / "coin_complete.json").exists()
    state = json.loads((out / "run_status.json").read_text())
    assert state["status"] == "preempted"

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/pool_size")] == [(s, 8.0) for s in (1, 2, 3, 4)]
