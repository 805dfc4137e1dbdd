"""The CoIN step: (model, batch, config) -> (loss, metrics), one forward per micro-step.

    hidden = model(input_ids, attention_mask)          2B rows: originals, then paraphrases
    L_gen  = CE_tokens(originals) + CE_tokens(paraphrases)    ("both", the reference)
           | CE_tokens(originals)                              ("original")
    o, p   = pool(hidden[:B]), pool(hidden[B:])
    L_ctr  = symmetric InfoNCE of o against the gathered paraphrases (and p against the gathered
             originals), temperature tau
    w      = min(max_weight, mean_r L_gen / mean_r L_ctr)   (adaptive; detached) | weight (constant)
    loss   = L_gen + w * L_ctr

Scaling contract: the returned loss is this rank's loss at scale 1. DeepSpeed averages parameter
gradients over ranks, which, with the gradient-exact gather of `gather.py`, yields the gradient
of  mean_r L_gen_r + w * L_ctr(global pool)  — the loss of one process holding the whole global
batch, where the generation loss is the mean over ranks of per-rank token means. The adaptive
weight uses the means over all ranks of the detached losses (one all-reduce of two scalars), so
it is the same number on every rank and equals the single-process weight on the global batch.

Every rank runs the same forward, the same head calls, the same gather and the same all-reduce
every step, whatever its data (ZeRO-3 hangs otherwise). With `contrastive: false` the step is
plain SFT (no pooling, no gather) on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import CoinConfig
from .gather import NegativePool
from .losses import info_nce, token_losses, view_means
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


def contrastive_weight(gen_loss: torch.Tensor, ctr_loss: torch.Tensor, cfg: CoinConfig) -> torch.Tensor:
    """The contrastive weight w (detached, the same number on every rank).

    adaptive: min(max_weight, mean_r gen_loss / mean_r ctr_loss) over all ranks (one all-reduce
    of two scalars, a collective: every rank calls it); constant: cfg.weight. Shared by the
    micro-batch step and the step-wide pool (step_pool.py).
    """
    if cfg.weighting == "adaptive":
        mean_gen, mean_ctr = _world_mean(torch.stack([gen_loss.detach(), ctr_loss.detach()]).float())
        # ctr_loss is 0 only when the pool holds a single pair; then w = max_weight times 0
        return torch.clamp(mean_gen / mean_ctr.clamp(min=1e-12), max=cfg.max_weight)
    return torch.tensor(cfg.weight, device=gen_loss.device)


def coin_step(model, batch: dict, cfg: CoinConfig, pool: NegativePool | None = None) -> StepOutput:
    """One micro-step's loss. `model` is a CoinModel or a DeepSpeed engine wrapping one."""
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n = input_ids.shape[0]
    if n % 2:
        raise ValueError(f"a CoIN batch holds originals then paraphrases: expected an even row count, got {n}")
    b = n // 2
    hidden = model(input_ids, attention_mask)
    head = getattr(model, "module", model).head

    if cfg.gen_loss == "original":  # paraphrase rows carry no generation loss
        labels = labels.clone()
        labels[b:] = -100
    ce, rows = token_losses(hidden, labels, head, cfg.lm_loss_chunks)
    per_view = view_means(ce, rows, n)
    gen_loss = per_view.sum() if cfg.gen_loss == "both" else per_view[0]
    zero = torch.zeros((), device=gen_loss.device)
    metrics = {
        "gen_loss": gen_loss.detach(),
        "tokens": attention_mask.sum().to(torch.float32),
        "label_tokens": torch.tensor(float(ce.numel()), device=gen_loss.device),
    }
    if not cfg.contrastive:
        metrics.update(loss=gen_loss.detach(), ctr_loss=zero, ctr_weight=zero, ctr_acc=zero, pos_cos=zero,
                       neg_cos=zero, pool_size=torch.tensor(float(b), device=gen_loss.device))
        return StepOutput(gen_loss, metrics)

    emb = pool_hidden(hidden, attention_mask, cfg.pooling, batch.get("prompt_last"))
    o, p = emb[:b], emb[b:]
    pool = pool or NegativePool(enabled=False)
    pool_o, offset = pool.gather(o)
    pool_p, _ = pool.gather(p)
    ctr_loss, ctr_metrics = info_nce(o, p, pool_o, pool_p, offset, cfg.temperature)

    weight = contrastive_weight(gen_loss, ctr_loss, cfg)
    loss = gen_loss + weight * ctr_loss
    metrics.update(ctr_metrics)
    metrics.update(loss=loss.detach(), ctr_loss=ctr_loss.detach(), ctr_weight=weight.detach(),
                   pool_size=torch.tensor(float(pool_o.shape[0]), device=gen_loss.device))
    return StepOutput(loss, metrics)
