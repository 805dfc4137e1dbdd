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

and returns {kind: path}. `summary_text(results)` is what `coin eval` prints. Every report
gives, per task, the majority-class accuracy of the evaluated subset and the largest share of one
answer under one instruction, flagged above metrics.COLLAPSE_SHARE, so that a model answering
the same label everywhere cannot pass for a robust one; parse failures (generation) are their
own category, in the tables and as a hatched segment on top of the accuracy bars.
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections import Counter
from typing import Any

from .analysis import plot_representations
from .metrics import COLLAPSE_SHARE
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
    lines += _answers_section(models, names)
    lines += _parse_failure_section(models, names, levels)
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
        share = {n: {r["key"]: r.get("answer_share") for r in models[n]["tasks"].get(t, {}).get("instructions", [])}
                 for n in names}
        rows = next(models[n]["tasks"][t]["instructions"] for n in names if t in models[n]["tasks"])
        lines += [f"### {t}", "", "| instruction | accuracy | answer share | text |", "|---|---|---|---|"]
        for r in rows:
            text = r["text"].replace("|", "\\|").replace("\n", " ⏎ ")
            cell = " / ".join(_fmt(acc[n].get(r["key"])) for n in names)
            shares = " / ".join(_share(share[n].get(r["key"])) for n in names)
            lines.append(f"| {r['key']} | {cell} | {shares} | {text} |")
        lines.append("")
    return "\n".join(lines)


