"""The PromptBench importer on the real files in ../shared/data/promptbench (every file parsed,
counts per dataset and attack checked against independent counts of the raw text), and clear
errors for files out of grammar."""
import collections
import json
import os

import pytest

from coin.eval.promptbench import (
    PB_ATTACKS, VICTIMS, PromptFileError, load_prompt_pool, load_semantic_prompts, parse_adv_markdown,
    promptbench_instruction_set,
)
from coin.eval.tasks import GLUE_TASKS, get_task

GLUE = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "wnli"]
OTHERS = ["mmlu", "squad_v2", "iwslt", "un_multi", "math"]
# What the published files hold beyond the regular grammar (line: what the parser did).
IRREGULAR = {
    "chatgpt_fewshot": {173: "skipped stray", 2987: "skipped stray"},
    "chatgpt_zeroshot": {},
    "t5_fewshot": {1142: "skipped incomplete record"},
    "t5_zeroshot": {1255: "skipped stray"},
    "ul2_fewshot": {3118: "split 2"},
    "ul2_zeroshot": {2237: "skipped stray"},
    "vicuna_fewshot": {327: "split 3", 329: "split 3", 331: "split 3", 333: "split 3", 335: "split 3",
                       337: "split 3", 1946: "split 2"},
    "vicuna_zeroshot": {328: "split 3", 330: "split 3", 332: "split 3", 334: "split 3", 336: "split 3",
                        338: "split 3", 949: "split 3", 951: "split 3", 953: "split 3"},
}


@pytest.fixture(scope="module")
def parsed(shared_data):
    root = shared_data / "promptbench" / "adv_prompts"
    return {v: parse_adv_markdown(str(root / f"{v}.md")) for v in VICTIMS}


@pytest.mark.parametrize("victim", VICTIMS)
def test_every_adv_file_parses_with_the_expected_counts(victim, parsed, shared_data):
    adv = parsed[victim]
    raw = (shared_data / "promptbench" / "adv_prompts" / f"{victim}.md").read_text(encoding="utf-8")
    assert {line: what[: len(IRREGULAR[victim][line])] for line, what in adv.irregular} == IRREGULAR[victim]
    incomplete = sum("incomplete" in what for _, what in adv.irregular)
    records = [r for d in adv.datasets.values() for rs in d.attacks.values() for r in rs]
    assert len(records) == raw.count("Attacked prompt:") - incomplete
    assert len([p for d in adv.datasets.values() for p in d.prompts]) == raw.count("Acc: ") - sum(
        "stray line 'Acc:" in w for _, w in adv.irregular)
    assert set(GLUE + OTHERS) <= set(adv.datasets)
    for name in GLUE:
        d = adv.datasets[name]
        assert sorted(d.attacks) == sorted(PB_ATTACKS), (victim, name)
        for attack, recs in d.attacks.items():
            expected = 5 if (victim, name, attack) == ("t5_fewshot", "qqp", "textfooler") else 6
            assert len(recs) == expected, (victim, name, attack)
            for r in recs:
                assert r.original and r.attacked and 0 <= r.original_acc <= 100
        assert 19 <= len(d.prompts) <= 21
        if victim.startswith("vicuna") and name == "mnli":
            assert d.translations == []  # the published file has no translation block there
        else:
            langs = collections.Counter(lang for lang, *_ in d.translations)
            assert sorted(langs) == ["arabic", "chinese", "french", "japanese", "korean", "spanish"]
            assert len(d.translations) == (61 if (victim, name) == ("ul2_zeroshot", "mnli") else 60)
        assert len(d.clean_prompts()) >= 6
    if victim.startswith("vicuna"):  # the vicuna files hold no records for these
        assert all(not any(adv.datasets[n].attacks.values()) for n in ("squad_v2", "iwslt", "un_multi", "math"))


def test_attacked_prompts_are_decoded_as_utf8(parsed):
    rec = parsed["t5_zeroshot"].datasets["cola"].attacks["textbugger"][0]
    assert rec.original.startswith("Assess the following sentence")
    assert "senten\u03f2e" in rec.attacked and rec.attacked.endswith("'Unacceptable':")
    assert (rec.original_acc, rec.attacked_acc) == (78.0, 59.4)
    joined = parsed["vicuna_fewshot"].datasets["mnli"].attacks["deepwordbug"][0]  # repaired from one line
    assert joined.original.startswith("Assess the connection") and joined.attacked.startswith("Assess the cqnnection")


