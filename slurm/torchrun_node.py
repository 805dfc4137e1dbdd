"""torchrun for one node of a SLURM job step: the trainer's exit status and SLURM's signals.

    srun --ntasks-per-node=1 python slurm/torchrun_node.py [--status-dir D] [--rank-log-dir DIR] \
        -- TORCHRUN_ARGS...

TORCHRUN_ARGS are plain torchrun arguments (`--nnodes`, `--nproc-per-node`, `--rdzv-*`, then the
module or script and its arguments); this runs torchrun's own `main` with four changes that the
templates in slurm/ rely on (see slurm/README.md):

1. Exit status. torchrun exits 1 whenever a worker fails, so the batch script could not tell a
   preempted run (every rank checkpointed and exited 75, `PREEMPTED_EXIT_CODE` of the trainer)
   from a crash. Here the node's status is 0 when every worker succeeded, 75 when every failed
   worker exited 75, and otherwise the first failure's code (128 + N for a worker killed by
   signal N). With --status-dir the status is written to D/<node>.status and a preempted node exits
   0: srun --kill-on-bad-exit would otherwise SIGTERM the other nodes the moment the first node
   exits 75, while they may still be finishing their own exit (measured: srun then reports 143,
   not 75). Without --status-dir the status is the exit status.
2. Signals. SLURM delivers `--signal=USR1@T`, `scancel --signal` and the SIGTERM of a time
   limit, a cancel or `srun --kill-on-bad-exit` to EVERY process of the step, the workers
   included. The workers (the trainer) checkpoint on USR1/TERM; this agent must outlive them:
   - USR1 is ignored (SIG_IGN). The workers inherit the disposition until the trainer installs
     its handler, so a warning that arrives while a worker is still importing cannot kill it.
   - SIGTERM is logged and otherwise ignored, so torchrun does not forward it and SIGKILL the
     workers after its shutdown timeout, possibly in the middle of a checkpoint. (Needs a torch
     with `--signals-to-handle`; older ones keep torchrun's handling.) SLURM's own SIGKILL,
     KillWait seconds after the SIGTERM, stays the backstop.
3. The rendezvous store. With c10d the store lives in ONE node's agent, and torchrun skips its
   exit barrier when workers fail (exit 75 counts as failing): that agent exits as soon as its
   own workers are gone, and every other agent, polling the store for new nodes while its own
   workers are still saving and exiting, dies of RendezvousConnectionError, losing its workers'
   exit status (measured here on the 2-node test cluster). `num_nodes_waiting` therefore answers
   0 once the store is unreachable, and the agent keeps watching its own workers. (A real
   failure elsewhere still ends the step: srun --kill-on-bad-exit.)
4. Logs. Every line a worker prints is prefixed `[<node> rank<R> local<L>]: ` (the node name
   comes from SLURMD_NODENAME), each worker start is announced with its global rank, world size,
   node and log directory, and with --rank-log-dir each rank's stdout and stderr also go to
   DIR/<node>/<run id>/attempt_<n>/<local rank>/ (torchrun's --log-dir with --tee 3).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
import traceback

try:  # the trainer's exit status after a preemption checkpoint (75; train.sbatch spells it out too)
    from coin.training.trainer import PREEMPTED_EXIT_CODE as PREEMPTED
except ImportError:  # run from outside the checkout without coin installed
    PREEMPTED = 75


def _node() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _say(msg: str) -> None:
    print(f"[{_node()} torchrun_node]: {msg}", file=sys.stderr, flush=True)


def _supports_signals_to_handle() -> bool:
    try:
        from torch.distributed.launcher.api import LaunchConfig
    except ImportError:
        return False
    return "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}


def torchrun_args(args: list[str], rank_log_dir: str | None) -> list[str]:
    """Our options in front of the user's torchrun arguments (argparse: a later option wins)."""
    extra = ["--tee=3"]  # a prefixed copy of every worker's output in the node's log
    if _supports_signals_to_handle():
        extra.append("--signals-to-handle=SIGINT,SIGHUP,SIGQUIT")
    if rank_log_dir:
        extra.append(f"--log-dir={os.path.join(rank_log_dir, _node())}")
    return extra + args


