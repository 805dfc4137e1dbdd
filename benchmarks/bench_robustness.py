"""Does CoIN make a model more robust to reworded instructions? The experiment, on CPU.

The testbed (`coin data testbed`, docs/testbed.md): several yes/no tasks over the same inputs,
so only the instruction says which task is asked; many training phrasings per task, held-out
wordings for evaluation. Per seed: one testbed, one language-model pre-training of the tiny
LLaMA on the testbed's corpus (`coin pretrain`), then every arm from that same initialisation on
the same data (`coin train`, one process under DeepSpeed ZeRO-3; the jobs run two at a time, one
per core):

    sft            the generation loss on the original instructions only
    cit            continual instruction tuning, the paper's baseline: originals + paraphrases,
                   no contrastive term
    coin           CoIN with the paper's settings: adaptive w = min(lambda, L_gen / L_ctr), lambda 1000
    coin-gradnorm  CoIN with the contrastive gradient scaled to coin.grad_ratio x the generation
                   gradient at the final hidden states
    consistency    originals + paraphrases with a symmetric output-consistency term

Every arm is evaluated on the training phrasings (clean) and on the held-out wordings, clean and
under the seven attacks at the four levels, with calibrated label scoring. Reported per arm:
mean and std over seeds of the accuracy per level, the instruction std (the paper's Figure 3),
consistency, clean-vs-perturbed representation cosine, the largest answer share; per level the
paired difference CoIN - CIT with a bootstrap 95% interval over seeds and examples (eval/stats.py).

    python benchmarks/bench_robustness.py [--quick]      (or: coin bench robustness [--quick])

Writes benchmarks/results/robustness.json (the full run only) and the RESULTS.md section.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("COIN_BENCH_ROBUSTNESS_DIR", "runs/bench_robustness")  # relative: to the current directory
LEVELS = ["clean", "character", "word", "sentence", "semantic"]
BASELINE, METHOD = "cit", "coin"
ARMS = {
    "sft": ["coin.objective=sft"],
    "cit": ["coin.objective=cit"],
    "coin": ["coin.objective=coin", "coin.weighting=adaptive", "coin.max_weight=1000"],
    "coin-gradnorm": ["coin.objective=coin", "coin.weighting=gradnorm"],
    "consistency": ["coin.objective=consistency"],
}
ARM_TEXT = {
    "sft": "generation loss on the originals only",
    "cit": "continual instruction tuning, the paper's baseline (originals + paraphrases, no contrastive term)",
    "coin": "CoIN with the paper's weighting (adaptive, lambda 1000)",
    "coin-gradnorm": "CoIN with gradient-norm balancing (`coin.weighting: gradnorm`)",
    "consistency": "originals + paraphrases + the output-consistency term (`coin.objective: consistency`)",
}
# the full run; --quick keeps the code path and shrinks every size
FULL = {"seeds": [0, 1, 2], "arms": list(ARMS), "testbed": [], "pretrain_steps": 300, "steps": 400,
        "eval_examples": 32, "n_instructions": 0, "workers": 2}
QUICK = {"seeds": [0], "arms": ["cit", "coin"], "testbed": ["--train-per-task", "16", "--eval-per-task", "8"],
         "pretrain_steps": 10, "steps": 4, "eval_examples": 8, "n_instructions": 2, "workers": 2}


def _coin(*args: str, log: str | None = None) -> None:
    """`python -m coin ARGS` from the checkout's root (configs/testbed.yaml names its DeepSpeed
    config relative to it); with `log`, its output goes to that file (jobs run side by side)."""
    print("$ coin " + " ".join(args), file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "coin", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per job
    if log is None:
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        return
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        tail = open(log, encoding="utf-8", errors="replace").read()[-2000:]
        raise RuntimeError(f"coin {args[0]} exited {code}; its output: {log}\n{tail}")


def _jobs(jobs: dict, workers: int) -> dict:
    """Run {key: (args, log)} `workers` at a time; returns {key: seconds}. Raises after every job
    has ended if one failed."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        key, (args, log) = item
        t0 = time.time()
        _coin(*args, log=log)
        return key, time.time() - t0

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, jobs.items()))


