"""Instruction files as users have them: our layout (task -> attack -> list) and the CoIN paper's /
PromptBench's (attack -> task -> list), detected or chosen; task keys in users' spellings (`SST-2`,
`mnli` for both MNLI sets); unknown keys in a warning; `--attacks` naming an attack a file lacks."""
import json

import pytest

from coin.eval.instructions import (
    InstructionFileError, check_requested_attacks, load_instruction_file, resolve_instructions,
)
from coin.eval.tasks import TaskError, get_task

TASKS = ("sst2", "cola", "mnli_matched", "mnli_mismatched")
PAPER_ATTACKS = ("clean", "checklist", "deepwordbug", "textfooler", "semantic")


def _texts(task, attack):
    words = {"sst2": "'positive' or 'negative'", "cola": "'acceptable' or 'unacceptable'",
             "mnli": "'entailment', 'neutral' or 'contradiction'"}[task]
    return [f"{attack} instruction {i} for {task}: answer {words}." for i in range(6)]


def _family(key):
    return "".join(c for c in key.lower() if c.isalnum())


def paper_file(path, keys=("sst2", "cola", "mnli")):
    """The CoIN paper's released evaluation instructions: attack -> task -> 6 instructions."""
    data = {attack: {key: _texts(_family(key), attack) for key in keys} for attack in PAPER_ATTACKS}
    path.write_text(json.dumps(data, indent=1))
    return str(path)


def ours_file(path, keys=("sst2", "cola", "mnli")):
    data = {key: {attack: _texts(_family(key), attack) for attack in PAPER_ATTACKS} for key in keys}
    path.write_text(json.dumps({"format": "coin-instructions/1", "tasks": data}, indent=1))
    return str(path)


def _specs(names=TASKS):
    return {t: get_task(t) for t in names}


def _table(iset):
    return sorted((i.task, i.attack, i.index, i.text) for i in iset)


def test_both_layouts_load_as_given_and_agree(tmp_path):
    paper = resolve_instructions(paper_file(tmp_path / "paper.json"), _specs(), n_instructions=None)
    ours = resolve_instructions(ours_file(tmp_path / "ours.json"), _specs(), n_instructions=None)
    assert _table(paper) == _table(ours)
    assert paper.tasks == list(TASKS)
    assert paper.attacks("sst2") == list(PAPER_ATTACKS[:1]) + ["deepwordbug", "textfooler", "checklist", "semantic"]
    assert len(paper.for_task("cola")) == 6 * 5
    # `mnli` serves both MNLI sets, with the same instructions
    assert [i.text for i in paper.for_task("mnli_matched")] == [i.text for i in paper.for_task("mnli_mismatched")]
    assert paper.for_task("mnli_matched")[0].text.startswith("clean instruction 0 for mnli")
    # chosen explicitly: the same set; the wrong choice says the file looks transposed
    assert _table(resolve_instructions(str(tmp_path / "paper.json"), _specs(), n_instructions=None,
                                       layout="attack-task")) == _table(paper)
    with pytest.raises(InstructionFileError, match=r"tasks.clean: unknown attack 'sst2'.*looks transposed.*"
                                                   r"--instruction-layout attack-task"):
        load_instruction_file(str(tmp_path / "paper.json"), layout="task-attack")


def test_a_file_mixing_attacks_and_tasks_at_the_top_is_refused(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"clean": {"sst2": ["a"]}, "sst2": {"clean": ["b"]}}))
    with pytest.raises(InstructionFileError, match=r"cannot tell the layout.*mix attack names \(clean\).*"
                                                   r"--instruction-layout"):
        load_instruction_file(str(path))
    path.write_text(json.dumps({"sst2": {"chinese": ["a"], "french": ["b"]}}))  # semantic_prompts.json's shape
    with pytest.raises(InstructionFileError, match=r"unknown attack 'chinese'.*semantic_prompts.json.*promptbench:"):
        load_instruction_file(str(path))


