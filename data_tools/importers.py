"""Importers: outside data into the project's record schemas (schema.py).

    import_coin_csv(path)        the reference CoIN release CSV -> contrastive records
    import_flan(path, ...)       FLAN-style records (task + templated inputs/targets, or task +
                                 template fields rendered through a templates file) -> instruction records
    import_records(path, ...)    any JSONL/JSON/Parquet/CSV/`datasets` source with a column mapping

Each returns (records, ValidationReport, notes); bad input raises `DataError` naming the file,
line and field, or with `skip_invalid` is counted in the report.

The CoIN CSV has the columns original_instruction (the instruction with its input rendered in),
paraphrased_instruction, targets, a task name column (task_name, task, task name or dataset)
and a keywords column (the template's fields as a Python or JSON dict). Rows 2k and 2k+1 share
an instruction: each is the other's hard negative, so they get the group `coin-pair-<k>`
(counted by data row, header excluded, so a skipped row leaves its partner alone in its group).
"""
from __future__ import annotations

import ast
import json
import os
import random
from collections import Counter
from collections.abc import Mapping

from coin.errors import CoinError

from .readers import ValidationReport, open_source, read_records, source_format, unit_of
from .schema import CONTRASTIVE, INSTRUCTION, MISSING, SCHEMA_TAGS, WRONG_TYPE, DataError, validate_record
from .templates import TemplateSet, render, template_index

COIN_TASK_COLUMNS = ("task_name", "task", "task name", "dataset", "task_source")
COIN_KEYWORD_COLUMNS = ("keywords", "keyword", "template_keywords", "fields")
COIN_REQUIRED = ("original_instruction", "paraphrased_instruction", "targets")


def _parse_keywords(value, source: str, line: int, unit: str) -> dict | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Mapping):
        parsed = value
    else:
        parsed = None
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        if not isinstance(parsed, Mapping):
            raise DataError(source, line, "keywords", "a dict of template keywords (JSON or Python literal)",
                            value, reason=WRONG_TYPE, unit=unit)
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict))
            else str(v) for k, v in parsed.items() if v is not None}


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    lower = {h.lower().strip(): h for h in header}
    for name in names:
        if name in lower:
            return lower[name]
    return None


def import_coin_csv(path: str, *, skip_invalid: bool = False) -> tuple[list[dict], ValidationReport, dict]:
    """The reference CoIN CSV as contrastive records, consecutive rows paired into groups."""
    fmt = source_format(path)
    if fmt not in ("csv", "tsv"):
        raise CoinError(f"{path}: the CoIN release is a .csv file")
    items = list(open_source(path))
    first = next((it.record for it in items if it.record is not None), None)
    header = list(first) if first else []
    missing = [c for c in COIN_REQUIRED if _column(header, (c,)) is None]
    if first is not None and missing:
        raise CoinError(f"{path}: line 1: missing column(s) {', '.join(missing)} (expected the CoIN CSV columns "
                        f"{', '.join(COIN_REQUIRED)}, a task name column and a keywords column)")
    cols = {c: _column(header, (c,)) for c in COIN_REQUIRED}
    task_col = _column(header, COIN_TASK_COLUMNS)
    kw_col = _column(header, COIN_KEYWORD_COLUMNS)
    if first is not None and task_col is None:
        raise CoinError(f"{path}: line 1: no task name column (expected one of {', '.join(COIN_TASK_COLUMNS)})")
    unit = unit_of(fmt)

    def prepare(raw: dict, line: int, row: int) -> dict:
        fields = _parse_keywords(raw.get(kw_col), path, line, unit) if kw_col else None
        para = raw.get(cols["paraphrased_instruction"])
        if para is None or not str(para).strip():
            raise DataError(path, line, "paraphrased_instruction", "a non-empty string", para,
                            reason=MISSING if para is None else "empty field", unit=unit)
        rec = {
            "schema": SCHEMA_TAGS[CONTRASTIVE],
            "id": f"coin-{row:06d}",
            "task": raw.get(task_col),
            "instruction": raw.get(cols["original_instruction"]),
            "input": "",
            "output": raw.get(cols["targets"]),
            "paraphrases": [para],
            "group": f"coin-pair-{row // 2:06d}",
            "meta": {"source": "coin-csv", "row": row},
        }
        if fields:
            rec["fields"] = fields
        return rec

    report = ValidationReport(path)
    records = []
    for row, item in enumerate(items):
        report.seen += 1
        try:
            if item.error is not None:
                raise item.error
            rec = validate_record(prepare(item.record, item.line, row), CONTRASTIVE, source=path, line=item.line,
                                  unit=unit)
        except DataError as e:
            if not skip_invalid:
                raise
            report.add_error(e)
            continue
        records.append(rec)
        report.valid += 1
    sizes = Counter(r["group"] for r in records)
    tasks: dict[str, set] = {}
    for r in records:
        tasks.setdefault(r["group"], set()).add(r["task"])
    notes = {"rows": len(items), "pairs": sum(1 for n in sizes.values() if n == 2),
             "unpaired_rows": sum(1 for n in sizes.values() if n == 1),
             "pairs_with_two_tasks": sum(1 for t in tasks.values() if len(t) > 1)}
    return records, report, notes


