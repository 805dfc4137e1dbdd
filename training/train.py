"""Entry point of a training run.

    coin train --config X.yaml [--nproc N] [key.sub=value ...]
    python -m coin.training.train --config X.yaml [key.sub=value ...]          (under a launcher:)
    torchrun --standalone --nproc_per_node N -m coin.training.train --config X.yaml ...
    deepspeed --num_gpus N --module coin.training.train --config X.yaml ...

Without `--nproc` and without a launcher the run is one process. `--nproc N` re-launches the same
command under torchrun's launcher on this machine (`coin.training.torchrun`: torchrun, returning
the ranks' own status) and stays as its parent: it forwards SIGTERM/SIGUSR1 to the ranks
(torchrun itself is told to ignore them, so it does not kill ranks that are writing their
preemption checkpoint) and returns the ranks' exit status, which a bare torchrun would turn into
1 with a ChildFailedError dump. The rendezvous port is `--master-port`, else $MASTER_PORT, else a
free one (torchrun's --standalone).

Exit status: 0 completed; 75 (`PREEMPTED_EXIT_CODE`) preempted by SIGTERM/SIGUSR1 after writing
a checkpoint (requeue: `resume: auto` continues); 3 stopped after too many non-finite losses;
2 bad configuration or data (a one-line message); 1 anything else (a traceback).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import traceback
import uuid

from coin.errors import CoinError

from .config import load_config

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
    cfg = load_config(args.config, args.overrides)  # ConfigError: one line, status 2, nothing started
    if args.nproc is not None:
        if args.nproc < 1:
            raise CoinError(f"--nproc: expected an integer >= 1, got {args.nproc}")
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            raise CoinError("--nproc: this process already runs under a launcher (RANK is set); drop --nproc")
        return launch(args)
    if args.master_port is not None:
        raise CoinError("--master-port: only with --nproc (a launcher of your own takes its own port option)")
    return run(cfg)


def run(cfg) -> int:
    """Train in this process (one rank of however many the launcher started); never returns."""
    from . import dist
    from .trainer import NONFINITE_EXIT_CODE, PREEMPTED_EXIT_CODE, NonFiniteLossError, Trainer

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
    dist.shutdown(code)  # barrier (on success), destroy the process group, os._exit(code)
    return code  # not reached


def _print_once(message: str) -> None:
    from . import dist

    if dist.rank() == 0:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- --nproc N


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (2nd field) may hold spaces: the ppid is the 2nd field after its ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


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


def launch(args: argparse.Namespace) -> int:
    """Run this command on `args.nproc` local ranks under torchrun; returns the ranks' exit status."""
    from .trainer import PREEMPT_SIGNALS

    launch_id = uuid.uuid4().hex
    cmd = torchrun_command(args.nproc, master_port(args.master_port), ["--config", args.config, *args.overrides])
    # PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle: without SIGTERM, it never stops ranks itself
    env = dict(os.environ, COIN_LAUNCH_ID=launch_id, PET_SIGNALS_TO_HANDLE="SIGINT,SIGHUP,SIGQUIT")
    env.setdefault("OMP_NUM_THREADS", "1")

    def ignore_preemption_signals():  # in torchrun (its ranks install their own handlers)
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, env=env, preexec_fn=ignore_preemption_signals)

    def forward(signum, frame):
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in PREEMPT_SIGNALS}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reaches torchrun too; let it end its ranks
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return rc if rc >= 0 else 128 - rc  # coin.training.torchrun exits with the ranks' own status


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
