"""Entry point of a training run.

    coin train --config X.yaml [--nproc N] [key.sub=value ...]
    python -m coin.training.train --config X.yaml [key.sub=value ...]          (under a launcher:)
    torchrun --standalone --nproc_per_node N -m coin.training.train --config X.yaml ...
    deepspeed --num_gpus N --module coin.training.train --config X.yaml ...

Without `--nproc` and without a launcher the run is one process. `--nproc N` re-launches the same
command under torchrun's launcher on this machine (`coin.training.torchrun`: torchrun, returning
the ranks' own status) and stays as its parent (`Supervisor`): it forwards SIGTERM/SIGUSR1 to the
ranks (torchrun itself is told to ignore them, so it does not kill ranks that are writing their
preemption checkpoint) and returns the ranks' exit status, which a bare torchrun would turn into
1 with a ChildFailedError dump. A preemption is bounded: a rank stopped by SIGSTOP gets SIGCONT at
once (it holds every other rank in a collective), and ranks still running `deepspeed.stop_grace_s`
(120 s: longer than a preemption checkpoint takes) after the signal get SIGCONT + SIGTERM, and
SIGKILL `KILL_GRACE_S` (5 s) later, and the status is still 75. The rendezvous port is `--master-port`,
else $MASTER_PORT, else a free one (torchrun's --standalone).

Exit status: 0 completed; 75 (`PREEMPTED_EXIT_CODE`) preempted by SIGTERM/SIGUSR1 after writing
a checkpoint, or before there was anything to save (a signal during start-up: preempt.py), or
with ranks that had to be killed (requeue: `resume: auto` continues from the last complete
checkpoint); 3 stopped after too many non-finite losses; 2 bad configuration or data (a one-line
message); 1 anything else (a traceback).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid

from coin.errors import CoinError

from .config import load_config
from .preempt import PREEMPT_SIGNALS, PREEMPTED_EXIT_CODE, exit_on_preemption

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="X.yaml", help="the run config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="run config overrides, e.g. optim.lr=2e-5")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="run N ranks on this machine (re-launches under torchrun)")
    parser.add_argument("--master-port", "--master_port", type=int, default=None, metavar="PORT",
                        help="with --nproc: the rendezvous port (default: $MASTER_PORT, else a free one)")
    # the deepspeed launcher appends --local_rank=R; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    exit_on_preemption()  # a signal before the trainer's setup: exit 75 now (nothing to save yet)
    cfg = load_config(args.config, args.overrides)  # ConfigError: one line, status 2, nothing started
    if args.nproc is not None:
        if args.nproc < 1:
            raise CoinError(f"--nproc: expected an integer >= 1, got {args.nproc}")
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            raise CoinError("--nproc: this process already runs under a launcher (RANK is set); drop --nproc")
        return launch(args, cfg.deepspeed.stop_grace_s)
    if args.master_port is not None:
        raise CoinError("--master-port: only with --nproc (a launcher of your own takes its own port option)")
    return run(cfg)


def run(cfg) -> int:
    """Train in this process (one rank of however many the launcher started); never returns."""
    from . import dist
    from .trainer import NONFINITE_EXIT_CODE, NonFiniteLossError, Trainer

    trainer = Trainer(cfg)
    code = EXIT_OK
    try:
        trainer.setup()
        status = trainer.train()
        code = PREEMPTED_EXIT_CODE if status == "preempted" else EXIT_OK
    except NonFiniteLossError as e:
        _print_once(f"coin train: stopped: {e}")
        code = NONFINITE_EXIT_CODE
    except CoinError as e:
        _print_once(f"coin train: error: {e}")
        code = EXIT_BAD_INPUT
        trainer.write_failed(e, code)
    except KeyboardInterrupt as e:
        code = 130
        trainer.write_failed(e, code)
    except BaseException as e:  # noqa: BLE001 - every failure must still leave through dist.shutdown
        print(f"coin train: rank {dist.rank()} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        code = EXIT_CRASH
        trainer.write_failed(e, code)
    finally:
        trainer.cleanup()
        for sig in PREEMPT_SIGNALS:  # the outcome is decided: a signal now must not turn it into 75
            signal.signal(sig, signal.SIG_IGN)
    dist.shutdown(code)  # barrier (on success), destroy the process group, os._exit(code)
    return code  # not reached


def _print_once(message: str) -> None:
    from . import dist

    if dist.rank() == 0:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- --nproc N

STOP_POLL_S = 0.2  # how often the launcher looks at its ranks
RESIGNAL_S = 1.0  # after a preemption signal, it is sent again this often until the grace period ends
KILL_GRACE_S = 5.0  # after the SIGCONT + SIGTERM that ends deepspeed.stop_grace_s: this long before SIGKILL
KEEP_AFTER_PREEMPTION = (0, 2, 3)  # a preempted launch keeps these statuses (done, bad input, non-finite); else 75


def _process_tree() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every live process (Linux /proc; zombies left out)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (2nd field) may hold spaces: state and ppid are the fields after its ')'
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state not in ("Z", "X"):
            tree.setdefault(int(ppid), []).append(int(entry))
    return tree


def _state(pid: int) -> str:
    """The process state letter (R, S, D, T for stopped, ...); "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    return sorted(_process_tree().get(pid, []))


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    tree, out, todo = _process_tree(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out += kids
        todo += kids
    return sorted(out)


def _send(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _say(message: str) -> None:
    print(f"coin train: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """The parent of `coin train --nproc`: waits for the launcher process (torchrun) and bounds a
    preemption. SIGTERM/SIGUSR1 (`on_signal`) go to the ranks (the launcher's children) at once,
    and again every RESIGNAL_S (a rank that was still starting may have missed it: torchrun's
    ranks begin with the signals ignored); a stopped process below it (SIGSTOP: it would hold the
    others in a collective) gets SIGCONT each time. Ranks still alive `grace_s` later (stuck) get
    SIGCONT + SIGTERM, with every process
    below them; what is left `kill_grace_s` after that, SIGKILL; the launcher itself, if it is
    still there another `kill_grace_s` later, SIGKILL too. Statuses: `wait()`."""

    def __init__(self, grace_s: float, kill_grace_s: float = KILL_GRACE_S):
        self.grace_s, self.kill_grace_s = grace_s, kill_grace_s
        self.proc: subprocess.Popen | None = None
        self.signum: int | None = None  # the first preemption signal received
        self.since = self.sent = 0.0
        self.stage = 0  # 0 waiting, 1 SIGCONT + SIGTERM sent, 2 SIGKILL sent to the ranks, 3 to the launcher

    def on_signal(self, signum, frame) -> None:
        if self.signum is None:
            self.signum, self.since = signum, time.monotonic()
        self._forward()

    def _forward(self) -> None:
        if self.proc is not None:
            stopped = [pid for pid in _descendants(self.proc.pid) if _state(pid) == "T"]
            if stopped:  # a stopped rank holds every other one in a collective: let it take the signal
                _say(f"processes {stopped} were stopped (SIGSTOP): SIGCONT")
                _send(stopped, signal.SIGCONT)
            _send(_children(self.proc.pid), self.signum)
        self.sent = time.monotonic()

    def _tick(self) -> None:
        waited = time.monotonic() - self.since
        name = signal.Signals(self.signum).name
        if self.stage == 0 and waited >= self.grace_s:
            self.stage = 1
            left = _descendants(self.proc.pid)
            if left:
                _say(f"processes {left} still running {self.grace_s:g} s after {name} (stuck or stopped?): "
                     f"SIGCONT + SIGTERM, SIGKILL in {self.kill_grace_s:g} s")
                _send([self.proc.pid, *left], signal.SIGCONT)
                _send(left, signal.SIGTERM)
        elif self.stage == 1 and waited >= self.grace_s + self.kill_grace_s:
            self.stage = 2
            left = _descendants(self.proc.pid)
            if left:
                _say(f"processes {left} still running {self.grace_s + self.kill_grace_s:g} s after {name}: SIGKILL")
                _send(left, signal.SIGKILL)
        elif self.stage == 2 and waited >= self.grace_s + 2 * self.kill_grace_s:
            self.stage = 3
            _say(f"the launcher (pid {self.proc.pid}) is still running: SIGKILL")
            self.proc.kill()
        if self.stage == 0 and time.monotonic() - self.sent >= RESIGNAL_S:
            self._forward()

    def wait(self) -> int:
        """The launcher's exit status (128 + N when killed by signal N); after a preemption signal,
        PREEMPTED_EXIT_CODE unless the ranks completed (0) or failed on bad input (2) or
        non-finite losses (3), which a requeue would not change."""
        while True:
            try:
                rc = self.proc.wait(timeout=STOP_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if self.signum is not None:
                    self._tick()
            except KeyboardInterrupt:  # Ctrl-C reaches torchrun too; let it end its ranks
                continue
        rc = rc if rc >= 0 else 128 - rc  # coin.training.torchrun exits with the ranks' own status
        if self.signum is not None and rc not in KEEP_AFTER_PREEMPTION and rc != PREEMPTED_EXIT_CODE:
            _say(f"preempted by {signal.Signals(self.signum).name} (the ranks ended with status {rc}): "
                 f"exit {PREEMPTED_EXIT_CODE}, requeue to resume from the last complete checkpoint")
            rc = PREEMPTED_EXIT_CODE
        return rc


def master_port(given: int | None) -> int | None:
    """The rendezvous port of a --nproc run: --master-port, else $MASTER_PORT, else None (a free one)."""
    where = "--master-port"
    if given is None and os.environ.get("MASTER_PORT", "").strip():
        where, text = "MASTER_PORT", os.environ["MASTER_PORT"].strip()
        if not text.isdigit():
            raise CoinError(f"MASTER_PORT: expected a port number, got {text!r}")
        given = int(text)
    if given is not None and not 1 <= given <= 65535:
        raise CoinError(f"{where}: expected a port in 1..65535, got {given}")
    return given


def torchrun_command(nproc: int, port: int | None, rank_args: list[str]) -> list[str]:
    """The launcher command of --nproc: torchrun on this machine (`coin.training.torchrun`), at `port`
    or, without one, on a free port (--standalone)."""
    where = ["--standalone"] if port is None else ["--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
    return [sys.executable, "-m", "coin.training.torchrun", *where, f"--nproc-per-node={nproc}",
            "-m", "coin.training.train", *rank_args]


def launch(args: argparse.Namespace, stop_grace_s: float) -> int:
    """Run this command on `args.nproc` local ranks under torchrun; returns the ranks' exit status
    (a preemption: `Supervisor.wait`)."""
    launch_id = uuid.uuid4().hex
    cmd = torchrun_command(args.nproc, master_port(args.master_port), ["--config", args.config, *args.overrides])
    # PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle: without SIGTERM, it never stops ranks itself
    env = dict(os.environ, COIN_LAUNCH_ID=launch_id, PET_SIGNALS_TO_HANDLE="SIGINT,SIGHUP,SIGQUIT")
    env.setdefault("OMP_NUM_THREADS", "1")

    def ignore_preemption_signals():  # in torchrun (its ranks install their own handlers)
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    supervisor = Supervisor(stop_grace_s)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in PREEMPT_SIGNALS}  # before torchrun starts
    try:
        supervisor.proc = subprocess.Popen(cmd, env=env, preexec_fn=ignore_preemption_signals)
        return supervisor.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- python -m


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coin.training.train",
                                     description="train with CoIN under DeepSpeed")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except CoinError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"coin train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(cli())