@pytest.mark.parametrize("key", ["SST-2", "SST2", "sst_2", "Sst2"])
def test_task_keys_in_users_spellings(tmp_path, key):
    iset = resolve_instructions(paper_file(tmp_path / "p.json", keys=(key, "CoLA")), _specs(("sst2", "cola")))
    assert iset.tasks == ["sst2", "cola"] and len(iset.for_task("sst2")) == 30


def test_exact_names_win_and_two_spellings_of_one_task_are_an_error(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"mnli": ["Generic {content} entailment, neutral or contradiction?"],
                                "mnli_matched": ["Matched {content} entailment, neutral or contradiction?"]}))
    iset = resolve_instructions(str(path), _specs(("mnli_matched", "mnli_mismatched")))
    assert iset.for_task("mnli_matched")[0].text.startswith("Matched")
    assert iset.for_task("mnli_mismatched")[0].text.startswith("Generic")
    path.write_text(json.dumps({"SST-2": ["a {content}"], "sst_2": ["b {content}"]}))
    with pytest.raises(TaskError, match="keys 'SST-2' and 'sst_2' both name task 'sst2'"):
        resolve_instructions(str(path), _specs(("sst2",)))


def test_keys_naming_no_task_are_listed_in_one_warning(tmp_path, capsys):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"sst2": ["Say positive or negative: {content}"], "squad_v2": ["Answer: {content}"],
                                "math": ["Solve {content}"], "cola": ["Acceptable or unacceptable? {content}"]}))
    iset = resolve_instructions(str(path), _specs(("sst2",)))
    assert iset.tasks == ["sst2"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"coin eval: warning: {path}: ignoring key(s) that name no task: squad_v2, math"]  # not cola


def test_attacks_the_file_lacks_are_an_error_naming_what_it_has(tmp_path):
    path = paper_file(tmp_path / "p.json")
    iset = resolve_instructions(path, _specs(("sst2",)), attacks=["bertattack", "stresstest"])
    assert iset.attacks("sst2") == ["clean"]
    with pytest.raises(InstructionFileError, match=r"--attacks bertattack: .* has no bertattack instructions for task "
                                                   r"'sst2' \(it has: clean\)"):
        check_requested_attacks(iset, "bertattack,stresstest")
    full = resolve_instructions(path, _specs(("sst2",)))
    check_requested_attacks(full, "word,semantic")  # a level: one of its attacks is enough (textfooler)
    check_requested_attacks(full, "all")
    with pytest.raises(InstructionFileError, match=r"--attacks stresstest: .*\(it has: clean, deepwordbug, textfooler, "
                                                   r"checklist, semantic\)"):
        check_requested_attacks(full, "textfooler,stresstest")


def test_promptbench_task_pool_as_clean_instructions(shared_data, capsys):
    """PromptBench's task_oriented_prompts.json (task -> list, GLUE and other tasks) as the clean
    instructions of the generator: the GLUE keys are used, the others listed once."""
    path = str(shared_data / "promptbench" / "task_oriented_prompts.json")
    iset = resolve_instructions(f"generated:{path}", _specs(("sst2", "mnli_matched")), attacks=["checklist"],
                                n_instructions=2)
    assert iset.attacks("sst2") == ["clean", "checklist"] and len(iset.for_task("mnli_matched")) == 4
    warning = capsys.readouterr().err
    assert warning.count("warning:") == 1 and "valid_parentheses" in warning and "sst2" not in warning


@pytest.mark.parametrize("attacks", [[], ["clean"]])
def test_generated_clean_only_keeps_the_clean_instructions(tmp_path, attacks):
    """`--attacks clean` with `generated:FILE`: the file's clean instructions, and nothing else."""
    path = tmp_path / "clean.json"
    path.write_text(json.dumps({"sst2": _texts("sst2", "clean")[:3]}))
    iset = resolve_instructions(f"generated:{path}", _specs(("sst2",)), attacks=attacks, n_instructions=0)
    assert _table(iset) == [("sst2", "clean", i, t) for i, t in enumerate(_texts("sst2", "clean")[:3])]
