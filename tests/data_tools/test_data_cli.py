"""`coin data` sub-actions through the real entry point: output, and one-line errors with exit 2."""
import csv
import json
import os

from coin.cli import main as coin
from data_helpers import contrastive, record, write_jsonl


def test_demo_validate_convert(tmp_path, capsys):
    assert coin(["data", "demo", str(tmp_path / "d"), "--train-per-task", "5", "--eval-per-task", "2",
                 "--tasks", "sst2,rte", "--heldout", "4"]) == 0
    assert "wrote demo data" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["tasks"] == ["sst2", "rte"] and manifest["templates_per_task"] == {"train": 8, "heldout": 4}
    assert coin(["data", "validate", str(tmp_path / "d" / "train.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "10 valid of 10 records" in out and "'rte': 5" in out
    assert coin(["data", "convert", str(tmp_path / "d" / "train.jsonl"), str(tmp_path / "t.parquet")]) == 0
    assert coin(["data", "validate", str(tmp_path / "t.parquet"), "--kind", "instruction"]) == 0
    assert coin(["data", "demo", str(tmp_path / "e"), "--tasks", "nope"]) == 2
    assert "unknown demo task" in capsys.readouterr().err


def test_validate_errors(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [record(0), record(0)])
    assert coin(["data", "validate", path]) == 2
    err = capsys.readouterr().err
    assert err == f"coin data: error: {path}: line 2: field 'id': expected a unique id ('r0' is already used on line 1)\n"
    assert coin(["data", "validate", path, "--skip-invalid"]) == 1
    out = capsys.readouterr().out
    assert "1 valid of 2 records; skipped 1 invalid (duplicate id 1)" in out
    assert coin(["data", "validate", write_jsonl(tmp_path / "c.jsonl", [record(1)]), "--kind", "contrastive"]) == 2
    assert "field 'paraphrases'" in capsys.readouterr().err


def test_import_actions(tmp_path, capsys):
    path = tmp_path / "coin.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["original_instruction", "paraphrased_instruction", "targets", "task_name", "keywords"])
        w.writerow(["Is 2 even?\nOPTIONS:\n- no\n- yes", "Is two an even number?\nOPTIONS:\n- no\n- yes", "yes", "math",
                    "{'n': '2'}"])
        w.writerow(["Is 3 even?\nOPTIONS:\n- no\n- yes", "Is three an even number?\nOPTIONS:\n- no\n- yes", "no", "math",
                    "{'n': '3'}"])
    assert coin(["data", "import", str(path), "--output", str(tmp_path / "c.jsonl")]) == 0  # format detected
    assert "imported 2 records (coin-csv)" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(tmp_path / "c.jsonl")]
    assert rows[0]["group"] == rows[1]["group"] and rows[0]["fields"] == {"n": "2"}
    plain = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi.", "output": "hi"}])
    assert coin(["data", "import", plain, "--output", str(tmp_path / "o.jsonl"), "--map", "instruction=prompt",
                 "--task", "chat", "--make-ids"]) == 0
    assert "ids_made 1" in capsys.readouterr().out
    assert coin(["data", "import", plain, "--output", str(tmp_path / "o.jsonl"), "--map", "bad"]) == 2
    assert "--map: expected FIELD=COLUMN" in capsys.readouterr().err


def test_tokenize_action(tmp_path, tiny_model_dir, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [contrastive(i, group=f"g{i // 2}") for i in range(4)])
    assert coin(["data", "tokenize", path, "--cache-dir", str(tmp_path / "cache"), "--tokenizer", tiny_model_dir,
                 "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    assert "4 rows, 8 sequences" in out
    assert len([n for n in os.listdir(tmp_path / "cache") if not n.endswith(".lock")]) == 1
    assert coin(["data", "tokenize", path, "--cache-dir", str(tmp_path / "cache"), "--tokenizer", tiny_model_dir,
                 "--prompt-template", "no placeholder"]) == 2
    assert "--prompt-template: expected exactly one '{prompt}'" in capsys.readouterr().err