FLAN_TASK_KEYS = ("task", "task_name", "_task_name")
FLAN_INPUT_KEYS = ("inputs", "input", "prompt", "source")
FLAN_TARGET_KEYS = ("targets", "target", "output", "completion")
FLAN_TEMPLATE_KEYS = ("template_id", "template_idx", "_template_idx")
FLAN_META_KEYS = ("template_type", "_template_type", "task_source", "_task_source")


def _first(raw: Mapping, keys: tuple[str, ...]):
    for k in keys:
        if raw.get(k) is not None:
            return k, raw[k]
    return None, None


def import_flan(path: str, *, templates: TemplateSet | None = None, seed: int = 0, skip_invalid: bool = False,
                split: str | None = None) -> tuple[list[dict], ValidationReport, dict]:
    """FLAN-style records as instruction records.

    A record is either already templated (`inputs` + `targets`, plus `task_name` or `task`, and
    optionally `template_type`, `task_source`, `template_idx`) or raw (`task` + `fields`, the
    template keywords, and optionally `template_id`), which is rendered through `templates`
    (template `template_id`, else one chosen from (seed, record id)). With `templates`, templated
    records are matched back to their template, which records `template_id` and `fields`.
    """
    notes: Counter = Counter()
    unit = unit_of(source_format(path))

    def prepare(raw: Mapping, line: int) -> dict:
        if not isinstance(raw, Mapping):
            return raw  # validate_record names the problem
        _, task = _first(raw, FLAN_TASK_KEYS)
        rec_id = raw.get("id") if isinstance(raw.get("id"), str) else f"flan-{line:07d}"
        _, template_id = _first(raw, FLAN_TEMPLATE_KEYS)
        meta = {k.lstrip("_"): raw[k] for k in FLAN_META_KEYS if raw.get(k) is not None}
        if isinstance(raw.get("meta"), Mapping):
            meta.update(raw["meta"])
        in_key, inputs = _first(raw, FLAN_INPUT_KEYS)
        out_key, targets = _first(raw, FLAN_TARGET_KEYS)
        fields = raw.get("fields")
        rec = {"id": rec_id, "task": task, "instruction": inputs, "input": "", "output": targets, "meta": meta or None}
        if inputs is None and fields is not None:
            if templates is None:
                raise CoinError(f"{path}: {unit} {line}: a raw FLAN record (task + fields) needs --templates to be rendered")
            if not isinstance(fields, Mapping):
                raise DataError(path, line, "fields", "an object of template keywords", type(fields).__name__,
                                unit=unit)
            if not isinstance(task, str) or task not in templates:
                raise DataError(path, line, "task", f"a task of {templates.source}", task, unit=unit)
            items = templates.get(task)
            j = template_index(template_id)
            if j is None:
                j = random.Random(f"{seed}-{rec_id}").randrange(len(items))
            if not 0 <= j < len(items):
                raise DataError(path, line, "template_id", f"an index below {len(items)} (templates of '{task}')",
                                template_id, unit=unit)
            try:
                rec["instruction"], rec["output"] = render(items[j][0], fields), render(items[j][1], fields)
            except KeyError as e:
                raise DataError(path, line, f"fields.{e.args[0]}", f"a value for placeholder {{{e.args[0]}}} of "
                                f"template {j} of '{task}'", reason=MISSING, unit=unit) from None
            rec["template_id"], rec["fields"] = j, dict(fields)
            notes["rendered"] += 1
            return rec
        if inputs is None:
            rec["instruction"] = None  # validation reports the missing field under its schema name
        if template_id is not None:
            rec["template_id"] = template_id
        if isinstance(fields, Mapping):
            rec["fields"] = dict(fields)
        if templates is not None and isinstance(task, str) and isinstance(inputs, str) and isinstance(targets, str) \
                and task in templates and "fields" not in rec:
            found = templates.match(task, inputs, targets, template_index(template_id))
            if found is not None:
                rec["template_id"], rec["fields"] = found
                notes["matched_template"] += 1
            else:
                notes["unmatched_template"] += 1
        return rec

    records, report = read_records(path, INSTRUCTION, skip_invalid=skip_invalid, split=split, prepare=prepare)
    return records, report, dict(notes)


def import_records(path: str, *, kind: str = "auto", column_map: Mapping[str, str] | None = None,
                   defaults: Mapping[str, str] | None = None, make_ids: bool = False, skip_invalid: bool = False,
                   split: str | None = None) -> tuple[list[dict], ValidationReport, dict]:
    """Records from any source, columns renamed (`column_map`: schema field -> source column) and
    absent fields filled from `defaults`; `make_ids` numbers records without an id."""
    column_map = dict(column_map or {})
    defaults = dict(defaults or {})
    stem = os.path.basename(path.rstrip("/")).split(".")[0] or "rec"
    notes: Counter = Counter()

    def prepare(raw, line: int):
        if not isinstance(raw, Mapping):
            return raw
        rec = dict(raw)
        for dst, src in column_map.items():
            if src in rec:
                rec[dst] = rec.pop(src)
        for key, value in defaults.items():
            if rec.get(key) is None:
                rec[key] = value
        if make_ids and rec.get("id") is None:
            rec["id"] = f"{stem}-{line:07d}"
            notes["ids_made"] += 1
        return rec

    records, report = read_records(path, kind, skip_invalid=skip_invalid, split=split, prepare=prepare)
    return records, report, dict(notes)
