"""run_status.json: "running" from the start of a run, "failed" with the error when it ends in one,
so a rerun in the output directory of a completed run never leaves "completed" behind."""
import json
import subprocess
import sys

from trainer_helpers import REPO, cli_env, run_config, write_config


def _train(config, *overrides):
    return subprocess.run([sys.executable, "-m", "coin", "train", "--config", str(config), *overrides],
                          cwd=str(REPO), env=cli_env(), capture_output=True, text=True, timeout=300)


def test_a_failing_rerun_says_failed_not_completed(tmp_path):
    out = tmp_path / "out"
    cfg = run_config(tmp_path / "data", out, optim={"max_steps": 2}, logging={"eval_every": 0},
                     output={"export": False})
    config = write_config(tmp_path / "run.yaml", cfg)
    done = _train(config)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads((out / "run_status.json").read_text())
    assert status["status"] == "completed" and status["exit_code"] == 0 and status["step"] == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')  # a record without instruction or output: fails once the run has started
    failed = _train(config, f"data.train={bad}")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    status = json.loads((out / "run_status.json").read_text())
    assert status["status"] == "failed" and status["exit_code"] == 2
    assert str(bad) in status["error"] and "\n" not in status["error"]
    assert status["error"] in failed.stderr  # the same one line the run printed


def _trainer(out_dir):
    from coin.training.config import config_from_dict
    from coin.training.trainer import Trainer

    trainer = Trainer(config_from_dict({"output": {"dir": str(out_dir)}}, check_paths=False))
    trainer.is_main = True  # what setup learns from the process group
    return trainer


def test_a_crash_is_failed_with_the_exception_type_and_its_first_line(tmp_path):
    _trainer(tmp_path).write_failed(RuntimeError("boom\nsecond line"), 1)
    status = json.loads((tmp_path / "run_status.json").read_text())
    assert (status["status"], status["exit_code"], status["error"]) == ("failed", 1, "RuntimeError: boom")


def test_a_status_that_cannot_be_written_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    import errno

    from coin.training import checkpoint as ckpt

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full)  # the disk is full: the status file cannot be written
    _trainer(tmp_path).write_failed(KeyboardInterrupt(), 130)
    assert "could not write run_status.json" in capsys.readouterr().err
    assert not (tmp_path / "run_status.json").exists()
