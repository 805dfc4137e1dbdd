"""Demo data: deterministic, real label words, held-out templates kept apart, and the default
chain demo -> augment (templates) -> pairs -> token cache -> sampler -> collate on CPU."""
import json
import os
import time

from coin.cli import main as coin
from coin.data_tools.demo import INSTRUCTIONS, LABELS, TASKS, build_demo, write_demo
from coin.data_tools.readers import read_records
from coin.data_tools.templates import TemplateSet, parse_options, render


def test_deterministic_from_the_seed(tmp_path):
    write_demo(str(tmp_path / "a"), seed=3, train_per_task=10, eval_per_task=3)
    write_demo(str(tmp_path / "b"), seed=3, train_per_task=10, eval_per_task=3)
    write_demo(str(tmp_path / "c"), seed=4, train_per_task=10, eval_per_task=3)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["eval.jsonl", "glue", "heldout_instructions.json", "heldout_templates.json", "manifest.json",
                     "templates.json", "train.jsonl"]
    glue = sorted(os.listdir(tmp_path / "a" / "glue"))
    assert glue == sorted(f"{t}.jsonl" for t in TASKS)
    for name in [n for n in names if n != "glue"] + [f"glue/{g}" for g in glue]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_contents(demo_dir):
    train, _ = read_records(os.path.join(demo_dir, "train.jsonl"), "instruction")
    evaluation, _ = read_records(os.path.join(demo_dir, "eval.jsonl"), "instruction")
    templates = TemplateSet.load(os.path.join(demo_dir, "templates.json"))
    heldout = TemplateSet.load(os.path.join(demo_dir, "heldout_templates.json"))
    instructions = json.loads(open(os.path.join(demo_dir, "heldout_instructions.json")).read())
    manifest = json.loads(open(os.path.join(demo_dir, "manifest.json")).read())
    assert set(TASKS) == {"sst2", "cola", "qqp", "mrpc", "mnli", "qnli", "rte", "wnli"} == set(manifest["tasks"])
    assert LABELS["cola"] == ["unacceptable", "acceptable"] and LABELS["qqp"] == ["not_equivalent", "equivalent"]
    assert LABELS["mnli"] == ["entailment", "neutral", "contradiction"] and LABELS["rte"] == ["entailment", "not_entailment"]
    assert len(train) == 96 and len(evaluation) == 32 and manifest["records"] == {"train": 96, "eval": 32}
    for task in TASKS:
        train_t, held_t = templates.get(task), heldout.get(task)
        assert len(train_t) == 6 and len(held_t) == 6 and not {t[0] for t in train_t} & {t[0] for t in held_t}
        assert len(instructions[task]) == 6 and all(i in INSTRUCTIONS[task] for i in instructions[task])
        assert all(any(i in t[0] for t in held_t) for i in instructions[task])
        assert {r["output"] for r in train if r["task"] == task} <= set(LABELS[task])
    for records, tset in ((train, templates), (evaluation, heldout)):
        for r in records:
            tpl = tset.get(r["task"])[r["template_id"]]
            assert render(tpl[0], r["fields"]) == r["instruction"] and render(tpl[1], r["fields"]) == r["output"]
            assert parse_options(r["instruction"]) == LABELS[r["task"]]
    texts = [(r["task"], tuple(sorted(r["fields"].items()))) for r in train + evaluation]
    assert len(set(texts)) == len(texts)  # no instance twice, none shared by train and eval


def test_size_and_speed():
    start = time.perf_counter()
    data = build_demo(seed=0)
    assert time.perf_counter() - start < 5
    assert 1000 <= len(data["train"]) <= 3000


def test_default_chain_on_cpu(tmp_path, tokenizer):
    """demo -> coin augment (templates, the demo's own templates file) -> coin pairs -> token cache -> sampler."""
    from coin.data_tools.prompt import PromptFormat
    from coin.data_tools.sampler import GroupedBatchSampler, paraphrase_index
    from coin.data_tools.token_cache import build_token_cache
    from coin.training.batch import collate

    start = time.perf_counter()
    demo, work = str(tmp_path / "demo"), tmp_path / "work"
    assert coin(["data", "demo", demo]) == 0
    assert coin(["augment", f"{demo}/train.jsonl", "--backend", "templates", "--templates", f"{demo}/templates.json",
                 "--out-dir", str(work / "aug"), "--output", str(work / "train_aug.jsonl"), "--similarity-model",
                 "none", "--no-progress"]) == 0
    assert coin(["pairs", str(work / "train_aug.jsonl"), "--output", str(work / "train_pairs.jsonl")]) == 0
    # the held-out split is paraphrased with held-out templates only
    assert coin(["augment", f"{demo}/eval.jsonl", "--backend", "templates", "--templates",
                 f"{demo}/heldout_templates.json", "--out-dir", str(work / "aug_eval"), "--output",
                 str(work / "eval_aug.jsonl"), "--similarity-model", "none", "--no-progress"]) == 0
    held = TemplateSet.load(f"{demo}/heldout_templates.json")
    for rec in read_records(str(work / "eval_aug.jsonl"))[0]:
        assert set(rec["paraphrases"]) <= {render(t[0], rec["fields"]) for t in held.get(rec["task"])}
    ds = build_token_cache(str(work / "train_pairs.jsonl"), tokenizer, PromptFormat(), 256, str(work / "cache"),
                           show_progress=False)
    assert len(ds) == 1200
    sampler = GroupedBatchSampler(ds["group"], micro_batch_size=2, world_size=2, rank=0, seed=42)
    rows = []
    for i in next(iter(sampler)):
        row = ds[i]
        k = paraphrase_index(42, 0, i, len(row["para_input_ids"]))
        rows.append({**row, "para_input_ids": row["para_input_ids"][k], "para_prompt_len": row["para_prompt_len"][k]})
    batch = collate(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and rows[0]["group"] == rows[1]["group"]
    assert time.perf_counter() - start < 60


def test_glue_files_hold_the_heldout_instances(tmp_path):
    """glue/<task>.jsonl: the eval.jsonl instances with their input fields and the label word, and
    the evaluation reads them (the demo pipeline's `coin eval --data DIR/glue`)."""
    from coin.eval import get_task, load_task_data

    write_demo(str(tmp_path), seed=1, train_per_task=4, eval_per_task=3)
    evaluation, _ = read_records(str(tmp_path / "eval.jsonl"), "instruction")
    for task in TASKS:
        rows = [json.loads(line) for line in open(tmp_path / "glue" / f"{task}.jsonl")]
        want = [r for r in evaluation if r["task"] == task]
        assert [r["label"] for r in rows] == [r["output"] for r in want]
        data = load_task_data(get_task(task), str(tmp_path / "glue"), n_examples=0)
        assert data.total == len(want)
        assert data.labels == [get_task(task).label_words.index(r["output"]) for r in want]
