"""What the contrastive machinery costs, measured side by side in one run.

Part A, 2 CPU ranks (torchrun, gloo) under DeepSpeed ZeRO-3, one engine, the same 2B sequences
each step, variants in blocks of BLOCK steps, rotated round by round:
    sft           coin_step with `objective: cit` (generation loss on originals + paraphrases)
    coin          the CoIN step, negatives gathered from both ranks (pool = 2 x B)
    coin-local    the CoIN step, pool = the local micro-batch (gather off)
    coin-norms    the CoIN step measuring the hidden-state gradient norms on every step (gradnorm)
    coin-logged   the norms on one step in BLOCK, as the trainer measures them at log_every = BLOCK
Part B, one process, plain PyTorch (the reference-style step cannot run under ZeRO-3: two
forwards before one backward, DeepSpeed #5321):
    coin          the CoIN step
    reference     the reference implementation's step: two separate forwards with
                  output_hidden_states=True and full-vocabulary logits
  time per step, and peak RSS increase during the step (each in a fresh process).

Model: a random LLaMA (hidden 256, 4 layers, real 32000-token vocabulary), sequence 256,
micro-batch 4 (8 sequences), responses of 16 tokens.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from memory import time_and_peak

SEQ, MICRO_BATCH, RESPONSE = 256, 4, 16
BLOCK = 10  # consecutive steps of one variant
MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)


def _model_dir() -> str:
    from coin.training.config import TinyModelConfig
    from coin.training.model import tiny_model_dir

    return tiny_model_dir(TinyModelConfig(**MODEL))


def _batch(vocab: int, seed: int, pairs: int = MICRO_BATCH):
    """A micro-batch of `pairs` random originals and paraphrases, responses of RESPONSE tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 2 * pairs
    ids = torch.randint(3, vocab, (n, SEQ), generator=g)
    labels = ids.clone()
    labels[:, : SEQ - RESPONSE] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "prompt_last": torch.full((n,), SEQ - RESPONSE - 1)}


def _distributed_child(rounds: int) -> None:
    import torch

    from coin.training import dist
    from coin.training.config import CoinConfig, ModelConfig, RunConfig, deepspeed_config
    from coin.training.engine import Engine
    from coin.training.gather import NegativePool
    from coin.training.model import CoinModel, load_model
    from coin.training.step import coin_step

    dist.init()
    torch.set_num_threads(1)
    cfg = RunConfig()
    cfg.deepspeed.config = "ds_configs/cpu_zero3.json"
    cfg.optim.micro_batch_size = MICRO_BATCH
    ds = deepspeed_config(cfg, dist.world_size(), MODEL["hidden_size"])
    lm = load_model(ModelConfig(name_or_path=_model_dir()), ds)
    engine = Engine(CoinModel(lm), ds, cfg.optim, total_steps=10_000)
    batch = _batch(lm.config.vocab_size, seed=dist.rank())
    # name: (config, pool, the block's steps that measure the hidden-state gradient norms)
    every, none = set(range(BLOCK)), set()
    variants = {
        "sft": (CoinConfig(objective="cit"), NegativePool(enabled=False), none),
        "coin": (CoinConfig(), NegativePool(enabled=True), none),
        "coin-local": (CoinConfig(gather=False), NegativePool(enabled=False), none),
        "coin-norms": (CoinConfig(), NegativePool(enabled=True), every),
        "coin-logged": (CoinConfig(), NegativePool(enabled=True), {BLOCK - 1}),  # the trainer at log_every = BLOCK
    }
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no variant always runs first
            ccfg, pool, measured = variants[name]
            block = []
            for i in range(BLOCK):
                dist.barrier()
                t0 = time.perf_counter()
                out = coin_step(engine.model, batch, ccfg, pool, grad_norms=i in measured)
                engine.backward(out.loss)
                engine.step()
                dist.barrier()
                block.append(time.perf_counter() - t0)
            if r:  # round 0 warms up; a block's first step absorbs the switch from the previous variant
                times[name].append(statistics.mean(block[1:]))
    if dist.rank() == 0:
        print("RESULT " + json.dumps(times), flush=True)
    dist.shutdown(0)