def _share(x: Any) -> str:
    """An answer share in percent, flagged when it exceeds COLLAPSE_SHARE."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" + (" ⚠" if x > COLLAPSE_SHARE else "")


def _answer_name(m: dict, task: str, answer: Any) -> str:
    words = m["tasks"][task].get("label_words") or []
    if answer == -1:
        return "unparsed"
    return words[answer] if isinstance(answer, int) and 0 <= answer < len(words) else str(answer)


def _answers_section(models: dict, names: list[str]) -> list[str]:
    lines = ["## Majority class and answer shares", "",
             "Majority class: the accuracy of always answering the most frequent label of the evaluated examples.",
             "Max answer share: the largest share of the examples given one same answer under one instruction;",
             f"⚠ above {100 * COLLAPSE_SHARE:.0f}%: under that instruction the model answers (nearly) the same "
             f"whatever the input.", "",
             "| task | majority class | " + " | ".join(f"{n} clean acc | {n} max answer share" for n in names) + " |",
             "|---|---|" + "---|---|" * len(names)]
    tasks: list[str] = []
    for m in models.values():
        tasks += [t for t in m["tasks"] if t not in tasks]
    for t in tasks:
        majority = next((models[n]["tasks"][t].get("majority_accuracy") for n in names if t in models[n]["tasks"]), None)
        cells = []
        for n in names:
            tr = models[n]["tasks"].get(t, {})
            cells += [_fmt(tr.get("by_level", {}).get("clean", {}).get("mean")), _share(tr.get("max_answer_share"))]
        lines.append(f"| {t} | {_fmt(majority)} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        o = models[n]["overall"]
        cells += [_fmt(o["by_level"].get("clean", {}).get("accuracy")), _share(o.get("max_answer_share"))]
    first = models[names[0]]["overall"].get("majority_accuracy") if names else None
    lines += [f"| **mean / max** | {_fmt(first)} | " + " | ".join(cells) + " |", ""]
    for n in names:
        collapsed = models[n]["overall"].get("collapsed") or []
        if not collapsed:
            continue
        per_task = []
        for t in dict.fromkeys(t for t, _ in collapsed):
            rows = [r for r in models[n]["tasks"][t]["instructions"] if r.get("collapsed")]
            answers = Counter(_answer_name(models[n], t, r["most_frequent_answer"]) for r in rows)
            per_task.append(f"{t} {len(rows)} of {len(models[n]['tasks'][t]['instructions'])} (answer "
                            + ", ".join(f"'{a}'" for a, _ in answers.most_common()) + ")")
        total = sum(len(tr["instructions"]) for tr in models[n]["tasks"].values())
        lines += [f"⚠ **{n}**: {len(collapsed)} of {total} instructions give one answer to more than "
                  f"{100 * COLLAPSE_SHARE:.0f}% of the examples: " + "; ".join(per_task) + ".", ""]
    return lines


def _parse_failure_section(models: dict, names: list[str], levels: list[str]) -> list[str]:
    rates = {n: models[n]["overall"].get("parse_failure_rates") or {} for n in names}
    if not any((v or 0) > 0 for r in rates.values() for v in r.values()):
        return []
    lines = ["## Parse failures", "", "Generated answers that name no label (% of answers; not counted as correct, "
             "shown hatched on top of the accuracy bars):", "",
             "| level | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for lv in levels:
        lines.append(f"| {lv} | " + " | ".join(_fmt(rates[n].get(lv)) for n in names) + " |")
    return lines + [""]


def summary_text(results: dict) -> str:
    """What `coin eval` prints: per model the headline figures, then per task clean and perturbed
    accuracy, the majority class and the max answer share (flagged)."""
    results = _as_full(results)
    lines = []
    for name, m in results["models"].items():
        o = m["overall"]
        clean = o["by_level"].get("clean", {}).get("accuracy")
        p = o["perturbed"]
        perturbed = "no perturbed instructions" if p.get("accuracy") is None or math.isnan(_nan(p["accuracy"])) else \
            f"perturbed {_fmt(p['accuracy'])}% (std {_fmt(p['std'])})"
        failures = sum(r.get("parse_failures", 0) for t in m["tasks"].values() for r in t["instructions"])
        answers = sum(r.get("n", 0) for t in m["tasks"].values() for r in t["instructions"])
        collapsed = o.get("collapsed") or []
        line = (f"  {name}: clean {_fmt(clean)}%, {perturbed}, consistency {_fmt(o['consistency']['overall'])}%; "
                f"majority class {_fmt(o.get('majority_accuracy'))}%, max answer share {_fmt(o.get('max_answer_share'))}%")
        if collapsed:
            line += f" ⚠ {len(collapsed)} instructions give one answer to > {100 * COLLAPSE_SHARE:.0f}% of the examples"
        if failures:
            line += f"; unparsed {100 * failures / max(answers, 1):.1f}% of answers"
        lines.append(line)
        lines.append(f"    {'(%)':16s} {'clean':>7s} {'perturbed':>9s} {'majority':>8s} {'max answer share':>18s}")
        for t, tr in m["tasks"].items():
            levels = tr["by_level"]
            pert = [v["mean"] for lv, v in levels.items() if lv != "clean"]
            lines.append(f"    {t:16s} {_fmt(levels.get('clean', {}).get('mean')):>7s} "
                         f"{_fmt(sum(pert) / len(pert) if pert else None):>9s} {_fmt(tr.get('majority_accuracy')):>8s} "
                         f"{_share(tr.get('max_answer_share')):>18s}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _model_colours(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _bars(ax, xs, acc, std, fail, width, colour, label):
    """Accuracy bars (%) with std error bars clipped to [0, 100] and, when given, the parse-failure
    share as a hatched grey segment stacked on top."""
    lower = [min(s, a) for a, s in zip(acc, std)]
    upper = [min(s, 100 - a) for a, s in zip(acc, std)]
    ax.bar(xs, acc, width, color=colour, label=label, yerr=[lower, upper], capsize=3,
           error_kw={"elinewidth": 1, "ecolor": "#333333"}, zorder=2)
    if any(f > 0 for f in fail):
        ax.bar(xs, fail, width, bottom=acc, color="#dddddd", edgecolor="#777777", hatch="///", linewidth=0.5,
               zorder=2)


def _legend(fig, handles_labels: dict, parse_failures: bool, majority: bool) -> None:
    """One legend for the figure, above the panels (never over the data)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, labels = list(handles_labels.values()), list(handles_labels)
    if majority:
        handles.append(Line2D([], [], color="#444444", linestyle="--", linewidth=1.2))
        labels.append("majority class")
    if parse_failures:
        handles.append(Patch(facecolor="#dddddd", edgecolor="#777777", hatch="///"))
        labels.append("parse failures")
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False, fontsize=10,
               bbox_to_anchor=(0.5, 1.0))


def _level_values(by_level: dict, failures: dict, levels: list[str], acc_key: str):
    acc = [100 * _nan(by_level.get(lv, {}).get(acc_key)) for lv in levels]
    std = [100 * _nan(by_level.get(lv, {}).get("std")) for lv in levels]
    fail = [100 * _nan(failures.get(lv, 0.0)) for lv in levels]
    return ([0.0 if math.isnan(a) else a for a in acc], [0.0 if math.isnan(v) else v for v in std],
            [0.0 if math.isnan(f) else f for f in fail])


