"""`coin eval` end to end on the tiny model, and every kind of bad input as a one-line error (exit 2)."""
import json
import os

from coin.cli import main

from eval_fixtures import write_jsonl, word_level_model


def _base(model, data, out):
    return ["eval", "--model", model, "--data", data, "--n-examples", "4", "--n-instructions", "2",
            "--out", out, "--no-progress", "--representation", "none"]


def test_coin_eval_end_to_end(tiny_model_dir, glue_dir, tmp_path, capsys):
    data, _ = glue_dir
    out = str(tmp_path / "out")
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps({"sst2": ["Review:\n{sentence}\nIs this sentence negative or positive?\n{options_}"],
                                 "wnli": ["Does sentence 2 follow? Say 'entailment' or 'not_entailment'."]}))
    argv = _base(tiny_model_dir, data, out) + ["--tasks", "sst2,wnli", "--instructions", f"generated:{clean}",
                                               "--attacks", "sentence,semantic", "--scoring", "generate",
                                               "--max-new-tokens", "3", "--model-name", "tiny"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "tiny: clean" in printed
    assert {"results.json", "predictions.jsonl", "report.md", "instructions.json", "accuracy_by_level.png",
            "accuracy_by_task.png"} <= set(os.listdir(out))
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["settings"]["scoring"] == "generate" and results["settings"]["attacks"] == \
        ["checklist", "stresstest", "semantic"]
    rows = results["models"]["tiny"]["tasks"]["sst2"]["instructions"]
    assert [r["key"] for r in rows] == ["clean/0", "checklist/0", "stresstest/0", "semantic/0"]
    assert "{sentence}" in rows[0]["text"] and "{sentence}" in rows[1]["text"]
    instructions = json.load(open(os.path.join(out, "instructions.json")))
    assert instructions["format"] == "coin-instructions/1"
    assert set(instructions["tasks"]["wnli"]) == {"clean", "checklist", "stresstest", "semantic"}


def test_only_instructions_and_reusing_them(tiny_model_dir, glue_dir, tmp_path):
    data, _ = glue_dir
    out = str(tmp_path / "gen")
    assert main(_base(tiny_model_dir, data, out) + ["--tasks", "cola", "--only-instructions", "--attacks", "all"]) == 0
    assert os.listdir(out) == ["instructions.json"]
    path = os.path.join(out, "instructions.json")
    again = str(tmp_path / "again")
    assert main(_base(tiny_model_dir, data, again) + ["--tasks", "cola", "--instructions", path]) == 0
    assert json.load(open(os.path.join(again, "instructions.json")))["tasks"] == json.load(open(path))["tasks"]


def _error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any model-loading progress bars
    assert err.startswith("coin eval: error: "), err
    return err


def test_bad_input_is_a_clear_error(tiny_model_dir, glue_dir, tmp_path, capsys):
    data, _ = glue_dir
    base = _base(tiny_model_dir, data, str(tmp_path / "out"))
    assert "unknown task 'sst3'" in _error(base + ["--tasks", "sst2,sst3"], capsys)

    wl = word_level_model(str(tmp_path / "wl"), ["negative", "Sentence", ":"])
    err = _error(_base(wl, data, str(tmp_path / "o2")) + ["--tasks", "sst2"], capsys)
    assert "task 'sst2': label word 'positive' tokenises to the unknown token" in err

    bad = tmp_path / "bad.json"
    bad.write_text('{"sst2": {\n  "clean": ["Say it."],\n  "typo": ["Sya it."]\n}}\n')
    err = _error(base + ["--tasks", "sst2", "--instructions", str(bad)], capsys)
    assert f"{bad}: line 3: tasks.sst2: unknown attack 'typo'" in err
    bad.write_text('{"sst2": ["Say it.",\n  ]}\n')
    assert f"{bad}: line 2: not valid JSON" in _error(base + ["--tasks", "sst2", "--instructions", str(bad)], capsys)
    bad.write_text('{"sst2": ["Say {answer}."]}\n')
    err = _error(base + ["--tasks", "sst2", "--instructions", str(bad)], capsys)
    assert "tasks.sst2.clean[0]: unknown placeholder(s) {answer}" in err
    md = tmp_path / "adv.md"
    md.write_text("# sst2\n\n## checklist\n\nOriginal prompt: Say it.\nAttacked prompt: not bytes\n")
    err = _error(base + ["--tasks", "sst2", "--instructions", f"promptbench:{md}"], capsys)
    assert f"{md}: line 6: 'Attacked prompt:' expected a Python bytes literal" in err

    empty = tmp_path / "empty"
    write_jsonl(str(empty / "sst2" / "validation.jsonl"), [])
    err = _error(_base(tiny_model_dir, str(empty), str(tmp_path / "o3")) + ["--tasks", "sst2"], capsys)
    assert "no labelled examples for task 'sst2' (an empty dataset)" in err

    assert "--attacks: unknown attack or level 'typos'" in _error(base + ["--attacks", "typos"], capsys)
    assert "--label-words: task 'qqp' is not among --tasks" in _error(
        base + ["--tasks", "sst2", "--label-words", "qqp=a,b"], capsys)
    assert "--model: directory './missing' does not exist" in _error(
        _base("./missing", data, str(tmp_path / "o4")), capsys)
    assert "is not a Hugging Face model directory (no config.json" in _error(
        _base(str(empty), data, str(tmp_path / "o5")), capsys)
