"""`coin demo`: the whole pipeline on the embedded tiny default, stage by stage.

    demo data -> paraphrase augmentation -> contrastive pairs -> 2-rank DeepSpeed ZeRO-3 CoIN
    training (CPU) -> Hugging Face export -> robustness evaluation -> report

Every stage is an ordinary `coin` command, run here as a subprocess and printed first, so the
log doubles as the recipe for running each stage alone. Training evaluates on the held-out
templates (data.eval); the robustness evaluation uses the demo's held-out instruction templates,
clean and perturbed at the character, word, sentence and semantic levels.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from coin.errors import CoinError

TASKS = "sst2,cola,qqp,mrpc,mnli,qnli,rte,wnli"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument("--config", default=None, help="run config (default: configs/tiny.yaml of this checkout)")
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    parser.add_argument("--master-port", "--master_port", type=int, default=None, metavar="PORT",
                        help="the training ranks' rendezvous port (default: $MASTER_PORT, else a free one)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the config's optim.max_steps)")
    parser.add_argument("--train-per-task", type=int, default=150, help="demo training examples per task")
    parser.add_argument("--eval-per-task", type=int, default=40, help="demo held-out examples per task")
    parser.add_argument("--eval-examples", type=int, default=40, help="examples per task in the robustness evaluation")
    parser.add_argument("--quick", action="store_true", help="a reduced run (fewer examples and steps), same code path")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="extra training overrides")


def _repo_file(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)


def _run(title: str, args: list[str], log: list) -> None:
    cmd = [sys.executable, "-m", "coin", *args]
    shown = "coin " + " ".join(shlex.quote(a) for a in args)
    print(f"\n==> {title}\n$ {shown}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise CoinError(f"stage '{title}' failed with exit status {proc.returncode}: {shown}")
    log.append({"stage": title, "command": shown, "seconds": round(time.time() - t0, 1)})


def main(args) -> int:
    out = args.out
    data = os.path.join(out, "data")
    train_dir = os.path.join(out, "train")
    eval_dir = os.path.join(out, "eval")
    config = args.config or _repo_file("configs", "tiny.yaml")
    if not os.path.isfile(config):
        raise CoinError(f"--config: '{config}' does not exist (run `coin demo` from a source checkout, or pass --config)")
    train_per_task, eval_per_task, eval_examples, steps = args.train_per_task, args.eval_per_task, args.eval_examples, args.steps
    if args.quick:
        train_per_task, eval_per_task, eval_examples, steps = 24, 8, 8, steps or 6
    t0 = time.time()
    log: list[dict] = []

    _run("demo data", ["data", "demo", data, "--train-per-task", str(train_per_task),
                       "--eval-per-task", str(eval_per_task)], log)
    for split, templates in (("train", "templates.json"), ("eval", "heldout_templates.json")):
        _run(f"paraphrase augmentation ({split})", [
            "augment", os.path.join(data, f"{split}.jsonl"), "--backend", "templates",
            "--templates", os.path.join(data, templates), "--out-dir", os.path.join(data, f"augment-{split}"),
            "--output", os.path.join(data, f"{split}.augmented.jsonl"), "--no-progress"], log)
        _run(f"contrastive pairs ({split})", [
            "pairs", os.path.join(data, f"{split}.augmented.jsonl"), "--output", os.path.join(data, f"{split}.pairs.jsonl")], log)

    overrides = [f"data.train={os.path.join(data, 'train.pairs.jsonl')}", f"data.eval={os.path.join(data, 'eval.pairs.jsonl')}",
                 f"output.dir={train_dir}", "deepspeed.config=" + _repo_file("ds_configs", "cpu_zero3.json")]
    if steps:
        overrides += [f"optim.max_steps={steps}", f"output.save_every={max(steps // 2, 1)}",
                      f"logging.eval_every={max(steps // 2, 1)}", f"logging.log_every={max(min(5, steps // 2), 1)}"]
    port = [] if args.master_port is None else ["--master-port", str(args.master_port)]
    _run(f"CoIN training ({args.nproc} ranks, DeepSpeed ZeRO-3) and export",
         ["train", "--config", config, "--nproc", str(args.nproc), *port, *overrides, *args.overrides], log)

    glue = os.path.join(data, "glue")  # the held-out instances, written by `coin data demo`
    _run("robustness evaluation", [
        "eval", "--model", os.path.join(train_dir, "hf"), "--tasks", TASKS, "--data", glue,
        "--instructions", "generated:" + os.path.join(data, "heldout_templates.json"),
        "--n-examples", str(eval_examples), "--representation", "cola",
        "--representation-examples", str(eval_examples), "--out", eval_dir, "--no-progress"], log)

    artefacts = {
        "demo data": data,
        "contrastive training records": os.path.join(data, "train.pairs.jsonl"),
        "augmentation summary": os.path.join(data, "train.augmented.summary.json"),
        "TensorBoard logs": os.path.join(train_dir, "tensorboard"),
        "per-step metrics": os.path.join(train_dir, "metrics.jsonl"),
        "checkpoints": os.path.join(train_dir, "checkpoints"),
        "exported model": os.path.join(train_dir, "hf"),
        "evaluation report": os.path.join(eval_dir, "report.md"),
        "evaluation results": os.path.join(eval_dir, "results.json"),
        "plots": eval_dir,
    }
    missing = [f"{k}: {v}" for k, v in artefacts.items() if not os.path.exists(v)]
    summary = {"seconds": round(time.time() - t0, 1), "stages": log, "artefacts": artefacts}
    with open(os.path.join(out, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(f"\n==> done in {summary['seconds']:.0f} s. Artefacts:")
    for name, path in artefacts.items():
        print(f"  {name:30s} {path}")
    print(f"  {'this summary':30s} {os.path.join(out, 'demo_summary.json')}")
    print(f"\n  tensorboard --logdir {os.path.join(train_dir, 'tensorboard')}")
    if missing:
        raise CoinError("demo finished but artefacts are missing: " + "; ".join(missing))
    return 0
