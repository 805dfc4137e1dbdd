"""The two CoIN losses.

`token_losses` is the generation loss without full-vocabulary logits at prompt positions: only
the hidden states that predict a label are projected, in a FIXED number of chunks (so every rank
calls the head module the same number of times whatever its data: under ZeRO-3 each call is a
collective), and at most one chunk of logits is alive at a time. The head is called as a module so
ZeRO-3's hooks gather its partitioned weight. Two ways to get there, chosen by whether the head
trains:

- a trainable head: each chunk is recomputed in backward (non-reentrant activation checkpointing);
- a frozen head (LoRA, or a head frozen on purpose): `_FrozenHeadCE`. Checkpointing cannot be
  used there: ZeRO-3 releases a frozen parameter before the recomputation reads it (DeepSpeed
  #8130: `CheckpointError ... recomputed {'shape': [0]}`). Since token i's loss depends on its
  hidden state h_i alone, dL/dh_i = (dL/dce_i) * dce_i/dh_i: the per-token gradients dce_i/dh_i
  ([M, d], the size of the selected hidden states) are computed chunk by chunk in forward, where
  the head is called (and differentiated) as a module inside ZeRO-3's hooks, and only scaled in
  backward. No head call in backward, no recomputation, 2 head matmuls per token instead of 3.

`info_nce` is the symmetric InfoNCE of METHOD.md on cosine similarities, for local anchors
against a (possibly gathered) pool, positives at `offset + arange(B)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .batch import IGNORE_INDEX


def _chunk_ce(head: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), targets, reduction="none")


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of `module` trains (e.g. the output head under LoRA)."""
    return not any(p.requires_grad for p in module.parameters())


class _FrozenHeadCE(torch.autograd.Function):
    """ce [M] = CE(head(h), y) per token for a frozen head; backward returns g[:, None] * dce/dh."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, y: torch.Tensor, head: nn.Module, chunks: int) -> torch.Tensor:
        size = -(-h.shape[0] // chunks) if h.shape[0] else 0
        ces, grads = [], []
        for i in range(chunks):
            with torch.enable_grad():
                hc = h[i * size:(i + 1) * size].detach().requires_grad_()
                ce = _chunk_ce(head, hc, y[i * size:(i + 1) * size])
                # rows are independent: the gradient of the sum is each token's own dce_i/dh_i
                (grad,) = torch.autograd.grad(ce.sum(), hc)
            ces.append(ce.detach())
            grads.append(grad)
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(ces)

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor):
        (grad_h,) = ctx.saved_tensors
        return grad_ce[:, None].to(grad_h.dtype) * grad_h, None, None, None


def token_losses(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of every label token.

    hidden [N, T, d] (final-norm states), labels [N, T] (IGNORE_INDEX where no loss). Position t
    predicts labels[:, t + 1]. Returns (ce [M] float32, row [M] the row of each token).
    """
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    rows = selected.nonzero()[:, 0]
    h = hidden[:, :-1][selected]
    y = targets[selected]
    if torch.is_grad_enabled() and h.requires_grad and is_frozen(head):
        return _FrozenHeadCE.apply(h, y, head, chunks), rows
    size = -(-h.shape[0] // chunks) if h.shape[0] else 0
    pieces = []
    for i in range(chunks):
        hc, yc = h[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_ce, head, hc, yc, use_reentrant=False))
        else:
            pieces.append(_chunk_ce(head, hc, yc))
    return torch.cat(pieces), rows


def view_means(ce: torch.Tensor, rows: torch.Tensor, n_rows: int, n_views: int = 2) -> torch.Tensor:
    """Token-mean loss of each view (rows split into `n_views` equal blocks) -> [n_views].

    A view without label tokens (everything truncated away) contributes 0, not NaN; its tokens
    still pass through the graph so every parameter keeps receiving a (zero) gradient.
    """
    view = rows * n_views // n_rows
    sums = torch.zeros(n_views, dtype=ce.dtype, device=ce.device).index_add(0, view, ce)
    counts = torch.bincount(view, minlength=n_views).to(ce.dtype)
    return sums / counts.clamp(min=1.0)


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    pool_anchors: torch.Tensor,
    pool_positives: torch.Tensor,
    offset: int,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE for B local pairs against a pool of P pairs.

    anchors, positives [B, d]: pooled originals o_i and paraphrases p_i of this rank.
    pool_anchors, pool_positives [P, d]: the pool (this rank's rows at offset..offset+B-1).
    S = cos(o_i, p_j) / tau; loss = (CE(S, labels) + CE(S'^T direction, labels)) / 2 where the
    second term scores each paraphrase p_i against all pooled originals. Labels = offset + i.
    With P = B (no gather) this is exactly METHOD.md's formula on the micro-batch.
    Metrics: `ctr_acc` (is p_i the nearest pooled paraphrase to o_i), `pos_cos` (mean cos(o_i, p_i)),
    `neg_cos` (mean over anchors of the most similar non-positive pooled paraphrase; 0 if P = 1).
    """
    o = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    po = F.normalize(pool_anchors.float(), dim=-1)
    pp = F.normalize(pool_positives.float(), dim=-1)
    labels = torch.arange(o.shape[0], device=o.device) + offset
    cos_op = o @ pp.T  # [B, P]
    cos_po = p @ po.T
    loss = (F.cross_entropy(cos_op / temperature, labels) + F.cross_entropy(cos_po / temperature, labels)) / 2
    with torch.no_grad():
        rows = torch.arange(o.shape[0], device=o.device)
        pos = cos_op[rows, labels]
        if cos_op.shape[1] > 1:
            neg = cos_op.clone()
            neg[rows, labels] = float("-inf")
            hardest = neg.max(dim=1).values.mean()
        else:
            hardest = torch.zeros((), device=o.device)
        metrics = {
            "ctr_acc": (cos_op.argmax(dim=1) == labels).float().mean(),
            "pos_cos": pos.mean(),
            "neg_cos": hardest,
        }
    return loss, metrics
