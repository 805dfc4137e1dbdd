"""Readers and writers of every source format, on files in the real formats, and every bad input."""
import csv
import json
import os

import pytest

from coin.data_tools.readers import read_records, write_records
from coin.data_tools.schema import DataError
from coin.errors import CoinError
from data_helpers import contrastive, read_jsonl, record, write_jsonl


def _records(n=4):
    return [contrastive(i, group=f"g{i // 2}", template_id=i, fields={"sentence": f"s{i}"}, meta={"k": [i]})
            for i in range(n)]


def test_jsonl_and_parquet_round_trip(tmp_path):
    recs = read_records(write_jsonl(tmp_path / "a.jsonl", _records()))[0]
    for name in ("b.jsonl", "b.parquet"):
        path = str(tmp_path / name)
        assert write_records(path, recs) == 4
        back, report = read_records(path, "contrastive")
        assert back == recs and report.valid == 4 and report.num_invalid == 0


def test_jsonl_is_readable_with_datasets(tmp_path):
    import datasets

    path = str(tmp_path / "c.jsonl")
    write_records(path, read_records(write_jsonl(tmp_path / "a.jsonl", _records()))[0])
    ds = datasets.load_dataset("json", data_files=path, split="train")
    assert ds["id"] == ["r0", "r1", "r2", "r3"] and ds[1]["paraphrases"] == _records()[1]["paraphrases"]


def test_json_array_csv_tsv_and_datasets_directory(tmp_path):
    import datasets

    rows = [record(i) for i in range(3)]
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(rows))
    assert [r["id"] for r in read_records(str(arr))[0]] == ["r0", "r1", "r2"]
    for name, delim in (("a.csv", ","), ("a.tsv", "\t")):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["id", "task", "instruction", "input", "output", "template_id", "paraphrases", "fields"])
            for i, r in enumerate(rows):
                w.writerow([r["id"], r["task"], r["instruction"] + "\nwith a second line", r["input"], r["output"],
                            str(i), json.dumps(["p"]), ""])
        got = read_records(str(path))[0]
        assert got[2]["template_id"] == 2 and got[0]["paraphrases"] == ["p"] and "fields" not in got[0]
        assert got[1]["instruction"].endswith("\nwith a second line")
    disk = str(tmp_path / "disk")
    datasets.Dataset.from_list(rows).save_to_disk(disk)
    assert [r["id"] for r in read_records(disk)[0]] == ["r0", "r1", "r2"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(CoinError, match="choose one with --split"):
        read_records(str(tmp_path / "dd"))
    assert len(read_records(str(tmp_path / "dd"), split="train")[0]) == 3


def test_hub_source_offline_is_a_clear_error():
    with pytest.raises(CoinError, match="hf:nobody/no-such-dataset: cannot load with datasets"):
        read_records("hf:nobody/no-such-dataset", split="train")


@pytest.mark.parametrize("bad, field, reason", [
    ('{"id": "x", "task": "t", "instruction": "i", "output": "o"', None, "undecodable line"),
    (b'{"id": "x", "task": "t", "instruction": "\xff\xfe", "output": "o"}', None, "undecodable line"),
    ({"id": "x", "task": "t", "instruction": "i"}, "output", "missing field"),
    ({"id": "x", "task": "t", "instruction": "", "output": "o"}, "instruction", "empty field"),
    ({"id": "x", "task": "t", "instruction": "i", "output": 1}, "output", "wrong type"),
    ({"id": "r0", "task": "t", "instruction": "i", "output": "o"}, "id", "duplicate id"),
])
def test_jsonl_bad_inputs_name_file_line_field(tmp_path, bad, field, reason):
    path = tmp_path / "bad.jsonl"
    with open(path, "wb") as f:
        for row in (record(0), "", bad, record(1)):  # the bad record is on line 3 (line 2 is blank)
            data = row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row)).encode()
            f.write(data + b"\n")
    with pytest.raises(DataError) as err:
        read_records(str(path))
    assert (err.value.line, err.value.field, err.value.reason) == (3, field, reason)
    assert str(err.value).startswith(f"{path}: line 3: ")
    records, report = read_records(str(path), skip_invalid=True)
    assert [r["id"] for r in records] == ["r0", "r1"]
    assert report.seen == 3 and report.valid == 2 and dict(report.invalid) == {reason: 1}
    assert f"skipped 1 invalid ({reason} 1)" in report.line() and str(path) in report.examples[0]


def test_csv_and_parquet_bad_inputs(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('id,task,instruction,output,paraphrases\nr0,t,i,o,"[""p""]"\nr1,t,i,o\nr2,t,i,o,[not json\n'
                    'r3,t,"two\nlines",,\n', encoding="utf-8")
    records, report = read_records(str(path), skip_invalid=True)
    assert [r["id"] for r in records] == ["r0"]
    assert dict(report.invalid) == {"undecodable line": 1, "wrong type": 1, "missing field": 1}  # empty cell = absent
    with pytest.raises(DataError, match=r"bad.csv: line 3: expected 5 cells as in the header"):
        read_records(str(path))
    msgs = report.examples
    assert any("line 4: field 'paraphrases': expected JSON text" in m for m in msgs)
    assert any("line 5: field 'output'" in m for m in msgs)  # a quoted cell spanning lines 5-6 starts on line 5
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,task,instruction,output\nr0,t,caf\xe9,o\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: line 2: expected UTF-8 text"):
        read_records(str(latin))
    pq = str(tmp_path / "bad.parquet")
    import pyarrow as pa
    import pyarrow.parquet as papq

    papq.write_table(pa.Table.from_pylist([record(0), {**record(1), "output": ""}]), pq)
    with pytest.raises(DataError, match=r"bad.parquet: row 2: field 'output': expected a non-empty string"):
        read_records(pq)


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(CoinError, match="unknown file type"):
        read_records(str(tmp_path / "a.txt"))
    with pytest.raises(CoinError, match="does not exist"):
        read_records(str(tmp_path / "none.jsonl"))
    with pytest.raises(CoinError, match="written as .jsonl or .parquet"):
        write_records(str(tmp_path / "x.csv"), [])


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "out.jsonl")
    write_records(path, [record(0)])

    def broken():
        yield validate(record(1))
        raise RuntimeError("disk full")

    from coin.data_tools.schema import validate_record as validate

    with pytest.raises(RuntimeError):
        write_records(path, broken())
    assert [r["id"] for r in read_jsonl(path)] == ["r0"]  # the old file is intact
    assert [n for n in os.listdir(tmp_path) if n != "out.jsonl"] == []  # no temporary left behind
