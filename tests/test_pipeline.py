"""`coin demo` end to end at a reduced size (fewer examples and steps, the same code path):
every artefact the README promises exists and parses."""
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

    results = json.load(open(out / "eval" / "results.json"))
    (model,) = results["models"].values()
    assert set(model["overall"]["by_level"]) == {"clean", "character", "word", "sentence", "semantic"}
    report = open(out / "eval" / "report.md").read()
    assert "Overall" in report
    pngs = [f for f in os.listdir(out / "eval") if f.endswith(".png")]
    assert pngs
    for f in pngs:
        assert imread(out / "eval" / f).ndim == 3
