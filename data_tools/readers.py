"""Reading and writing record files: JSONL, JSON, Parquet, CSV/TSV and `datasets` sources.

    records, report = read_records("train.jsonl", kind="contrastive")
    write_records("train.parquet", records)

Sources (`open_source` picks by name):

    *.jsonl, *.json      one JSON object per line (a *.json file may also hold one JSON array)
    *.parquet            one record per row; `fields`, `meta` and other object values are JSON text
    *.csv, *.tsv         a header row; `paraphrases`, `fields` and `meta` cells hold JSON text,
                         an empty cell is an absent value, `template_id` digits become an integer
    DIR                  a `datasets` directory written by `save_to_disk` (use `split` for a DatasetDict)
    hf:NAME[:CONFIG]     a `datasets` hub id (needs a reachable hub or the local HF cache)

Every record is validated (`schema.validate_record`). By default the first bad record raises a
`DataError` naming the file, the line (or row), the field and what was expected: a missing or
empty field, a wrong type, an undecodable line, a duplicate id. With `skip_invalid=True` bad
records are counted by reason in the returned `ValidationReport` instead, never silently.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from coin.errors import CoinError

from .atomic import atomic_open, temp_path
from .schema import DUPLICATE, UNDECODABLE, WRONG_TYPE, DataError, validate_record

JSON_CELLS = ("paraphrases", "fields", "meta")


@dataclass
class ValidationReport:
    """What reading a source found: records seen, kept, and invalid ones counted by reason."""

    source: str
    seen: int = 0
    valid: int = 0
    invalid: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few error messages

    def add_error(self, err: DataError, keep: int = 5) -> None:
        self.invalid[err.reason] += 1
        if len(self.examples) < keep:
            self.examples.append(str(err))

    @property
    def num_invalid(self) -> int:
        return sum(self.invalid.values())

    def line(self) -> str:
        """One line for the terminal: `SOURCE: 98 valid of 100 records; invalid: 2 (...)`."""
        text = f"{self.source}: {self.valid} valid of {self.seen} records"
        if self.num_invalid:
            parts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.invalid.items()))
            text += f"; skipped {self.num_invalid} invalid ({parts})"
        return text

    def to_dict(self) -> dict:
        return {"source": self.source, "seen": self.seen, "valid": self.valid,
                "invalid": dict(sorted(self.invalid.items())), "examples": list(self.examples)}


# ----------------------------------------------------------------------------- raw sources


@dataclass
class RawItem:
    """One raw record of a source, or the error that made it unreadable."""

    line: int
    record: dict | None
    error: DataError | None = None


def source_format(path: str) -> str:
    """jsonl | json | parquet | csv | tsv | disk | hub, from the name (and directory contents)."""
    if path.startswith("hf:"):
        return "hub"
    if os.path.isdir(path):
        return "disk"
    lower = path.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".parquet", "parquet"), (".csv", "csv"),
                     (".tsv", "tsv")):
        if lower.endswith(ext):
            return fmt
    raise CoinError(f"{path}: unknown file type (expected .jsonl, .json, .parquet, .csv, .tsv, a datasets "
                    f"directory or hf:NAME)")


def unit_of(fmt: str) -> str:
    return "line" if fmt in ("jsonl", "json", "csv", "tsv") else "row"


def open_source(path: str, split: str | None = None) -> Iterator[RawItem]:
    """Raw records of `path` in file order, each with its line (text files) or row number."""
    fmt = source_format(path)
    if fmt not in ("hub",) and not os.path.exists(path):
        raise CoinError(f"{path}: file does not exist")
    if fmt in ("jsonl", "json"):
        return _iter_json(path)
    if fmt == "parquet":
        return _iter_parquet(path)
    if fmt in ("csv", "tsv"):
        return _iter_csv(path, delimiter="," if fmt == "csv" else "\t")
    return _iter_datasets(path, fmt, split)


def _iter_json(path: str) -> Iterator[RawItem]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):  # one JSON array
        try:
            with open(path, encoding="utf-8") as f:
                items = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            line = getattr(e, "lineno", None)
            yield RawItem(line or 1, None, DataError(path, line or 1, None, "valid UTF-8 JSON", str(e).split(":")[0],
                                                     reason=UNDECODABLE))
            return
        for i, item in enumerate(items, 1):
            yield RawItem(i, item)
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield RawItem(n, json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError:
                yield RawItem(n, None, DataError(path, n, None, "UTF-8 text", "undecodable bytes",
                                                 reason=UNDECODABLE))
            except json.JSONDecodeError as e:
                yield RawItem(n, None, DataError(path, n, None, "one JSON object per line",
                                                 f"invalid JSON ({e.msg} at column {e.colno})", reason=UNDECODABLE))


def _decode_cells(rec: dict, path: str, line: int, unit: str) -> dict:
    """Object-valued columns stored as JSON text (CSV cells, Parquet columns) back to objects."""
    for key in JSON_CELLS:
        value = rec.get(key)
        if isinstance(value, str):
            if not value.strip():
                rec[key] = None
                continue
            try:
                rec[key] = json.loads(value)
            except json.JSONDecodeError:
                raise DataError(path, line, key, "JSON text in this cell", value, reason=WRONG_TYPE, unit=unit) from None
    return rec


def _iter_parquet(path: str) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise CoinError(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            try:
                yield RawItem(row, _decode_cells(rec, path, row, "row"))
            except DataError as e:
                yield RawItem(row, None, e)


def _iter_csv(path: str, delimiter: str) -> Iterator[RawItem]:
    with open(path, "rb") as fb:
        data = fb.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        yield RawItem(line, None, DataError(path, line, None, "UTF-8 text", "undecodable bytes", reason=UNDECODABLE))
        return
    import io

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RawItem(start, None, DataError(path, start, None, "a well-formed CSV row", str(e), reason=UNDECODABLE))
            return
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield RawItem(line, None, DataError(path, line, None, f"{len(header)} cells as in the header",
                                                f"{len(cells)} cells", reason=UNDECODABLE))
            continue
        rec: dict[str, Any] = {}
        for key, value in zip(header, cells):
            rec[key] = None if value == "" else value
        if isinstance(rec.get("template_id"), str) and rec["template_id"].strip().lstrip("-").isdigit():
            rec["template_id"] = int(rec["template_id"])
        try:
            yield RawItem(line, _decode_cells(rec, path, line, "line"))
        except DataError as e:
            yield RawItem(line, None, e)


def _iter_datasets(path: str, fmt: str, split: str | None) -> Iterator[RawItem]:
    import datasets

    try:
        if fmt == "disk":
            ds = datasets.load_from_disk(path)
        else:
            name, _, config = path[3:].partition(":")
            ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (offline, missing, ...)
        raise CoinError(f"{path}: cannot load with datasets ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            raise CoinError(f"{path}: holds splits {', '.join(ds)}: choose one with --split")
        if split not in ds:
            raise CoinError(f"{path}: no split '{split}' (expected one of {', '.join(ds)})")
        ds = ds[split]
    for row, rec in enumerate(ds, 1):
        try:
            yield RawItem(row, _decode_cells(dict(rec), path, row, "row"))
        except DataError as e:
            yield RawItem(row, None, e)


# ----------------------------------------------------------------------------- validated records


def read_records(path: str, kind: str = "auto", *, skip_invalid: bool = False, split: str | None = None,
                 prepare: Callable[[dict, int], dict] | None = None) -> tuple[list[dict], ValidationReport]:
    """All valid records of `path`, in file order, and the report of what was skipped.

    `prepare(raw, line)` may rename or fill keys of each raw record before validation (importers
    use it). Raises `DataError` on the first invalid record unless `skip_invalid`.
    """
    fmt = source_format(path)
    unit = unit_of(fmt)
    report = ValidationReport(path)
    records: list[dict] = []
    first_line: dict[str, int] = {}
    for item in open_source(path, split):
        report.seen += 1
        try:
            if item.error is not None:
                raise item.error
            raw = prepare(item.record, item.line) if prepare is not None else item.record
            rec = validate_record(raw, kind, source=path, line=item.line, unit=unit)
            if rec["id"] in first_line:
                raise DataError(path, item.line, "id", f"a unique id ('{rec['id']}' is already used on {unit} "
                                f"{first_line[rec['id']]})", reason=DUPLICATE, unit=unit)
        except DataError as e:
            if not skip_invalid:
                raise
            report.add_error(e)
            continue
        first_line[rec["id"]] = item.line
        records.append(rec)
        report.valid += 1
    return records, report


def iter_validated(path: str, kind: str = "auto") -> Iterator[dict]:
    """Validated records one at a time (no duplicate check): for a quick look at huge files."""
    unit = unit_of(source_format(path))
    for item in open_source(path):
        if item.error is not None:
            raise item.error
        yield validate_record(item.record, kind, source=path, line=item.line, unit=unit)


# ----------------------------------------------------------------------------- writing


def write_records(path: str, records: Iterable[Mapping]) -> int:
    """Write records atomically as JSONL or Parquet (by extension); returns how many."""
    fmt = source_format(path) if not os.path.isdir(path) else "disk"
    if fmt == "jsonl":
        n = 0
        with atomic_open(path) as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        return n
    if fmt == "parquet":
        return _write_parquet(path, records)
    raise CoinError(f"{path}: records are written as .jsonl or .parquet")


def _write_parquet(path: str, records: Iterable[Mapping]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for rec in records:
        row = {}
        for key, value in rec.items():
            if key == "paraphrases":
                row[key] = list(value)
            elif key == "template_id":
                row[key] = None if value is None else str(value) if not isinstance(value, int) else value
            elif isinstance(value, (dict, list)):
                row[key] = json.dumps(value, ensure_ascii=False)
            else:
                row[key] = value
        rows.append(row)
    # One column type per key: template_id becomes text when the file mixes ints and strings.
    if any(isinstance(r.get("template_id"), str) for r in rows):
        for r in rows:
            if r.get("template_id") is not None:
                r["template_id"] = str(r["template_id"])
    table = pa.Table.from_pylist(rows)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(rows)


def summary_path(path: str) -> str:
    """`out/train.jsonl` -> `out/train.summary.json` (where a file's summary is written)."""
    root = path
    for ext in (".jsonl", ".json", ".parquet", ".csv", ".tsv"):
        if root.lower().endswith(ext):
            root = root[: -len(ext)]
            break
    return root + ".summary.json"
