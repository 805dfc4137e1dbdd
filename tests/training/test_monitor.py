"""The monitor's arithmetic and its metrics file (rank 0 only), without a run."""
import json

import pytest

from coin.training.monitor import Monitor


def _monitor(tmp_path, start_step=0, enabled=True):
    return Monitor(str(tmp_path), enabled=enabled, log_every=2, tensorboard=False, progress_bar=True, total_steps=10,
                   start_step=start_step, world_size=2, peak_tflops=1e-9,
                   flops_per_token=lambda seq_len, label_fraction: 6 * 1000 + 12 * 2 * 8 * seq_len + 600 * label_fraction)


def _record(step, loss=1.0):
    return {"step": step, "loss": loss, "gen_loss": loss, "ctr_loss": 0.0, "ctr_weight": 1.0, "ctr_acc": 1.0,
            "pos_cos": 0.9, "neg_cos": 0.1, "pool_size": 4.0, "lr": 1e-3, "grad_norm": 1.0, "tokens": 400.0, "label_tokens": 40.0,
            "samples": 4, "step_time_s": 0.5}


def test_perf_counts_mfu_per_device(tmp_path):
    m = _monitor(tmp_path)
    p = m.perf(tokens=400, label_tokens=40, samples=4, seconds=2.0)
    assert p["tokens_per_s"] == 200 and p["samples_per_s"] == 2
    # mean sequence: 400 tokens / (4 samples x 2 views); a tenth of the tokens carry a label
    flops_per_token = 6 * 1000 + 12 * 2 * 8 * 50 + 600 * 0.1
    assert p["mfu"] == pytest.approx(flops_per_token * 200 / (1e-9 * 1e12 * 2))
    m.close()


def test_log_lines_and_resume_truncation(tmp_path, capsys):
    m = _monitor(tmp_path)
    for step in (1, 2, 3):
        m.log_step(_record(step))
    m.close()
    out = capsys.readouterr().out
    assert "step 2/10 | loss 1.0000" in out and "step 3/10" not in out  # one line per log_every=2 steps
    m = _monitor(tmp_path, start_step=2)  # resumed from the step-2 checkpoint: step 3 is dropped
    m.log_step(_record(3, loss=2.0))
    m.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 1.0), (3, 2.0)]


def test_interval_means_skip_unmeasured_values(tmp_path):
    """The gradient norms, measured on an interval's last step only (None before it), are averaged
    over the steps that have them; the other scalars over every step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = Monitor(str(tmp_path), enabled=True, log_every=3, tensorboard=True, progress_bar=False, total_steps=3,
                start_step=0, world_size=1, peak_tflops=1e-9, flops_per_token=lambda seq_len, label_fraction: 1.0)
    assert [m.closes_interval(s) for s in (1, 2, 3)] == [False, False, True]
    for step, norm in ((1, None), (2, None), (3, 0.25)):
        m.log_step({**_record(step, loss=float(step)), "gen_grad_norm": norm, "ctr_grad_norm": norm})
    m.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/gen_grad_norm")] == [0.25]
    assert [e.value for e in acc.Scalars("train/loss")] == [2.0]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["gen_grad_norm"] for r in lines] == [None, None, 0.25]


def test_other_ranks_write_nothing(tmp_path):
    m = _monitor(tmp_path / "r1", enabled=False)
    m.log_step(_record(1))
    m.event("checkpoint", "x", step=1)
    m.close()
    assert not (tmp_path / "r1").exists()


def test_full_disk_on_resume_truncation_leaves_the_metrics_file_and_no_temp(tmp_path, monkeypatch):
    import errno
    import os

    from coin.data_tools import atomic
    from coin.errors import CoinError

    m = _monitor(tmp_path)
    for step in (1, 2, 3):
        m.log_step(_record(step))
    m.close()
    before = (tmp_path / "metrics.jsonl").read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(CoinError) as info:
        _monitor(tmp_path, start_step=2)
    monkeypatch.undo()
    msg = str(info.value)
    assert msg.startswith(f"metrics {tmp_path / 'metrics.jsonl'}: no space left on {tmp_path}") and "\n" not in msg
    assert type(info.value).__name__ == "DiskFullError"
    assert (tmp_path / "metrics.jsonl").read_text() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # no temp file, no 0-byte .tmp


def test_full_disk_on_append_is_one_line_naming_the_file(tmp_path):
    import errno

    from coin.data_tools.atomic import DiskFullError

    m = _monitor(tmp_path)

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    m._file.close()
    m._file = Full()
    with pytest.raises(DiskFullError) as info:
        m.log_step(_record(1))
    msg = str(info.value)
    assert msg.startswith(f"metrics {tmp_path / 'metrics.jsonl'}: no space left on {tmp_path} (") and "\n" not in msg
    m.close()
