"""`coin eval` end to end on the tiny model, and every kind of bad input as a one-line error (exit 2)."""
import json
import os

import pytest

from coin.cli import main
from coin.eval.tasks import ATTACKS

from eval_fixtures import write_jsonl, word_level_model


def _base(model, data, out):
    return ["eval", "--model", model, "--data", data, "--n-examples", "4", "--n-instructions", "2",
            "--out", out, "--no-progress", "--representation", "none"]


@pytest.fixture(params=["wordnet", "no-wordnet"])
def wordnet_mode(request, monkeypatch):
    """Each test twice: as this machine is, and as a machine without WordNet (COIN_NO_WORDNET=1).
    Returns whether WordNet is available in this run."""
    from coin.eval.wordnet import find_wordnet

    if request.param == "no-wordnet":
        monkeypatch.setenv("COIN_NO_WORDNET", "1")
    return find_wordnet() is not None


def _check_wordnet_message(has_wordnet, err, instructions):
    """Without WordNet: one warning saying what is skipped and how to get WordNet; the rest runs."""
    warnings = [line for line in err.splitlines() if "warning:" in line]
    word = {"textfooler", "bertattack"}
    if has_wordnet:
        assert not warnings and word <= set(instructions["tasks"]["cola"])
    else:
        assert len(warnings) == 1, err
        assert "need WordNet" in warnings[0] and "skipping textfooler, bertattack" in warnings[0]
        assert "apt-get install wordnet-base wordnet-sense-index" in warnings[0] or "COIN_NO_WORDNET" in warnings[0]
        assert not word & set(instructions["tasks"]["cola"])
        assert {"textbugger", "checklist", "semantic"} <= set(instructions["tasks"]["cola"])


