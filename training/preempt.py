"""The preemption signals, their exit status, and what such a signal does while a run starts.

SIGTERM and SIGUSR1 ask a run to stop and be requeued: exit status 75 (`PREEMPTED_EXIT_CODE`,
EX_TEMPFAIL). Once the trainer's setup begins, its graceful handler (trainer.Preemption) takes
them: every rank finishes the step and saves a checkpoint. Before that, while a rank is still
starting (reading the config, importing torch and DeepSpeed, which takes seconds), there is
nothing to save: `exit_on_preemption()`, installed first thing by `coin train`
(training/train.py main), ends the process at once with 75. Without it a signal then either
kills the rank (the default action: status 143, which a requeue script reads as a failure) or
is lost (the SIG_IGN that torchrun's ranks inherit under `coin train --nproc`, and the run
trains on). This module imports nothing heavy, so the handler is in place before torch loads.
"""
from __future__ import annotations

import os
import signal
import threading

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint written (or nothing to save yet), requeue and resume
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def exit_on_preemption() -> None:
    """SIGTERM / SIGUSR1 end this process with PREEMPTED_EXIT_CODE until someone installs other
    handlers (the trainer, as its setup begins). A no-op outside the main thread, where Python
    cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, _exit_preempted)


def _exit_preempted(signum, frame) -> None:
    if os.environ.get("RANK", "0") == "0":  # every rank gets the signal; one line is enough
        os.write(2, f"coin train: {signal.Signals(signum).name} during start-up, nothing to save yet: "
                    f"exit {PREEMPTED_EXIT_CODE} (requeue to start again)\n".encode())
    os._exit(PREEMPTED_EXIT_CODE)
