"""A preemption is bounded, and a signal during start-up is a preemption too.

`coin train --nproc` (train.Supervisor): a stopped rank gets SIGCONT at once; ranks still running
`deepspeed.stop_grace_s` after SIGTERM/SIGUSR1 get SIGCONT + SIGTERM, SIGKILL `kill_grace_s` later, and the status is 75; a
rank that is still starting gets the signal again until its handler is in place. A rank (or a
single-process run) signalled before the trainer's setup exits 75 at once (preempt.py)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from coin.training.preempt import PREEMPTED_EXIT_CODE
from trainer_helpers import REPO, cli_env, rank_pids, run_config, start_train, wait_for_step, write_config


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _catches(pid: int, sig: int) -> bool:
    """`pid` has a handler installed for `sig` (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught >> (sig - 1) & 1)


def _wait_until(what, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.01)


# Stands in for torchrun (SIGTERM ignored, as launch() starts it) and three ranks: one that ignores
# SIGTERM for good (stuck: only SIGKILL ends it), one stopped with a handler (it needs SIGCONT),
# and one still starting (SIGTERM ignored, as inherited, for 1.5 s; then a handler: the signal
# must come again). Prints the ranks' exit statuses.
FAKE_LAUNCHER = textwrap.dedent("""
    import json, subprocess, sys
    stuck = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    stopped = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda s, f: sys.exit(75)); "
               "os.kill(os.getpid(), signal.SIGSTOP); time.sleep(600)")
    starting = ("import os, signal, sys, time; time.sleep(1.5); "
                "signal.signal(signal.SIGTERM, lambda s, f: (open(sys.argv[1], 'w').write(repr(time.monotonic())), "
                "sys.exit(75))); time.sleep(600)")
    kids = [subprocess.Popen([sys.executable, "-c", code, sys.argv[1]]) for code in (stuck, stopped, starting)]
    print(json.dumps([k.wait() for k in kids]), flush=True)
    sys.exit(1)
""")


def test_the_supervisor_ends_stuck_stopped_and_starting_ranks(tmp_path, capsys):
    from coin.training.train import Supervisor, _children

    grace, kill_grace = 4.0, 1.0
    marker = tmp_path / "starting_rank_signalled"
    supervisor = Supervisor(grace, kill_grace)
    supervisor.proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_LAUNCHER, str(marker)], stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    try:
        _wait_until("three ranks", lambda: len(_children(supervisor.proc.pid)) == 3, timeout=30)
        ranks = _children(supervisor.proc.pid)
        _wait_until("one rank stopped", lambda: "T" in [_state(p) for p in ranks], timeout=30)
        t0 = time.monotonic()
        supervisor.on_signal(signal.SIGTERM, None)  # what the launcher's handler does on SIGTERM
        code = supervisor.wait()
        elapsed = time.monotonic() - t0
    finally:
        if supervisor.proc.poll() is None:
            supervisor.proc.kill()
    assert code == PREEMPTED_EXIT_CODE  # the stand-in exits 1 after the kill: still 75 (requeue)
    assert json.loads(supervisor.proc.stdout.read()) == [-signal.SIGKILL, 75, 75]
    assert grace + kill_grace <= elapsed < grace + kill_grace + 10, elapsed
    assert float(marker.read_text()) - t0 < grace  # the repeated signal reached it, not the grace's SIGTERM
    assert not [p for p in ranks if _alive(p)]
    err = capsys.readouterr().err.splitlines()
    stuck, stopped, _ = ranks  # in the order they were started (rising pids); the starting one is gone by then
    assert err[0] == f"coin train: processes {[stopped]} were stopped (SIGSTOP): SIGCONT"  # at once, not after the grace
    assert [line.split(" still running")[0] for line in err[1:3]] == [f"coin train: processes {[stuck]}"] * 2
    assert "SIGCONT + SIGTERM, SIGKILL in 1 s" in err[1] and err[2].endswith("after SIGTERM: SIGKILL")
    assert err[3] == ("coin train: preempted by SIGTERM (the ranks ended with status 1): exit 75, requeue to "
                      "resume from the last complete checkpoint")


@pytest.mark.parametrize("ranks_status", [0, 2, 3])
def test_a_preempted_launch_keeps_done_and_permanent_failures(ranks_status):
    from coin.training.train import Supervisor

    supervisor = Supervisor(10.0)
    supervisor.proc = subprocess.Popen([sys.executable, "-c", f"import sys, time; time.sleep(0.3); sys.exit({ranks_status})"])
    supervisor.on_signal(signal.SIGUSR1, None)
    assert supervisor.wait() == ranks_status  # a requeue would not change these


def _tiny_run(tmp_path, **changes):
    out = tmp_path / "out"
    cfg = run_config(tmp_path / "data", out, optim={"max_steps": 200}, output={"save_every": 0, "export": False},
                     logging={"eval_every": 0, "log_every": 1})
    for section, values in changes.items():
        cfg[section].update(values)
    return write_config(tmp_path / "run.yaml", cfg), out


def test_a_stopped_rank_and_sigterm_to_the_launcher(tmp_path):
    """One rank SIGSTOPped mid-run holds the other in the step's all-reduce (for
    deepspeed.collective_timeout_s, 1800 s); SIGTERM to `coin train --nproc 2` continues it at
    once: every rank saves its preemption checkpoint and ends, with status 75, long before the
    grace period."""
    grace = 60.0
    config, out = _tiny_run(tmp_path, deepspeed={"stop_grace_s": grace})
    proc = start_train(config, "--nproc", "2", log_path=tmp_path / "log")
    try:
        wait_for_step(out, 1, proc)
        ranks = rank_pids(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGSTOP)
        _wait_until("the rank stopped", lambda: _state(ranks[-1]) == "T", timeout=10)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in rank_pids(proc.pid) if proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
    log = (tmp_path / "log").read_text()
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert not [p for p in ranks if _alive(p)], log[-3000:]
    assert elapsed < grace, (elapsed, log[-3000:])
    assert f"processes {[ranks[-1]]} were stopped (SIGSTOP): SIGCONT" in log, log[-3000:]
    assert "still running" not in log, log[-3000:]
    events = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert any(e.get("kind") == "preempted" for e in events), events[-3:]


def test_sigterm_during_start_up_exits_75(tmp_path):
    """A single-process run, signalled while it imports torch and DeepSpeed: 75 at once."""
    config, out = _tiny_run(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "coin", "train", "--config", config], cwd=str(REPO),
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until("the start-up handler installed", lambda: _catches(proc.pid, signal.SIGTERM) or proc.poll() is not None)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert err.strip().splitlines() == ["coin train: SIGTERM during start-up, nothing to save yet: exit 75 "
                                        "(requeue to start again)"]
    assert not (out / "metrics.jsonl").exists()


def test_sigterm_to_the_launcher_during_start_up_exits_75(tmp_path):
    """`coin train --nproc 2` signalled as its ranks are starting (they begin with SIGTERM ignored,
    inherited from torchrun): the signal is repeated until they take it, and they exit 75 well
    before the grace period ends."""
    config, out = _tiny_run(tmp_path, deepspeed={"stop_grace_s": 30.0})
    proc = start_train(config, "--nproc", "2", log_path=tmp_path / "log")
    try:
        _wait_until("two ranks", lambda: len(rank_pids(proc.pid)) == 2 or proc.poll() is not None)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "log").read_text()
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert "coin train: SIGTERM during start-up, nothing to save yet: exit 75" in log, log[-3000:]
    assert "still running" not in log and "Traceback" not in log, log[-3000:]
    assert elapsed < 30, elapsed
    assert not (out / "metrics.jsonl").exists()
