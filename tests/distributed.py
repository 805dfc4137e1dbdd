"""Run a function on W real ranks (gloo, CPU DeepSpeed), in the spirit of DeepSpeed's
DistributedTest: spawned processes, a fresh port per call, a hang timeout, tracebacks surfaced.

    results = run_distributed(fn, world_size=2, args=(...))   # fn(rank, world_size, *args)

`fn` must be a module-level function of an importable module (spawn pickles it by name). Its
return value comes back per rank (anything torch.save can write). Every rank leaves through
coin.training.dist.shutdown, the same clean exit the trainer uses.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import time
import traceback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world_size, port, out_dir, args, kwargs):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    from coin.training import dist

    try:
        dist.init()
        result = fn(rank, world_size, *args, **kwargs)
        torch.save(result, os.path.join(out_dir, f"result{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        dist.shutdown(1)
    dist.shutdown(0)


def run_distributed(fn, world_size: int = 2, args: tuple = (), kwargs: dict | None = None, timeout: float = 300):
    import torch

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        port = free_port()
        procs = [
            ctx.Process(target=_worker, args=(fn, r, world_size, port, out_dir, args, kwargs or {}))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        errors = []
        for r in range(world_size):
            path = os.path.join(out_dir, f"error{r}.txt")
            if os.path.exists(path):
                errors.append(f"--- rank {r}:\n" + open(path).read())
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout:.0f} s (a hang?)\n" + "\n".join(errors))
        if errors:
            raise RuntimeError("distributed test failed\n" + "\n".join(errors))
        codes = [p.exitcode for p in procs]
        if any(c != 0 for c in codes):
            raise RuntimeError(f"ranks exited with {codes} (0 expected: an unclean exit)")
        return [torch.load(os.path.join(out_dir, f"result{r}.pt"), weights_only=False) for r in range(world_size)]
