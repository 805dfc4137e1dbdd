"""Templates files in the flan_v2_patterns.json format: loading, rendering, inverting; the
templates backend on the real FLAN v2 patterns."""
import random

import pytest

from coin.data_tools.augment import Augmenter, with_aliases
from coin.data_tools.backends import make_backend
from coin.data_tools.filters import FilterConfig
from coin.data_tools.shards import ShardSpec
from coin.data_tools.templates import (TemplateError, TemplateSet, options_text, parse_options, placeholders, render,
                                       skeleton)
from data_helpers import read_jsonl, write_jsonl


def test_render_placeholders_options_and_skeleton():
    tpl = 'Premise: {premise}\n"{hypothesis}"? {premise}\n{options_}'
    fields = {"premise": "A {brace} stays.", "hypothesis": "It holds", "options_": options_text(["no", "yes"])}
    text = render(tpl, fields)
    assert text == 'Premise: A {brace} stays.\n"It holds"? A {brace} stays.\nOPTIONS:\n- no\n- yes'
    assert placeholders(tpl) == ["premise", "hypothesis", "premise", "options_"]
    assert parse_options(text) == ["no", "yes"] and parse_options("no options") == []
    assert skeleton(text, fields) == tpl
    with pytest.raises(KeyError):
        render(tpl, {"premise": "p"})


def test_bad_templates_files_are_named(tmp_path):
    cases = [("[1, 2]", "expected a JSON object"), ('{"rte": []}', "task 'rte': expected a non-empty list"),
             ('{"rte": [["only one"]]}', "task 'rte' template 0: expected [input_template, output_template]"),
             ("{not json", "not valid JSON")]
    for text, message in cases:
        path = tmp_path / "t.json"
        path.write_text(text)
        with pytest.raises(TemplateError, match=message.replace("[", r"\[").replace("]", r"\]")):
            TemplateSet.load(str(path))
    with pytest.raises(TemplateError, match="does not exist"):
        TemplateSet.load(str(tmp_path / "none.json"))


def _flan_instances():
    opts2, opts3 = options_text(["no", "yes"]), options_text(["yes", "it is not possible to tell", "no"])
    return {
        "rte": {"premise": "The museum opened a new wing for modern art in May.",
                "hypothesis": "The museum has a modern art wing.", "options_": opts2, "answer": "yes"},
        "sst2": {"sentence": "a warm, funny and beautifully shot film", "options_": options_text(["negative", "positive"]),
                 "answer": "positive"},
        "glue_mrpc": {"sentence1": "Profit rose 5 percent on Monday.", "sentence2": "On Monday profit grew 5 percent.",
                      "options_": opts2, "answer": "yes"},
        "mnli": {"premise": "A man plays a guitar on stage.", "hypothesis": "A person makes music.",
                 "options_": opts3, "answer": "yes"},
    }


def test_match_inverts_every_flan_template(shared_data):
    templates = TemplateSet.load(str(shared_data / "flan" / "flan_v2_patterns.json"))
    assert len(templates.tasks()) == 97
    for task, fields in _flan_instances().items():
        for j, (inp, out) in enumerate(templates.get(task)):
            try:
                instruction, output = render(inp, fields), render(out, fields)
            except KeyError:
                continue  # a template needing other fields
            found = templates.match(task, instruction, output, hint=j)
            assert found is not None, (task, j)
            k, got = found
            assert render(templates.get(task)[k][0], got) == instruction


def test_alternatives_keep_the_output_and_skip_generation_templates(shared_data):
    templates = TemplateSet.load(str(shared_data / "flan" / "flan_v2_patterns.json"))
    fields = _flan_instances()["sst2"]
    alts = templates.alternatives("sst2", 0, fields, "positive", render(templates.get("sst2")[0][0], fields))
    used = {j for j, _ in alts}
    assert 0 not in used and len(used) == 7
    for j, (inp, out) in enumerate(templates.get("sst2")):
        if out != "{answer}":  # "Write a {answer} movie review" -> {sentence}: another task
            assert j not in used


def test_templates_backend_on_the_flan_patterns(shared_data, tmp_path):
    templates = with_aliases(TemplateSet.load(str(shared_data / "flan" / "flan_v2_patterns.json")), {"mrpc": "glue_mrpc"})
    rng = random.Random(0)
    rows = []
    for i, (task, fields) in enumerate(_flan_instances().items()):
        task = "mrpc" if task == "glue_mrpc" else task
        j = rng.randrange(3)
        inp, out = templates.get(task)[j]
        # FLAN-style records without fields: the unit is found by matching the rendered text
        rows.append({"id": f"x{i}", "task": task, "instruction": render(inp, fields), "output": render(out, fields)})
    path = write_jsonl(tmp_path / "flan.jsonl", rows)
    backend = make_backend("templates", templates=templates, seed=3)
    aug = Augmenter(path, backend, templates=templates, filters=FilterConfig(num_paraphrases=3),
                    similarity_model="none", show_progress=False)
    summary = aug.run_shard(str(tmp_path / "out"), ShardSpec(0, 1))
    out = read_jsonl(tmp_path / "out" / "shard-00000-of-00001.jsonl")
    assert summary["counts"]["totals"]["kept"] == 12 and len(out) == 4
    for rec, (task, fields) in zip(out, _flan_instances().items()):
        assert len(rec["paraphrases"]) == 3 and rec["instruction"] not in rec["paraphrases"]
        for p in rec["paraphrases"]:
            for name, value in fields.items():
                if name != "answer":
                    assert value in p, (task, name)  # the instance is untouched, options included
