"""Evaluation throughput: batched label-likelihood scoring against the reference harness's
batch-1 greedy generation of 7 tokens, on the same model and the same examples, in one run.

Model: the embedded tiny LLaMA (hidden 64, 2 layers, real 32000-token vocabulary), eager
attention (what `coin eval` uses on CPU). Examples: SST-2-style sentences built from a fixed
word list (seeded), each under the first built-in clean sst2 instruction, rendered with the
training prompt format. Timed after one warm-up batch of each mode:

    likelihood, batch 32     eval.scoring.label_scores (both label words scored, argmax)
    generate, batch 1        eval.scoring.generate_texts, 7 new tokens, one prompt at a time
                             (the reference protocol), then parse_prediction
    generate, batch 32       the same, left-padded batches (what `coin eval --scoring generate` does)

The modes run interleaved, and each figure is the best of 5 passes (2 with --quick): on a shared
machine a busy moment then slows one pass of every mode instead of one mode's only pass.
"""
from __future__ import annotations

import os
import random
import sys
import time

WORDS = ("the film movie plot acting story cast director scene music was is felt seemed "
         "wonderful dull brilliant boring charming tedious moving flat sharp clumsy warm cold "
         "and but with a an of in very rather quite never always").split()


def _examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"sentence": " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 24))) + ".", "label": i % 2}
            for i in range(n)]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(n_examples: int, n_generate: int, repeats: int = 3) -> dict:
    import torch

    from coin.data_tools.prompt import PromptFormat
    from coin.eval.scoring import argmax_label, generate_texts, label_scores, parse_prediction
    from coin.eval.tasks import default_instructions, get_task, render_prompt
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer

    torch.manual_seed(0)
    mcfg = ModelConfig(name_or_path="tiny", attn_implementation="eager")
    tok, model = load_tokenizer(mcfg), load_model(mcfg).eval()
    spec = get_task("sst2")
    fmt = PromptFormat()
    instruction = default_instructions(spec)[0]
    prompts = [render_prompt(spec, instruction, e) for e in _examples(n_examples)]
    gen_prompts = prompts[:n_generate]

    label_scores(model, tok, fmt, prompts[:32], spec.label_words, batch_size=32)  # warm-up
    generate_texts(model, tok, fmt, gen_prompts[:2], batch_size=1)
    out: dict = {"threads": torch.get_num_threads(), "n_likelihood": len(prompts), "n_generate": len(gen_prompts)}
    preds: dict = {}

    def lik():
        preds["lik"] = [argmax_label(s) for s in label_scores(model, tok, fmt, prompts, spec.label_words, batch_size=32)]

    def gen1():
        texts = generate_texts(model, tok, fmt, gen_prompts, max_new_tokens=7, batch_size=1)
        preds["gen1"] = [parse_prediction(t, spec.label_words) for t in texts]
        preds["gen1_tokens"] = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)

    def gen32():
        generate_texts(model, tok, fmt, gen_prompts, max_new_tokens=7, batch_size=32)

    # the modes interleaved, best of `repeats` each: the machine may be shared, and a slow
    # moment then hurts every mode alike instead of one
    times: dict[str, list[float]] = {"likelihood_s": [], "generate1_s": [], "generate32_s": []}
    for _ in range(repeats):
        times["likelihood_s"].append(_timed(lik))
        times["generate1_s"].append(_timed(gen1))
        times["generate32_s"].append(_timed(gen32))
    out.update({k: min(v) for k, v in times.items()})
    out["repeats"] = repeats
    out["gen1_parse_failures"] = sum(p < 0 for p in preds["gen1"])
    out["gen1_tokens"] = preds["gen1_tokens"]
    return out


def run(quick: bool = False) -> str:
    n_lik, n_gen = (64, 16) if quick else (256, 32)
    m = measure(n_lik, n_gen, repeats=2 if quick else 5)
    lik = m["n_likelihood"] / m["likelihood_s"]
    gen1 = m["n_generate"] / m["generate1_s"]
    gen32 = m["n_generate"] / m["generate32_s"]
    lines = [
        "## Evaluation: label-likelihood scoring vs batch-1 generation",
        "",
        "Tiny LLaMA (hidden 64, 2 layers, vocabulary 32000, eager attention), CPU, "
        f"{m['threads']} torch threads; SST-2-style examples under one built-in instruction with the training "
        "prompt format; the generated examples are the first of the scored ones. Examples/s over a whole pass "
        f"(tokenisation included), after a warm-up; the three modes interleaved, best of {m['repeats']} passes each.",
        "",
        f"Command: `python benchmarks/bench_eval.py{' --quick' if quick else ''}`",
        "",
        "| mode | examples | seconds | examples/s | vs batch-1 generation |",
        "|---|---:|---:|---:|---:|",
        f"| likelihood ranking, batch 32 | {m['n_likelihood']} | {m['likelihood_s']:.2f} | {lik:.1f} | {lik / gen1:.1f}x |",
        f"| greedy generation of 7 tokens, batch 1 (reference protocol) | {m['n_generate']} | {m['generate1_s']:.2f} "
        f"| {gen1:.1f} | 1.0x |",
        f"| greedy generation of 7 tokens, batch 32, left-padded | {m['n_generate']} | {m['generate32_s']:.2f} "
        f"| {gen32:.1f} | {gen32 / gen1:.1f}x |",
        "",
        f"Target: likelihood at batch 32 at least 10x batch-1 generation: **{lik / gen1:.1f}x**. Generation "
        f"produced {m['gen1_tokens']:.1f} tokens per example on average and {m['gen1_parse_failures']} of "
        f"{m['n_generate']} outputs named no label (the random tiny model; likelihood ranking never fails to parse).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(run(quick="--quick" in sys.argv))
