"""Loading a task's labelled examples and fixing the evaluated subset.

Sources, in the order `load_task_data` tries them for task T (spec S) under `data_dir`:

    data_dir/T/<split>.<ext>  | <tsv_file>                          e.g. sst2/validation.jsonl
    data_dir/<glue_config>/<split>.<ext> | <tsv_file>               e.g. mnli/validation_matched.jsonl
    data_dir/<GLUE dir>/<tsv_file>                                  e.g. SST-2/dev.tsv, MNLI/dev_matched.tsv
    data_dir/T.<ext>

with <ext> one of .jsonl, .parquet, .tsv, .csv. Folder and file names match as users spell them:
case, '-' and '_' are ignored (`SST2/`, `sst-2/`, `Dev.TSV`), and for a `validation` split
`dev.*` and `validation.*` are both taken. JSONL/Parquet rows carry the Hugging Face `glue`
columns (`sentence`, `label`, `idx`, ...). TSV (GLUE's own quoting rules: none) and CSV files are
read in the first layout that fits: the spec's (GLUE's official files: header names or fixed
indices); a header naming the HF columns and `label`; or, headerless or with a header of other
names, exactly one column per input plus a label column, the label column being the one column
whose values are all label ids or label words of the task, the inputs the others in file order
(`sentence<TAB>label` and `label<TAB>sentence` both load). `--columns TASK=FIELD:COL,...`
(`column_mappings`) names the columns of any file outright. When no layout fits, the error shows
what the file holds. A split `a+b` (task `mnli`) reads each part by these rules and concatenates
them. Without `data_dir` (or with `data_dir="hub"`) the `glue` dataset is loaded through
`datasets.load_dataset`.

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
import re
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


EXTENSIONS = (".jsonl", ".parquet", ".tsv", ".csv")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def _dir_names(spec: TaskSpec) -> list[str]:
    return list(dict.fromkeys(n for n in (spec.name, spec.glue_config, *spec.glue_dirs) if n))


def _file_names(spec: TaskSpec) -> list[str]:
    stems = [spec.split] + (["dev", "validation"] if spec.split == "validation" else [])
    names = [stem + ext for stem in dict.fromkeys(stems) for ext in EXTENSIONS]
    if spec.tsv_file and spec.tsv_file not in names:
        names.insert(len(EXTENSIONS), spec.tsv_file)
    return names


def candidate_paths(spec: TaskSpec, data_dir: str) -> list[str]:
    """Where `load_task_data` looks for the task's file, in order (as spelled here; `find_task_file`
    also takes other spellings of each folder and file name)."""
    out = [os.path.join(data_dir, d, n) for d in _dir_names(spec) for n in _file_names(spec)]
    return out + [os.path.join(data_dir, spec.name + ext) for ext in EXTENSIONS]


def _lookup(parent: str, name: str, want_dir: bool) -> str | None:
    """parent/name, or the entry of parent spelled like it (case, '-' and '_' ignored)."""
    exact = os.path.join(parent, name)
    if os.path.isdir(exact) if want_dir else os.path.isfile(exact):
        return exact
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return None
    for entry in entries:
        path = os.path.join(parent, entry)
        if _norm(entry) == _norm(name) and (os.path.isdir(path) if want_dir else os.path.isfile(path)):
            return path
    return None


def find_task_file(spec: TaskSpec, data_dir: str) -> str | None:
    """The first of `candidate_paths` that exists, in any spelling of its folder and file name."""
    for d in _dir_names(spec):
        folder = _lookup(data_dir, d, want_dir=True)
        if folder is not None:
            for n in _file_names(spec):
                path = _lookup(folder, n, want_dir=False)
                if path is not None:
                    return path
    for ext in EXTENSIONS:
        path = _lookup(data_dir, spec.name + ext, want_dir=False)
        if path is not None:
            return path
    return None


def _not_found(spec: TaskSpec, data_dir: str, part: TaskSpec) -> DataError:
    try:
        there = sorted(os.listdir(data_dir))
    except OSError:
        there = []
    shown = ", ".join(there[:12]) + (", ..." if len(there) > 12 else "") if there else "nothing"
    dirs = _dir_names(part)
    stems = list(dict.fromkeys(os.path.splitext(n)[0] for n in _file_names(part)))
    examples = [f"{dirs[0]}/{part.split}.jsonl"] + ([f"{dirs[-1]}/{part.tsv_file}"] if part.tsv_file else [])
    return DataError(
        f"--data {data_dir}: no file for task '{spec.name}': looked for {' or '.join(d + '/' for d in dirs)} holding "
        f"{' or '.join(stems)} as {'/'.join(EXTENSIONS)} (e.g. {', '.join(examples)}), or {part.name}.jsonl etc. in "
        f"{data_dir}; names match in any case, '-' and '_' ignored; {data_dir} holds: {shown}"
    )


def column_mappings(items: Sequence[str]) -> dict[str, dict[str, int | str]]:
    """`--columns sst2=label:0,sentence:1` -> {"sst2": {"label": 0, "sentence": 1}}: which column of
    the task's file holds each input column and the label (a 0-based index or a header name)."""
    from coin.cli import assignments

    out: dict[str, dict[str, int | str]] = {}
    form = "TASK=FIELD:COLUMN,... (COLUMN a 0-based index or a header name)"
    for task, spec in assignments(items, "--columns", form, error=DataError).items():
        mapping: dict[str, int | str] = {}
        for part in spec.split(","):
            field, sep, col = part.partition(":")
            if not sep or not field.strip() or not col.strip():
                raise DataError(f"--columns {task}: expected {form}, got {part!r}")
            col = col.strip()
            mapping[field.strip()] = int(col) if col.isdigit() else col
        out[task] = mapping
    return out


