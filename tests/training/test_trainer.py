"""The training run on 2 real ranks (gloo, DeepSpeed ZeRO-3, the tiny LLaMA): one straight 12-step
run shared by most tests, exact resume after a stop, a save killed half-way, non-finite losses."""
import json
import math

import pytest
import torch

from distributed import run_distributed
from trainer_helpers import STEPS, losses, read_records, run_config, safetensors_weights, train_ranks


@pytest.fixture(scope="module")
def straight(straight_run):
    return straight_run


@pytest.fixture(scope="module")
def data_dir(straight_run):
    return straight_run["data"]


def test_straight_run_completes_and_logs_each_update(straight):
    assert [r["status"] for r in straight["results"]] == ["completed", "completed"]
    records = read_records(straight["out"])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert all(math.isfinite(r[k]) for k in ("loss", "gen_loss", "ctr_loss", "lr", "grad_norm", "tokens_per_s"))
        assert r["pool_size"] == 4  # 2 ranks x micro-batch 2: negatives from both ranks
        assert r["samples"] == 4 and r["consumed_samples"] == 4 * r["step"]
        # the hidden-state gradient norms: measured on the last step of each logging interval only
        measured = r["step"] % 2 == 0  # log_every 2
        assert all((r[k] > 0) if measured else r[k] is None for k in ("gen_grad_norm", "ctr_grad_norm")), r
    # warm-up then linear decay (warmup_ratio 0.2 of 12 -> 3 steps)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == 0 and lrs[3] == pytest.approx(1e-3) and lrs[-1] < lrs[3]
    evals = read_records(straight["out"], "eval")
    assert [e["step"] for e in evals] == [4, 8, 12] and all(math.isfinite(e["loss"]) for e in evals)
    status = json.loads((straight["out"] / "run_status.json").read_text())
    assert status["status"] == "completed" and status["exit_code"] == 0
    final = json.loads((straight["out"] / "final_metrics.json").read_text())
    assert final["train"]["step"] == STEPS and final["eval"]["step"] == STEPS


def test_checkpoint_layout_keeps_last_two(straight):
    root = straight["out"] / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000012"
    tags = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    assert tags == ["step_00000008", "step_00000012"]
    tag = root / "step_00000012"
    for name in ("coin_complete.json", "coin_rng_rank00000.pt", "coin_rng_rank00001.pt", "run_config.yaml",
                 "hf_config/config.json", "hf_config/generation_config.json", "hf_config/tokenizer_config.json"):
        assert (tag / name).exists(), name
    assert len(list(tag.glob("*optim_states.pt"))) == 2  # one optimiser partition per rank (ZeRO-3)
    assert list(tag.glob("*model_states.pt"))
    assert json.loads((tag / "coin_complete.json").read_text())["step"] == STEPS


def test_tensorboard_has_every_scalar(straight):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from coin.training.monitor import EVAL_SCALARS, PERF_SCALARS, TRAIN_SCALARS

    acc = EventAccumulator(str(straight["out"] / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {f"train/{k}" for k in TRAIN_SCALARS} | {f"perf/{k}" for k in PERF_SCALARS}
    want |= {f"eval/{k}" for k in EVAL_SCALARS}
    assert want <= tags, sorted(want - tags)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(2, STEPS + 1, 2))  # log_every 2
    assert [e.step for e in acc.Scalars("eval/ctr_acc")] == [4, 8, 12]
    text = set(acc.Tags()["tensors"])
    assert {"config/run/text_summary", "config/deepspeed/text_summary"} <= text, text


def test_exact_resume_after_stop(straight, data_dir, tmp_path):
    """6 steps, stop (SIGUSR1 at step 6), resume, 6 more: the second half equals the straight run."""
    cfg = run_config(data_dir, tmp_path / "run")
    first = run_distributed(train_ranks, 2, args=(cfg, {"stop_at": 6}))
    assert [r["status"] for r in first] == ["preempted", "preempted"]
    assert [r["step"] for r in first] == [6, 6]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    second = run_distributed(train_ranks, 2, args=(cfg, {}))
    assert [r["start_step"] for r in second] == [6, 6] and [r["status"] for r in second] == ["completed"] * 2

    want, got = losses(straight["out"]), losses(tmp_path / "run")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(7, STEPS + 1):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    w_straight = safetensors_weights(straight["out"] / "hf")
    w_resumed = safetensors_weights(tmp_path / "run" / "hf")
    assert w_straight.keys() == w_resumed.keys()
    for k in w_straight:
        torch.testing.assert_close(w_resumed[k], w_straight[k], rtol=0, atol=1e-6)


def test_save_killed_halfway_keeps_previous_latest(straight, data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = run_config(data_dir, out)
    with pytest.raises(RuntimeError, match="SimulatedCrash"):
        run_distributed(train_ranks, 2, args=(cfg, {"crash_commit": 8}))
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000004"
    assert (root / "step_00000008").is_dir() and not (root / "step_00000008" / "coin_complete.json").exists()

    resumed = run_distributed(train_ranks, 2, args=(cfg, {}))
    assert [r["start_step"] for r in resumed] == [4, 4] and [r["status"] for r in resumed] == ["completed"] * 2
    want, got = losses(straight["out"]), losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # the records of the dead run's steps 5-8 were replaced
    for step in range(5, STEPS + 1):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    tags = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    assert tags == ["step_00000008", "step_00000012"] and (root / "step_00000008" / "coin_complete.json").exists()


def test_nonfinite_loss_is_skipped_then_stops(data_dir, tmp_path):
    """Rank 1 alone sees NaN at micro-step 3 (skipped, reported with its ids), then at 6 and 7
    (2 in a row = logging.max_nonfinite_steps: the run stops). Micro-step 2 has every label
    truncated away on both ranks: a finite loss, no generation tokens."""
    out = tmp_path / "run"
    cfg = run_config(data_dir, out, logging={"max_nonfinite_steps": 2, "log_every": 1, "eval_every": 0},
                     output={"save_every": 0, "export": False})
    results = run_distributed(train_ranks, 2, args=(cfg, {"nan_calls": {1: [3, 6, 7]}, "truncate_calls": [2]}))
    assert [r["status"] for r in results] == ["nonfinite", "nonfinite"]
    assert "2 non-finite losses in a row" in results[0]["error"]
    assert [r["step"] for r in results] == [4, 4]  # micro-steps 1, 2, 4, 5 made steps; 3 was skipped

    train = {r["step"]: r for r in read_records(out)}
    assert sorted(train) == [1, 2, 3, 4]
    assert math.isfinite(train[2]["loss"]) and train[2]["label_tokens"] == 0 and train[2]["gen_loss"] == 0
    events = read_records(out, "nonfinite")
    assert [e["step"] for e in events] == [2, 4, 4] and [e["in_row"] for e in events] == [1, 1, 2]
    assert events[0]["ranks"] == [{"rank": 1, "loss": "nan", "ids": events[0]["ranks"][0]["ids"]}]
    assert len(events[0]["ranks"][0]["ids"]) == 2
    assert json.loads((out / "run_status.json").read_text())["exit_code"] == 3
