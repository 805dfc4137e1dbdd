"""The two CoIN losses.

`token_losses` is the generation loss without full-vocabulary logits at prompt positions: only
the hidden states that predict a label are projected, in a FIXED number of chunks (so every rank
calls the head module the same number of times whatever its data: under ZeRO-3 each call is a
collective), and at most one chunk of logits is alive at a time. The head is called as a module so
ZeRO-3's hooks gather its partitioned weight. Two ways to get there, chosen by whether the head
trains:

- a trainable head: each chunk is recomputed in backward (non-reentrant activation checkpointing);
- a frozen head (LoRA, or a head frozen on purpose): `_FrozenHeadRows`. Checkpointing cannot be
  used there: ZeRO-3 releases a frozen parameter before the recomputation reads it (DeepSpeed
  #8130: `CheckpointError ... recomputed {'shape': [0]}`). Since token i's loss depends on its
  hidden state h_i alone, dL/dh_i = (dL/dce_i) * dce_i/dh_i: the per-token gradients dce_i/dh_i
  ([M, d], the size of the selected hidden states) are computed chunk by chunk in forward, where
  the head is called (and differentiated) as a module inside ZeRO-3's hooks, and only scaled in
  backward. No head call in backward, no recomputation, 2 head matmuls per token instead of 3.

`consistency_losses` (objective consistency) runs the same machinery over aligned pairs of
response positions: the Jensen-Shannon divergence of the two views' next-token distributions.

`info_nce` is the symmetric InfoNCE of METHOD.md on cosine similarities, for local anchors
against a (possibly gathered) pool, positives at `offset + arange(B)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .batch import IGNORE_INDEX


def _chunk_ce(head: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), targets, reduction="none")


def _chunk_js(head: nn.Module, h: torch.Tensor, _unused: torch.Tensor) -> torch.Tensor:
    """h [k, 2, d]: the two views' states at one response position -> JS(P || Q) [k] in nats."""
    logp = F.log_softmax(head(h).float(), dim=-1)  # [k, 2, V]
    lp, lq = logp[:, 0], logp[:, 1]
    lm = torch.logaddexp(lp, lq) - math.log(2.0)  # log of the mixture (P + Q) / 2
    return 0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of `module` trains (e.g. the output head under LoRA)."""
    return not any(p.requires_grad for p in module.parameters())


class _FrozenHeadRows(torch.autograd.Function):
    """out [M] = fn(head, h, y) row by row for a frozen head, row i depending on h[i] alone
    (a token's CE, or a response position's JS); backward returns g[i] * dout_i/dh_i."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, y: torch.Tensor, head: nn.Module, chunks: int, fn) -> torch.Tensor:
        size = -(-h.shape[0] // chunks) if h.shape[0] else 0
        outs, grads = [], []
        for i in range(chunks):
            with torch.enable_grad():
                hc = h[i * size:(i + 1) * size].detach().requires_grad_()
                out = fn(head, hc, y[i * size:(i + 1) * size])
                # rows are independent: the gradient of the sum is each row's own dout_i/dh_i
                (grad,) = torch.autograd.grad(out.sum(), hc)
            outs.append(out.detach())
            grads.append(grad)
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(outs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad_h,) = ctx.saved_tensors
        scale = grad_out.reshape(-1, *([1] * (grad_h.dim() - 1))).to(grad_h.dtype)
        return scale * grad_h, None, None, None, None


def _rowwise(fn, h: torch.Tensor, y: torch.Tensor, head: nn.Module, chunks: int) -> torch.Tensor:
    """fn(head, h, y) over the rows of h in `chunks` head calls (a fixed number: ZeRO-3), one
    chunk of logits alive at a time: recomputed in backward (trainable head) or `_FrozenHeadRows`."""
    if torch.is_grad_enabled() and h.requires_grad and is_frozen(head):
        return _FrozenHeadRows.apply(h, y, head, chunks, fn)
    size = -(-h.shape[0] // chunks) if h.shape[0] else 0
    pieces = []
    for i in range(chunks):
        hc, yc = h[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(fn, head, hc, yc, use_reentrant=False))
        else:
            pieces.append(fn(head, hc, yc))
    return torch.cat(pieces)


def token_losses(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of every label token.

    hidden [N, T, d] (final-norm states), labels [N, T] (IGNORE_INDEX where no loss). Position t
    predicts labels[:, t + 1]. Returns (ce [M] float32, row [M] the row of each token).
    """
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    rows = selected.nonzero()[:, 0]
    return _rowwise(_chunk_ce, hidden[:, :-1][selected], targets[selected], head, chunks), rows


def consistency_losses(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, chunks: int) -> torch.Tensor:
    """Jensen-Shannon divergence between the two views' next-token distributions at each response
    position -> js [K] float32 (nats, in [0, log 2]).

    Rows 0..B-1 are originals, B..2B-1 their paraphrases; both carry the same response, so the k-th
    label position of row i is aligned with the k-th of row B + i, for k below the smaller of the
    two label counts (they differ only when truncation cut into a response).
    """
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    b = labels.shape[0] // 2
    rank = selected.cumsum(dim=1) - 1
    counts = selected.sum(dim=1)
    common = torch.minimum(counts[:b], counts[b:]).repeat(2)
    keep = selected & (rank < common[:, None])
    h = hidden[:, :-1]
    pairs = torch.stack([h[:b][keep[:b]], h[b:][keep[b:]]], dim=1)  # [K, 2, d], pair i's positions in order
    dummy = torch.zeros(pairs.shape[0], dtype=torch.long, device=pairs.device)
    return _rowwise(_chunk_js, pairs, dummy, head, chunks)


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