def check_column_mapping(spec: TaskSpec, mapping: Mapping[str, int | str]) -> None:
    need = [*spec.columns, "label"]
    unknown = [f for f in mapping if f not in need]
    missing = [f for f in need if f not in mapping]
    if unknown or missing:
        raise DataError(f"--columns {spec.name}: expected exactly the fields {', '.join(need)}"
                        + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                        + (f"; missing: {', '.join(missing)}" if missing else ""))


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
                   seed: int = 42, columns: Mapping[str, int | str] | None = None) -> TaskData:
    """The task's labelled examples (a fixed seeded subset of `n_examples`); `columns` maps the
    task's input columns and `label` to the file's columns (`column_mappings`)."""
    if columns is not None:
        check_column_mapping(spec, columns)
    rows: list[dict] = []
    sources = []
    parts = _parts(spec)
    local = data_dir not in (None, "", "hub")
    if local and not os.path.isdir(data_dir):
        raise DataError(f"--data: directory '{data_dir}' does not exist")
    if len(parts) > 1 and local and find_task_file(spec, data_dir) is not None:
        parts = [spec]  # one file holds the whole task (what save_examples writes for `mnli`)
    for part in parts:
        if not local:
            part_rows, source = _read_hub(part, columns), f"hub:glue/{part.glue_config}/{part.split}"
        else:
            path = find_task_file(part, data_dir)
            if path is None:
                raise _not_found(spec, data_dir, part)
            part_rows, source = read_file(part, path, columns)
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


def read_file(spec: TaskSpec, path: str, columns: Mapping[str, int | str] | None = None) -> tuple[list[dict], str]:
    """(the labelled rows of one file, its description: the path, and the layout when it was detected)."""
    low = path.lower()
    if low.endswith(".jsonl"):
        return _read_jsonl(spec, path, columns), path
    if low.endswith(".parquet"):
        return _read_parquet(spec, path, columns), path
    if low.endswith((".tsv", ".csv")):
        return _read_delimited(spec, path, columns)
    raise DataError(f"{path}: unsupported file type (expected .jsonl, .parquet, .tsv or .csv)")


def _renamed(raw: Mapping[str, Any], columns: Mapping[str, int | str] | None, where: str) -> Mapping[str, Any]:
    """A JSONL/Parquet row with `--columns` applied (file column -> the task's column)."""
    if not columns:
        return raw
    out = dict(raw)
    for field, col in columns.items():
        if isinstance(col, int):
            raise DataError(f"{where}: --columns {field}:{col}: a column index fits TSV/CSV files; name the key here")
        if col not in raw:
            raise DataError(f"{where}: --columns {field}:{col}: no key '{col}' (keys: {', '.join(map(str, raw))})")
        out[field] = raw[col]
    return out


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


def _read_jsonl(spec: TaskSpec, path: str, columns=None) -> list[dict]:
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
            where = f"{path}: line {lineno}"
            row = _row(spec, _renamed(raw, columns, where), where)
            if row is not None:
                rows.append(row)
    return rows


def _read_parquet(spec: TaskSpec, path: str, columns=None) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    rows = []
    for i, raw in enumerate(table.to_pylist()):
        row = _row(spec, _renamed(raw, columns, f"{path}: row {i}"), f"{path}: row {i}")
        if row is not None:
            rows.append(row)
    return rows


def _is_label(spec: TaskSpec, value: str) -> bool:
    v = value.strip().lower()
    return v in {w.lower() for w in spec.label_words} or v in {str(i) for i in range(spec.num_labels)}


