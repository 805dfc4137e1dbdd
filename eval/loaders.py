"""Loading a task's labelled examples and fixing the evaluated subset.

Sources, in the order `load_task_data` tries them for task T (spec S) under `data_dir`:

    data_dir/T/<split>.jsonl | <split>.parquet | <tsv_file>          e.g. sst2/validation.jsonl
    data_dir/<glue_config>/<split>.jsonl | .parquet | <tsv_file>     e.g. mnli/validation_matched.jsonl
    data_dir/<GLUE dir>/<tsv_file>                                   e.g. SST-2/dev.tsv, MNLI/dev_matched.tsv
    data_dir/T.jsonl | T.parquet

JSONL/Parquet rows carry the Hugging Face `glue` columns (`sentence`, `label`, `idx`, ...); TSV
files are GLUE's own (`csv.QUOTE_NONE`, the spec's columns). A split `a+b` (task `mnli`) reads
each part by these rules and concatenates them. Without `data_dir` (or with
`data_dir="hub"`) the `glue` dataset is loaded through `datasets.load_dataset`.

`select_subset` fixes the evaluated examples: a seeded sample of `n` indices, sorted, the same for
every instruction and perturbation of a run (the reference harness re-sampled per call).

Every problem is a `DataError` naming the file and the line or row: a missing column, a label
outside the task's ids, no labelled example at all.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from coin.errors import CoinError

from .tasks import TaskSpec


class DataError(CoinError):
    """Evaluation data that is missing, malformed or empty."""


@dataclass
class TaskData:
    """The evaluated examples of one task: `examples[i]` has the spec's columns and `label`."""

    spec: TaskSpec
    examples: list[dict]
    ids: list[str]  # a stable id per example (the `idx` column, else the row number)
    source: str
    total: int  # labelled examples in the source, before subsetting

    @property
    def labels(self) -> list[int]:
        return [int(e["label"]) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)


