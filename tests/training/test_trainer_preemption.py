"""Preemption through the real command line: `coin train --config X --nproc 2` (torchrun, 2 ranks,
ZeRO-3). SIGUSR1 to the launcher, or SIGTERM to one rank only: every rank stops after the same
step, writes a checkpoint, and the launcher exits with 75; the same command then resumes and
reproduces the uninterrupted run's losses."""
import json
import os
import signal
import subprocess
import sys

import pytest

from coin.training.trainer import PREEMPTED_EXIT_CODE
from trainer_helpers import STEPS, losses, rank_pids, start_train, wait_for_step, write_config


def _preempt_and_resume(straight, tmp_path, send) -> int:
    out = tmp_path / "run"
    cfg = dict(straight["cfg"], output=dict(straight["cfg"]["output"], dir=str(out)))
    config = write_config(tmp_path / "run.yaml", cfg)
    proc = start_train(config, "--nproc", "2", log_path=tmp_path / "first.log")
    try:
        wait_for_step(out, 1, proc)
        send(proc)
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "first.log").read_text()
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert "ChildFailedError" not in log and "Traceback" not in log  # the ranks' status, without a dump
    status = json.loads((out / "run_status.json").read_text())
    stopped = status["step"]
    assert status["status"] == "preempted" and 1 <= stopped < STEPS, status
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert sorted(losses(out)) == list(range(1, stopped + 1))  # every rank stopped after the same step

    proc = start_train(config, "--nproc", "2", log_path=tmp_path / "second.log")
    code = proc.wait(timeout=240)
    assert code == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert f"resumed at step {stopped}" in (tmp_path / "second.log").read_text()
    want, got = losses(straight["out"]), losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    return stopped


def test_sigusr1_to_the_launcher(straight_run, tmp_path):
    _preempt_and_resume(straight_run, tmp_path, lambda proc: os.kill(proc.pid, signal.SIGUSR1))


def test_sigterm_to_one_rank(straight_run, tmp_path):
    def send(proc):
        ranks = rank_pids(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGTERM)  # one rank only: the all-reduced flag stops both

    _preempt_and_resume(straight_run, tmp_path, send)


def test_bad_run_file_exits_2_with_one_line(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"coin": {"temperature": 0}})
    proc = subprocess.run([sys.executable, "-m", "coin", "train", "--config", config, "--nproc", "2"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "coin train: error: coin.temperature: expected a number > 0, got 0.0"
