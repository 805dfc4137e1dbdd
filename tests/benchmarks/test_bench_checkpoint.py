"""benchmarks/bench_checkpoint.py through its own code path at the smallest size: one round of
the four save variants on 2 real ranks (the tiny model), the report, and the former hashing it
compares with giving the same manifest entries as coin's."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_checkpoint  # noqa: E402


def test_one_round_on_the_tiny_model(tmp_path):
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:
        for rec in bench_checkpoint._records(n_groups=40):
            f.write(json.dumps(rec) + "\n")
    res = bench_checkpoint.measure(str(tmp_path), "tiny", rounds=1)  # raises unless the last save verifies
    assert res["verify"] is None and res["params"] == 4188480
    assert res["files"] >= 8 and res["bytes"] > 40e6  # model states, 2 optimiser partitions, RNG, configs
    for variant in bench_checkpoint.VARIANTS:
        assert len(res["times"][variant]) == 1 and res["times"][variant][0] > 0
    assert res["hashing"]["none"] == [0.0] and res["hashing"]["read"][0] > 0
    text = bench_checkpoint.report({"tiny": res}, 1, "1.00 1.00 1.00", "2.00 2.00 2.00")
    assert text.startswith("## Checkpoint integrity: hashing overhead\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [r.split(" | ")[0] for r in rows] == [f"| {v}" for v in bench_checkpoint.VARIANTS]
    assert "load average 1.00 1.00 1.00 before, 2.00 2.00 2.00 after" in text


def test_overheads_are_per_round_ratios():
    res = {"times": {"none": [1.0, 2.0], "write": [1.1, 2.0]}}
    assert bench_checkpoint.overheads(res, "write") == pytest.approx([0.0, 0.1])


def test_the_former_hashing_gives_coins_entries(tmp_path):
    import torch

    from coin.training import checkpoint as ckpt

    path = str(tmp_path / "x.pt")
    entry = ckpt.save_hashed({"w": torch.randn(300, 1000), "n": 3}, path)
    assert bench_checkpoint.hash_file_read(path) == ckpt.hash_file(path) == entry
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert bench_checkpoint.hash_file_read(str(empty)) == ckpt.hash_file(str(empty))
