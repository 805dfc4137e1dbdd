"""The CoIN step: (model, batch, config) -> (loss, metrics), one forward per micro-step.

    hidden = model(input_ids, attention_mask)          2B rows: originals, then paraphrases
    L_gen  = CE_tokens(originals) + CE_tokens(paraphrases)    (objectives coin, cit, consistency)
           | CE_tokens(originals)                              (objective sft)
    coin:        o, p = pool(hidden[:B]), pool(hidden[B:])
                 L_ctr = symmetric InfoNCE of o against the gathered paraphrases (and p against
                 the gathered originals), temperature tau
                 loss = L_gen + w * L_ctr
    consistency: L_cons = mean over aligned response positions of JS(P_orig || P_para)
                 loss = L_gen + w * L_cons,   w = consistency_weight
    cit, sft:    loss = L_gen

    w (coin) = min(max_weight, mean_r L_gen / mean_r L_ctr)                     adaptive (detached)
             | weight                                                          constant
             | min(max_weight, grad_ratio * |dL_gen/dh| / |dL_ctr/dh|)         gradnorm (detached)
    times min(1, step / weight_warmup_steps) (1 without warm-up); the consistency weight likewise.

Gradient norms at the final hidden states h (objectives coin and consistency; logged): computed
when the caller asks (`grad_norms`; the trainer asks on the last step of each logging interval)
and on every step where the weighting needs them (gradnorm); they cost two more passes through
the head and the loss (under ZeRO-3 each gathers the head's weight again). torch.autograd.grad
of each term with respect to h (retain_graph; the graph beyond h is not traversed). They are the norms of the gradient of the GLOBAL loss (the one-process loss on
the global batch) with respect to the global batch's hidden states: on rank r the gradient of its
contrastive loss reaches h_r through the gather's backward (an all-reduce), which sums what every
rank's loss sends to h_r, i.e. W x d(global L_ctr)/dh_r; the generation term gives
W x d(global L_gen)/dh_r likewise; the squared norms are summed over ranks (one all-reduce) and
the root divided by W. So gradnorm's w is the same on every rank and equals the single-process w.

Scaling contract: the returned loss is this rank's loss at scale 1. DeepSpeed averages parameter
gradients over ranks, which, with the gradient-exact gather of `gather.py`, yields the gradient
of  mean_r L_gen_r + w * L_ctr(global pool)  — the loss of one process holding the whole global
batch, where the generation loss is the mean over ranks of per-rank token means (the consistency
term too: mean_r L_cons_r). The adaptive weight uses the means over all ranks of the detached
losses (one all-reduce of two scalars), so it is the same number on every rank and equals the
single-process weight on the global batch.

Every rank runs the same forward, the same head calls, the same gather and the same all-reduces
every step, whatever its data (ZeRO-3 hangs otherwise). Objectives cit and sft need no pooling,
no gather, no gradient norms; consistency no pooling and no gather.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import CoinConfig
from .gather import NegativePool
from .losses import consistency_losses, info_nce, token_losses, view_means
from .pooling import pool as pool_hidden


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, to backward
    metrics: dict[str, torch.Tensor]  # detached 0-d tensors (this rank's values)


def _world_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def warmup_factor(step: int, cfg: CoinConfig) -> float:
    """min(1, step / weight_warmup_steps): 0 at the first optimiser step (step = steps done)."""
    return 1.0 if cfg.weight_warmup_steps == 0 else min(1.0, step / cfg.weight_warmup_steps)


def hidden_grad_norms(hidden: torch.Tensor, gen_loss: torch.Tensor, reg_loss: torch.Tensor) -> torch.Tensor:
    """[|dL_gen/dh|, |dL_reg/dh|] of the global loss at the global batch's final hidden states
    (see the module docstring), the same on every rank. Collective (the gather's backward and one
    all-reduce): every rank calls it."""
    (g_gen,) = torch.autograd.grad(gen_loss, hidden, retain_graph=True)
    (g_reg,) = torch.autograd.grad(reg_loss, hidden, retain_graph=True)
    squares = torch.stack([g_gen.float().pow(2).sum(), g_reg.float().pow(2).sum()])
    world = 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    return squares.sqrt() / world


def contrastive_weight(gen_loss: torch.Tensor, ctr_loss: torch.Tensor, cfg: CoinConfig, step: int = 0,
                       grad_norms: torch.Tensor | None = None) -> torch.Tensor:
    """The contrastive weight w (detached, the same number on every rank).

    adaptive: min(max_weight, mean_r gen_loss / mean_r ctr_loss) over all ranks (one all-reduce
    of two scalars, a collective: every rank calls it); constant: cfg.weight; gradnorm:
    min(max_weight, grad_ratio * |g_gen| / |g_ctr|) from `hidden_grad_norms`. Times the warm-up
    factor of `step`. Shared by the micro-batch step and the step-wide pool (step_pool.py).
    """
    if cfg.weighting == "adaptive":
        mean_gen, mean_ctr = _world_mean(torch.stack([gen_loss.detach(), ctr_loss.detach()]).float())
        # ctr_loss is 0 only when the pool holds a single pair; then w = max_weight times 0
        w = torch.clamp(mean_gen / mean_ctr.clamp(min=1e-12), max=cfg.max_weight)
    elif cfg.weighting == "gradnorm":
        if grad_norms is None:
            raise ValueError("coin.weighting: gradnorm needs the hidden-state gradient norms")
        g_gen, g_ctr = grad_norms.detach()
        w = torch.clamp(cfg.grad_ratio * g_gen / (g_ctr + 1e-12), max=cfg.max_weight)
    else:
        w = torch.tensor(cfg.weight, device=gen_loss.device)
    return w * warmup_factor(step, cfg)


def needs_grad_norms(cfg: CoinConfig) -> bool:
    """Whether the loss itself needs the hidden-state gradient norms (weighting gradnorm)."""
    return cfg.objective == "coin" and cfg.weighting == "gradnorm"


def coin_step(model, batch: dict, cfg: CoinConfig, pool: NegativePool | None = None, step: int = 0,
              grad_norms: bool = True) -> StepOutput:
    """One micro-step's loss. `model` is a CoinModel or a DeepSpeed engine wrapping one; `step`
    the optimiser steps done (for coin.weight_warmup_steps); `grad_norms`: measure the
    hidden-state gradient norms (objectives coin, consistency; always when `needs_grad_norms`),
    else their metrics are 0. A collective decision: every rank passes the same value."""
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n = input_ids.shape[0]
    if n % 2:
        raise ValueError(f"a CoIN batch holds originals then paraphrases: expected an even row count, got {n}")
    b = n // 2
    hidden = model(input_ids, attention_mask)
    # The norms' autograd.grad stops at this view: DeepSpeed hooks the module's output tensor to
    # detect a backward, and running them from autograd.grad ends a ZeRO-1/2 step's reduction early.
    hidden = hidden.view_as(hidden)
    head = getattr(model, "module", model).head
    measure = cfg.objective in ("coin", "consistency") and (grad_norms or needs_grad_norms(cfg))
    grad_mode = torch.is_grad_enabled()
    with torch.enable_grad() if measure else contextlib.nullcontext():
        if measure and not hidden.requires_grad:  # evaluation (no_grad): the norms need a graph from h
            hidden = hidden.detach().requires_grad_()
        out = _losses(hidden, attention_mask, labels, batch, head, cfg, pool, step, b, measure)
    if not grad_mode:
        out.loss = out.loss.detach()
    return out


def _losses(hidden, attention_mask, labels, batch, head, cfg: CoinConfig, pool, step: int, b: int,
            measure: bool) -> StepOutput:
    n = 2 * b
    if cfg.objective == "sft":  # paraphrase rows carry no generation loss
        labels = labels.clone()
        labels[b:] = -100
    ce, rows = token_losses(hidden, labels, head, cfg.lm_loss_chunks)
    per_view = view_means(ce, rows, n)
    gen_loss = per_view[0] if cfg.objective == "sft" else per_view.sum()
    device = gen_loss.device
    zero = torch.zeros((), device=device)
    metrics = {
        "gen_loss": gen_loss.detach(),
        "tokens": attention_mask.sum().to(torch.float32),
        "label_tokens": torch.tensor(float(ce.numel()), device=device),
        "ctr_loss": zero, "ctr_weight": zero, "ctr_acc": zero, "pos_cos": zero, "neg_cos": zero,
        "cons_loss": zero, "gen_grad_norm": zero, "ctr_grad_norm": zero,
        "pool_size": torch.tensor(float(b), device=device),
    }
    if cfg.objective in ("cit", "sft"):
        metrics["loss"] = gen_loss.detach()
        return StepOutput(gen_loss, metrics)

    if cfg.objective == "consistency":
        js = consistency_losses(hidden, labels, head, cfg.lm_loss_chunks)
        reg = js.mean() if js.numel() else js.sum()  # no aligned position: 0, still in the graph
        norms = hidden_grad_norms(hidden, gen_loss, reg) if measure else torch.zeros(2, device=device)
        weight = torch.tensor(cfg.consistency_weight * warmup_factor(step, cfg), device=device)
        metrics["cons_loss"] = reg.detach()
    else:
        emb = pool_hidden(hidden, attention_mask, cfg.pooling, batch.get("prompt_last"))
        o, p = emb[:b], emb[b:]
        pool = pool or NegativePool(enabled=False)
        pool_o, offset = pool.gather(o)
        pool_p, _ = pool.gather(p)
        reg, ctr_metrics = info_nce(o, p, pool_o, pool_p, offset, cfg.temperature)
        norms = hidden_grad_norms(hidden, gen_loss, reg) if measure else torch.zeros(2, device=device)
        weight = contrastive_weight(gen_loss, reg, cfg, step, norms)
        metrics.update(ctr_metrics)
        metrics.update(ctr_loss=reg.detach(), pool_size=torch.tensor(float(pool_o.shape[0]), device=device))
    loss = gen_loss + weight * reg
    metrics.update(loss=loss.detach(), ctr_weight=weight.detach(), gen_grad_norm=norms[0].detach(),
                   ctr_grad_norm=norms[1].detach())
    return StepOutput(loss, metrics)