def plot_levels(results: dict, path: str) -> str:
    """Left: mean accuracy per level (error bar = mean std over instructions), models side by side,
    the majority-class accuracy dashed; right: the std itself, from 0."""
    plt = _pyplot()
    results = _as_full(results)
    models = results["models"]
    names = list(models)
    colours = _model_colours(names)
    levels = [lv for lv in LEVELS if any(lv in m["overall"]["by_level"] for m in models.values())]
    width = 0.8 / max(1, len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    handles, any_fail = {}, False
    for k, n in enumerate(names):
        o = models[n]["overall"]
        acc, std, fail = _level_values(o["by_level"], o.get("parse_failure_rates") or {}, levels, "accuracy")
        any_fail |= any(f > 0 for f in fail)
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(levels))]
        _bars(ax1, xs, acc, std, fail, width, colours[n], n)
        ax2.bar(xs, std, width, color=colours[n], zorder=2)
        handles[n] = plt.Rectangle((0, 0), 1, 1, color=colours[n])
    majority = next((m["overall"].get("majority_accuracy") for m in models.values()), None)
    if majority is not None and not math.isnan(_nan(majority)):
        ax1.axhline(100 * majority, color="#444444", linestyle="--", linewidth=1.2, zorder=3)
    ax1.set_ylim(0, 100)
    ax1.set_ylabel("accuracy (%), mean over tasks", fontsize=11)
    ax1.set_title("accuracy (error bar: std over instructions)", fontsize=11)
    ax2.set_ylim(bottom=0, top=max(1.0, ax2.get_ylim()[1]))
    ax2.set_ylabel("std over instructions (points)", fontsize=11)
    ax2.set_title("spread over instructions (lower is more robust)", fontsize=11)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels, fontsize=10)
        ax.set_xlabel("perturbation level of the instruction", fontsize=11)
        ax.tick_params(axis="y", labelsize=10)
        ax.grid(axis="y", color="#e5e5e5", zorder=0)
    _legend(fig, handles, any_fail, majority is not None)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_tasks(results: dict, path: str) -> str:
    """One panel per task (three per row): accuracy per level, models side by side, error bar =
    std over instructions, the task's majority-class accuracy dashed, parse failures hatched."""
    plt = _pyplot()
    results = _as_full(results)
    models = results["models"]
    names = list(models)
    colours = _model_colours(names)
    tasks: list[str] = []
    for m in models.values():
        tasks += [t for t in m["tasks"] if t not in tasks]
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows + 0.7), squeeze=False)
    width = 0.8 / max(1, len(names))
    handles, any_fail = {}, False
    for j, (ax, t) in enumerate(zip(axes.flat, tasks)):
        levels = [lv for lv in LEVELS if any(lv in m["tasks"].get(t, {}).get("by_level", {}) for m in models.values())]
        majority = None
        for k, n in enumerate(names):
            tr = models[n]["tasks"].get(t)
            if tr is None:
                continue
            majority = tr.get("majority_accuracy", majority)
            acc, std, fail = _level_values(tr["by_level"], (tr.get("parse_failure_rates") or {}).get("by_level", {}),
                                           levels, "mean")
            any_fail |= any(f > 0 for f in fail)
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(levels))]
            _bars(ax, xs, acc, std, fail, width, colours[n], n)
            handles[n] = plt.Rectangle((0, 0), 1, 1, color=colours[n])
        if majority is not None and not math.isnan(_nan(majority)):
            ax.axhline(100 * majority, color="#444444", linestyle="--", linewidth=1.2, zorder=3)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels, fontsize=9, rotation=20)
        ax.set_title(t + ("" if majority is None else f"  (majority class {100 * majority:.0f}%)"), fontsize=11)
        ax.set_ylim(0, 100)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="y", color="#e5e5e5", zorder=0)
        if j % cols == 0:
            ax.set_ylabel("accuracy (%)", fontsize=10)
        if j >= len(tasks) - cols:
            ax.set_xlabel("perturbation level", fontsize=10)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    _legend(fig, handles, any_fail, True)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
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
