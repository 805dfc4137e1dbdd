"""Micro-batch layout shared by the collator and the CoIN step.

A micro-batch of B contrastive examples is ONE tensor batch of 2B sequences: rows 0..B-1 are the
originals, rows B..2B-1 their paraphrases in the same order (row i and row B+i are a positive
pair). Keys:

    input_ids       LongTensor [2B, T]   padded with the tokenizer's pad id
    attention_mask  LongTensor [2B, T]   1 on real tokens
    labels          LongTensor [2B, T]   token id on response tokens, -100 on prompt and padding
    prompt_last     LongTensor [2B]      index of the last prompt token of each row
    ids             list[str]            the B example ids (for error reports)

A row given to `collate` is a mapping with `id`, `input_ids`, `prompt_len`, `para_input_ids` and
`para_prompt_len` (one paraphrase already chosen), as the token cache provides.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

IGNORE_INDEX = -100


def collate(rows: Sequence[Mapping], pad_id: int, padding_side: str = "right") -> dict:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    seqs = [(list(r["input_ids"]), int(r["prompt_len"])) for r in rows]
    seqs += [(list(r["para_input_ids"]), int(r["para_prompt_len"])) for r in rows]
    width = max(len(ids) for ids, _ in seqs)
    n = len(seqs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    prompt_last = torch.zeros(n, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(seqs):
        if not ids or not 1 <= prompt_len <= len(ids):
            rid = rows[i % len(rows)].get("id", i % len(rows))
            raise ValueError(f"example {rid}: prompt_len {prompt_len} outside 1..{len(ids)} (sequence length)")
        off = width - len(ids) if padding_side == "left" else 0
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[i, off:off + len(ids)] = t
        attention_mask[i, off:off + len(ids)] = 1
        labels[i, off + prompt_len:off + len(ids)] = t[prompt_len:]
        prompt_last[i] = off + prompt_len - 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_last": prompt_last,
        "ids": [str(r.get("id", i)) for i, r in enumerate(rows)],
    }
