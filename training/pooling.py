"""Sequence embeddings from final-norm hidden states, honouring the attention mask.

    last         the last real token of each row (prompt + response): the reference's choice
    prompt_last  the last prompt token (the model has read instruction and input, not the answer)
    mean         the mean over real tokens

All three work with left or right padding: positions come from the attention mask (and the
batch's `prompt_last` indices), never from "position -1".
"""
from __future__ import annotations

import torch

POOLINGS = ("last", "prompt_last", "mean")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[N] index of the last position whose mask is 1 (either padding side)."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str, prompt_last: torch.Tensor | None = None) -> torch.Tensor:
    """hidden [N, T, d], attention_mask [N, T], prompt_last [N] -> [N, d]."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if method == "last":
        return hidden[rows, last_token_index(attention_mask)]
    if method == "prompt_last":
        if prompt_last is None:
            raise ValueError("prompt_last pooling needs the batch's prompt_last indices")
        return hidden[rows, prompt_last]
    if method == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}, got {method!r}")
