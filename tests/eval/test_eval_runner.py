"""The runner: results built from real scores on the tiny model, and `coin eval` sharded over 2 real
gloo ranks giving exactly what 1 rank gives (rank 0 alone writing the files)."""
import json
import os

import pytest
import torch

from coin.data_tools.prompt import PromptFormat
from coin.eval.instructions import resolve_instructions
from coin.eval.loaders import load_task_data
from coin.eval.runner import evaluate, plan_batches, unique_names
from coin.eval.scoring import LabelWordError, argmax_label, content_free_priors, label_scores, parse_prediction
from coin.eval.tasks import get_task, render_prompt

from distributed import run_distributed
from eval_fixtures import word_level_model

TASKS = ("sst2", "mnli_matched")


@pytest.fixture(scope="module")
def small(glue_dir):
    root, _ = glue_dir
    specs = {t: get_task(t) for t in TASKS}
    iset = resolve_instructions("generated", specs, attacks=["checklist", "stresstest", "semantic", "textbugger"],
                                n_instructions=2, seed=3)
    return [load_task_data(s, root, n_examples=5, seed=1) for s in specs.values()], iset


def test_likelihood_results_are_built_from_the_scores(tiny, small):
    model, tok = tiny
    tasks, iset = small
    calibrated = evaluate(model, tok, tasks, iset, batch_size=7, progress=False, model_name="tiny")
    plain = evaluate(model, tok, tasks, iset, batch_size=7, progress=False, label_score="sum")
    assert calibrated["label_score"] == "calibrated" and plain["label_score"] == "sum"
    for res in (calibrated, plain):
        assert set(res["tasks"]) == set(TASKS) and res["scoring"] == "likelihood"
        assert res["overall"]["by_level"]["clean"]["n_tasks"] == 2
    for td in tasks:
        rows = calibrated["tasks"][td.spec.name]["instructions"]
        assert [r["key"] for r in rows] == [i.key for i in iset.for_task(td.spec.name)]
        assert len(rows) == 2 * 5
        priors = content_free_priors(model, tok, PromptFormat(), td.spec, [r["text"] for r in rows])
        for row, plain_row, prior in zip(rows, plain["tasks"][td.spec.name]["instructions"], priors):
            prompts = [render_prompt(td.spec, row["text"], e) for e in td.examples]
            direct = torch.tensor(label_scores(model, tok, PromptFormat(), prompts, td.spec.label_words,
                                               batch_size=len(prompts)))
            assert torch.allclose(torch.tensor(plain_row["scores"]), direct, atol=1e-5)
            assert torch.allclose(torch.tensor(row["prior"]), torch.tensor(prior), atol=1e-6)
            assert torch.allclose(torch.tensor(row["scores"]), direct - torch.tensor(prior), atol=1e-5)
            for r, scores in ((row, direct - torch.tensor(prior)), (plain_row, direct)):
                assert r["predictions"] == [argmax_label(s) for s in scores.tolist()]
                assert r["accuracy"] == sum(p == y for p, y in zip(r["predictions"], td.labels)) / len(td)
                assert r["parse_failures"] == 0
        assert set(calibrated["tasks"][td.spec.name]["by_level"]) == {"clean", "character", "sentence", "semantic"}


def test_generate_results_parse_the_generated_text(tiny, small):
    model, tok = tiny
    tasks, iset = small
    sub = iset.select(attacks=["checklist"], n_instructions=1)
    res = evaluate(model, tok, tasks[:1], sub, scoring="generate", max_new_tokens=4, batch_size=4, progress=False)
    for row in res["tasks"]["sst2"]["instructions"]:
        assert row["predictions"] == [parse_prediction(t, ["negative", "positive"]) for t in row["outputs"]]
        assert row["parse_failures"] == sum(p < 0 for p in row["predictions"])


def test_missing_label_word_fails_before_scoring(tmp_path, small):
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer

    tasks, iset = small
    mcfg = ModelConfig(name_or_path=word_level_model(str(tmp_path / "wl"), ["negative", "Sentence", ":"]))
    with pytest.raises(LabelWordError, match="label word 'positive'"):
        evaluate(load_model(mcfg), load_tokenizer(mcfg), tasks, iset, progress=False)


def test_batches_do_not_depend_on_the_world_size():
    lengths = [5, 3, 9, 3, 1, 7, 2]
    assert plan_batches([[0, 1, 2, 3], [4, 5, 6]], lengths, 3) == [[1, 3, 0], [2], [4, 6, 5]]
    assert unique_names(["runs/coin/hf", "runs/sft/hf", "tiny"]) == ["coin/hf", "sft/hf", "tiny"]


def _cli_args(model_dir, data_dir, out):
    return ["--model", model_dir, "--tasks", "sst2,cola", "--data", data_dir, "--n-examples", "5",
            "--n-instructions", "2", "--attacks", "textbugger,checklist,stresstest,semantic", "--batch-size", "3",
            "--out", out, "--no-progress", "--representation-examples", "3"]


def _eval_rank(rank, world, argv):
    """One rank of `coin eval` (spawned by run_distributed)."""
    import argparse

    from coin.eval import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return run.run(parser.parse_args(argv))


def _comparable(results):
    out = json.loads(json.dumps(results))
    out["settings"].pop("world_size")
    for m in out["models"].values():
        m.pop("seconds")
        m.pop("examples_per_second")
    return out


def test_two_ranks_give_exactly_the_results_of_one(tmp_path, tiny_model_dir, glue_dir):
    import argparse

    from coin.eval import run

    data, _ = glue_dir
    out1, out2 = str(tmp_path / "one"), str(tmp_path / "two")
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each spawned rank: the same kernels, so bit-identical scores
    try:
        single = run.run(parser.parse_args(_cli_args(tiny_model_dir, data, out1)))
    finally:
        torch.set_num_threads(threads)
    r0, r1 = run_distributed(_eval_rank, 2, args=(_cli_args(tiny_model_dir, data, out2),))
    assert r0["settings"]["world_size"] == 2 and single["settings"]["world_size"] == 1
    assert _comparable(r0) == _comparable(single)
    assert _comparable(r1) == _comparable(single)  # every rank holds the gathered results
    (name,) = single["models"]
    rep = single["models"][name]["representation"]
    assert rep["n_examples"] == 3 and rep["task"] == "cola"
    assert sorted(os.listdir(out1)) == sorted(os.listdir(out2))
    one = json.load(open(os.path.join(out1, "results.json")))
    two = json.load(open(os.path.join(out2, "results.json")))
    assert _comparable(one) == _comparable(two)
