"""What a paraphrase backend rewrites for one record (its *unit*) and what must survive.

A paraphrase must change the instruction, never the instance. So a backend does not rewrite the
rendered prompt; it rewrites the record's unit:

- `template`: the instruction template with `{placeholders}` for the instance's fields, when the
  record's template is known (template_id + a templates file, or a template matched in the
  file, or the record's `fields` substituted back into its text). The paraphrased template is
  rendered with the same fields, so the input text is never touched.
- `instruction`: the instruction alone, when the record keeps its input in `input`.
- `whole`: the full instruction with the input rendered in and no template known; only with
  `allow_input_edits` (otherwise the record gets no unit and is counted as `no_unit`).

Protected items, checked by the `lost_protected` filter: every placeholder of the unit, and the
label words: the answer options (FLAN `OPTIONS:` lists or `options_` field), the output when it
is at most three words, and the caller's words (`coin augment` adds every task's label words,
the distinct short outputs of the task, and `--protect` words), as far as they appear in the
unit text outside placeholders (whole words, case-insensitive).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .templates import PLACEHOLDER, TemplateSet, parse_options, placeholders, render, skeleton, template_index

TEMPLATE, INSTRUCTION, WHOLE = "template", "instruction", "whole"


@dataclass
class Unit:
    """The text a backend paraphrases for one record, and how to turn a paraphrase of it back
    into a paraphrased instruction (`finish`)."""

    record: dict
    kind: str
    text: str
    fields: dict | None = None
    template_id: int | None = None
    from_file: bool = False  # the template is entry `template_id` of the templates file
    protected: list[str] = field(default_factory=list)

    @property
    def placeholders(self) -> Counter:
        """`{name}` placeholders of the unit (a bare instruction may carry some too, e.g. `{content}`)."""
        return Counter(placeholders(self.text))

    def finish(self, paraphrased: str) -> str | None:
        """The paraphrased instruction, or None when a template paraphrase names an unknown field."""
        if self.kind != TEMPLATE:
            return paraphrased
        try:
            return render(paraphrased, self.fields or {})
        except KeyError:
            return None


def word_present(word: str, text: str) -> bool:
    """`word` occurs in `text` as a whole word (or phrase), case-insensitively."""
    return re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text, re.IGNORECASE) is not None


def label_words(record: Mapping, fields: Mapping | None, extra: Iterable[str] = ()) -> list[str]:
    """Label words of a record: its options, its output when short, and `extra` words."""
    words: list[str] = []
    options_field = (fields or {}).get("options_")
    words += parse_options(options_field) if options_field else parse_options(record["instruction"])
    output = record.get("output", "").strip()
    if output and len(output.split()) <= 3:
        words.append(output)
    words += [w for w in extra if w]
    seen, out = set(), []
    for w in words:
        if w.lower() not in seen:
            seen.add(w.lower())
            out.append(w)
    return out


def _template_from_fields(record: Mapping) -> tuple[str, dict] | None:
    """Skeleton of the instruction from the record's own fields (answer-like fields excluded)."""
    fields = record.get("fields") or {}
    usable = {k: v for k, v in fields.items() if v and v.strip() != record["output"].strip() and len(v) > 1}
    if not usable:
        return None
    text = skeleton(record["instruction"], usable)
    try:
        if text == record["instruction"] or render(text, fields) != record["instruction"]:
            return None
    except KeyError:
        return None
    return text, dict(fields)


def make_unit(record: dict, templates: TemplateSet | None = None, *, allow_input_edits: bool = False,
              protect: Iterable[str] = ()) -> Unit | None:
    """The unit of `record` (see the module doc), or None when it has none."""
    unit = None
    if not record.get("input"):
        hint = template_index(record.get("template_id"))
        if templates is not None and record["task"] in templates:
            fields = record.get("fields")
            found = None
            if fields and hint is not None and hint < len(templates.get(record["task"])):
                full = templates.complete_fields(record["task"], hint, fields, record["output"])
                if full is not None and render(templates.get(record["task"])[hint][0], full) == record["instruction"]:
                    found = (hint, full)
            if found is None:
                found = templates.match(record["task"], record["instruction"], record["output"], hint)
            if found is not None:
                j, full = found
                unit = Unit(record, TEMPLATE, templates.get(record["task"])[j][0], full, j, from_file=True)
        if unit is None:
            derived = _template_from_fields(record)
            if derived is not None:
                unit = Unit(record, TEMPLATE, derived[0], derived[1], hint)
    if unit is None:
        if record.get("input"):
            unit = Unit(record, INSTRUCTION, record["instruction"])
        elif allow_input_edits:
            unit = Unit(record, WHOLE, record["instruction"])
        else:
            return None
    # Label words inside placeholders are protected by the placeholder itself.
    visible = PLACEHOLDER.sub(" ", unit.text)
    unit.protected = [w for w in label_words(record, unit.fields, protect) if word_present(w, visible)]
    return unit
