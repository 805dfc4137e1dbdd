"""`coin demo` end to end at a reduced size (fewer examples and steps, the same code path):
every artefact the README promises exists and parses; and its evaluation stage again as on a
machine without WordNet (COIN_NO_WORDNET=1): it completes, saying once what it skips."""
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "coin", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_summary_lists_every_stage_and_artefact(demo):
    out, stdout = demo
    summary = json.load(open(out / "demo_summary.json"))
    stages = [s["stage"] for s in summary["stages"]]
    assert stages[0] == "demo data" and stages[-1] == "robustness evaluation"
    assert any(s.startswith("CoIN training") for s in stages)
    for name, path in summary["artefacts"].items():
        assert os.path.exists(path), name
        assert path in stdout  # printed for the user
    for stage in summary["stages"]:
        assert stage["command"].startswith("coin ")


def test_data_artefacts_parse(demo):
    out, _ = demo
    from coin.data_tools.readers import read_records

    records, report = read_records(str(out / "data" / "train.pairs.jsonl"), kind="contrastive")
    assert records and all(r["paraphrases"] and r["group"] for r in records)
    summary = json.load(open(out / "data" / "train.augmented.summary.json"))
    assert summary  # counts of the augmentation, per task


def test_training_artefacts_parse(demo):
    out, _ = demo
    train = out / "train"
    rows = [json.loads(line) for line in open(train / "metrics.jsonl")]
    steps = [r for r in rows if r.get("kind") == "train"]
    assert len(steps) == 6 and all(r["pool_size"] == 8 for r in steps)  # 2 ranks x 4: the gathered pool
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(train / "tensorboard"))
    acc.Reload()
    assert {"train/gen_loss", "train/ctr_loss", "train/ctr_weight"} <= set(acc.Tags()["scalars"])
    assert json.load(open(train / "final_metrics.json"))["status"] == "completed"


def test_exported_model_loads_and_runs(demo):
    out, _ = demo
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "train" / "hf")
    tok = AutoTokenizer.from_pretrained(out / "train" / "hf")
    with torch.no_grad():
        logits = model(**tok("Sentence: a fine film", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_evaluation_report_parses(demo):
    out, _ = demo
    from matplotlib.image import imread

    from coin.eval.wordnet import find_wordnet

    results = json.load(open(out / "eval" / "results.json"))
    (model,) = results["models"].values()
    levels = {"clean", "character", "sentence", "semantic"} | ({"word"} if find_wordnet() else set())
    assert set(model["overall"]["by_level"]) == levels  # without WordNet: the word level is skipped, not fatal
    assert {"majority_accuracy", "max_answer_share", "collapsed"} <= set(model["overall"])
    report = open(out / "eval" / "report.md").read()
    assert "Overall" in report and "Majority class and answer shares" in report
    pngs = [f for f in os.listdir(out / "eval") if f.endswith(".png")]
    assert pngs
    for f in pngs:
        assert imread(out / "eval" / f).ndim == 3


def test_evaluation_stage_without_wordnet(demo, tmp_path):
    """The demo's own evaluation command, rerun as on a machine without WordNet."""
    import shlex

    out, _ = demo
    stage = next(s for s in json.load(open(out / "demo_summary.json"))["stages"] if s["stage"] == "robustness evaluation")
    argv = shlex.split(stage["command"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "eval")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "COIN_NO_WORDNET": "1"}
    proc = subprocess.run([sys.executable, "-m", "coin", *argv], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "skipping textfooler, bertattack" in warnings[0], proc.stderr[-3000:]
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert results["settings"]["skipped_attacks"] == {"textfooler": "needs WordNet", "bertattack": "needs WordNet"}
    (model,) = results["models"].values()
    assert set(model["overall"]["by_level"]) == {"clean", "character", "sentence", "semantic"}