def test_coin_eval_end_to_end(tiny_model_dir, glue_dir, tmp_path, capsys, wordnet_mode):
    data, _ = glue_dir
    out = str(tmp_path / "out")
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps({"sst2": ["Review:\n{sentence}\nIs this sentence negative or positive?\n{options_}"],
                                 "cola": ["Judge the grammar of this sentence: acceptable or unacceptable?\n{content}"]}))
    argv = _base(tiny_model_dir, data, out) + ["--tasks", "sst2,cola", "--instructions", f"generated:{clean}",
                                               "--scoring", "generate", "--max-new-tokens", "3", "--model-name", "tiny"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "report.md" in printed and "tiny: clean" in printed and "majority class" in printed
    assert {"results.json", "predictions.jsonl", "report.md", "instructions.json", "accuracy_by_level.png",
            "accuracy_by_task.png"} <= set(os.listdir(out))
    results = json.load(open(os.path.join(out, "results.json")))
    instructions = json.load(open(os.path.join(out, "instructions.json")))
    _check_wordnet_message(wordnet_mode, captured.err, instructions)
    settings = results["settings"]
    assert settings["scoring"] == "generate"
    assert settings["skipped_attacks"] == ({} if wordnet_mode else {"textfooler": "needs WordNet",
                                                                      "bertattack": "needs WordNet"})
    assert set(settings["attacks"]) | set(settings["skipped_attacks"]) == set(ATTACKS)
    model = results["models"]["tiny"]
    assert ("word" in model["overall"]["by_level"]) == wordnet_mode
    rows = model["tasks"]["sst2"]["instructions"]
    assert rows[0]["key"] == "clean/0" and "{sentence}" in rows[0]["text"]
    for task, tr in model["tasks"].items():  # the figures that tell a collapsed model from a robust one
        labels = tr["labels"]
        assert tr["majority_accuracy"] == max(labels.count(y) for y in set(labels)) / len(labels)
        for r in tr["instructions"]:
            assert r["answer_share"] == max(r["predictions"].count(p) for p in r["predictions"]) / len(labels)
        assert tr["max_answer_share"] == max(r["answer_share"] for r in tr["instructions"])
        line = next(x for x in printed.splitlines() if x.strip().startswith(task + " "))
        assert f"{100 * tr['majority_accuracy']:.1f}" in line
    overall = model["overall"]
    assert overall["max_answer_share"] == max(t["max_answer_share"] for t in model["tasks"].values())
    assert overall["collapsed"] == [[t, r["key"]] for t, tr in model["tasks"].items() for r in tr["instructions"]
                                    if r["answer_share"] > 0.95]
    report = open(os.path.join(out, "report.md")).read()
    assert "## Majority class and answer shares" in report and "| sst2 | " in report


def test_only_instructions_and_reusing_them(tiny_model_dir, glue_dir, tmp_path, capsys, wordnet_mode):
    data, _ = glue_dir
    out = str(tmp_path / "gen")
    assert main(_base(tiny_model_dir, data, out) + ["--tasks", "cola", "--only-instructions", "--attacks", "all"]) == 0
    assert os.listdir(out) == ["instructions.json"]
    path = os.path.join(out, "instructions.json")
    _check_wordnet_message(wordnet_mode, capsys.readouterr().err, json.load(open(path)))
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
    assert "--model: './missing' was not found on disk (no directory " in _error(
        _base("./missing", data, str(tmp_path / "o4")), capsys)
    assert "is not a Hugging Face model directory (no config.json" in _error(
        _base(str(empty), data, str(tmp_path / "o5")), capsys)


def test_users_files_load_as_given(tiny_model_dir, tmp_path, capsys):
    """The CoIN paper's instruction file (attack -> task -> list, `mnli` for both sets) and GLUE dev
    files as found in the wild (headerless two-column TSVs in either order, `SST2/`, `CoLA/`)."""
    from test_eval_instructions import paper_file

    instructions = paper_file(tmp_path / "paper_instructions.json")
    data = tmp_path / "glue"
    (data / "SST2").mkdir(parents=True)
    (data / "CoLA").mkdir()
    (data / "MNLI").mkdir()
    (data / "SST2" / "dev.tsv").write_text("1\tA fine film.\n0\tA dull film.\n1\tGreat fun.\n")
    (data / "CoLA" / "dev.tsv").write_text("The cat sat.\t1\nCat the sat.\t0\nShe reads.\t1\n")
    (data / "MNLI" / "dev_matched.tsv").write_text("A man sleeps.\tA man rests.\tentailment\n"
                                                   "It rains.\tIt is dry.\tcontradiction\n")
    out = str(tmp_path / "out")
    argv = ["eval", "--model", tiny_model_dir, "--tasks", "sst2,cola,mnli_matched", "--data", str(data),
            "--instructions", instructions, "--n-instructions", "2", "--out", out, "--no-progress",
            "--representation", "none", "--no-plots", "--columns", "cola=sentence:0,label:1", "--label-score", "sum"]
    assert main(argv) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["settings"]["label_score"] == "sum"
    tasks = results["models"][next(iter(results["models"]))]["tasks"]
    assert tasks["sst2"]["labels"] == [1, 0, 1] and "detected: label = column 0, sentence = column 1" in \
        tasks["sst2"]["source"]
    assert tasks["cola"]["n_examples"] == 3 and "--columns" in tasks["cola"]["source"]
    assert tasks["mnli_matched"]["labels"] == [0, 2]
    assert [r["key"] for r in tasks["mnli_matched"]["instructions"]] == [
        "clean/0", "clean/1", "deepwordbug/0", "deepwordbug/1", "textfooler/0", "textfooler/1", "checklist/0",
        "checklist/1", "semantic/0", "semantic/1"]
    assert tasks["mnli_matched"]["instructions"][0]["text"].startswith("clean instruction 0 for mnli")
    err = _error(argv[:-2] + ["--attacks", "bertattack,checklist"], capsys)
    assert f"--attacks bertattack: file:{instructions} has no bertattack instructions for task 'sst2' (it has: clean, " \
           f"checklist)" in err


def test_model_directories_that_cannot_load(tiny_model_dir, glue_dir, tmp_path, capsys):
    import shutil

    data, _ = glue_dir
    no_tok = tmp_path / "weights_only"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model_dir, f), no_tok / f)
    err = _error(_base(str(no_tok), data, str(tmp_path / "o1")) + ["--tasks", "sst2"], capsys)
    assert f"--model: directory '{no_tok}' has no tokenizer files (expected one of tokenizer.json, tokenizer.model, " \
           f"tokenizer_config.json or another tokenizer file; it holds config.json, model.safetensors)" in err
    err = _error(_base("runs/nothing/here", data, str(tmp_path / "o2")) + ["--tasks", "sst2"], capsys)
    assert "--model: 'runs/nothing/here' was not found on disk (no directory " in err
    assert main(_base("nothing/here", data, str(tmp_path / "o3")) + ["--tasks", "sst2"]) == 2  # maybe a hub id
    err = capsys.readouterr().err.strip().splitlines()
    assert "'nothing/here' is not a directory on disk here" in err[0] and "trying it as a Hugging Face hub id" in err[0]
    assert "'nothing/here' was not found on disk (no directory " in err[-1]
    assert "nor loaded from the Hugging Face hub" in err[-1]
    assert "--columns: task 'qqp' is not among --tasks" in _error(
        _base(tiny_model_dir, data, str(tmp_path / "o4")) + ["--tasks", "sst2", "--columns", "qqp=label:0"], capsys)