def test_strict_mode_rejects_the_stray_lines(shared_data):
    with pytest.raises(PromptFileError, match=r"t5_zeroshot.md: line 1255: unexpected 'O'"):
        parse_adv_markdown(str(shared_data / "promptbench" / "adv_prompts" / "t5_zeroshot.md"), strict=True)


def test_prompt_pools(shared_data):
    root = shared_data / "promptbench"
    for name in ("task_oriented_prompts.json", "role_oriented_prompts.json"):
        pool = load_prompt_pool(str(root / name))
        assert len(pool) == 15 and set(GLUE) <= set(pool)
        assert all(10 <= len(pool[t]) <= 11 for t in GLUE)
    semantic = load_semantic_prompts(str(root / "semantic_prompts.json"))
    assert len(semantic) == 13 and set(GLUE) <= set(semantic)
    assert all(len(langs) == 6 and all(len(p) == 10 for p in langs.values()) for langs in semantic.values())


@pytest.mark.parametrize("victim", VICTIMS)
def test_instruction_sets_of_every_victim(victim, parsed, shared_data):
    specs = {t: get_task(t) for t in GLUE_TASKS}
    iset = promptbench_instruction_set(str(shared_data / "promptbench"), specs, victim=victim)
    iset.validate(specs)
    semantic = json.loads((shared_data / "promptbench" / "semantic_prompts.json").read_text())
    for task, spec in specs.items():
        items = iset.for_task(task)
        clean = [i.text for i in items if i.attack == "clean"]
        assert len(clean) == 6
        counts = collections.Counter(i.attack for i in items)
        assert counts["semantic"] == 6
        assert all(3 <= counts[a] <= 6 for a in PB_ATTACKS), counts
        records = parsed[victim].datasets[spec.promptbench].attacks
        for ins in items:
            if ins.attack in PB_ATTACKS:  # variant i is the attacked form of clean prompt i
                assert any(r.original == clean[ins.index] and r.attacked == ins.text for r in records[ins.attack])
            if ins.attack == "semantic":
                assert ins.text == list(semantic[spec.promptbench].values())[ins.index][0]


def test_a_file_out_of_grammar_is_a_clear_error(tmp_path):
    def parse(text):
        path = tmp_path / "adv.md"
        path.write_text(text)
        return parse_adv_markdown(str(path))

    with pytest.raises(PromptFileError, match=r"adv.md: line 1: expected a '# <dataset>' heading first"):
        parse("hello\n# sst2\n")
    with pytest.raises(PromptFileError, match=r"adv.md: line 3: unknown section 'typos'"):
        parse("# sst2\n\n## typos\n")
    with pytest.raises(PromptFileError, match=r"adv.md: line 6: 'Attacked prompt:' expected a Python bytes literal"):
        parse("# sst2\n\n## checklist\n\nOriginal prompt: Say it.\nAttacked prompt: Say it now.\n")
    with pytest.raises(PromptFileError, match=r"adv.md: line 4: expected 'Acc: <x>%, prompt: <text>'"):
        parse("# sst2\n\n## 10 prompts\nAcc: high, prompt: x\n")
    with pytest.raises(PromptFileError, match="no PromptBench sections found"):
        parse("# title\n\n")
    ok = parse("# sst2\n## checklist\nOriginal prompt: Say 'positive' or 'negative':\n"
               "Attacked prompt: b\"Say 'positive' or 'negative' \\xcf\\xb2x:\"\n"
               "Original acc: 50.00%, attacked acc: 40.00%, dropped acc: 10.00%\n")
    assert ok.datasets["sst2"].attacks["checklist"][0].attacked == "Say 'positive' or 'negative' \u03f2x:"
    with pytest.raises(PromptFileError, match="no adv_prompts/nobody.md"):
        promptbench_instruction_set(str(tmp_path), {"sst2": get_task("sst2")}, victim="nobody")
    assert os.path.isfile(tmp_path / "adv.md")
