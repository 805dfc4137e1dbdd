"""benchmarks/bench_robustness.py: the summary's figures against a hand computation on made-up
evaluation results, and the reduced experiment (--quick) end to end through the same code path
as the full one (testbed, pre-training, ZeRO-3 training per arm, evaluation, summary; two jobs
at a time)."""
from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_robustness as bench  # noqa: E402

LEVELS = ["clean", "character", "word", "sentence", "semantic"]


def _overall(acc: dict[str, float], share: float) -> dict:
    return {"by_level": {lv: {"accuracy": a, "std": 0.1} for lv, a in acc.items()},
            "consistency": {"agreement_with_clean": {lv: 0.9 for lv in LEVELS[1:]}},
            "max_answer_share": share, "majority_accuracy": 0.5}


def _eval(per_arm: dict[str, tuple[dict, list[int], float]]) -> dict:
    """per arm: accuracy per level, the correctness of 4 examples (2 clusters) at every level, share."""
    results = {"models": {arm: {"overall": _overall(acc, share), "representation": None}
                          for arm, (acc, _, share) in per_arm.items()}}
    ids = [("colour", "0"), ("colour", "0"), ("size", "1"), ("size", "1")]
    units = {arm: {lv: (list(c), list(ids)) for lv in LEVELS} for arm, (_, c, _) in per_arm.items()}
    return {"results": results, "units": units}


def _runs() -> list[dict]:
    runs = []
    for s, (cit_train, cit_held, coin_held) in enumerate([(0.90, 0.70, 0.75), (0.80, 0.60, 0.70)]):
        held = {"cit": ({lv: cit_held for lv in LEVELS}, [1, 0, 0, 0], 0.6),
                "coin": ({lv: coin_held for lv in LEVELS}, [1, 1, 0, 0], 0.97)}
        train = {"cit": ({"clean": cit_train}, [1, 1, 1, 0], 0.55), "coin": ({"clean": 0.9}, [1, 1, 1, 1], 0.5)}
        runs.append({"heldout": _eval(held), "trained": _eval(train),
                     "training": {"cit": {"gen_loss": 1.0 + s}, "coin": {"gen_loss": 2.0, "ctr_loss": 0.5}}})
    return runs


def test_summary_matches_a_hand_computation():
    s = bench.summarize(_runs(), ["cit", "coin"])
    cit, coin = s["arms"]["cit"], s["arms"]["coin"]
    assert cit["seeds"] == 2
    # mean and sample std over seeds, in percent: cit held-out 70 and 60 -> 65 +- 7.07
    assert cit["levels"]["word"]["acc_mean"] == pytest.approx(65.0)
    assert cit["levels"]["word"]["acc_std"] == pytest.approx(math.sqrt(((70 - 65) ** 2 + (60 - 65) ** 2) / 1))
    assert cit["training_phrasings"]["acc_mean"] == pytest.approx(85.0)
    assert cit["training_phrasings"]["per_seed"] == pytest.approx([90.0, 80.0])
    # the baseline's gap: training phrasings 85 minus the mean over held-out levels 65
    assert s["sft_gap_points"] == pytest.approx(20.0)
    assert s["majority_acc"] == pytest.approx(50.0)
    # the largest answer share over both evaluations, in percent
    assert coin["max_answer_share"] == pytest.approx(97.0) and cit["max_answer_share"] == pytest.approx(60.0)
    assert coin["training"] == {"gen_loss": 2.0, "ctr_loss": 0.5}
    assert cit["training"]["gen_loss"] == pytest.approx(1.5)
    # paired per-example difference: coin right on example 2 where cit is wrong -> +25 points per
    # seed; every resample of seeds and clusters is one of {0, +50, +25}: the mean stays 25
    for lv in LEVELS:
        d = s["coin_minus_baseline"][lv]
        assert d["mean"] == pytest.approx(25.0)
        assert 0.0 <= d["ci95"][0] <= 25.0 <= d["ci95"][1] <= 50.0
    text = bench.section(s, {"command": "x", "machine": "m", "minutes": 1.0, "plan": bench.QUICK,
                             "timings": {"pretrain": [1.0], "cit": [1.0], "coin": [1.0], "eval": [1.0]}})
    assert "| coin | 90.0 ± 0.0 |" in text and "(collapsed)" in text  # coin's 97% answer share is flagged
    assert "a gap of 20.0 points" in text


def test_summary_refuses_arms_scored_on_different_examples():
    runs = _runs()
    c, ids = runs[0]["heldout"]["units"]["coin"]["word"]
    runs[0]["heldout"]["units"]["coin"]["word"] = (c, [("kind", "9")] * len(ids))
    with pytest.raises(RuntimeError, match="different examples"):
        bench.summarize(runs, ["cit", "coin"])


def test_quick_experiment_end_to_end(tmp_path):
    """The reduced plan: 1 seed x 2 arms, each a real `coin train`, both at once; the recorded
    benchmarks/results/robustness.json is left alone (only the full run writes it)."""
    recorded = REPO / "benchmarks" / "results" / "robustness.json"
    before = recorded.read_bytes() if recorded.exists() else None
    text = bench.run(quick=True, out=str(tmp_path))
    record = json.loads((tmp_path / "robustness.json").read_text())
    assert set(record["arms"]) == set(bench.QUICK["arms"])
    for arm in record["arms"].values():
        assert arm["seeds"] == len(bench.QUICK["seeds"])
        assert set(arm["levels"]) == set(LEVELS)
        for lv in arm["levels"].values():
            assert 0.0 <= lv["acc_mean"] <= 100.0 and lv["acc_std"] >= 0.0
        assert 0.0 < arm["max_answer_share"] <= 100.0
        assert arm["training"]["gen_loss"] > 0
    assert record["arms"]["coin"]["training"]["ctr_loss"] > 0  # the contrastive term ran
    assert record["arms"]["cit"]["training"].get("ctr_loss", 0.0) == 0.0
    assert 0.0 < record["majority_acc"] <= 100.0 and isinstance(record["sft_gap_points"], float)
    for lv in LEVELS:
        d = record["coin_minus_baseline"][lv]
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert "## The robustness experiment" in text and "coin - cit" in text
    assert (recorded.read_bytes() if recorded.exists() else None) == before