def select_subset(total: int, n: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded sample of min(n, total) of range(total) (all when n is None/0)."""
    if not n or n >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), n))


def candidate_paths(spec: TaskSpec, data_dir: str) -> list[str]:
    """Where `load_task_data` looks for the task's file, in order."""
    names = [f"{spec.split}.jsonl", f"{spec.split}.parquet"] + ([spec.tsv_file] if spec.tsv_file else [])
    dirs = [spec.name] + ([spec.glue_config] if spec.glue_config and spec.glue_config != spec.name else [])
    out = [os.path.join(data_dir, d, n) for d in dirs for n in names]
    if spec.tsv_file:
        out += [os.path.join(data_dir, d, spec.tsv_file) for d in spec.glue_dirs]
    out += [os.path.join(data_dir, f"{spec.name}.jsonl"), os.path.join(data_dir, f"{spec.name}.parquet")]
    return out


def _parts(spec: TaskSpec) -> list[TaskSpec]:
    """A spec whose split is `a+b` as one spec per part (each with its TSV file)."""
    splits = spec.split.split("+")
    if len(splits) == 1:
        return [spec]
    tsvs = spec.tsv_file.split("+") if spec.tsv_file else [""] * len(splits)
    if len(tsvs) != len(splits):
        raise DataError(f"task '{spec.name}': tsv_file {spec.tsv_file!r} does not match split {spec.split!r}")
    return [dataclasses.replace(spec, split=sp, tsv_file=tf) for sp, tf in zip(splits, tsvs)]


def load_task_data(spec: TaskSpec, data_dir: str | None = None, n_examples: int | None = 300,
                   seed: int = 42) -> TaskData:
    """The task's labelled examples (a fixed seeded subset of `n_examples`)."""
    rows: list[dict] = []
    sources = []
    parts = _parts(spec)
    if len(parts) > 1 and data_dir not in (None, "", "hub") and any(
            os.path.isfile(p) for p in candidate_paths(spec, data_dir)):
        parts = [spec]  # one file holds the whole task (what save_examples writes for `mnli`)
    for part in parts:
        if data_dir in (None, "", "hub"):
            part_rows, source = _read_hub(part), f"hub:glue/{part.glue_config}/{part.split}"
        else:
            if not os.path.isdir(data_dir):
                raise DataError(f"--data: directory '{data_dir}' does not exist")
            path = next((p for p in candidate_paths(part, data_dir) if os.path.isfile(p)), None)
            if path is None:
                tried = ", ".join(os.path.relpath(p, data_dir) for p in candidate_paths(part, data_dir))
                raise DataError(f"--data {data_dir}: no file for task '{spec.name}' (looked for {tried})")
            part_rows, source = read_file(part, path), path
        if len(parts) > 1:  # ids stay unique across the concatenated parts
            for r in part_rows:
                r["idx"] = f"{part.split}:{r.get('idx', '')}"
        rows += part_rows
        sources.append(source)
    source = " + ".join(sources)
    if not rows:
        raise DataError(f"{source}: no labelled examples for task '{spec.name}' (an empty dataset)")
    keep = select_subset(len(rows), n_examples, seed)
    examples = [rows[i] for i in keep]
    ids = [str(e.get("idx", i)) for e, i in zip(examples, keep)]
    return TaskData(spec=spec, examples=examples, ids=ids, source=source, total=len(rows))


def read_file(spec: TaskSpec, path: str) -> list[dict]:
    if path.endswith(".jsonl"):
        return _read_jsonl(spec, path)
    if path.endswith(".parquet"):
        return _read_parquet(spec, path)
    if path.endswith(".tsv"):
        return _read_tsv(spec, path)
    raise DataError(f"{path}: unsupported file type (expected .jsonl, .parquet or .tsv)")


def _label_id(spec: TaskSpec, value: Any, where: str) -> int | None:
    """An int label id from an id or a label word; None for unlabelled rows (-1, empty)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)) and float(value).is_integer():
        lid = int(value)
    elif isinstance(value, str):
        text = value.strip()
        words = [w.lower() for w in spec.label_words]
        if text.lower() in words:
            return words.index(text.lower())
        if text in ("", "-1", "-"):
            return None
        try:
            lid = int(text)
        except ValueError:
            raise DataError(
                f"{where}: label {value!r}: expected an id 0..{spec.num_labels - 1} or one of {list(spec.label_words)}"
            ) from None
    elif value is None:
        return None
    else:
        raise DataError(f"{where}: label {value!r}: expected an integer id or a label word")
    if lid == -1:
        return None  # GLUE test splits
    if not 0 <= lid < spec.num_labels:
        raise DataError(f"{where}: label {lid}: expected an id in 0..{spec.num_labels - 1} for task '{spec.name}'")
    return lid


def _row(spec: TaskSpec, raw: Mapping[str, Any], where: str) -> dict | None:
    out: dict[str, Any] = {}
    for col in spec.columns:
        if col not in raw or raw[col] is None:
            raise DataError(f"{where}: missing column '{col}' (task '{spec.name}' needs {list(spec.columns)} and 'label')")
        out[col] = str(raw[col])
    if "label" not in raw:
        raise DataError(f"{where}: missing column 'label'")
    lid = _label_id(spec, raw["label"], where)
    if lid is None:
        return None
    out["label"] = lid
    if "idx" in raw and raw["idx"] is not None:
        out["idx"] = raw["idx"]
    return out


def _read_jsonl(spec: TaskSpec, path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object per line")
            row = _row(spec, raw, f"{path}: line {lineno}")
            if row is not None:
                rows.append(row)
    return rows


def _read_parquet(spec: TaskSpec, path: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    rows = []
    for i, raw in enumerate(table.to_pylist()):
        row = _row(spec, raw, f"{path}: row {i}")
        if row is not None:
            rows.append(row)
    return rows


def _read_tsv(spec: TaskSpec, path: str) -> list[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        return []
    start = 0
    if spec.tsv_header:
        header = lines[0]
        start = 1

        def col(name_or_index, what):
            if isinstance(name_or_index, int):
                return name_or_index
            if name_or_index not in header:
                raise DataError(f"{path}: line 1: header has no column '{name_or_index}' ({what}; header: {header})")
            return header.index(name_or_index)
    else:
        def col(name_or_index, what):
            if not isinstance(name_or_index, int):
                raise DataError(f"{path}: task '{spec.name}' reads a header-less TSV but names column {name_or_index!r}")
            return name_or_index

    cols = {c: col(spec.tsv_columns.get(c, c), f"input column '{c}'") for c in spec.columns}
    label_col = col(spec.tsv_label, "label column")
    need = max([label_col, *cols.values()]) + 1
    rows = []
    for lineno, fields in enumerate(lines[start:], start + 1):
        if not fields or all(not x.strip() for x in fields):
            continue
        if len(fields) < need:
            raise DataError(f"{path}: line {lineno}: expected at least {need} tab-separated fields, got {len(fields)}")
        raw = {c: fields[i] for c, i in cols.items()}
        raw["label"] = fields[label_col]
        raw["idx"] = lineno - start - 1
        row = _row(spec, raw, f"{path}: line {lineno}")
        if row is not None:
            rows.append(row)
    return rows


def _read_hub(spec: TaskSpec) -> list[dict]:
    if not spec.glue_config:
        raise DataError(f"task '{spec.name}' has no `glue` config: pass --data DIR with its files (docs/eval.md)")
    try:
        from datasets import load_dataset

        ds = load_dataset("glue", spec.glue_config, split=spec.split)
    except Exception as e:  # offline, unknown config, ...: the message says what to do instead
        raise DataError(
            f"could not load glue/{spec.glue_config} split {spec.split} from the hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); pass --data DIR with local files (layout in docs/eval.md)"
        ) from None
    rows = []
    for i, raw in enumerate(ds):
        row = _row(spec, raw, f"glue/{spec.glue_config}/{spec.split}: row {i}")
        if row is not None:
            rows.append(row)
    return rows


def save_examples(spec: TaskSpec, examples: Sequence[Mapping[str, Any]], data_dir: str) -> str:
    """Write examples (spec columns + `label` id or word) as `data_dir/<task>/<split>.jsonl`."""
    path = os.path.join(data_dir, spec.name, f"{spec.split}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, e in enumerate(examples):
            row = {c: e[c] for c in spec.columns}
            lid = _label_id(spec, e["label"], f"example {i}")
            row["label"] = -1 if lid is None else lid
            row["idx"] = e.get("idx", i)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
