"""`coin pairs`: contrastive records with hard-negative groups.

    coin pairs INPUT --output FILE [--group-by auto|keep|template|instruction|task] [--min-group-size K]

INPUT holds instruction records with paraphrases (the output of `coin augment`) or contrastive
records. Every record becomes a contrastive record (`coin.contrastive/1`): the positive of an
example is its paraphrase; its hard negatives are the other records of its `group`, i.e. the
examples that share its instruction (same template, or same instruction text), as CoIN defines
them. Group ids, by `--group-by`:

    template     "<task>/t<template_id>"          records need a template_id
    instruction  "<task>/i<hash>"                  hash of the instruction without the input: the
                                                   bare instruction when `input` is separate, the
                                                   template skeleton when `fields` are known, else
                                                   the whole instruction (then groups are rare)
    task         "<task>"                          every record of a task negatives of each other
    keep         the records' own `group`          (e.g. imported from the CoIN CSV)
    auto         keep when a record has a group, else template when it has a template_id,
                 else instruction

Records without any paraphrase and records of groups smaller than `--min-group-size` are left
out and counted; the order of the rest is kept. A summary (per task: records in/out, dropped,
groups, groups of one) is printed and written next to the output.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
from collections import Counter, defaultdict

from coin.errors import CoinError

from .atomic import write_json
from .readers import read_records, summary_path, write_records
from .schema import CONTRASTIVE, SCHEMA_TAGS
from .summary import Counts
from .templates import skeleton

GROUP_MODES = ("auto", "keep", "template", "instruction", "task")
SUMMARY_SCHEMA = "coin.pairs-summary/1"
TABLE_COLUMNS = [("records_in", "in"), ("records_out", "out"), ("no_paraphrase", "no_para"),
                 ("small_group", "small_group"), ("groups", "groups"), ("singleton_groups", "singletons")]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=5).hexdigest()


def instruction_key(record: dict) -> str:
    """The instruction of a record without its input (see the module doc)."""
    if record.get("input"):
        return record["instruction"]
    fields = {k: v for k, v in (record.get("fields") or {}).items() if v and v.strip() != record["output"].strip()}
    return skeleton(record["instruction"], fields) if fields else record["instruction"]


def group_of(record: dict, mode: str) -> str:
    task = record["task"]
    if mode == "auto":
        if record.get("group"):
            return record["group"]
        mode = "template" if record.get("template_id") is not None else "instruction"
    if mode == "keep":
        if not record.get("group"):
            raise CoinError(f"record '{record['id']}': --group-by keep needs a 'group' field")
        return record["group"]
    if mode == "template":
        if record.get("template_id") is None:
            raise CoinError(f"record '{record['id']}': field 'template_id' is missing (needed by --group-by template; "
                            f"use --group-by auto or instruction)")
        return f"{task}/t{record['template_id']}"
    if mode == "instruction":
        return f"{task}/i{_digest(instruction_key(record))}"
    if mode == "task":
        return task
    raise ValueError(f"group mode: expected one of {', '.join(GROUP_MODES)}, got {mode!r}")


def build_pairs(records: list[dict], group_by: str = "auto", min_group_size: int = 1) -> tuple[list[dict], Counts, dict]:
    """(contrastive records, per-task counts, group-size statistics)."""
    if min_group_size < 1:
        raise CoinError(f"--min-group-size: expected an integer >= 1, got {min_group_size}")
    counts = Counts()
    candidates = []
    for rec in records:
        counts.add(rec["task"], "records_in")
        if not rec.get("paraphrases"):
            counts.add(rec["task"], "no_paraphrase")
            continue
        candidates.append((rec, group_of(rec, group_by)))
    sizes = Counter(g for _, g in candidates)
    out = []
    group_task: dict[str, str] = {}
    for rec, group in candidates:
        if sizes[group] < min_group_size:
            counts.add(rec["task"], "small_group")
            continue
        group_task.setdefault(group, rec["task"])
        out.append({**rec, "schema": SCHEMA_TAGS[CONTRASTIVE], "group": group})
        counts.add(rec["task"], "records_out")
    kept_sizes: dict[str, int] = defaultdict(int)
    for rec in out:
        kept_sizes[rec["group"]] += 1
    for group, size in kept_sizes.items():
        counts.add(group_task[group], "groups")
        if size == 1:
            counts.add(group_task[group], "singleton_groups")
    values = sorted(kept_sizes.values())
    stats = {"groups": len(values), "min": values[0] if values else 0, "max": values[-1] if values else 0,
             "median": statistics.median(values) if values else 0,
             "records_with_a_hard_negative": sum(v for v in values if v > 1)}
    return out, counts, stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="records with paraphrases (.jsonl, .parquet, ...), e.g. the output of coin augment")
    p.add_argument("--output", required=True, help="contrastive records to write (.jsonl or .parquet)")
    p.add_argument("--group-by", choices=GROUP_MODES, default="auto", help="how hard-negative groups are formed")
    p.add_argument("--min-group-size", type=int, default=1, help="leave out (and count) records of smaller groups")
    p.add_argument("--skip-invalid", action="store_true", help="count and skip invalid input records")


def main(args) -> int:
    records, report = read_records(args.input, "auto", skip_invalid=args.skip_invalid)
    if report.num_invalid:
        print(report.line())
    out, counts, stats = build_pairs(records, args.group_by, args.min_group_size)
    if not out:
        raise CoinError(f"{args.input}: no record has a paraphrase (and a large enough group): nothing to write")
    write_records(args.output, out)
    summary = {"schema": SUMMARY_SCHEMA, "input": args.input, "output": args.output, "group_by": args.group_by,
               "min_group_size": args.min_group_size, "validation": report.to_dict(), "group_sizes": stats,
               "counts": counts.to_dict()}
    write_json(summary_path(args.output), summary)
    print(f"wrote {len(out)} contrastive records in {stats['groups']} groups to {args.output} "
          f"(group sizes {stats['min']}..{stats['max']}, median {stats['median']}; "
          f"summary: {summary_path(args.output)})")
    print(counts.table(TABLE_COLUMNS))
    return 0
