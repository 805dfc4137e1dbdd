"""Does CoIN make a model more robust to reworded instructions? A small-scale experiment on CPU.

The same tiny LLaMA, from the same initialisation, on the same demo data (originals + template
paraphrases), with the same steps and seeds, trained on 2 ranks under ZeRO-3, once per arm:

    coin          the contrastive term on (configs/tiny.yaml: tau 0.05, lambda 1000, last-token pooling)
    coin-lambda1  the same with lambda 1: the contrastive term never outweighs the generation loss
    sft           the paper's baseline, continual instruction tuning: `coin.objective: cit`, the
                  generation loss on the same originals and paraphrases

Both are evaluated on the demo's held-out instruction templates (never seen in training), clean
and perturbed at the character, word, sentence and semantic levels, on the same examples:
accuracy mean and std over instructions per level, consistency across instruction variants, and
the cosine between clean and perturbed last-token representations.

    python benchmarks/bench_robustness.py [--quick]      (or: coin bench robustness)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

OUT = os.environ.get("COIN_BENCH_ROBUSTNESS_DIR", "runs/bench_robustness")
LEVELS = ["clean", "character", "word", "sentence", "semantic"]
ARMS = [("coin", []), ("coin-lambda1", ["coin.max_weight=1"]), ("sft", ["coin.objective=cit"])]
ARM_TEXT = {
    "coin": "CoIN with the paper's settings (adaptive weight, lambda 1000)",
    "coin-lambda1": "CoIN with lambda 1 (w = min(1, L_gen / L_ctr))",
    "sft": "continual instruction tuning, the paper's baseline (contrastive term off, same originals + paraphrases)",
}


def _coin(*args: str) -> None:
    print("$ coin " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "coin", *args], check=True)


def _experiment(quick: bool) -> dict:
    from coin.pipeline import TASKS

    steps = 20 if quick else 400
    per_task, eval_examples = (24, 8) if quick else (150, 40)
    data = os.path.join(OUT, "data")
    t0 = time.time()
    _coin("data", "demo", data, "--train-per-task", str(per_task), "--eval-per-task", str(eval_examples))
    _coin("augment", os.path.join(data, "train.jsonl"), "--backend", "templates", "--templates",
          os.path.join(data, "templates.json"), "--out-dir", os.path.join(data, "augment"),
          "--output", os.path.join(data, "train.augmented.jsonl"), "--no-progress")
    _coin("pairs", os.path.join(data, "train.augmented.jsonl"), "--output", os.path.join(data, "train.pairs.jsonl"))
    timings = {}
    for name, extra in ARMS:
        start = time.time()
        _coin("train", "--config", "configs/tiny.yaml", "--nproc", "2", f"data.train={data}/train.pairs.jsonl",
              "data.eval=null", f"output.dir={OUT}/{name}", "output.resume=never", f"optim.max_steps={steps}",
              f"output.save_every={steps}", "logging.eval_every=0", "logging.progress_bar=false", *extra)
        timings[name] = time.time() - start
    glue = os.path.join(data, "glue")  # the held-out instances, written by `coin data demo`
    start = time.time()
    models = [a for name, _ in ARMS for a in ("--model", f"{OUT}/{name}/hf")]
    names = [a for name, _ in ARMS for a in ("--model-name", name)]
    _coin("eval", *models, *names, "--tasks", TASKS, "--data", glue,
          "--instructions", "generated:" + os.path.join(data, "heldout_templates.json"),
          "--n-examples", str(eval_examples), "--representation", "cola", "--representation-examples", str(eval_examples),
          "--out", f"{OUT}/eval", "--no-progress")
    timings["eval"] = time.time() - start
    results = json.load(open(f"{OUT}/eval/results.json"))
    training = {name: _training_summary(f"{OUT}/{name}/metrics.jsonl") for name, _ in ARMS}
    return {"steps": steps, "per_task": per_task, "eval_examples": eval_examples, "results": results,
            "training": training, "timings": timings, "seconds": time.time() - t0}


def _training_summary(path: str) -> dict:
    """Means over the last 10% of steps, and the mean gradient norm (before clipping) over the run."""
    rows = [json.loads(line) for line in open(path) if '"kind": "train"' in line]
    tail = rows[-max(1, len(rows) // 10):]
    mean = lambda key, rs: sum(float(r[key]) for r in rs) / len(rs)  # noqa: E731
    return {"gen_loss": mean("gen_loss", tail), "ctr_acc": mean("ctr_acc", tail), "ctr_weight": mean("ctr_weight", tail),
            "grad_norm": mean("grad_norm", rows)}


def _section(exp: dict) -> str:
    models = exp["results"]["models"]
    arms = [name for name, _ in ARMS]
    t = exp["timings"]
    lines = [
        "## Small-scale experiment: CoIN vs continual instruction tuning (tiny LLaMA, CPU)",
        "",
        f"Demo data: 8 GLUE-like tasks, {exp['per_task']} training examples per task, each with a template "
        f"paraphrase; {exp['steps']} optimiser steps of 8 examples (2 ranks x 4, ZeRO-3), the same initialisation, "
        f"seeds and data for every arm; evaluation on the held-out templates (never trained on), "
        f"{exp['eval_examples']} examples per task, 6 instructions per task, each clean and under 7 attacks, "
        "label-likelihood scoring. Arms: " + "; ".join(f"`{n}` = {ARM_TEXT[n]}" for n in arms) + ". "
        "Command: `python benchmarks/bench_robustness.py` "
        f"(total {exp['seconds'] / 60:.1f} min; training " + ", ".join(f"{n} {t[n]:.0f} s" for n in arms)
        + f"; evaluation {t['eval']:.0f} s).",
        "",
        "Accuracy: mean over instructions, averaged over tasks; std: population std over the instructions of a level, "
        "averaged over tasks (the paper's Figure 3). Consistency: % of answers equal to the answer under the clean "
        "instruction. cos: mean cosine between clean and perturbed last-token representations (CoLA inputs).",
        "",
        "| level | " + " | ".join(f"{n} acc (%) | {n} std" for n in arms) + " | "
        + " | ".join(f"{n} consistency (%)" for n in arms) + " | " + " | ".join(f"{n} cos" for n in arms) + " |",
        "|---|" + "---:|" * (4 * len(arms)),
    ]

    def cons(m, level):
        if level == "clean":
            return "100.0"  # agreement of the clean answers with themselves
        value = m["overall"]["consistency"]["agreement_with_clean"].get(level)
        return "" if value is None else f"{100 * value:.1f}"

    def cos(m, level):
        value = (m.get("representation") or {}).get("mean_cosine", {}).get(level)
        return "" if value is None else f"{value:.3f}"

    for level in LEVELS:
        cells = []
        for n in arms:
            a = models[n]["overall"]["by_level"][level]
            cells += [f"{100 * a['accuracy']:.1f}", f"{100 * a['std']:.1f}"]
        cells += [cons(models[n], level) for n in arms] + [cos(models[n], level) for n in arms]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    lines += ["", "Training (means over the last 10% of steps; gradient norm before clipping, mean over the run):", "",
              "| arm | generation loss | contrastive accuracy | effective weight w | gradient norm |", "|---|---:|---:|---:|---:|"]
    for n in arms:
        tr = exp["training"][n]
        lines.append(f"| {n} | {tr['gen_loss']:.3f} | {tr['ctr_acc']:.3f} | {tr['ctr_weight']:.1f} | {tr['grad_norm']:.1f} |")
    return "\n".join(lines + ["", "Discussion (generated from the figures above):", ""] + _discussion(exp)) + "\n"


def _discussion(exp: dict) -> list[str]:
    models, training = exp["results"]["models"], exp["training"]
    acc = {n: {lv: models[n]["overall"]["by_level"][lv]["accuracy"] for lv in LEVELS} for n in models}
    std = {n: {lv: models[n]["overall"]["by_level"][lv]["std"] for lv in LEVELS} for n in models}
    perturbed = {n: sum(acc[n][lv] for lv in LEVELS[1:]) / (len(LEVELS) - 1) for n in models}
    out = []
    best = max(perturbed, key=perturbed.get)
    out.append("- Mean accuracy over the four perturbation levels: " + ", ".join(
        f"{n} {100 * perturbed[n]:.1f}%" for n in models) + f". The best arm here is `{best}`; "
        + ("CoIN did not beat the baseline in this setting." if best == "sft" else "CoIN beat the baseline in this setting."))
    for n in models:
        if all(std[n][lv] < 1e-9 for lv in LEVELS) and models[n]["overall"]["consistency"]["overall"] > 1 - 1e-9:
            out.append(f"- `{n}` answers every prompt of a task with the same label (std 0, consistency 100%): "
                       "perfectly consistent only because it ignores its input, not a robustness gain.")
    if "coin" in training and "sft" in training:
        c, f = training["coin"], training["sft"]
        out.append(
            f"- Why `coin` (lambda 1000) underfits: once the contrastive task is solved (contrastive accuracy "
            f"{c['ctr_acc']:.2f}) L_ctr is tiny, so w = min(lambda, L_gen / L_ctr) climbs to about {c['ctr_weight']:.0f}; "
            f"the contrastive gradient then dominates the update (gradient norm {c['grad_norm']:.0f} against "
            f"{f['grad_norm']:.1f} for SFT, clipped to optim.max_grad_norm), and the generation loss ends at "
            f"{c['gen_loss']:.2f} against {f['gen_loss']:.2f}. Capping w at 1 (`coin-lambda1`) restores most of the "
            f"generation loss ({training.get('coin-lambda1', c)['gen_loss']:.2f}).")
    out.append("- Caveats: a 4M-parameter LLaMA trained from random initialisation for a few hundred steps on synthetic "
               "demo tasks is far from the paper's setting (pretrained LLaMA-7B, LoRA, FLAN with 52k paraphrase "
               "entries); there the model already represents instructions well and the contrastive term refines them. "
               "This experiment checks that the whole pipeline measures what the paper measures, side by side and "
               "reproducibly; it does not reproduce the paper's +2.5 points.")
    return out


def run(quick: bool = False) -> str:
    exp = _experiment(quick)
    with open(os.path.join(OUT, "experiment.json"), "w") as f:
        json.dump(exp, f, indent=2)
    return _section(exp)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
