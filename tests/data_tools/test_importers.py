"""Importers on fixtures in the real formats: the CoIN release CSV, FLAN-style records, any source."""
import csv
import json

import pytest

from coin.data_tools.importers import import_coin_csv, import_flan, import_records
from coin.data_tools.schema import DataError
from coin.data_tools.templates import TemplateSet, options_text, render
from coin.errors import CoinError

COIN_HEADER = ["original_instruction", "paraphrased_instruction", "targets", "task_name", "keywords"]


def _coin_rows():
    opts = options_text(["no", "yes"])
    rows = []
    for k, (premise, answer) in enumerate([("It rained all day.", "yes"), ("The shop was closed.", "no"),
                                           ("Ada wrote a program.", "yes")]):
        for hyp in ("The ground got wet.", "Nobody noticed."):
            kw = {"premise": premise, "hypothesis": hyp, "options_": opts, "answer": answer}
            rows.append([f"{premise}\n\nCan we conclude that \"{hyp}\"?\n\n{opts}",
                         f"{premise}\n\nDoes it follow that \"{hyp}\"?\n\n{opts}", answer, "rte", repr(kw)])
    return rows


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_coin_csv_pairs_consecutive_rows(tmp_path):
    rows = _coin_rows()[:5]  # an odd number: the last row has no partner
    records, report, notes = import_coin_csv(_write_csv(tmp_path / "coin.csv", COIN_HEADER, rows))
    assert report.valid == 5 and notes == {"rows": 5, "pairs": 2, "unpaired_rows": 1, "pairs_with_two_tasks": 0}
    assert [r["group"] for r in records] == ["coin-pair-000000"] * 2 + ["coin-pair-000001"] * 2 + ["coin-pair-000002"]
    first = records[0]
    assert first["schema"] == "coin.contrastive/1" and first["task"] == "rte" and first["output"] == "yes"
    assert first["instruction"] == rows[0][0] and first["paraphrases"] == [rows[0][1]]
    assert first["fields"]["premise"] == "It rained all day." and first["fields"]["options_"].startswith("OPTIONS:")
    assert first["meta"] == {"source": "coin-csv", "row": 0}


def test_coin_csv_bad_rows(tmp_path):
    rows = _coin_rows()
    rows[1][1] = ""            # empty paraphrase
    rows[2][4] = "{'premise': "  # keywords that do not parse

    def line_of(k):  # cells span several lines: row k starts after the lines of rows 0..k-1
        return 2 + sum(1 + sum(cell.count("\n") for cell in row) for row in rows[:k])

    path = _write_csv(tmp_path / "coin.csv", ["Original_Instruction", "paraphrased_instruction", "targets", "Task Name",
                                              "keywords"], rows)
    with pytest.raises(DataError, match=rf"coin.csv: line {line_of(1)}: field 'paraphrased_instruction': expected a non-empty"):
        import_coin_csv(path)
    records, report, notes = import_coin_csv(path, skip_invalid=True)
    assert len(records) == 4 and dict(report.invalid) == {"missing field": 1, "wrong type": 1}
    assert notes["unpaired_rows"] == 2 and notes["pairs"] == 1  # the partners of rows 1 and 2 are alone now
    assert any(f"line {line_of(2)}: field 'keywords': expected a dict of template keywords" in m for m in report.examples)
    with pytest.raises(CoinError, match="missing column\\(s\\) targets"):
        import_coin_csv(_write_csv(tmp_path / "x.csv", ["original_instruction", "paraphrased_instruction", "task"],
                                   [["a", "b", "t"]]))
    with pytest.raises(CoinError, match="no task name column"):
        import_coin_csv(_write_csv(tmp_path / "y.csv", COIN_HEADER[:3], [["a", "b", "c"]]))


TEMPLATES = {"rte": [["{premise}\n\nCan we conclude that \"{hypothesis}\"?\n\n{options_}", "{answer}"],
                     ["{premise}\n\nDoes it follow that \"{hypothesis}\"?\n\n{options_}", "{answer}"]]}


def test_flan_templated_records_are_matched_to_their_template(tmp_path):
    templates = TemplateSet(TEMPLATES)
    fields = {"premise": "It rained.", "hypothesis": "It was wet.", "options_": options_text(["no", "yes"]),
              "answer": "yes"}
    rows = [{"inputs": render(TEMPLATES["rte"][1][0], fields), "targets": "yes", "task_name": "rte",
             "template_type": "zs_opt", "task_source": "Flan2021"},
            {"inputs": "Something else entirely.", "targets": "no", "task": "rte"},
            {"id": "mine", "inputs": "Translate: hi", "targets": "salut", "_task_name": "wmt"}]
    path = tmp_path / "flan.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records, report, notes = import_flan(str(path), templates=templates)
    assert notes == {"matched_template": 1, "unmatched_template": 1}
    a, b, c = records
    assert (a["id"], a["task"], a["template_id"], a["fields"]) == ("flan-0000001", "rte", 1, fields)
    assert a["meta"] == {"template_type": "zs_opt", "task_source": "Flan2021"} and a["instruction"] == rows[0]["inputs"]
    assert "template_id" not in b and (c["id"], c["task"]) == ("mine", "wmt")
    plain, _, notes = import_flan(str(path))  # without templates: no matching
    assert notes == {} and "fields" not in plain[0]


def test_flan_raw_records_are_rendered(tmp_path):
    templates = TemplateSet(TEMPLATES)
    fields = {"premise": "P.", "hypothesis": "H.", "options_": options_text(["no", "yes"]), "answer": "no"}
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps({"task": "rte", "fields": fields, "template_id": 0}) + "\n"
                    + json.dumps({"task": "rte", "fields": fields}) + "\n"
                    + json.dumps({"task": "rte", "fields": {"premise": "P."}, "template_id": 0}) + "\n")
    with pytest.raises(DataError, match=r"raw.jsonl: line 3: field 'fields.hypothesis': expected a value for placeholder"):
        import_flan(str(path), templates=templates)
    records, report, notes = import_flan(str(path), templates=templates, skip_invalid=True)
    assert notes == {"rendered": 2} and dict(report.invalid) == {"missing field": 1}
    assert records[0]["instruction"] == render(TEMPLATES["rte"][0][0], fields) and records[0]["output"] == "no"
    assert records[1]["template_id"] in (0, 1)
    again, _, _ = import_flan(str(path), templates=templates, skip_invalid=True)
    assert again == records  # the template choice is seeded
    with pytest.raises(CoinError, match="needs --templates"):
        import_flan(str(path))


def test_generic_source_with_a_column_map(tmp_path):
    path = _write_csv(tmp_path / "alpaca.csv", ["instruction", "input", "response"],
                      [["Add the numbers.", "2 and 3", "5"], ["Name a colour.", "", "red"]])
    with pytest.raises(DataError, match="line 2: field 'id'"):
        import_records(path, column_map={"output": "response"})
    records, report, notes = import_records(path, column_map={"output": "response"}, defaults={"task": "alpaca"},
                                            make_ids=True)
    assert notes == {"ids_made": 2} and [r["id"] for r in records] == ["alpaca-0000002", "alpaca-0000003"]
    assert records[0]["task"] == "alpaca" and records[0]["input"] == "2 and 3" and records[1]["input"] == ""