def _eval_args(models: dict[str, str], data: str, instructions: str, out: str, plan: dict, attacks: str) -> list[str]:
    args = [a for name, path in models.items() for a in ("--model", path, "--model-name", name)]
    tasks = ",".join(t["name"] for t in json.load(open(os.path.join(data, "tasks.json"), encoding="utf-8")))
    return ["eval", *args, "--task-file", os.path.join(data, "tasks.json"), "--tasks", tasks,
            "--data", os.path.join(data, "eval"), "--instructions", instructions, "--attacks", attacks,
            "--n-examples", str(plan["eval_examples"]), "--n-instructions", str(plan["n_instructions"]),
            "--representation", "auto", "--representation-examples", str(plan["eval_examples"]),
            "--out", out, "--no-plots", "--no-progress"]


def read_eval(out: str) -> dict:
    """What one `coin eval --out OUT` wrote: its results.json and, per model and level, the
    correctness of every prediction with its cluster (task, example) for the paired bootstrap."""
    results = json.load(open(os.path.join(out, "results.json"), encoding="utf-8"))
    levels = {(m, t, r["key"]): r["level"] for m, mr in results["models"].items()
              for t, tr in mr["tasks"].items() for r in tr["instructions"]}
    units: dict[str, dict] = {}  # model -> level -> (correctness list, cluster id list)
    for line in open(os.path.join(out, "predictions.jsonl"), encoding="utf-8"):
        p = json.loads(line)
        level = levels[(p["model"], p["task"], p["instruction"])]
        c, ids = units.setdefault(p["model"], {}).setdefault(level, ([], []))
        c.append(int(p["prediction"] == p["label"]))
        ids.append((p["task"], str(p["example"])))
    return {"results": results, "units": units}


