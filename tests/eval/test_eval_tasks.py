"""Task specs: input formats, label words and ids (METHOD.md), prompts, adding a task, bad input."""
import json

import pytest

from coin.eval.tasks import (
    ATTACK_LEVEL, ATTACKS, GLUE_TASKS, TASKS, TaskError, TaskSpec, check_instruction, default_instructions,
    get_task, label_word_overrides, load_task_file, parse_tasks, register_task, render_prompt, semantic_pool,
)

# METHOD.md: input formats and label words (index = label id of the HF `glue` dataset)
EXPECTED = {
    "sst2": ("Sentence: s1", ["negative", "positive"]),
    "cola": ("Sentence: s1", ["unacceptable", "acceptable"]),
    "qqp": ("Question 1: s1 Question 2: s2", ["not_equivalent", "equivalent"]),
    "mrpc": ("Sentence 1: s1 Sentence 2: s2", ["not_equivalent", "equivalent"]),
    "mnli_matched": ("Premise: s1 Hypothesis: s2", ["entailment", "neutral", "contradiction"]),
    "mnli_mismatched": ("Premise: s1 Hypothesis: s2", ["entailment", "neutral", "contradiction"]),
    "qnli": ("Question: s1 Context: s2", ["entailment", "not_entailment"]),
    "rte": ("Sentence 1: s1 Sentence 2: s2", ["entailment", "not_entailment"]),
    "wnli": ("Sentence 1: s1 Sentence 2: s2", ["not_entailment", "entailment"]),  # entailment is label 1
}


def _example(spec, label=0):
    return {c: f"s{i + 1}" for i, c in enumerate(spec.columns)} | {"label": label}


@pytest.mark.parametrize("name", GLUE_TASKS)
def test_every_task_spec_matches_method(name):
    spec = get_task(name)
    fmt, words = EXPECTED[name]
    assert spec.format_input(_example(spec)) == fmt
    assert list(spec.label_words) == words
    instructions = default_instructions(spec)
    assert len(instructions) == 6 and len(set(instructions)) == 6
    for text in instructions + semantic_pool(spec):
        check_instruction(spec, text, "builtin")
        for w in words:  # every built-in instruction names every label word
            assert w in text, (name, text)
    prompt = render_prompt(spec, instructions[0], _example(spec))
    assert prompt == instructions[0] + "\n\n" + fmt  # as training joins instruction and input


def test_all_is_the_nine_glue_tasks_and_mnli_joins_both_sets():
    assert [s.name for s in parse_tasks("all")] == list(EXPECTED)
    assert [s.name for s in parse_tasks("sst2, cola,sst2")] == ["sst2", "cola"]
    mnli = get_task("mnli")
    assert mnli.split == "validation_matched+validation_mismatched" and mnli.glue_config == "mnli"
    assert set(ATTACK_LEVEL.values()) == {"clean", "character", "word", "sentence", "semantic"}
    assert len(ATTACKS) == 7


def test_unknown_task_is_a_clear_error():
    with pytest.raises(TaskError, match="unknown task 'sst-2'.*known: .*sst2"):
        parse_tasks("sst2,sst-2")


def test_placeholders_fill_content_columns_aliases_and_options():
    rte = get_task("rte")
    ex = {"sentence1": "A  man\tsleeps.", "sentence2": "Someone rests.", "label": 0}
    assert render_prompt(rte, "Read:\n{content}\nAnswer:", ex) == "Read:\nSentence 1: A man sleeps. Sentence 2: Someone rests.\nAnswer:"
    flan = "{premise}\n\nCan we conclude \"{hypothesis}\"?\n{options_}"
    assert render_prompt(rte, flan, ex) == (
        "A man sleeps.\n\nCan we conclude \"Someone rests.\"?\nOPTIONS:\n- entailment\n- not_entailment")
    # field placeholders count as the input: nothing is appended
    assert render_prompt(rte, "{sentence1} / {sentence2}", ex) == "A man sleeps. / Someone rests."
    with pytest.raises(TaskError, match=r"unknown placeholder\(s\) \{question\} for task 'rte'"):
        check_instruction(rte, "Answer {question}", "x.json: tasks.rte.clean[0]")


def test_adding_a_task_by_spec_file(tmp_path):
    spec = {"name": "toxicity", "columns": ["text"], "display": ["Comment"], "label_words": ["clean", "toxic"],
            "tsv_file": "dev.tsv", "tsv_columns": {"text": "comment"}}
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([spec]))
    try:
        (added,) = load_task_file(str(path))
        assert get_task("toxicity") is added
        assert added.format_input({"text": "hi there", "label": 1}) == "Comment: hi there"
        assert all("'clean'" in t and "'toxic'" in t for t in default_instructions(added))  # generic wording
    finally:
        TASKS.pop("toxicity", None)
    with pytest.raises(TaskError, match="missing key 'label_words'"):
        TaskSpec.from_dict({"name": "x", "columns": ["a"], "display": ["A"]})
    with pytest.raises(TaskError, match="distinct"):
        TaskSpec(name="x", columns=("a",), display=("A",), label_words=("yes", "Yes"))
    with pytest.raises(TaskError, match="already registered"):
        register_task(TaskSpec(name="sst2", columns=("a",), display=("A",), label_words=("no", "yes")))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x",\n "columns": ]')
    with pytest.raises(TaskError, match="bad.json: line 2"):
        load_task_file(str(bad))


def test_label_word_override_changes_instructions_too():
    spec = get_task("sst2").with_label_words(label_word_overrides(["sst2=bad,good"])["sst2"])
    assert spec.label_words == ("bad", "good")
    assert all("'good'" in t and "'bad'" in t for t in default_instructions(spec))
    with pytest.raises(TaskError, match="expected 2 words"):
        get_task("sst2").with_label_words(["a", "b", "c"])
    with pytest.raises(TaskError, match="TASK=word0"):
        label_word_overrides(["sst2"])


def test_an_instruction_without_placeholders_is_joined_to_its_input_as_training_joins_them():
    """Training renders `instruction + "\\n\\n" + input` (data_tools.schema); eval must match it."""
    from coin.data_tools.schema import render_prompt as training_prompt

    spec = get_task("sst2")
    record = {"instruction": "Is this review positive?", "input": "Sentence: a fine film"}
    example = {"sentence": "a fine film", "label": 1}
    assert render_prompt(spec, record["instruction"], example) == training_prompt(record)
