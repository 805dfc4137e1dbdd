"""torchrun's local launcher as `coin train --nproc N` runs it: the ranks' own exit status.

    python -m coin.training.torchrun TORCHRUN_ARGS...        (what training/train.py launch() starts)

The same launcher as `python -m torch.distributed.run` (its argument parser and elastic agent), with
one difference: when ranks fail, torchrun's entry point raises ChildFailedError, which prints a
multi-line dump and exits with 1 whatever the ranks returned. Here the failure is caught and this
process exits with the status of the first rank that failed (by time; 2 bad configuration or
data, 3 non-finite losses, 75 preempted: training/train.py), so the one-line message the rank
printed stays the last thing on the terminal. A rank killed by a signal (status < 0) gets one
line here and status 128 + the signal number, as a shell reports it. A --master-port that is
taken is one line and status 2.
"""
from __future__ import annotations

import logging
import signal
import sys

EXIT_BAD_INPUT = 2


def exit_status(failures: dict) -> tuple[int, str | None]:
    """(the exit status, a line to print or None) for ChildFailedError.failures {rank: ProcessFailure}."""
    ordered = sorted(failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    for rank, failure in ordered:  # a rank's own status first: the others were stopped because of it
        if failure.exitcode > 0:
            return failure.exitcode, None
    rank, failure = ordered[0]
    try:
        name = signal.Signals(-failure.exitcode).name
    except ValueError:
        name = f"signal {-failure.exitcode}"
    return 128 - failure.exitcode, f"coin train: rank {rank} (pid {failure.pid}) was killed by {name}"


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the agent logs each failure at ERROR level ("failed (exitcode: 2) local_rank: 0 ..."): the ranks
    # have said why already, and the status says the rest
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as e:
        code, line = exit_status(e.failures)
        if line:
            print(line, file=sys.stderr, flush=True)
        return code
    except Exception as e:  # noqa: BLE001 - the rendezvous store could not start
        text = str(e)
        if "address already in use" in text.lower() or "EADDRINUSE" in text:
            print(f"coin train: error: --master-port {args.master_port}: the port is in use on this machine (another "
                  f"run?); pass another one, or leave --master-port and MASTER_PORT unset for a free one",
                  file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
