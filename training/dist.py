"""Process-group helpers: initialisation for every launcher, and a clean exit.

Launchers (deepspeed, torchrun, srun + torchrun, the test harness) all set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init()` works from those, or as a single process when
they are absent. On CPU (DS_ACCELERATOR=cpu) the backend is gloo.

`shutdown()` exists because a gloo process group torn down by interpreter finalisation can abort
("terminate called without an active exception", exit -6): every multi-rank program ends with a
barrier, destroys the group, flushes and leaves through os._exit.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def init() -> None:
    """Initialise torch.distributed through DeepSpeed (idempotent; single process allowed)."""
    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    backend = "gloo" if not torch.cuda.is_available() else None
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown(code: int = 0) -> None:
    """Barrier, destroy the process group, flush, and exit the process with `code`."""
    if dist.is_available() and dist.is_initialized():
        try:
            if code == 0:
                dist.barrier()
        finally:
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
