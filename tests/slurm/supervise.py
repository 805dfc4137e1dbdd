"""Run one daemon in the foreground and take down everything it leaves behind.

    python tests/slurm/supervise.py LOGFILE -- COMMAND [ARGS...]

SLURM's daemons fork detached helpers (slurmd forks a slurmstepd per job step, and job tasks
below it); when the daemon is stopped they are reparented to init and live on, burning the
shared CPUs. This supervisor marks itself a child subreaper (prctl), so every orphan of the
daemon's process tree is reparented to it instead of init. On SIGTERM/SIGINT (or when the test
process that started it dies: PR_SET_PDEATHSIG) it sends SIGTERM to the daemon, then to every
remaining descendant, waits a few seconds, SIGKILLs what is left, and exits. The test fixture
therefore stops each daemon by the supervisor's PID and nothing else on the machine is touched.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 5.0


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _descendants(root: int) -> list[int]:
    """PIDs below `root` in the process tree (children first listed last), from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            # the command name is in parentheses and may contain spaces: split after the last ')'
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    log_path, cmd = argv[0], argv[2:]
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(log_path, "ab", buffering=0) as log:
        daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    while not stopping and daemon.poll() is None:
        time.sleep(0.2)
        _reap()
    # Stop the daemon first (so it launches nothing new), then everything below us.
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    me = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _descendants(me)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (GRACE_S if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline and _descendants(me):
            _reap()
            time.sleep(0.1)
    _reap()
    return daemon.returncode if daemon.returncode is not None else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
