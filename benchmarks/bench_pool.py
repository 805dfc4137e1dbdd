"""Step-wide negative pools (`coin.pool: step`): memory as the pool grows, time against the micro step.

2 CPU ranks (torchrun, gloo), DeepSpeed ZeRO-3, the model of bench_step.py (random LLaMA, hidden
256, 4 layers, real 32000-token vocabulary), sequence 256, response 16 tokens, micro-batch 4 pairs
(8 sequences). For each accumulation A (1, 2, 4, 8: a pool of 2 x 4 x A = 8 -> 64 pairs), one
fresh pair of processes and one engine:
    memory   rank 0's peak RSS during pooled optimiser steps, above its RSS just before them
             (after one warm-up step; glibc's mmap threshold is pinned so freed activations
             leave the RSS): the pooled step's peak should stay flat as A grows
    time     the `micro` step (coin_step per micro-batch, pool 2 x 4) and the pooled step
             (step_pool.py) on the same A micro-batches, interleaved round by round, median of
             the optimiser-step times (forwards, backwards, optimiser)
and, for comparison, the same pool without caching: `micro` with ONE micro-batch of 4 x A pairs
(accumulation 1), whose activations grow with the pool (the same memory measurement).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from bench_step import MODEL, RESPONSE, SEQ, _batch, _model_dir
from memory import time_and_peak

MICRO_BATCH, WORLD = 4, 2


def _child(mode: str, accumulation: int, rounds: int, repeats: int) -> None:
    """mode "pooled": memory of pooled steps, then micro and pooled interleaved; "one-batch": memory
    of micro steps on one micro-batch of MICRO_BATCH x accumulation pairs."""
    import torch

    from coin.training import dist
    from coin.training.config import CoinConfig, ModelConfig, RunConfig, deepspeed_config
    from coin.training.engine import Engine
    from coin.training.gather import NegativePool
    from coin.training.model import CoinModel, load_model
    from coin.training.step import coin_step
    from coin.training.step_pool import embed_step

    dist.init()
    torch.set_num_threads(1)
    pairs, steps = (MICRO_BATCH, accumulation) if mode == "pooled" else (MICRO_BATCH * accumulation, 1)
    cfg = RunConfig()
    cfg.deepspeed.config = "ds_configs/cpu_zero3.json"
    cfg.optim.micro_batch_size, cfg.optim.gradient_accumulation_steps = pairs, steps
    ds = deepspeed_config(cfg, dist.world_size(), MODEL["hidden_size"])
    lm = load_model(ModelConfig(name_or_path=_model_dir()), ds)
    engine = Engine(CoinModel(lm), ds, cfg.optim, total_steps=10_000)
    engine.train()
    batches = [_batch(lm.config.vocab_size, seed=100 * dist.rank() + a, pairs=pairs) for a in range(steps)]
    pool = NegativePool(enabled=True)
    micro_cfg, pooled_cfg = CoinConfig(), CoinConfig(pool="step")

    def micro():
        for batch in batches:
            engine.backward(coin_step(engine.model, batch, micro_cfg, pool).loss)
            engine.step()

    def pooled():
        for loss in embed_step(engine.model, batches, pooled_cfg, pool).micro_losses():
            engine.backward(loss)
            engine.step()

    measured = pooled if mode == "pooled" else micro
    measured()  # warm-up: optimiser states, DeepSpeed's trace
    _, peak_mib = time_and_peak(measured, repeats)
    result = {"peak_mib": peak_mib}
    if mode == "pooled":
        times = {"micro": [], "pooled": []}
        for r in range(rounds + 1):
            for name, fn in (("micro", micro), ("pooled", pooled)):
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                dist.barrier()
                if r:  # round 0 warms the micro step up
                    times[name].append(time.perf_counter() - t0)
        result.update({k: statistics.median(v) for k, v in times.items()})
    if dist.rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)
    dist.shutdown(0)


def _result(mode: str, accumulation: int, rounds: int, repeats: int) -> dict:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a fixed mmap threshold: glibc then unmaps freed large blocks, so the RSS follows live memory
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port", str(port),
           __file__, "--child", mode, str(accumulation), str(rounds), str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def run(quick: bool = False) -> str:
    _model_dir()  # build once, before several processes need it
    accumulations = (1, 2) if quick else (1, 2, 4, 8)
    rounds, repeats = (2, 1) if quick else (3, 2)
    rows = {a: _result("pooled", a, rounds, repeats) for a in accumulations}
    one_batch = {a: _result("one-batch", a, rounds, repeats) for a in accumulations if a > 1}
    first, last = accumulations[0], accumulations[-1]
    lines = [
        "## Step-wide negative pools (`coin.pool: step`): memory and time",
        "",
        f"Random LLaMA (hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, vocabulary 32000), "
        f"sequence {SEQ}, response {RESPONSE} tokens, {WORLD} CPU ranks under DeepSpeed ZeRO-3, micro-batch "
        f"{MICRO_BATCH} pairs; the pool of a pooled step is {WORLD} x {MICRO_BATCH} x accumulation pairs. "
        f"Command: `python benchmarks/bench_pool.py{' --quick' if quick else ''}`.",
        "",
        "Peak memory: rank 0's peak RSS increase during the steps (after a warm-up step). Time: the "
        f"`micro` step (pool {WORLD * MICRO_BATCH}) and the pooled step on the same micro-batches, "
        f"interleaved, median of {rounds} optimiser steps each. Last column: the same pool without "
        "caching, one micro-batch of micro-batch x accumulation pairs.",
        "",
        "| accumulation | pool (pairs) | pooled peak (MiB) | micro step (s) | pooled step (s) | pooled / micro | "
        "same pool in one micro-batch, peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in accumulations:
        r = rows[a]
        same = f"{one_batch[a]['peak_mib']:.0f}" if a in one_batch else "(the same step)"
        lines.append(f"| {a} | {WORLD * MICRO_BATCH * a} | {r['peak_mib']:.0f} | {r['micro']:.3f} | {r['pooled']:.3f} | "
                     f"{r['pooled'] / r['micro']:.2f} | {same} |")
    ratios = [rows[a]["pooled"] / rows[a]["micro"] for a in accumulations]
    lines += [
        "",
        f"Pooled peak memory at pool {WORLD * MICRO_BATCH * last} over pool {WORLD * MICRO_BATCH * first}: "
        f"{rows[last]['peak_mib'] / max(rows[first]['peak_mib'], 1e-9):.2f}x (flat: about 1); "
        f"the uncached pool of {WORLD * MICRO_BATCH * last}: "
        f"{one_batch[last]['peak_mib'] / max(rows[first]['peak_mib'], 1e-9):.2f}x. "
        f"Pooled / micro step time: {min(ratios):.2f}x to {max(ratios):.2f}x (target at most 1.4x; "
        "the expected cost is one extra no-grad forward).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        print(run(quick="--quick" in sys.argv))
