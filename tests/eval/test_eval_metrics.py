"""Metrics on hand-made predictions: accuracy, population std, consistency, the per-model table."""
import math

import pytest

from coin.eval.metrics import mean_std, summarize_model, summarize_task

LABELS = [0, 1, 1, 0]


def _row(attack, level, index, preds):
    return {"key": f"{attack}/{index}", "attack": attack, "level": level, "index": index, "text": "t",
            "predictions": preds}


def test_summarize_task():
    rows = [
        _row("clean", "clean", 0, [0, 1, 1, 0]),        # acc 1.0
        _row("clean", "clean", 1, [0, 1, 0, 0]),        # acc 0.75
        _row("textbugger", "character", 0, [0, 1, 1, 1]),   # 0.75, agrees with clean/0 on 3 of 4
        _row("textbugger", "character", 1, [1, 0, 0, 1]),   # 0.0, agrees with clean/1 on 1 of 4
        _row("deepwordbug", "character", 0, [-1, 1, 1, 0]),  # 0.75, a parse failure
    ]
    s = summarize_task(rows, LABELS)
    acc = {r["key"]: r["accuracy"] for r in s["instructions"]}
    assert acc == {"clean/0": 1.0, "clean/1": 0.75, "textbugger/0": 0.75, "textbugger/1": 0.0, "deepwordbug/0": 0.75}
    assert s["instructions"][4]["parse_failures"] == 1
    assert s["by_level"]["clean"] == {"mean": 0.875, "std": pytest.approx(0.125), "n": 2}
    char = [0.75, 0.0, 0.75]
    assert s["by_level"]["character"]["mean"] == pytest.approx(0.5)
    assert s["by_level"]["character"]["std"] == pytest.approx(math.sqrt(sum((a - 0.5) ** 2 for a in char) / 3))
    assert s["by_attack"]["textbugger"] == {"mean": 0.375, "std": 0.375, "n": 2}
    # agreement with clean: textbugger/0 vs clean/0: 3/4; textbugger/1 vs clean/1: 1/4 (last);
    # deepwordbug/0 vs clean/0: 3/4 (the failure agrees with nothing)
    c = s["consistency"]
    assert c["agreement_with_clean"]["character"] == pytest.approx(7 / 12)
    assert c["agreement_with_clean_by_attack"] == {"textbugger": 0.5, "deepwordbug": 0.75}
    assert c["pairwise"]["clean"] == pytest.approx(3 / 4)  # the two clean answers agree on 3 examples
    # overall: per example, agreeing pairs among 5 answers / 10
    cols = [r["predictions"] for r in rows]
    expected = 0.0
    for e in range(4):
        answers = [col[e] for col in cols if col[e] >= 0]
        expected += sum(answers.count(v) * (answers.count(v) - 1) / 2 for v in set(answers)) / 10
    assert c["overall"] == pytest.approx(expected / 4)


def test_summarize_model_averages_over_tasks():
    t1 = summarize_task([_row("clean", "clean", 0, [0, 1, 1, 0]), _row("checklist", "sentence", 0, [0, 0, 0, 0])], LABELS)
    t2 = summarize_task([_row("clean", "clean", 0, [1, 1, 1, 1]), _row("clean", "clean", 1, [0, 0, 0, 0]),
                         _row("checklist", "sentence", 0, [1, 1, 1, 1])], LABELS)
    o = summarize_model({"a": t1, "b": t2})
    assert o["by_level"]["clean"] == {"accuracy": pytest.approx((1.0 + 0.5) / 2), "std": pytest.approx((0 + 0) / 2),
                                      "n_tasks": 2}
    assert o["by_level"]["sentence"]["accuracy"] == pytest.approx(0.5)
    assert o["perturbed"]["accuracy"] == pytest.approx(0.5)
    assert o["consistency"]["agreement_with_clean"]["sentence"] == pytest.approx((0.5 + 1.0) / 2)
    assert mean_std([])["n"] == 0 and math.isnan(mean_std([])["mean"])


def test_majority_class_and_answer_shares_flag_a_collapsed_model():
    labels = [0] * 14 + [1] * 6  # majority class: 70%
    always = [0] * 20  # a constant model: exactly the majority class, std 0, perfectly "consistent"
    nearly = [0] * 19 + [1]  # 95%: not above the threshold
    varied = [0, 1] * 10
    failing = [-1] * 20  # every answer unparsed: one answer too
    rows = [_row("clean", "clean", 0, always), _row("clean", "clean", 1, nearly),
            _row("checklist", "sentence", 0, varied), _row("checklist", "sentence", 1, failing)]
    s = summarize_task(rows, labels)
    assert s["majority_accuracy"] == pytest.approx(0.7)
    by_key = {r["key"]: r for r in s["instructions"]}
    assert by_key["clean/0"]["accuracy"] == pytest.approx(0.7) and by_key["clean/0"]["answer_share"] == 1.0
    assert by_key["clean/0"]["most_frequent_answer"] == 0 and by_key["clean/0"]["collapsed"]
    assert by_key["clean/1"]["answer_share"] == pytest.approx(0.95) and not by_key["clean/1"]["collapsed"]
    assert by_key["checklist/0"]["answer_share"] == pytest.approx(0.5) and not by_key["checklist/0"]["collapsed"]
    assert by_key["checklist/1"]["most_frequent_answer"] == -1 and by_key["checklist/1"]["collapsed"]
    assert s["max_answer_share"] == 1.0
    assert s["parse_failure_rates"] == {"by_level": {"clean": 0.0, "sentence": 0.5}, "overall": 0.25}
    other = summarize_task([_row("clean", "clean", 0, varied)], labels)
    o = summarize_model({"a": s, "b": other})
    assert o["majority_accuracy"] == pytest.approx(0.7)
    assert o["max_answer_share"] == 1.0
    assert o["collapsed"] == [["a", "clean/0"], ["a", "checklist/1"]]
    assert o["parse_failure_rates"] == {"clean": 0.0, "sentence": 0.5}
