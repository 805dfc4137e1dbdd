"""Process-group helpers: initialisation for every launcher, and a clean exit.

Launchers (deepspeed, torchrun, srun + torchrun, the test harness) all set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init()` works from those, or as a single process when
they are absent. Ranks run on CUDA GPUs (NCCL, one GPU per local rank, chosen before the process
group exists) when torch sees one and DeepSpeed's accelerator is not forced elsewhere
(`DS_ACCELERATOR=cpu` keeps a GPU machine on the CPU); otherwise on the CPU over gloo.
`use_cuda()` is that decision and `device()` its device, for every caller.

`shutdown()` exists because a gloo process group torn down by interpreter finalisation can abort
("terminate called without an active exception", exit -6): every multi-rank program ends with a
barrier, destroys the group, flushes and leaves through os._exit.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Callable, TypeVar

import torch
import torch.distributed as dist


T = TypeVar("T")


def init(timeout_s: float | None = None) -> None:
    """Initialise torch.distributed through DeepSpeed (idempotent; single process allowed); a
    collective that waits longer than `timeout_s` seconds (default: deepspeed.collective_timeout_s's
    default) fails instead of hanging."""
    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if use_cuda():  # before the group exists, so NCCL binds each rank to its own GPU
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if timeout_s is None:
        from .config import DeepSpeedConfig

        timeout_s = DeepSpeedConfig.collective_timeout_s
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda() else "gloo", verbose=False,
                               timeout=datetime.timedelta(seconds=timeout_s))


def use_cuda() -> bool:
    """True when ranks run on CUDA GPUs: torch sees one and DS_ACCELERATOR is unset or `cuda`."""
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def device() -> torch.device:
    if use_cuda():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, then (after rank 0 is done) on the other ranks, which typically read what
    rank 0 wrote. A CoinError on rank 0 (bad input) is raised on every rank with its message, so
    that all stop with status 2 and only rank 0 has something to say: without this, the others
    would wait at a barrier that rank 0 never reaches and die with a gloo traceback."""
    from coin.errors import CoinError

    error, result = None, None
    if rank() == 0:
        try:
            result = fn()
        except CoinError as e:
            if world_size() == 1:
                raise
            error = e
    if world_size() > 1:
        message = [None if error is None else str(error)]
        dist.broadcast_object_list(message, src=0)
        if error is not None:
            raise error
        if message[0] is not None:
            raise CoinError(message[0])
    return result if rank() == 0 else fn()


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
