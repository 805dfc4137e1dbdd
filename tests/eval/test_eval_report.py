"""Two models side by side through evaluate_models: the report files (JSON, JSONL, Markdown, PNG)
are produced and parse, and the representation analysis equals a direct computation."""
import json
import os

import pytest
import torch

from coin.data_tools.prompt import PromptFormat, encode
from coin.eval.instructions import resolve_instructions
from coin.eval.loaders import load_task_data
from coin.eval.report import load_results, write_report
from coin.eval.runner import evaluate_models
from coin.eval.tasks import get_task, render_prompt


@pytest.fixture(scope="module")
def second_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with noised weights (a second checkpoint that answers differently), trained
    (says its run config) with another prompt format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path_factory.mktemp("models") / "noisy" / "hf")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    with open(os.path.join(out, "coin_run_config.yaml"), "w") as f:  # as coin export writes it
        f.write("data:\n  prompt_template: \"Q: {prompt}\\nA: \"\n  add_bos: false\n  max_length: 128\n")
    return out


@pytest.fixture(scope="module")
def report(tiny_model_dir, second_model, glue_dir, tmp_path_factory):
    root, _ = glue_dir
    specs = {t: get_task(t) for t in ("cola", "rte")}
    iset = resolve_instructions("generated", specs, attacks=["deepwordbug", "checklist", "semantic"],
                                n_instructions=2, seed=0)
    tasks = [load_task_data(s, root, n_examples=6, seed=0) for s in specs.values()]
    results = evaluate_models([tiny_model_dir, second_model], tasks, iset, names=["base", "noisy"],
                              representation_task="cola", representation_examples=4, projection="pca",
                              settings={"tasks": list(specs)}, progress=False, batch_size=5)
    out = str(tmp_path_factory.mktemp("report"))
    return results, write_report(results, out), tasks, iset


def _strict_json(path):
    def no_nan(x):
        raise AssertionError(f"{path}: non-standard JSON constant {x}")

    with open(path) as f:
        return json.load(f, parse_constant=no_nan)


def test_report_files_are_written_and_parse(report):
    results, paths, tasks, iset = report
    assert set(paths) == {"results", "predictions", "representations_json", "report", "accuracy_by_level",
                          "accuracy_by_task", "representations"}
    data = _strict_json(paths["results"])
    assert data["format"] == "coin-eval/1" and list(data["models"]) == ["base", "noisy"]
    assert data == load_results(paths["results"])
    for name in ("base", "noisy"):
        m = data["models"][name]
        assert set(m["tasks"]) == {"cola", "rte"}
        for tr in m["tasks"].values():
            assert all("scores" not in r and len(r["predictions"]) == 6 for r in tr["instructions"])
        assert "projection" not in m["representation"]
    with open(paths["predictions"]) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 2 * len(iset) * 6
    first = lines[0]
    assert set(first) == {"model", "task", "instruction", "example", "label", "prediction", "score"}
    assert len(first["score"]) == 2
    reps = _strict_json(paths["representations_json"])
    assert len(reps["base"]["x"]) == len(iset.for_task("cola")) * 4
    md = open(paths["report"]).read()
    assert "| level | base acc | base std | noisy acc | noisy std |" in md
    for needle in ("| cola | clean |", "| rte | semantic |", "![accuracy_by_level](accuracy_by_level.png)",
                   "## Representations", "### rte", "checklist/1"):
        assert needle in md, needle
    import matplotlib.image

    for kind in ("accuracy_by_level", "accuracy_by_task", "representations"):
        with open(paths[kind], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(paths[kind])
        assert img.shape[0] > 100 and img.shape[1] > 100
    # the two models really differ, so the side-by-side columns are not copies of one model
    base, noisy = (results["models"][n]["tasks"]["cola"]["instructions"][0]["scores"] for n in ("base", "noisy"))
    assert base != noisy


def test_each_model_is_prompted_as_it_was_trained(report):
    from coin.eval.scoring import content_free_priors, label_scores
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer

    results, _, tasks, iset = report
    noisy = results["models"]["noisy"]
    assert noisy["prompt_format"]["template"] == "Q: {prompt}\nA: " and noisy["prompt_format"]["add_bos"] is False
    assert results["models"]["base"]["prompt_format"]["source"] == "default"
    mcfg = ModelConfig(name_or_path=noisy["path"], attn_implementation="eager")
    model, tok = load_model(mcfg).eval(), load_tokenizer(mcfg)
    cola = tasks[0]
    row = noisy["tasks"]["cola"]["instructions"][0]
    prompts = [render_prompt(cola.spec, row["text"], e) for e in cola.examples]
    fmt = PromptFormat(template="Q: {prompt}\nA: ", add_bos=False)
    direct = torch.tensor(label_scores(model, tok, fmt, prompts, cola.spec.label_words))
    (prior,) = content_free_priors(model, tok, fmt, cola.spec, [row["text"]])
    assert torch.allclose(torch.tensor(row["scores"]), direct - torch.tensor(prior), atol=1e-5)


def test_representation_cosines_equal_a_direct_computation(report, tiny_model_dir):
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer

    results, _, tasks, iset = report
    rep = results["models"]["base"]["representation"]
    cola = tasks[0]
    mcfg = ModelConfig(name_or_path=tiny_model_dir, attn_implementation="eager")
    model, tok = load_model(mcfg).eval(), load_tokenizer(mcfg)

    def pooled(text, example):
        ids, _ = encode(tok, PromptFormat(), render_prompt(cola.spec, text, example), "", 512)
        with torch.no_grad():  # unpadded, one sequence: the last position is the last real token
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[-1][0, -1].double()

    by_key = {i.key: i for i in iset.for_task("cola")}
    for level, attacks in (("character", ["deepwordbug"]), ("sentence", ["checklist"]), ("semantic", ["semantic"])):
        cos = []
        for attack in attacks:
            for idx in range(2):
                for ex in cola.examples[:4]:
                    a = pooled(by_key[f"clean/{idx}"].text, ex)
                    b = pooled(by_key[f"{attack}/{idx}"].text, ex)
                    cos.append(torch.nn.functional.cosine_similarity(a, b, dim=0).item())
        assert rep["mean_cosine"][level] == pytest.approx(sum(cos) / len(cos), abs=1e-4)
    proj = rep["projection"]
    assert proj["method"] == "pca" and len(proj["x"]) == len(proj["level"]) == len(by_key) * 4
    assert os.path.isfile(report[1]["representations"])
