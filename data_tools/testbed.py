"""The instruction-robustness testbed: yes/no tasks over the same synthetic scenes.

    coin data testbed DIR [--seed 0] [--train-per-task 64] [--eval-per-task 32]
    write_testbed(out_dir, seed=0, ...)   (the same from Python)

Every task reads the same kind of input, a short scene ("Scene: two small red cats"), and
answers with the same words (no/yes), so only the instruction says which task is asked: colour
(is it red?), size (is it big?), kind (is it an animal?) and count (are there two?). Per task the
labels are exactly balanced and drawn independently, so tasks disagree on about half the inputs.
Each task has 10 training phrasings and 4 held-out ones whose wordings use synonyms found in no
training phrasing (crimson, large, creature, pair, ...); the corpus uses every word of every
phrasing in descriptive sentences, so a pre-trained model knows the words but has never seen the
held-out instructions. All files are deterministic in the arguments and written atomically.

Files: train.pairs.jsonl (coin.contrastive/1), tasks.json (`coin eval --task-file`),
eval/<task>/validation.jsonl (`coin eval --data DIR/eval`), instructions.train.json and
instructions.heldout.json (task -> [instruction], `--instructions generated:FILE`), corpus.txt
(`coin pretrain --corpus`).
"""
from __future__ import annotations

import os
import random
import re

from .atomic import write_json, write_text
from .readers import write_records
from .schema import SCHEMA_TAGS, CONTRASTIVE

LABEL_WORDS = ["no", "yes"]
TASKS = ("colour", "size", "kind", "count")

TRAIN_PHRASINGS = {
    "colour": [
        "Is the thing in the scene red?",
        "Answer yes or no: is it red?",
        "Tell me whether the colour of the object is red.",
        "Does the scene show something red?",
        "Say yes if the item is red, otherwise say no.",
        "Is the colour red?",
        "Check the colour: is it red?",
        "Would you call the object red?",
        "Is what you see here red in colour?",
        "Decide whether the thing described is red.",
    ],
    "size": [
        "Is the thing in the scene big?",
        "Answer yes or no: is it big?",
        "Tell me whether the size of the object is big.",
        "Does the scene show something big?",
        "Say yes if the item is big, otherwise say no.",
        "Is the size big?",
        "Check the size: is it big?",
        "Would you call the object big?",
        "Is what you see here big in size?",
        "Decide whether the thing described is big.",
    ],
    "kind": [
        "Is the thing in the scene an animal?",
        "Answer yes or no: is it an animal?",
        "Tell me whether the object is an animal.",
        "Does the scene show an animal?",
        "Say yes if the item is an animal, otherwise say no.",
        "Is it an animal?",
        "Check the kind: is it an animal?",
        "Would you call the object an animal?",
        "Is what you see here an animal?",
        "Decide whether the thing described is an animal.",
    ],
    "count": [
        "Are there two things in the scene?",
        "Answer yes or no: are there two?",
        "Tell me whether the number of objects is two.",
        "Does the scene show two things?",
        "Say yes if there are two items, otherwise say no.",
        "Is the number two?",
        "Check the count: are there two?",
        "Would you say there are two objects?",
        "Are there two of what you see here?",
        "Decide whether two things are described.",
    ],
}

HELDOUT_PHRASINGS = {
    "colour": [
        "Is the object crimson?",
        "Respond yes or no: does it look scarlet?",
        "Is its hue crimson?",
        "Judge whether the item appears scarlet.",
    ],
    "size": [
        "Is the object large?",
        "Respond yes or no: does it look huge?",
        "Is its dimension large?",
        "Judge whether the item appears huge.",
    ],
    "kind": [
        "Is the object a creature?",
        "Respond yes or no: is it a living beast?",
        "Is its type a creature?",
        "Judge whether the item appears to be a living beast.",
    ],
    "count": [
        "Is there a pair of objects?",
        "Respond yes or no: is there a couple of them?",
        "Is their quantity a pair?",
        "Judge whether the items appear as a couple.",
    ],
}

