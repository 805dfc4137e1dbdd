"""Record schemas: canonical form, every class of bad field, and the prompt render function."""
import pytest

from coin.data_tools.schema import (CONTRASTIVE, INSTRUCTION, SCHEMA_TAGS, DataError, detect_kind, render_prompt,
                                    validate_record)
from data_helpers import contrastive, record


def test_canonical_form_fills_defaults_and_tags_the_schema():
    rec = validate_record({"id": "a", "task": "t", "instruction": "Do it.", "output": "ok", "extra": 1})
    assert rec["schema"] == SCHEMA_TAGS[INSTRUCTION]
    assert rec["input"] == "" and rec["extra"] == 1
    assert list(rec)[:6] == ["schema", "id", "task", "instruction", "input", "output"]
    c = validate_record(contrastive(1))
    assert c["schema"] == SCHEMA_TAGS[CONTRASTIVE] and c["group"] == "g0"
    assert detect_kind(c) == CONTRASTIVE and detect_kind(record(1)) == INSTRUCTION


@pytest.mark.parametrize("change, field, reason", [
    ({"output": None}, "output", "missing field"),
    ({"instruction": "   "}, "instruction", "empty field"),
    ({"id": 7}, "id", "wrong type"),
    ({"task": ["sst2"]}, "task", "wrong type"),
    ({"input": 3}, "input", "wrong type"),
    ({"template_id": 1.5}, "template_id", "wrong type"),
    ({"template_id": True}, "template_id", "wrong type"),
    ({"fields": {"sentence": 3}}, "fields.sentence", "wrong type"),
    ({"fields": "sentence"}, "fields", "wrong type"),
    ({"paraphrases": "p"}, "paraphrases", "wrong type"),
    ({"paraphrases": ["ok", 2]}, "paraphrases[1]", "wrong type"),
    ({"paraphrases": ["ok", " "]}, "paraphrases[1]", "empty field"),
    ({"meta": []}, "meta", "wrong type"),
    ({"schema": "coin.instruction/9"}, "schema", "unknown schema"),
])
def test_each_bad_field_is_named(change, field, reason):
    rec = record(3)
    for key, value in change.items():
        if value is None:
            rec.pop(key)
        else:
            rec[key] = value
    with pytest.raises(DataError) as err:
        validate_record(rec, source="data.jsonl", line=12)
    e = err.value
    assert (e.field, e.reason, e.line) == (field, reason, 12)
    assert str(e).startswith(f"data.jsonl: line 12: field '{field}': expected")
    assert "\n" not in str(e)


def test_contrastive_needs_paraphrases_and_group():
    for change, field in (({"paraphrases": []}, "paraphrases"), ({"group": ""}, "group")):
        rec = contrastive(1)
        rec.update(change)
        with pytest.raises(DataError, match=f"field '{field}'"):
            validate_record(rec, CONTRASTIVE)
    rec = contrastive(1)
    del rec["paraphrases"]
    with pytest.raises(DataError, match="field 'paraphrases'"):
        validate_record(rec, CONTRASTIVE)
    with pytest.raises(DataError, match="expected a JSON object"):
        validate_record(["not", "a", "record"])


def test_render_prompt_joins_instruction_and_input():
    merged = {"instruction": "Sentence: fine.\nPositive or negative?", "paraphrases": ["Sentiment? Sentence: fine."]}
    assert render_prompt(merged) == merged["instruction"]
    assert render_prompt(merged, 0) == "Sentiment? Sentence: fine."
    rec = contrastive(1)
    assert render_prompt(rec) == rec["instruction"] + "\n\n" + rec["input"]
    assert render_prompt(rec, 0) == rec["paraphrases"][0] + "\n\n" + rec["input"]
    with pytest.raises(IndexError):
        render_prompt(rec, 1)
