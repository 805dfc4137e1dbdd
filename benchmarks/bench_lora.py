"""LoRA adapters against full-parameter training on the same model: peak memory and step time,
side by side.

One process, plain PyTorch, one training step = the CoIN step (one forward over originals and
paraphrases, lean LM loss, InfoNCE), backward, and a torch AdamW step over the trained parameters
(what the engine runs on CPU). Each variant runs in its own fresh process; the peak is the highest
RSS during the first steps (gradients and the optimiser's state are allocated in the first one)
minus the RSS once the model is loaded; the step time is the median of the steps after the first.

    full    every parameter trains
    lora    `model.lora` r=16, alpha=16 on q/k/v/o (the paper's recipe); the base and the head
            are frozen (the head through the lean loss's frozen-head path)

Model: a random LLaMA (hidden 512, 8 layers, real 32000-token vocabulary), sequence 128,
micro-batch 2 (4 sequences), responses of 16 tokens.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from memory import rss, time_and_peak

SEQ, MICRO_BATCH, RESPONSE = 128, 2, 16
MODEL = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)


def _model_dir() -> str:
    from coin.training.config import TinyModelConfig
    from coin.training.model import tiny_model_dir

    return tiny_model_dir(TinyModelConfig(**MODEL))


def _child(variant: str, steps: int) -> dict:
    import torch

    from coin.training.config import CoinConfig, LoraConfig, ModelConfig
    from coin.training.model import CoinModel, load_model
    from coin.training.step import coin_step

    torch.manual_seed(0)
    lora = LoraConfig(r=16, alpha=16.0, dropout=0.05) if variant == "lora" else None
    lm = load_model(ModelConfig(name_or_path=_model_dir(), lora=lora))
    model = CoinModel(lm).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    n = 2 * MICRO_BATCH
    ids = torch.randint(3, lm.config.vocab_size, (n, SEQ), generator=g)
    labels = ids.clone()
    labels[:, : SEQ - RESPONSE] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "prompt_last": torch.full((n,), SEQ - RESPONSE - 1)}

    def step():
        coin_step(model, batch, CoinConfig()).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    loaded = rss()
    times, peak_mib = time_and_peak(step, steps)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    return {"variant": variant, "trainable": sum(p.numel() for p in params),
            "total": sum(p.numel() for p in model.parameters()), "loaded_mib": loaded / 2**20,
            "peak_mib": peak_mib, "step_s": statistics.median(times[1:]), "optimizer_mib": state / 2**20}


def _run_child(variant: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(steps)], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> str:
    _model_dir()  # build once, before the variants' processes need it
    steps = 2 if quick else 6
    res = {v: _run_child(v, steps) for v in ("full", "lora")}
    full, lora = res["full"], res["lora"]
    lines = [
        "## LoRA adapters vs full parameters",
        "",
        f"Random LLaMA (hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, vocabulary 32000, "
        f"{full['total'] / 1e6:.1f}M parameters), sequence {SEQ}, micro-batch {MICRO_BATCH} ({2 * MICRO_BATCH} "
        "sequences), one process, plain PyTorch: CoIN step + backward + AdamW step, each variant in a fresh process; "
        "peak = highest RSS over the first steps minus RSS after loading the model; step = median after the first. "
        "LoRA: r=16, alpha=16 on q/k/v/o (the paper's recipe).",
        "",
        "Command: `python benchmarks/bench_lora.py`",
        "",
        "| variant | trained parameters | optimiser state (MiB) | peak RSS increase (MiB) | step (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in (full, lora):
        lines.append(f"| {r['variant']} | {r['trainable'] / 1e6:.2f}M | {r['optimizer_mib']:.0f} | {r['peak_mib']:.0f} "
                     f"| {r['step_s']:.3f} |")
    lines += [
        "",
        f"LoRA / full: peak memory {lora['peak_mib'] / full['peak_mib']:.2f}x, step time "
        f"{lora['step_s'] / full['step_s']:.2f}x, trained parameters {lora['trainable'] / full['trainable']:.4f}x.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(_child(sys.argv[2], int(sys.argv[3]))))
    else:
        print(run(quick="--quick" in sys.argv))