def _training(path: str) -> dict:
    """Means over the last 10% of the logged steps; the gradient norm (before clipping) over the run."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if '"kind": "train"' in line]
    tail = rows[-max(1, len(rows) // 10):]
    out = {}
    for key, rs in (("gen_loss", tail), ("ctr_loss", tail), ("ctr_weight", tail), ("cons_loss", tail),
                    ("gen_grad_norm", rows), ("ctr_grad_norm", rows), ("grad_norm", rows)):
        vals = [float(r[key]) for r in rs if r.get(key) is not None]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def _experiment(plan: dict, timings: dict, out: str) -> list[dict]:
    """Every seed's testbed, pre-training, arms and evaluations, `plan["workers"]` jobs at a time
    (each job one process on one core): returns one result per seed for `summarize`."""
    roots = {seed: os.path.join(out, f"seed{seed}") for seed in plan["seeds"]}
    data = {seed: os.path.join(root, "data") for seed, root in roots.items()}
    init = {seed: os.path.join(root, "init") for seed, root in roots.items()}
    for seed in plan["seeds"]:
        _coin("data", "testbed", data[seed], "--seed", str(seed), *plan["testbed"])
    took = _jobs({seed: (["pretrain", "--corpus", os.path.join(data[seed], "corpus.txt"), "--out", init[seed],
                          "--seed", str(seed), "--steps", str(plan["pretrain_steps"]), "--no-progress"],
                         os.path.join(roots[seed], "logs", "pretrain.log")) for seed in plan["seeds"]}, plan["workers"])
    timings["pretrain"] = list(took.values())
    config = os.path.join(REPO, "configs", "testbed.yaml")
    took = _jobs({(seed, arm): (["train", "--config", config, "--nproc", "1", f"model.name_or_path={init[seed]}",
                                 f"data.train={data[seed]}/train.pairs.jsonl", f"output.dir={roots[seed]}/{arm}",
                                 "output.resume=never", f"optim.seed={seed}", f"optim.max_steps={plan['steps']}",
                                 f"output.save_every={plan['steps']}", "logging.progress_bar=false", *ARMS[arm]],
                                os.path.join(roots[seed], "logs", f"train-{arm}.log"))
                  for seed in plan["seeds"] for arm in plan["arms"]}, plan["workers"])
    for (_, arm), seconds in took.items():
        timings.setdefault(arm, []).append(seconds)
    instructions = {"train": ("instructions.train.json", "clean"), "heldout": ("instructions.heldout.json", "all")}
    evals = {(seed, split): (_eval_args({arm: f"{roots[seed]}/{arm}/hf" for arm in plan["arms"]}, data[seed],
                                        "generated:" + os.path.join(data[seed], file), f"{roots[seed]}/eval_{split}",
                                        plan, attacks), os.path.join(roots[seed], "logs", f"eval-{split}.log"))
             for seed in plan["seeds"] for split, (file, attacks) in instructions.items()}
    took = _jobs(evals, plan["workers"])
    timings["eval"] = [took[(seed, "train")] + took[(seed, "heldout")] for seed in plan["seeds"]]
    return [{"trained": read_eval(f"{roots[seed]}/eval_train"), "heldout": read_eval(f"{roots[seed]}/eval_heldout"),
             "training": {arm: _training(f"{roots[seed]}/{arm}/metrics.jsonl") for arm in plan["arms"]}}
            for seed in plan["seeds"]]


def _ms(values: list[float]) -> dict:
    """Mean and sample std (over seeds) of figures in [0, 1], in percent."""
    vals = [100 * v for v in values]
    return {"mean": sum(vals) / len(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def summarize(runs: list[dict], arms: list[str]) -> dict:
    from coin.eval.stats import cluster_differences, paired_bootstrap

    out: dict = {"arms": {}}
    for arm in arms:
        held = [r["heldout"]["results"]["models"][arm]["overall"] for r in runs]
        train = [r["trained"]["results"]["models"][arm]["overall"] for r in runs]
        reps = [r["heldout"]["results"]["models"][arm].get("representation") or {} for r in runs]
        levels, detail = {}, {}
        for lv in LEVELS:
            acc = _ms([o["by_level"][lv]["accuracy"] for o in held])
            levels[lv] = {"acc_mean": acc["mean"], "acc_std": acc["std"]}
            cons = [o["consistency"]["agreement_with_clean"].get(lv, 1.0) for o in held]  # clean agrees with itself
            cos = [rp.get("mean_cosine", {}).get(lv) for rp in reps]
            detail[lv] = {"instruction_std": _ms([o["by_level"][lv]["std"] for o in held])["mean"],
                          "consistency": _ms(cons)["mean"],
                          "rep_cosine": (sum(cos) / len(cos)) if all(c is not None for c in cos) else None}
        tr = _ms([o["by_level"]["clean"]["accuracy"] for o in train])
        tr["per_seed"] = [100 * o["by_level"]["clean"]["accuracy"] for o in train]
        out["arms"][arm] = {
            "seeds": len(runs), "levels": levels,
            "max_answer_share": 100 * max(max(o["max_answer_share"] for o in held), max(o["max_answer_share"] for o in train)),
            "training_phrasings": {"acc_mean": tr["mean"], "acc_std": tr["std"], "per_seed": tr["per_seed"]},
            "heldout_mean": sum(levels[lv]["acc_mean"] for lv in LEVELS) / len(LEVELS),
            "detail": detail,
            "training": {k: sum(r["training"][arm].get(k, 0.0) for r in runs) / len(runs)
                         for k in runs[0]["training"][arm]},
        }
    base = out["arms"].get(BASELINE)
    out["baseline"] = BASELINE
    out["sft_gap_points"] = base["training_phrasings"]["acc_mean"] - base["heldout_mean"] if base else None
    out["majority_acc"] = _ms([r["heldout"]["results"]["models"][arms[0]]["overall"]["majority_accuracy"] for r in runs])["mean"]
    out["majority_acc_training_phrasings"] = _ms(
        [r["trained"]["results"]["models"][arms[0]]["overall"]["majority_accuracy"] for r in runs])["mean"]
    out["coin_minus_baseline"] = {}
    for method in [a for a in arms if a != BASELINE]:
        if BASELINE not in arms:
            break
        diffs = {}
        for lv in LEVELS:
            per_seed = []
            for r in runs:
                (ca, ids), (cb, ids_b) = r["heldout"]["units"][method][lv], r["heldout"]["units"][BASELINE][lv]
                if ids != ids_b:
                    raise RuntimeError(f"level {lv}: {method} and {BASELINE} were scored on different examples")
                per_seed.append(cluster_differences(ca, cb, ids))
            b = paired_bootstrap(per_seed, n_boot=2000, seed=0)
            diffs[lv] = {"mean": 100 * b["mean"], "ci95": [100 * b["ci95"][0], 100 * b["ci95"][1]]}
        if method == METHOD:
            out["coin_minus_baseline"] = diffs
        out.setdefault("minus_baseline", {})[method] = diffs
    return out


def _f(x, digits: int = 1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def section(summary: dict, meta: dict) -> str:
    arms = list(summary["arms"])
    a = summary["arms"]
    t = meta["timings"]
    lines = [
        "## The robustness experiment: CoIN against its baselines on the instruction testbed (tiny LLaMA, CPU)",
        "",
        f"Command: `{meta['command']}`; {meta['machine']}; {meta['minutes']:.1f} min in all "
        f"(per seed and job: pre-training {statistics.mean(t['pretrain']):.0f} s, "
        + ", ".join(f"{n} {statistics.mean(t[n]):.0f} s" for n in arms)
        + f", evaluation {statistics.mean(t['eval']):.0f} s). Seeds {meta['plan']['seeds']}; per seed one testbed and "
        f"one pre-trained initialisation shared by every arm; {meta['plan']['steps']} optimiser steps per arm "
        f"(configs/testbed.yaml: one process under ZeRO-3; {meta['plan']['workers']} jobs at a time, one core each, "
        "so each job's time above is measured beside another). Arms: " + "; ".join(f"`{n}` = {ARM_TEXT[n]}" for n in arms) + ".",
        "",
        "Accuracy (%), mean ± std over seeds; *training* = the training phrasings, clean; the other columns are the "
        "held-out wordings, clean and under the attacks of each level (calibrated label scoring). "
        f"Majority class: {summary['majority_acc']:.1f}% (held-out subset), "
        f"{summary['majority_acc_training_phrasings']:.1f}% (training phrasings).",
        "",
        "| arm | training | " + " | ".join(LEVELS) + " | held-out mean | max answer share |",
        "|---|" + "---:|" * (len(LEVELS) + 3),
    ]
    for n in arms:
        lv = a[n]["levels"]
        lines.append(f"| {n} | {_f(a[n]['training_phrasings']['acc_mean'])} ± {_f(a[n]['training_phrasings']['acc_std'])} | "
                     + " | ".join(f"{_f(lv[x]['acc_mean'])} ± {_f(lv[x]['acc_std'])}" for x in LEVELS)
                     + f" | {_f(a[n]['heldout_mean'])} | {_f(a[n]['max_answer_share'])}"
                     + (" (collapsed)" if a[n]["max_answer_share"] > 95 else "") + " |")
    lines += ["", "Instruction std (points, mean over seeds; the paper's Figure 3), consistency with the clean answer (%), "
              "and clean-vs-perturbed representation cosine, per held-out level:", "",
              "| arm | " + " | ".join(f"{x} std / cons / cos" for x in LEVELS) + " |", "|---|" + "---:|" * len(LEVELS)]
    for n in arms:
        d = a[n]["detail"]
        lines.append(f"| {n} | " + " | ".join(
            f"{_f(d[x]['instruction_std'])} / {_f(d[x]['consistency'])} / {_f(d[x]['rep_cosine'], 3)}" for x in LEVELS) + " |")
    if summary.get("minus_baseline"):
        lines += ["", f"Paired difference against `{BASELINE}` (points; mean over seeds, bootstrap 95% interval over "
                  "seeds and examples):", "", "| arm | " + " | ".join(LEVELS) + " |", "|---|" + "---:|" * len(LEVELS)]
        for n, diffs in summary["minus_baseline"].items():
            lines.append(f"| {n} - {BASELINE} | " + " | ".join(
                f"{diffs[x]['mean']:+.1f} [{diffs[x]['ci95'][0]:+.1f}, {diffs[x]['ci95'][1]:+.1f}]" for x in LEVELS) + " |")
    lines += ["", "Training (means over seeds; losses over the last 10% of steps, gradient norms over the run):", "",
              "| arm | gen loss | ctr loss | w | gen grad norm | ctr grad norm | grad norm |", "|---|" + "---:|" * 6]
    for n in arms:
        tr = a[n]["training"]
        lines.append(f"| {n} | " + " | ".join(_f(tr.get(k), 3) for k in
                                              ("gen_loss", "ctr_loss", "ctr_weight", "gen_grad_norm", "ctr_grad_norm", "grad_norm")) + " |")
    return "\n".join(lines + ["", "Discussion (generated from the figures above; what they mean for the method and "
                               "what to set for a 7B run: docs/testbed.md, *The experiment*):", ""]
                      + discussion(summary)) + "\n"


def discussion(summary: dict) -> list[str]:
    a = summary["arms"]
    out = []
    base = a.get(BASELINE)
    if base:
        gap = summary["sft_gap_points"]
        out.append(f"- The weakness CoIN targets is {'present' if gap >= 10 else 'weak'} here: the baseline `{BASELINE}` scores "
                   f"{base['training_phrasings']['acc_mean']:.1f}% on the training phrasings and {base['heldout_mean']:.1f}% "
                   f"on the held-out wordings (mean of the five levels), a gap of {gap:.1f} points, against a majority "
                   f"class of {summary['majority_acc_training_phrasings']:.1f}%.")
    for n, diffs in summary.get("minus_baseline", {}).items():
        sig_up = [lv for lv in LEVELS if diffs[lv]["ci95"][0] > 0]
        sig_down = [lv for lv in LEVELS if diffs[lv]["ci95"][1] < 0]
        mean = sum(diffs[lv]["mean"] for lv in LEVELS) / len(LEVELS)
        verdict = ("better than the baseline at " + ", ".join(sig_up) if sig_up else "not significantly better at any level")
        if sig_down:
            verdict += "; worse at " + ", ".join(sig_down)
        out.append(f"- `{n}` vs `{BASELINE}`: {mean:+.1f} points on average over the levels; {verdict} "
                   "(95% intervals that exclude 0).")
    spread = base["training_phrasings"].get("per_seed", []) if base else []
    if spread and max(spread) - min(spread) > 10:
        out.append(f"- The baseline's accuracy on its own training phrasings ranges from {min(spread):.1f}% to "
                   f"{max(spread):.1f}% over the seeds: the seed moves accuracy as much as the choice of arm does, "
                   "so only the paired intervals (every arm of a seed shares its data and initialisation) separate arms.")
    collapsed = [n for n, arm in a.items() if arm["max_answer_share"] > 95]
    if collapsed:
        out.append("- " + ", ".join(f"`{n}`" for n in collapsed) + " give one answer to more than 95% of the examples "
                   "of at least one (task, instruction): accuracy there is not evidence of robustness.")
    return out


def run(quick: bool = False, out: str | None = None) -> str:
    import platform

    plan = QUICK if quick else FULL
    out = os.path.abspath(out or OUT)
    t0 = time.time()
    timings: dict = {}
    runs = _experiment(plan, timings, out)
    summary = summarize(runs, plan["arms"])
    meta = {"command": "coin bench robustness" + (" --quick" if quick else ""), "plan": plan, "timings": timings,
            "minutes": (time.time() - t0) / 60, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    os.makedirs(out, exist_ok=True)
    record = dict(summary, meta=meta)
    paths = [os.path.join(out, "robustness.json")]
    if not quick:  # the recorded figures come from the full run only
        paths.append(os.path.join(REPO, "benchmarks", "results", "robustness.json"))
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.replace(path + ".tmp", path)
    return section(summary, meta)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
