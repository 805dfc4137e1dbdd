"""Writing the results: JSON, per-example predictions, a Markdown report and PNG plots.

`write_report(results, out_dir)` takes what `runner.evaluate_models` returns (or one model's
`runner.evaluate` result) and writes

    results.json          everything but per-example scores/outputs and projection points
                          (NaN written as null); reload with `load_results`
    predictions.jsonl     one line per (model, task, instruction, example): label, prediction,
                          and the label scores (likelihood) or the generated text (generate)
    representations.json  the 2-D projection points, when a representation analysis ran
    report.md             the tables (below) with the plots embedded
    accuracy_by_level.png mean accuracy and mean std per perturbation level, models side by side
    accuracy_by_task.png  accuracy per task and level (mean over instructions, error bar = std)
    representations.png   the projection plot (analysis.plot_representations)

and returns {kind: path}.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

from .analysis import LEVEL_COLOURS, plot_representations
from .runner import RESULTS_FORMAT
from .tasks import LEVELS

_HEAVY = ("scores", "outputs")


def _as_full(results: dict) -> dict:
    if "models" in results:
        return results
    return {"format": RESULTS_FORMAT, "settings": {}, "models": {results.get("model", "model"): results}}


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _fmt(x: Any, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def load_results(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def markdown_report(results: dict, plots: dict[str, str] | None = None) -> str:
    results = _as_full(results)
    models = results["models"]
    names = list(models)
    s = results.get("settings", {})
    lines = ["# Robustness to perturbed instructions", ""]
    if s:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in s.items()]
        lines.append("")
    lines += ["Accuracy (%) is the mean over instructions; std (points) is the population std over the",
              "instructions of a level, both averaged over tasks (the paper's Figure 3).", ""]
    levels = [lv for lv in LEVELS if any(lv in m["overall"]["by_level"] for m in models.values())]
    lines += ["## Overall", "", "| level | " + " | ".join(f"{n} acc | {n} std" for n in names) + " |",
              "|---|" + "---|---|" * len(names)]
    for lv in levels:
        cells = []
        for n in names:
            row = models[n]["overall"]["by_level"].get(lv, {})
            cells += [_fmt(row.get("accuracy")), _fmt(row.get("std"))]
        lines.append(f"| {lv} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        p = models[n]["overall"]["perturbed"]
        cells += [_fmt(p["accuracy"]), _fmt(p["std"])]
    lines.append("| **perturbed (mean of levels)** | " + " | ".join(cells) + " |")
    lines += ["", "Consistency (% of answers equal to the answer under the clean instruction; overall = pairwise",
              "agreement across all instructions):", "",
              "| level | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for lv in [lv for lv in levels if lv != "clean"] + ["overall"]:
        vals = []
        for n in names:
            c = models[n]["overall"]["consistency"]
            vals.append(_fmt(c["overall"] if lv == "overall" else c["agreement_with_clean"].get(lv)))
        lines.append(f"| {lv} | " + " | ".join(vals) + " |")
    lines.append("")
    if plots:
        for kind in ("accuracy_by_level", "accuracy_by_task", "representations"):
            if kind in plots:
                lines += [f"![{kind}]({os.path.basename(plots[kind])})", ""]

    lines += ["## Per attack", "", "| attack | " + " | ".join(f"{n} acc | {n} std" for n in names) + " |",
              "|---|" + "---|---|" * len(names)]
    attacks = []
    for m in models.values():
        attacks += [a for a in m["overall"]["by_attack"] if a not in attacks]
    for a in attacks:
        cells = []
        for n in names:
            row = models[n]["overall"]["by_attack"].get(a, {})
            cells += [_fmt(row.get("accuracy")), _fmt(row.get("std"))]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append("")

    tasks: list[str] = []
    for m in models.values():
        tasks += [t for t in m["tasks"] if t not in tasks]
    lines += ["## Per task", "", "Mean accuracy ± population std over instructions (%).", "",
              "| task | level | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t in tasks:
        for lv in levels:
            vals = []
            for n in names:
                row = models[n]["tasks"].get(t, {}).get("by_level", {}).get(lv)
                vals.append("-" if not row else f"{_fmt(row['mean'])} ± {_fmt(row['std'])}")
            lines.append(f"| {t} | {lv} | " + " | ".join(vals) + " |")
    lines.append("")

    failures = {n: sum(r.get("parse_failures", 0) for t in m["tasks"].values() for r in t["instructions"])
                for n, m in models.items()}
    lines += ["## Details", "", "| model | scoring | examples/s | parse failures | prompt template | path |",
              "|---|---|---|---|---|---|"]
    for n, m in models.items():
        pf = m.get("prompt_format") or {}
        template = json.dumps(pf.get("template", "")).replace("|", "\\|")
        lines.append(f"| {n} | {m.get('scoring', '')} | {_nan(m.get('examples_per_second')):.1f} | "
                     f"{failures[n]} | `{template}` ({pf.get('source', '')}) | `{m.get('path', '')}` |")
    lines.append("")
    reps = {n: m["representation"] for n, m in models.items() if m.get("representation")}
    if reps:
        lines += ["## Representations", "", "Mean cosine similarity of pooled last-token representations, clean vs "
                  "perturbed instruction (same example, same instruction index).", "",
                  "| model | task | " + " | ".join(lv for lv in LEVELS if lv != "clean") + " |",
                  "|---|---|" + "---|" * (len(LEVELS) - 1)]
        for n, r in reps.items():
            vals = [_fmt(r["mean_cosine"].get(lv), pct=False) for lv in LEVELS if lv != "clean"]
            lines.append(f"| {n} | {r['task']} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Instructions", "", "Accuracy (%) of each instruction, models in the order above.", ""]
    for t in tasks:
        acc = {n: {r["key"]: r["accuracy"] for r in models[n]["tasks"].get(t, {}).get("instructions", [])}
               for n in names}
        rows = next(models[n]["tasks"][t]["instructions"] for n in names if t in models[n]["tasks"])
        lines += [f"### {t}", "", "| instruction | accuracy | text |", "|---|---|---|"]
        for r in rows:
            text = r["text"].replace("|", "\\|").replace("\n", " ⏎ ")
            cell = " / ".join(_fmt(acc[n].get(r["key"])) for n in names)
            lines.append(f"| {r['key']} | {cell} | {text} |")
        lines.append("")
    return "\n".join(lines)


def plot_levels(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _as_full(results)
    models = results["models"]
    names = list(models)
    levels = [lv for lv in LEVELS if any(lv in m["overall"]["by_level"] for m in models.values())]
    width = 0.8 / max(1, len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, n in enumerate(names):
        acc = [100 * _nan(models[n]["overall"]["by_level"].get(lv, {}).get("accuracy")) for lv in levels]
        std = [100 * _nan(models[n]["overall"]["by_level"].get(lv, {}).get("std")) for lv in levels]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(levels))]
        ax1.bar(xs, acc, width, yerr=std, capsize=3, label=n)
        ax2.bar(xs, std, width, label=n)
    for ax, title in ((ax1, "accuracy (%), error bar = std"), (ax2, "std over instructions (points)")):
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tasks(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _as_full(results)
    models = results["models"]
    names = list(models)
    tasks: list[str] = []
    for m in models.values():
        tasks += [t for t in m["tasks"] if t not in tasks]
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    width = 0.8 / max(1, len(names))
    for ax, t in zip(axes.flat, tasks):
        levels = [lv for lv in LEVELS if any(lv in m["tasks"].get(t, {}).get("by_level", {}) for m in models.values())]
        for k, n in enumerate(names):
            bl = models[n]["tasks"].get(t, {}).get("by_level", {})
            acc = [100 * _nan(bl.get(lv, {}).get("mean")) for lv in levels]
            std = [100 * _nan(bl.get(lv, {}).get("std")) for lv in levels]
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(levels))]
            ax.bar(xs, acc, width, yerr=std, capsize=2, label=n,
                   color=None if len(names) > 1 else [LEVEL_COLOURS[lv] for lv in levels])
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels, fontsize=7)
        ax.set_title(t, fontsize=9)
        ax.set_ylim(0, 100)
        if len(names) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def write_report(results: dict, out_dir: str, *, plots: bool = True) -> dict[str, str]:
    """Write results.json, predictions.jsonl, report.md and the plots under out_dir; {kind: path}."""
    results = _as_full(results)
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    light = copy.deepcopy(results)
    projections: dict[str, dict] = {}
    with open(os.path.join(out_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
        for name, m in results["models"].items():
            for task, tr in m["tasks"].items():
                ids = tr.get("example_ids") or list(range(len(tr.get("labels", []))))
                for r in tr["instructions"]:
                    extra_key = next((k for k in _HEAVY if k in r), None)
                    for e, pred in enumerate(r["predictions"]):
                        rec = {"model": name, "task": task, "instruction": r["key"], "example": ids[e],
                               "label": tr["labels"][e], "prediction": pred}
                        if extra_key:
                            rec[extra_key[:-1]] = r[extra_key][e]
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    paths["predictions"] = os.path.join(out_dir, "predictions.jsonl")
    for name, m in light["models"].items():
        for tr in m["tasks"].values():
            for r in tr["instructions"]:
                for k in _HEAVY:
                    r.pop(k, None)
        rep = m.get("representation")
        if rep and "projection" in rep:
            projections[name] = rep.pop("projection")
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(_json_safe(light), f, indent=1, ensure_ascii=False)
        f.write("\n")
    paths["results"] = os.path.join(out_dir, "results.json")
    if projections:
        with open(os.path.join(out_dir, "representations.json"), "w", encoding="utf-8") as f:
            json.dump(_json_safe(projections), f)
        paths["representations_json"] = os.path.join(out_dir, "representations.json")
    plot_paths: dict[str, str] = {}
    if plots:
        plot_paths["accuracy_by_level"] = plot_levels(results, os.path.join(out_dir, "accuracy_by_level.png"))
        plot_paths["accuracy_by_task"] = plot_tasks(results, os.path.join(out_dir, "accuracy_by_task.png"))
        reps = {n: m.get("representation") for n, m in results["models"].items() if m.get("representation")}
        if reps:
            plot_paths["representations"] = plot_representations(reps, os.path.join(out_dir, "representations.png"))
    paths.update(plot_paths)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_report(light, plot_paths) + "\n")
    paths["report"] = os.path.join(out_dir, "report.md")
    return paths
