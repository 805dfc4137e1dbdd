"""Accuracy, its spread over instructions, answer consistency, and the figures that tell a
collapsed model from a robust one.

Per task:
* per instruction (task x attack x index): accuracy = correct / examples; parse failures (-1,
  generation only) are not correct and are counted apart (`parse_failures`, and per level in
  `parse_failure_rates`), so the report can show them as their own category;
* per attack and per perturbation level: the mean and the *population* std (ddof 0) of the
  instruction accuracies (a level pools the instructions of both its attacks), as the paper;
* consistency, three views of "do answers to the same example agree across instruction variants":
    agreement_with_clean[level]  fraction of (example, variant) pairs where the variant's answer
                                 equals the answer under the clean instruction it was derived from;
    pairwise[level]              mean over examples of the fraction of agreeing pairs among the
                                 level's instructions (clean included as a level);
    overall                      the same over all instructions of the task (the headline score).
  A parse failure agrees with nothing;
* degenerate answers: `majority_accuracy`, the accuracy of always answering the most frequent
  label of the evaluated subset; per instruction `answer_share`, the share of the examples that
  get its most frequent answer (`most_frequent_answer`; a parse failure counts as one answer,
  -1), `collapsed` when it exceeds COLLAPSE_SHARE; `max_answer_share` over the instructions.
  A constant model scores exactly `majority_accuracy` at best, with std 0 and consistency 1:
  these figures are what tells it from a robust one.

Per model, `overall` averages over tasks: for each level the mean accuracy and the mean std (the
paper's Figure 3 bars and error bars), the same per attack, `perturbed` = the average of the
perturbed levels present, the mean parse-failure rate per level, `majority_accuracy` (mean over
tasks), `max_answer_share` (max over tasks) and `collapsed`, every [task, instruction key]
whose answer share exceeds COLLAPSE_SHARE.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Mapping, Sequence

from .tasks import ATTACKS, LEVELS

COLLAPSE_SHARE = 0.95  # an instruction whose most frequent answer exceeds this share is flagged


def mean_std(values: Sequence[float]) -> dict:
    """{'mean', 'std' (population), 'n'}; empty -> NaNs and n = 0."""
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    m = sum(values) / n
    return {"mean": m, "std": math.sqrt(sum((v - m) ** 2 for v in values) / n), "n": n}


def _pairwise(columns: Sequence[Sequence[int]]) -> float:
    """Mean over examples of the fraction of agreeing pairs among the columns' answers."""
    m = len(columns)
    if m < 2:
        return math.nan
    n = len(columns[0])
    total = 0.0
    pairs = m * (m - 1) / 2
    for e in range(n):
        counts = Counter(col[e] for col in columns if col[e] >= 0)
        total += sum(c * (c - 1) / 2 for c in counts.values()) / pairs
    return total / n if n else math.nan


def summarize_task(rows: Sequence[dict], labels: Sequence[int]) -> dict:
    """rows: one dict per instruction with key, attack, level, index, predictions (per example)."""
    out_rows = []
    for r in rows:
        preds = r["predictions"]
        correct = sum(int(p == y) for p, y in zip(preds, labels))
        answer, count = Counter(preds).most_common(1)[0] if preds else (None, 0)
        share = count / len(preds) if preds else math.nan
        row = dict(r)
        row.update(correct=correct, n=len(labels), accuracy=correct / len(labels) if labels else math.nan,
                   parse_failures=sum(1 for p in preds if p < 0), answer_share=share, most_frequent_answer=answer,
                   collapsed=bool(share > COLLAPSE_SHARE))
        out_rows.append(row)
    by_attack = {a: mean_std([r["accuracy"] for r in out_rows if r["attack"] == a])
                 for a in ("clean",) + ATTACKS if any(r["attack"] == a for r in out_rows)}
    by_level = {lv: mean_std([r["accuracy"] for r in out_rows if r["level"] == lv])
                for lv in LEVELS if any(r["level"] == lv for r in out_rows)}
    clean = {r["index"]: r["predictions"] for r in out_rows if r["attack"] == "clean"}
    agree_level: dict[str, list[float]] = {}
    agree_attack: dict[str, list[float]] = {}
    for r in out_rows:
        if r["attack"] == "clean" or r["index"] not in clean:
            continue
        ref = clean[r["index"]]
        same = [int(p == q and p >= 0) for p, q in zip(r["predictions"], ref)]
        agree_level.setdefault(r["level"], []).extend(same)
        agree_attack.setdefault(r["attack"], []).extend(same)
    consistency = {
        "agreement_with_clean": {k: sum(v) / len(v) for k, v in agree_level.items() if v},
        "agreement_with_clean_by_attack": {k: sum(v) / len(v) for k, v in agree_attack.items() if v},
        "pairwise": {lv: _pairwise([r["predictions"] for r in out_rows if r["level"] == lv]) for lv in by_level},
        "overall": _pairwise([r["predictions"] for r in out_rows]),
    }
    failures = {lv: _rate([r for r in out_rows if r["level"] == lv]) for lv in by_level}
    return {
        "instructions": out_rows, "by_attack": by_attack, "by_level": by_level, "consistency": consistency,
        "majority_accuracy": Counter(labels).most_common(1)[0][1] / len(labels) if labels else math.nan,
        "max_answer_share": max((r["answer_share"] for r in out_rows), default=math.nan),
        "parse_failure_rates": {"by_level": failures, "overall": _rate(out_rows)},
    }


def _rate(rows: Sequence[dict]) -> float:
    """Parse failures per answer over the rows."""
    n = sum(r["n"] for r in rows)
    return sum(r["parse_failures"] for r in rows) / n if n else math.nan


def _avg(values: Sequence[float]) -> float:
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def summarize_model(tasks: Mapping[str, dict]) -> dict:
    """Averages over tasks of the per-task level/attack means and stds, and of consistency."""
    levels = [lv for lv in LEVELS if any(lv in t["by_level"] for t in tasks.values())]
    attacks = [a for a in ("clean",) + ATTACKS if any(a in t["by_attack"] for t in tasks.values())]

    def table(key: str, names: Sequence[str]) -> dict:
        out = {}
        for name in names:
            have = [t[key][name] for t in tasks.values() if name in t[key]]
            out[name] = {"accuracy": _avg([h["mean"] for h in have]), "std": _avg([h["std"] for h in have]),
                         "n_tasks": len(have)}
        return out

    by_level = table("by_level", levels)
    perturbed = [by_level[lv] for lv in levels if lv != "clean"]
    return {
        "by_level": by_level,
        "by_attack": table("by_attack", attacks),
        "perturbed": {"accuracy": _avg([p["accuracy"] for p in perturbed]), "std": _avg([p["std"] for p in perturbed])},
        "consistency": {
            "agreement_with_clean": {lv: _avg([t["consistency"]["agreement_with_clean"].get(lv, math.nan)
                                               for t in tasks.values()]) for lv in levels if lv != "clean"},
            "overall": _avg([t["consistency"]["overall"] for t in tasks.values()]),
        },
        "parse_failure_rates": {lv: _avg([t["parse_failure_rates"]["by_level"][lv] for t in tasks.values()
                                          if lv in t["parse_failure_rates"]["by_level"]]) for lv in levels},
        "majority_accuracy": _avg([t["majority_accuracy"] for t in tasks.values()]),
        "max_answer_share": max((t["max_answer_share"] for t in tasks.values()), default=math.nan),
        "collapsed": [[name, r["key"]] for name, t in tasks.items() for r in t["instructions"] if r["collapsed"]],
    }