def _layout(spec: TaskSpec, path: str, lines: list[list[str]], sep: str,
            columns: Mapping[str, int | str] | None) -> tuple[int, dict[str, int], str | None]:
    """(lines to skip, {input column and 'label': field index}, a description or None for the spec's
    own layout) of a TSV/CSV file's `lines` (empty lines already dropped)."""
    first = [c.strip() for c in lines[0]]

    def by_name(names: Mapping[str, Any], what: str) -> dict[str, int] | None:
        if all(isinstance(n, int) for n in names.values()):
            return None
        for field, n in names.items():
            if isinstance(n, int) or n not in first:
                raise DataError(f"{path}: line 1: header has no column '{n}' ({what} {field}; header: {first})")
        return {field: first.index(n) for field, n in names.items()}

    def shown(cols: Mapping[str, int]) -> str:
        return ", ".join(f"{f} = column {i}" for f, i in sorted(cols.items(), key=lambda kv: kv[1]))

    if columns:
        cols = by_name(columns, "--columns")
        if cols is not None:
            return 1, cols, f"header, --columns: {shown(cols)}"
        cols = dict(columns)  # indices; line 1 is a header when its label cell is not a label
        skip = int(len(lines) > 1 and len(first) > cols["label"] and not _is_label(spec, first[cols["label"]]))
        return skip, cols, f"{'header skipped' if skip else 'no header'}, --columns: {shown(cols)}"
    official = {c: spec.tsv_columns.get(c, c) for c in spec.columns} | {"label": spec.tsv_label}
    if spec.tsv_header and all(n in first for n in official.values()):
        return 1, {f: first.index(n) for f, n in official.items()}, None
    if not spec.tsv_header and all(isinstance(n, int) for n in official.values()):
        if all(len(f) >= max(official.values()) + 1 for f in lines):  # bad labels: an error per line below
            return 0, dict(official), None
    hf = [*spec.columns, "label"]
    if all(n in first for n in hf):
        cols = {f: first.index(f) for f in hf}
        return 1, cols, f"header: {shown(cols)}"
    widths = sorted({len(f) for f in lines})
    n_cols = len(spec.columns) + 1
    label_all = [c for c in range(n_cols) if all(_is_label(spec, f[c]) for f in lines)] if widths == [n_cols] else []
    label_body = [c for c in range(n_cols) if all(_is_label(spec, f[c]) for f in lines[1:])] \
        if widths == [n_cols] and len(lines) > 1 else []
    for skip, found in ((0, label_all), (1, label_body if not label_all else [])):
        if len(found) == 1:
            label = found[0]
            cols = dict(zip(spec.columns, [c for c in range(n_cols) if c != label]), label=label)
            return skip, cols, f"{'header skipped' if skip else 'no header'}, detected: {shown(cols)}"
    kind = "tab" if sep == "\t" else "comma"
    sample = " | ".join(repr(sep.join(f))[:80] for f in lines[:2])
    labels = ", ".join([*spec.label_words, *map(str, range(spec.num_labels))])
    found = label_all or label_body
    raise DataError(
        f"{path}: cannot tell the columns for task '{spec.name}' (it needs {', '.join(spec.columns)} and a label "
        f"column whose values are all one of {labels}): found {'/'.join(map(str, widths))} {kind}-separated "
        f"columns, {'columns ' + ', '.join(map(str, found)) + ' all' if found else 'no column'} holding only labels; "
        f"first lines: {sample}; name them with --columns {spec.name}="
        + ",".join(f"{c}:{i}" for i, c in enumerate(["label", *spec.columns])) + " (0-based indices or header names)"
    )


def _read_delimited(spec: TaskSpec, path: str, columns: Mapping[str, int | str] | None) -> tuple[list[dict], str]:
    """A TSV (GLUE's: no quoting) or CSV (standard quoting) file in the first layout that fits (`_layout`)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    sep = "," if path.lower().endswith(".csv") else "\t"
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
    with open(path, encoding="utf-8", newline="") as f:
        numbered = [(n, fields) for n, fields in enumerate(csv.reader(f, delimiter=sep, quoting=quoting), 1)
                    if fields and any(x.strip() for x in fields)]
    if not numbered:
        return [], path
    skip, cols, described = _layout(spec, path, [fields for _, fields in numbered], sep, columns)
    need = max(cols.values()) + 1
    rows = []
    for k, (lineno, fields) in enumerate(numbered[skip:]):
        if len(fields) < need:
            kind = "tab" if sep == "\t" else "comma"
            raise DataError(f"{path}: line {lineno}: expected at least {need} {kind}-separated fields, got {len(fields)}")
        raw = {c: fields[i] for c, i in cols.items()}
        raw["idx"] = k
        row = _row(spec, raw, f"{path}: line {lineno}")
        if row is not None:
            rows.append(row)
    return rows, path if described is None else f"{path} ({described})"


def _read_hub(spec: TaskSpec, columns=None) -> list[dict]:
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
        where = f"glue/{spec.glue_config}/{spec.split}: row {i}"
        row = _row(spec, _renamed(raw, columns, where), where)
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