def tolerate_lost_store() -> None:
    """Point 3 above: polling for waiting nodes never kills the agent once the store host left."""
    try:
        from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
        from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler
    except ImportError:
        return
    original = DynamicRendezvousHandler.num_nodes_waiting
    lost = []

    def num_nodes_waiting(self) -> int:
        if lost:  # the store's host is gone for good in this run: don't retry (each try logs a stack)
            return 0
        try:
            return original(self)
        except RendezvousConnectionError:
            lost.append(True)
            _say("rendezvous store unreachable (its node's agent has exited); watching the local workers")
            return 0

    DynamicRendezvousHandler.num_nodes_waiting = num_nodes_waiting


def announce_workers() -> None:
    """Point 4 above: one line per worker start, from the environment torchrun gives it."""
    try:
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    except ImportError:
        return
    original = DefaultLogsSpecs.reify

    def reify(self, envs):
        dest = original(self, envs)
        for local_rank, env in sorted(envs.items()):
            where = getattr(dest, "stdouts", {}).get(local_rank) or "this log only"
            _say(f"starting rank {env.get('RANK')} of {env.get('WORLD_SIZE')} (local rank {local_rank}) on "
                 f"{_node()}, restart {env.get('TORCHELASTIC_RESTART_COUNT', 0)}; its output: {where}")
        return dest

    DefaultLogsSpecs.reify = reify


def exit_code(failures: dict) -> int:
    """The node's exit status from torchrun's failures (global rank -> ProcessFailure)."""
    codes = [f.exitcode for _, f in sorted(failures.items())]
    if codes and all(c == PREEMPTED for c in codes):
        return PREEMPTED
    first = next((c for c in codes if c != PREEMPTED), 1)
    return 128 - first if first < 0 else (first or 1)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], usage=__doc__.split("\n")[2].strip())
    parser.add_argument("--status-dir", help="write the node's status to DIR/<node>.status; exit 0 when it is 75")
    parser.add_argument("--rank-log-dir", help="also write each rank's stdout/stderr under DIR/<node>/")
    if "--" not in argv:
        parser.error("expected `--` before the torchrun arguments")
    split = argv.index("--")
    opts = parser.parse_args(argv[:split])
    args = torchrun_args(argv[split + 1:], opts.rank_log_dir)

    os.environ.setdefault("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", f"[{_node()} rank${{rank}} local${{local_rank}}]: ")
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # os.write, not print: a handler that prints while the main thread is printing to the same
    # buffered stream raises "reentrant call" inside the agent's loop.
    note = f"[{_node()} torchrun_node]: SIGTERM: waiting for the workers to checkpoint and exit\n".encode()
    signal.signal(signal.SIGTERM, lambda signum, frame: os.write(2, note))

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    tolerate_lost_store()
    announce_workers()

    try:
        torchrun_main(args)
        code = 0
    except ChildFailedError as e:
        code = exit_code(e.failures)
        _say(f"workers exited {sorted({f.exitcode for f in e.failures.values()})}; node status {code}"
             + (" (preempted: checkpoint written)" if code == PREEMPTED else ""))
    except SignalException as e:
        code = 128 + int(e.sigval)
        _say(f"stopped by signal {e.sigval}")
    except Exception:  # rendezvous timeout, bad arguments, ...: a failure, with its traceback
        traceback.print_exc()
        code = 1
    except SystemExit as e:  # argparse errors and --help
        code = e.code if isinstance(e.code, int) else 2
    if opts.status_dir:
        os.makedirs(opts.status_dir, exist_ok=True)
        with open(os.path.join(opts.status_dir, f"{_node()}.status"), "w") as f:
            f.write(f"{code}\n")
        if code == PREEMPTED:
            code = 0
    # os._exit, not a return: interpreter finalisation resets our SIGTERM handler to the default,
    # and a SIGTERM from srun in that window would turn a clean exit into "Terminated".
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