def _single_child(variant: str, repeats: int) -> None:
    import torch
    import torch.nn.functional as F

    from coin.training.config import CoinConfig, ModelConfig
    from coin.training.model import CoinModel, load_model
    from coin.training.step import coin_step

    torch.manual_seed(0)
    lm = load_model(ModelConfig(name_or_path=_model_dir()))
    model = CoinModel(lm)
    batch = _batch(lm.config.vocab_size, seed=0)
    b = MICRO_BATCH

    def reference_step():
        # the reference: one forward per view, hidden states of every layer, full logits
        outs = [lm(input_ids=batch["input_ids"][s], attention_mask=batch["attention_mask"][s],
                   labels=batch["labels"][s], output_hidden_states=True) for s in (slice(0, b), slice(b, 2 * b))]
        gen = outs[0].loss + outs[1].loss
        o, p = (F.normalize(out.hidden_states[-1][:, -1], dim=-1) for out in outs)
        s = o @ p.T / 0.05
        target = torch.arange(b)
        ctr = (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)) / 2
        return gen + torch.clamp(gen.detach() / ctr.detach(), max=1000.0) * ctr

    def step():
        loss = coin_step(model, batch, CoinConfig()).loss if variant == "coin" else reference_step()
        loss.backward()
        lm.zero_grad(set_to_none=True)

    step()  # warm-up
    times, peak_mib = time_and_peak(step, repeats)
    print("RESULT " + json.dumps({"step_s": statistics.median(times), "peak_mib": peak_mib}), flush=True)


def _result(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def run(quick: bool = False) -> str:
    import socket

    _model_dir()  # build once, before several processes need it
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rounds = 1 if quick else 3
    dist_res = _result([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                        __file__, "--dist", str(rounds)], env)
    single = {v: _result([sys.executable, __file__, "--single", v, "2" if quick else "5"], {**env, "OMP_NUM_THREADS": "2"})
              for v in ("coin", "reference")}
    a = {k: statistics.median(v) for k, v in dist_res.items()}
    # the ratio to SFT round by round (the variants of a round ran back to back): its range
    ratios = {k: [t / s for t, s in zip(v, dist_res["sft"])] for k, v in dist_res.items()}
    lines = [
        "## The CoIN step: contrastive machinery, gather, and the reference-style step",
        "",
        f"Random LLaMA (hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, vocabulary 32000), "
        f"sequence {SEQ}, micro-batch {MICRO_BATCH} ({2 * MICRO_BATCH} sequences), response {RESPONSE} tokens. "
        "Command: `python benchmarks/bench_step.py`.",
        "",
        f"2 CPU ranks, DeepSpeed ZeRO-3, one engine; each variant runs blocks of {BLOCK} consecutive steps, the blocks "
        f"rotated round by round; per block the mean of steps 2-{BLOCK} (the first absorbs the switch from the previous "
        f"variant), median over {rounds} rounds (forward + backward + optimiser step):",
        "",
        "| variant | step (s) | vs SFT | vs SFT, range over rounds |",
        "|---|---:|---:|---:|",
    ]
    for name in ("sft", "coin", "coin-local", "coin-norms", "coin-logged"):
        lines.append(f"| {name} | {a[name]:.3f} | {a[name] / a['sft']:.3f} | "
                     f"{min(ratios[name]):.3f}-{max(ratios[name]):.3f} |")
    lines += [
        "",
        f"`coin-norms` measures the hidden-state gradient norms of both terms on every step (what "
        f"`coin.weighting: gradnorm` needs); `coin-logged` on the last step of each block only, as the trainer "
        f"does at `logging.log_every` {BLOCK} for the other weightings.",
        "",
        f"The CoIN step as the trainer runs it (`coin-logged`) over SFT: {100 * (a['coin-logged'] / a['sft'] - 1):+.1f}% "
        f"(target at most +10%); without the norms: {100 * (a['coin'] / a['sft'] - 1):+.1f}%; with them on every "
        f"step: {100 * (a['coin-norms'] / a['sft'] - 1):+.1f}%; gathering on vs off: {a['coin'] / a['coin-local']:.3f}x.",
        "",
        "One process, plain PyTorch, forward + backward:",
        "",
        "| step | time (s) | peak RSS increase (MiB) |",
        "|---|---:|---:|",
        f"| CoIN step (one forward, lean LM loss) | {single['coin']['step_s']:.3f} | {single['coin']['peak_mib']:.0f} |",
        f"| reference-style (two forwards, all hidden states, full logits) | {single['reference']['step_s']:.3f} | {single['reference']['peak_mib']:.0f} |",
        "",
        f"CoIN / reference: time {single['coin']['step_s'] / single['reference']['step_s']:.2f}x, "
        f"peak memory {single['coin']['peak_mib'] / single['reference']['peak_mib']:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dist"]:
        _distributed_child(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--single"]:
        _single_child(sys.argv[2], int(sys.argv[3]))
    else:
        print(run(quick="--quick" in sys.argv))
