"""Small evaluation data in the real formats (HF `glue` columns as JSONL/Parquet; GLUE's TSVs),
and a word-level tokenizer model whose vocabulary lacks the label words."""
from __future__ import annotations

import csv
import json
import os
import random

from coin.eval.tasks import GLUE_TASKS, get_task

_SUBJ = ["the cat", "a critic", "my neighbour", "the film", "this plot", "the old man", "our team", "the band"]
_VERB = ["liked", "hated", "watched", "ignored", "praised", "saw", "found", "enjoyed"]
_OBJ = ["the ending", "every scene", "the music", "a quiet room", "the red car", "its actors", "the book"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJ).capitalize()} {rng.choice(_VERB)} {rng.choice(_OBJ)}."


def make_rows(task: str, n: int, seed: int = 0) -> list[dict]:
    """n examples of a task: its HF columns, `label` (id) and `idx`."""
    spec = get_task(task)
    rng = random.Random(f"{task}-{seed}")
    rows = []
    for i in range(n):
        row = {c: sentence(rng) for c in spec.columns}
        if "question" in spec.columns[0]:
            row[spec.columns[0]] = row[spec.columns[0]][:-1] + "?"
        row["label"] = rng.randrange(spec.num_labels)
        row["idx"] = i
        rows.append(row)
    return rows


def write_jsonl(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def write_parquet(path: str, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_glue_tsv(task: str, path: str, rows: list[dict]) -> str:
    """The task's dev TSV exactly as the GLUE download script lays it out."""
    spec = get_task(task)
    words = spec.label_words
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines: list[list[str]] = []
    if task == "sst2":
        lines.append(["sentence", "label"])
        lines += [[r["sentence"], str(r["label"])] for r in rows]
    elif task == "cola":  # no header: source, label, original judgement, sentence
        lines += [["gj04", str(r["label"]), "" if r["label"] else "*", r["sentence"]] for r in rows]
    elif task == "qqp":
        lines.append(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"])
        lines += [[str(i), str(2 * i), str(2 * i + 1), r["question1"], r["question2"], str(r["label"])]
                  for i, r in enumerate(rows)]
    elif task == "mrpc":
        lines.append(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"])
        lines += [[str(r["label"]), "1", "2", r["sentence1"], r["sentence2"]] for r in rows]
    elif task.startswith("mnli"):
        lines.append(["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                      "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"])
        lines += [[str(i), "1", "1e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", r["premise"], r["hypothesis"],
                   words[r["label"]], words[r["label"]]] for i, r in enumerate(rows)]
    elif task in ("qnli", "rte"):
        a, b = spec.columns
        lines.append(["index", a, b, "label"])
        lines += [[str(i), r[a], r[b], words[r["label"]]] for i, r in enumerate(rows)]
    elif task == "wnli":
        lines.append(["index", "sentence1", "sentence2", "label"])
        lines += [[str(i), r["sentence1"], r["sentence2"], str(r["label"])] for i, r in enumerate(rows)]
    else:
        raise ValueError(task)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None, lineterminator="\n")
        w.writerows(lines)
    return path


# One real format per task in the shared data directory; tests/eval/test_eval_loaders.py covers every
# task in every format.
LAYOUT = {
    "sst2": ("jsonl", "sst2/validation.jsonl"),
    "cola": ("tsv", "CoLA/dev.tsv"),
    "qqp": ("parquet", "qqp/validation.parquet"),
    "mrpc": ("tsv", "MRPC/dev.tsv"),
    "mnli_matched": ("tsv", "MNLI/dev_matched.tsv"),
    "mnli_mismatched": ("jsonl", "mnli/validation_mismatched.jsonl"),
    "qnli": ("tsv", "QNLI/dev.tsv"),
    "rte": ("parquet", "rte/validation.parquet"),
    "wnli": ("tsv", "WNLI/dev.tsv"),
}


def write_task(root: str, task: str, fmt: str, rel: str, rows: list[dict]) -> str:
    path = os.path.join(root, rel)
    if fmt == "jsonl":
        return write_jsonl(path, rows)
    if fmt == "parquet":
        return write_parquet(path, rows)
    return write_glue_tsv(task, path, rows)


def write_glue_dir(root: str, n: int = 10) -> dict[str, list[dict]]:
    """Every GLUE task in LAYOUT's format under root; returns the rows written per task."""
    out = {}
    for task in GLUE_TASKS:
        fmt, rel = LAYOUT[task]
        rows = make_rows(task, n)
        write_task(root, task, fmt, rel, rows)
        out[task] = rows
    return out


def word_level_model(root: str, words: list[str]) -> str:
    """A tiny LLaMA with a word-level tokenizer over `words` (anything else is [UNK])."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) - set(specials)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                  eos_token="[EOS]")
    os.makedirs(root, exist_ok=True)
    tok.save_pretrained(root)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=2, eos_token_id=3, pad_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root)
    return root
