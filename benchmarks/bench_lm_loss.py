"""Peak memory and time of the CoIN step's memory-lean LM loss against the naive full-logits loss.

Setting of the issue: vocabulary 32000 (the tiny LLaMA's real vocabulary), sequence 512,
micro-batch 8 (16 sequences with the paraphrases), forward + backward of the whole step.
Each variant runs in its own fresh process; a sampling thread records the resident set size
during the step, and the figure is the peak increase over the RSS just before the step.

    naive   model(...).logits over every position, CE on the label positions (what HF does)
    lean    coin_step: hidden states at label positions only, output head in fixed chunks,
            each chunk recomputed in backward

Two label layouts: a FLAN-like short response (last 32 tokens of each sequence) and the worst
case (every position labelled); and two heads: trainable (the lean loss recomputes each chunk in
backward) and frozen (LoRA: the lean loss's frozen-head path, per-token gradients computed in
forward, no recomputation).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from memory import time_and_peak

SEQ, MICRO_BATCH, RESPONSE = 512, 8, 32



def _measure(variant: str, labelled: str, head: str, repeats: int) -> dict:
    import torch

    from coin.training.batch import IGNORE_INDEX
    from coin.training.config import CoinConfig, ModelConfig
    from coin.training.model import CoinModel, load_model
    from coin.training.step import coin_step

    torch.manual_seed(0)
    lm = load_model(ModelConfig())
    lm.get_output_embeddings().requires_grad_(head == "trainable")
    model = CoinModel(lm)
    n = 2 * MICRO_BATCH
    input_ids = torch.randint(3, lm.config.vocab_size, (n, SEQ))
    mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    if labelled == "response":
        labels[:, : SEQ - RESPONSE] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
             "prompt_last": torch.full((n,), SEQ - RESPONSE - 1)}
    cfg = CoinConfig()

    def step():
        if variant == "lean":
            loss = coin_step(model, batch, cfg).loss
        else:
            logits = lm(input_ids=input_ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        loss.backward()
        lm.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, lazy init)
    times, peak_mib = time_and_peak(step, repeats)
    return {"variant": variant, "labelled": labelled, "head": head, "peak_mib": peak_mib, "step_s": min(times)}


def _child(variant: str, labelled: str, head: str, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, labelled, head, str(repeats)],
        check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> str:
    repeats = 1 if quick else 3
    rows = []
    for head in ("trainable", "frozen"):
        for labelled in ("response", "all"):
            naive, lean = _child("naive", labelled, head, repeats), _child("lean", labelled, head, repeats)
            rows.append((head, labelled, naive, lean))
    lines = [
        "## Memory-lean LM loss vs full-vocabulary logits",
        "",
        f"Tiny LLaMA (hidden 64, vocabulary 32000), sequence {SEQ}, micro-batch {MICRO_BATCH} "
        f"({2 * MICRO_BATCH} sequences with paraphrases), forward + backward of the step, CPU, each variant in a fresh process; "
        "peak = highest RSS during the step minus RSS before it.",
        "",
        "Command: `python benchmarks/bench_lm_loss.py`",
        "",
        "| head | labelled positions | naive peak (MiB) | lean peak (MiB) | peak ratio lean/naive | naive step (s) | lean step (s) | time ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for head, labelled, naive, lean in rows:
        what = f"response (last {RESPONSE})" if labelled == "response" else "all"
        lines.append(
            f"| {head} | {what} | {naive['peak_mib']:.0f} | {lean['peak_mib']:.0f} | {lean['peak_mib'] / naive['peak_mib']:.2f} "
            f"| {naive['step_s']:.2f} | {lean['step_s']:.2f} | {lean['step_s'] / naive['step_s']:.2f} |"
        )
    lines += ["", "Target: lean peak at most 0.5x the naive peak."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_measure(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
    else:
        print(run(quick="--quick" in sys.argv))
