"""Record schemas (versioned) for instruction data and contrastive data, and their validation.

Two kinds of record, one JSON object per line (JSONL) or one row (Parquet); docs/data.md is the
reference. Every record the tools write starts with a `schema` tag naming kind and version.

Instruction record, `coin.instruction/1`:

    id           str, non-empty, unique in the file
    task         str, non-empty (e.g. "sst2")
    instruction  str, non-empty: the instruction; when `input` is empty it already holds the input
    input        str, optional (default ""): the instance input kept apart from the instruction
    output       str, non-empty: the target response
    template_id  int | str | null, optional: which instruction template rendered `instruction`
    fields       {str: str}, optional: the template's keywords (e.g. {"sentence": ..., "answer": ...})
    paraphrases  [str], optional: paraphrased instructions found so far (`coin augment` fills it)
    meta         {..}, optional: anything else, carried along untouched

Contrastive record, `coin.contrastive/1`: an instruction record plus

    paraphrases  [str], at least one, each non-empty: instructions meaning the same as `instruction`
                 (same form: with the input rendered in exactly when `instruction` has it)
    group        str, non-empty: records sharing a group are each other's hard negatives

Other keys are kept as they are and ignored. `validate_record` returns the record in canonical
form (defaults filled, keys ordered) or raises `DataError` naming the file, line, field and what
was expected. `render_prompt(record, k)` is the prompt string given to `PromptFormat`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coin.errors import CoinError

VERSION = 1
INSTRUCTION = "instruction"
CONTRASTIVE = "contrastive"
KINDS = (INSTRUCTION, CONTRASTIVE)
SCHEMA_TAGS = {INSTRUCTION: f"coin.instruction/{VERSION}", CONTRASTIVE: f"coin.contrastive/{VERSION}"}
_TAG_KIND = {tag: kind for kind, tag in SCHEMA_TAGS.items()}

# Joins an instruction and a separate input into one prompt (see render_prompt).
INPUT_SEPARATOR = "\n\n"

CORE_KEYS = ("id", "task", "instruction", "input", "output", "template_id", "fields", "paraphrases", "group", "meta")

# Reasons a record is invalid (the keys of a ValidationReport's counts).
MISSING, EMPTY, WRONG_TYPE, UNDECODABLE, DUPLICATE, BAD_VERSION = (
    "missing field", "empty field", "wrong type", "undecodable line", "duplicate id", "unknown schema",
)


class DataError(CoinError):
    """One bad record: `source: line N: field 'F': expected ..., got ...` (one line)."""

    def __init__(self, source: str, line: int | None, field: str | None, expected: str,
                 got: Any = None, *, reason: str = WRONG_TYPE, unit: str = "line"):
        self.source, self.line, self.field, self.expected = source, line, field, expected
        self.reason, self.unit = reason, unit
        where = source if line is None else f"{source}: {unit} {line}"
        what = f"field '{field}': " if field else ""
        got_s = "" if got is None else f", got {_short(got)}"
        super().__init__(f"{where}: {what}expected {expected}{got_s}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def detect_kind(record: Mapping) -> str:
    """`contrastive` when the record says so (schema tag) or carries a group; else `instruction`."""
    tag = record.get("schema")
    if isinstance(tag, str) and tag in _TAG_KIND:
        return _TAG_KIND[tag]
    return CONTRASTIVE if "group" in record else INSTRUCTION


def validate_record(record: Any, kind: str = "auto", *, source: str = "<records>", line: int | None = None,
                    unit: str = "line") -> dict:
    """Check one record against its schema; return it in canonical form.

    `kind` is "instruction", "contrastive" or "auto" (see `detect_kind`). A contrastive record is
    also a valid instruction record (the extra keys are kept).
    """
    def fail(field, expected, got=None, reason=WRONG_TYPE):
        raise DataError(source, line, field, expected, got, reason=reason, unit=unit)

    if not isinstance(record, Mapping):
        fail(None, "a JSON object (one record)", _type_name(record))
    tag = record.get("schema")
    if tag is not None and tag not in _TAG_KIND:
        fail("schema", f"one of {', '.join(sorted(_TAG_KIND))}", tag, BAD_VERSION)
    if kind == "auto":
        kind = detect_kind(record)
    elif kind not in KINDS:
        raise ValueError(f"kind: expected auto, instruction or contrastive, got {kind!r}")

    def text(field, required=True):
        if field not in record or record[field] is None:
            if required:
                fail(field, "a non-empty string", None, MISSING)
            return ""
        value = record[field]
        if not isinstance(value, str):
            fail(field, "a string", _type_name(value))
        if required and not value.strip():
            fail(field, "a non-empty string", value, EMPTY)
        return value

    out: dict = {"schema": SCHEMA_TAGS[kind]}
    out["id"] = text("id")
    out["task"] = text("task")
    out["instruction"] = text("instruction")
    out["input"] = text("input", required=False)
    out["output"] = text("output")

    template_id = record.get("template_id")
    if template_id is not None:
        if isinstance(template_id, bool) or not isinstance(template_id, (int, str)):
            fail("template_id", "an integer, a string or null", _type_name(template_id))
        out["template_id"] = template_id

    fields = record.get("fields")
    if fields is not None:
        if not isinstance(fields, Mapping):
            fail("fields", "an object of template keywords to strings", _type_name(fields))
        clean = {}
        for key, value in fields.items():
            if value is None:  # Parquet structs fill absent keys with null
                continue
            if not isinstance(value, str):
                fail(f"fields.{key}", "a string", _type_name(value))
            clean[str(key)] = value
        out["fields"] = clean

    paras = record.get("paraphrases")
    if paras is None and kind == CONTRASTIVE:
        fail("paraphrases", "a list of at least one paraphrased instruction", None, MISSING)
    if paras is not None:
        if not isinstance(paras, (list, tuple)):
            fail("paraphrases", "a list of strings", _type_name(paras))
        if kind == CONTRASTIVE and not paras:
            fail("paraphrases", "a list of at least one paraphrased instruction", [], EMPTY)
        for i, p in enumerate(paras):
            if not isinstance(p, str):
                fail(f"paraphrases[{i}]", "a string", _type_name(p))
            if not p.strip():
                fail(f"paraphrases[{i}]", "a non-empty string", p, EMPTY)
        out["paraphrases"] = list(paras)

    if kind == CONTRASTIVE or "group" in record:
        out["group"] = text("group")

    meta = record.get("meta")
    if meta is not None:
        if not isinstance(meta, Mapping):
            fail("meta", "an object", _type_name(meta))
        out["meta"] = dict(meta)

    for key, value in record.items():  # other keys: kept, ignored
        if key not in out and key not in CORE_KEYS and key != "schema":
            out[key] = value
    return out


def render_prompt(record: Mapping, k: int | None = None) -> str:
    """The prompt for `record`: its instruction (k=None) or paraphrase k, with the input joined.

    The result is what `PromptFormat.render` wraps: `instruction` alone when the record has no
    separate input, else `instruction + INPUT_SEPARATOR + input`.
    """
    if k is None:
        instruction = record["instruction"]
    else:
        paras = record.get("paraphrases") or []
        if not 0 <= k < len(paras):
            raise IndexError(f"record {record.get('id')!r}: paraphrase {k} of {len(paras)}")
        instruction = paras[k]
    inp = record.get("input") or ""
    return f"{instruction}{INPUT_SEPARATOR}{inp}" if inp else instruction


def as_kind(record: Mapping, kind: str) -> dict:
    """The record re-tagged as `kind` (an augmented instruction record becoming contrastive)."""
    out = dict(record)
    out["schema"] = SCHEMA_TAGS[kind]
    return out