# how each attribute is realised in the scene for a yes / a no answer
YES = {"colour": ["red"], "size": ["big"], "kind": ["cat", "dog"], "count": ["two"]}
NO = {"colour": ["blue", "green"], "size": ["small"], "kind": ["box", "cup"], "count": ["one"]}
# plain glosses tying held-out synonyms to the training words (corpus only)
GLOSSES = [
    "Crimson and scarlet are shades of red.", "A hue is a colour.",
    "Large and huge mean big.", "A dimension is a size.",
    "A creature or a living beast is an animal.", "A type is a kind.",
    "A pair or a couple is two.", "A quantity is a number or a count.",
]

WORD_RE = re.compile(r"[A-Za-z]+")


def words(text: str) -> set[str]:
    return {w.lower() for w in WORD_RE.findall(text)}


def _balanced(rng: random.Random, n: int) -> list[int]:
    labels = [1] * (n // 2) + [0] * (n - n // 2)
    rng.shuffle(labels)
    return labels


def make_scenes(rng: random.Random, n: int) -> list[dict]:
    """n scenes; per task exactly balanced labels, drawn independently of the other tasks."""
    labels = {t: _balanced(rng, n) for t in TASKS}
    scenes = []
    for i in range(n):
        attrs = {t: rng.choice((YES if labels[t][i] else NO)[t]) for t in TASKS}
        noun = attrs["kind"] + (("es" if attrs["kind"] == "box" else "s") if attrs["count"] == "two" else "")
        text = f"{attrs['count']} {attrs['size']} {attrs['colour']} {noun}"
        scenes.append({"scene": text, "labels": {t: labels[t][i] for t in TASKS}})
    return scenes


def corpus_text(rng: random.Random, n_scenes: int = 200) -> str:
    """Descriptive sentences that use every word of every phrasing (never the instructions)."""
    lines = list(GLOSSES)
    for s in make_scenes(rng, n_scenes):
        lines.append(f"Here you see {s['scene']}.")
    vocab = sorted(set().union(*(words(p) for ph in (TRAIN_PHRASINGS, HELDOUT_PHRASINGS)
                                 for v in ph.values() for p in v)))
    for w in vocab:
        lines.append(f"The word {w} is often used when people describe a scene.")
    rng.shuffle(lines)
    return "\n".join(lines) + "\n"


def write_testbed(out_dir: str, seed: int = 0, train_per_task: int = 64, eval_per_task: int = 32) -> dict:
    if train_per_task < 2 or eval_per_task < 2:
        raise ValueError("testbed: --train-per-task and --eval-per-task must be at least 2")
    rng = random.Random(seed)
    records = []
    for t in TASKS:
        for s in make_scenes(rng, train_per_task):
            a, b = rng.sample(TRAIN_PHRASINGS[t], 2)
            k = len(records)
            records.append({"schema": SCHEMA_TAGS[CONTRASTIVE], "id": f"testbed-{k:06d}", "task": t,
                            "instruction": a, "input": f"Scene: {s['scene']}",
                            "output": LABEL_WORDS[s["labels"][t]], "paraphrases": [b],
                            "group": f"testbed-pair-{k:06d}"})
    rng.shuffle(records)
    write_records(os.path.join(out_dir, "train.pairs.jsonl"), records)
    write_json(os.path.join(out_dir, "tasks.json"),
               [{"name": t, "columns": ["scene"], "display": ["Scene"], "label_words": LABEL_WORDS}
                for t in TASKS])
    for t in TASKS:
        rows = [{"scene": s["scene"], "label": LABEL_WORDS[s["labels"][t]]} for s in make_scenes(rng, eval_per_task)]
        write_records(os.path.join(out_dir, "eval", t, "validation.jsonl"), rows)
    write_json(os.path.join(out_dir, "instructions.train.json"), TRAIN_PHRASINGS)
    write_json(os.path.join(out_dir, "instructions.heldout.json"), HELDOUT_PHRASINGS)
    write_text(os.path.join(out_dir, "corpus.txt"), corpus_text(rng))
    return {"train": len(records), "eval": eval_per_task * len(TASKS), "tasks": list(TASKS)}
