"""Helpers shared by the data_tools tests (importable by spawned processes)."""
from __future__ import annotations

import json
import os


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def record(i: int, **extra) -> dict:
    """A valid instruction record (separate input)."""
    rec = {"id": f"r{i}", "task": "sst2", "instruction": "Is the sentiment positive or negative?",
           "input": f"Sentence: movie number {i} was fine.", "output": "positive"}
    rec.update(extra)
    return rec


def contrastive(i: int, group: str = "g0", **extra) -> dict:
    rec = record(i, paraphrases=["Is this sentence positive or negative in sentiment?"], group=group)
    rec.update(extra)
    return rec


class WordTokenizer:
    """A small deterministic word-level tokenizer with the interface prompt.encode and the token
    cache use: picklable and free of transformers, so spawned test processes start quickly."""

    bos_token_id, eos_token_id, pad_token_id, unk_token_id = 1, 2, 0, 3
    name_or_path = "word-tokenizer"

    def __len__(self):
        return 4099

    def get_vocab(self):
        return {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}

    def _id(self, token):
        import zlib

        return 4 + zlib.crc32(token.encode()) % 4095

    def __call__(self, text, add_special_tokens=True):
        import re

        ids = [self._id(t) for t in re.findall(r"\w+|[^\w\s]|\n", text)]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def build_cache_in_process(args):
    """build_token_cache in a fresh process: (rows, input_ids of row 0, pid)."""
    records_path, cache_dir = args
    from coin.data_tools.prompt import PromptFormat
    from coin.data_tools.token_cache import build_token_cache

    ds = build_token_cache(records_path, WordTokenizer(), PromptFormat(), 64, cache_dir, show_progress=False)
    return len(ds), list(ds[0]["input_ids"]), os.getpid()
