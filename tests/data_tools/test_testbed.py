"""The yes/no testbed: determinism, shared inputs and answers, held-out wordings, loadable files."""
from __future__ import annotations

import os

from coin.cli import main as coin
from coin.data_tools.readers import read_records
from coin.data_tools.schema import CONTRASTIVE
from coin.data_tools.testbed import HELDOUT_PHRASINGS, TASKS, TRAIN_PHRASINGS, make_scenes, words, write_testbed

FILES = ["train.pairs.jsonl", "tasks.json", "instructions.train.json", "instructions.heldout.json", "corpus.txt",
         *[os.path.join("eval", t, "validation.jsonl") for t in TASKS]]


def _bytes(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in FILES}


def test_deterministic_per_seed(tmp_path):
    write_testbed(tmp_path / "a", seed=3, train_per_task=12, eval_per_task=8)
    assert coin(["data", "testbed", str(tmp_path / "b"), "--seed", "3", "--train-per-task", "12",
                 "--eval-per-task", "8"]) == 0
    write_testbed(tmp_path / "c", seed=4, train_per_task=12, eval_per_task=8)
    a, b, c = _bytes(tmp_path / "a"), _bytes(tmp_path / "b"), _bytes(tmp_path / "c")
    assert a == b
    assert a["train.pairs.jsonl"] != c["train.pairs.jsonl"] and a["corpus.txt"] != c["corpus.txt"]
    assert not [f for f in os.listdir(tmp_path / "a") if ".tmp-" in f]


def test_tasks_share_inputs_and_answers_and_disagree():
    import random

    scenes = make_scenes(random.Random(0), 40)
    for t in TASKS:
        assert sum(s["labels"][t] for s in scenes) == 20  # exactly balanced
    for i, t in enumerate(TASKS):
        for u in TASKS[i + 1:]:
            disagree = sum(s["labels"][t] != s["labels"][u] for s in scenes) / len(scenes)
            assert disagree >= 0.3, (t, u, disagree)


def test_heldout_phrasings_are_new_words_known_to_the_corpus(tmp_path):
    write_testbed(tmp_path, seed=0, train_per_task=8, eval_per_task=4)
    corpus_words = words(open(tmp_path / "corpus.txt").read())
    train_words = set().union(*(words(p) for v in TRAIN_PHRASINGS.values() for p in v))
    train_all = {p for v in TRAIN_PHRASINGS.values() for p in v}
    corpus = open(tmp_path / "corpus.txt").read()
    for t in TASKS:
        assert len(TRAIN_PHRASINGS[t]) >= 10 and len(HELDOUT_PHRASINGS[t]) >= 4
        assert len(set(TRAIN_PHRASINGS[t])) == len(TRAIN_PHRASINGS[t])
        for p in HELDOUT_PHRASINGS[t]:
            assert p not in train_all and p not in corpus
            new = words(p) - train_words
            assert new and new <= corpus_words, (p, new)
    for p in train_all:
        assert p not in corpus and words(p) <= corpus_words


def test_files_load_in_eval_and_training(tmp_path):
    from coin.eval.instructions import clean_only, resolve_instructions
    from coin.eval.loaders import load_task_data
    from coin.eval.tasks import load_task_file

    write_testbed(tmp_path, seed=0, train_per_task=10, eval_per_task=6)
    records, report = read_records(str(tmp_path / "train.pairs.jsonl"), CONTRASTIVE)
    assert len(records) == 10 * len(TASKS)
    for r in records:
        assert r["instruction"] in TRAIN_PHRASINGS[r["task"]] and r["paraphrases"][0] in TRAIN_PHRASINGS[r["task"]]
        assert r["instruction"] != r["paraphrases"][0] and r["output"] in ("no", "yes")
        assert r["input"].startswith("Scene: ")
    specs = {s.name: s for s in load_task_file(str(tmp_path / "tasks.json"))}
    assert sorted(specs) == sorted(TASKS)
    for t, spec in specs.items():
        data = load_task_data(spec, str(tmp_path / "eval"), n_examples=0)
        assert len(data.examples) == 6 and {e["label"] for e in data.examples} == {0, 1}
    for name in ("instructions.train.json", "instructions.heldout.json"):
        iset = resolve_instructions(f"generated:{tmp_path / name}", specs, attacks=["clean", "deepwordbug"],
                                    n_instructions=0)
        want = TRAIN_PHRASINGS if name == "instructions.train.json" else HELDOUT_PHRASINGS
        assert clean_only(iset) == want
