"""`coin pairs`: group ids by each mode, what is left out (and counted), the summary."""
import json

import pytest

from coin.cli import main as coin
from coin.data_tools.pairs import build_pairs, group_of, instruction_key
from coin.data_tools.readers import read_records
from coin.errors import CoinError
from data_helpers import write_jsonl


def _rows():
    rows = []
    for i in range(6):
        rows.append({"id": f"t{i}", "task": "sst2", "instruction": f"Is it good?\nSentence: film {i}", "output": "yes",
                     "template_id": i % 2, "fields": {"sentence": f"film {i}"}, "paraphrases": [f"Good? film {i}"]})
    rows.append({"id": "sep0", "task": "qa", "instruction": "Answer the question.", "input": "Q: 1+1?", "output": "2",
                 "paraphrases": ["Reply to the question."]})
    rows.append({"id": "sep1", "task": "qa", "instruction": "Answer the question.", "input": "Q: 2+2?", "output": "4",
                 "paraphrases": ["Respond to the question."]})
    rows.append({"id": "lone", "task": "qa", "instruction": "Name a prime.", "input": "", "output": "7",
                 "paraphrases": ["Give a prime number."]})
    rows.append({"id": "nopara", "task": "qa", "instruction": "Answer.", "input": "Q", "output": "A"})
    rows.append({"id": "kept", "task": "qa", "instruction": "X.", "output": "Y", "paraphrases": ["Z."], "group": "mine"})
    return rows


def test_group_modes():
    rows = _rows()
    assert [group_of(r, "auto") for r in rows[:2]] == ["sst2/t0", "sst2/t1"]
    assert group_of(rows[6], "auto") == group_of(rows[7], "auto") != group_of(rows[8], "auto")
    assert group_of(rows[10], "auto") == "mine" and group_of(rows[0], "task") == "sst2"
    # the instruction without its input: the template skeleton when fields are known
    assert instruction_key(rows[0]) == instruction_key(rows[1]) == "Is it good?\nSentence: {sentence}"
    assert group_of(rows[0], "instruction") == group_of(rows[3], "instruction")
    with pytest.raises(CoinError, match="'template_id' is missing"):
        group_of(rows[6], "template")
    with pytest.raises(CoinError, match="needs a 'group' field"):
        group_of(rows[0], "keep")


def test_build_pairs_counts_what_it_leaves_out():
    records = [dict(r) for r in _rows()]
    out, counts, stats = build_pairs(records, "auto", min_group_size=2)
    assert [r["id"] for r in out] == ["t0", "t1", "t2", "t3", "t4", "t5", "sep0", "sep1"]
    assert all(r["schema"] == "coin.contrastive/1" for r in out)
    t = counts.totals()
    assert (t["records_in"], t["records_out"], t["no_paraphrase"], t["small_group"]) == (11, 8, 1, 2)
    assert (t["groups"], t.get("singleton_groups", 0)) == (3, 0) and stats["min"] == 2 and stats["max"] == 3
    out, counts, stats = build_pairs(records, "auto")
    assert len(out) == 10 and counts.totals()["singleton_groups"] == 2 and stats["records_with_a_hard_negative"] == 8
    with pytest.raises(CoinError, match="--min-group-size"):
        build_pairs(records, "auto", min_group_size=0)


def test_pairs_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "aug.jsonl", _rows())
    assert coin(["pairs", src, "--output", str(tmp_path / "pairs.parquet"), "--min-group-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 8 contrastive records in 3 groups" in printed and "TOTAL" in printed
    records, _ = read_records(str(tmp_path / "pairs.parquet"), "contrastive")
    assert len(records) == 8
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["group_sizes"]["groups"] == 3 and summary["counts"]["totals"]["small_group"] == 2
    bad = write_jsonl(tmp_path / "none.jsonl", [_rows()[9]])
    assert coin(["pairs", bad, "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "no record has a paraphrase" in capsys.readouterr().err
