"""The step-wide negative pool (`coin.pool: step`): a cached two-pass CoIN step, GradCache-style,
inside DeepSpeed's own gradient accumulation (so ZeRO-2/3 partitioning and reduction stay DeepSpeed's).

One optimiser step of A micro-batches (A = gradient_accumulation_steps) of B pairs on each of W ranks:

    step = embed_step(engine.model, batches, cfg, pool)     pass 1 and the pool, no backward
    agree on step.out (non-finite?, metrics)                 the trainer's one all-reduce of the step
    for loss in step.micro_losses():                         pass 2, micro-batch after micro-batch
        engine.backward(loss); engine.step()                 DeepSpeed accumulates; optimiser at the last

Pass 1 (no gradients): for each micro-batch a, save the RNG state, forward, keep the pooled
embeddings e_a [2B, d] and the generation loss L_gen_a; nothing else of the forward survives,
so peak memory is that of one micro-batch whatever A is. Then ONE all-gather of the step's
embeddings: the pool holds P = k x A x B pairs, k the ranks that share a pool (the world,
`coin.gather_group_size`, or 1 with `coin.gather: false`). Every rank of a pool computes the
symmetric InfoNCE L_ctr on the whole pool (the same P x P similarities) and its gradient with
respect to the pool (a leaf tensor, torch.autograd.grad on that small graph), and keeps the rows
of its own embeddings, g_a = dL_ctr/de_a. The weight w is `step.contrastive_weight` on
(mean_a L_gen_a, L_ctr): the world means, as for the micro-batch step (one all-reduce), with its
warm-up. Only objective coin has a pool, so L_gen is always CE(original) + CE(paraphrase);
weighting gradnorm needs hidden-state gradients, which pass 1 does not have: it needs pool micro
(a ConfigError), and gen_grad_norm / ctr_grad_norm are not measured here (0; the trainer logs null).

Pass 2 (with gradients): micro-batch a restores its RNG state (the same dropout as in pass 1),
runs its forward again and gives   loss_a = L_gen_a + c * w * sum(e_a * g_a)   (g_a detached).

Scaling contract (c = k x A, `surrogate_scale`). The gradient of a step equals that of ONE
process computing, on the step's global batch,

    L = mean_{r,a} L_gen_{r,a} + w * mean_G L_ctr(G)       (G: the W/k pools; one pool when k = W)

because DeepSpeed's backward divides each loss by A and its reduction averages over the W
ranks: grad = 1/(W A) sum_{r,a} grad(loss_{r,a}). The generation terms give the first part; the
surrogates give c w / (W A) sum_{r,a} g_{r,a} de_{r,a}/dtheta, and the contrastive part of L is
w (k / W) sum_{r,a} g_{r,a} de_{r,a}/dtheta (each pool's L_ctr is averaged over W/k pools), so
c = k A. The reported loss of a rank (`out.loss`) is mean_a L_gen_a + w L_ctr(its pool); its
world mean is L. With A = 1 and k = W the gradient is that of the micro-batch step's gather.

Cost: one extra no-grad forward per micro-batch (the head included, for L_gen and the adaptive
weight), a P x P similarity matrix on every rank, P x d floats cached per rank.

Every rank runs the same A no-grad forwards, one all-gather, one all-reduce, A forwards and
backwards, whatever its data (ZeRO-3 hangs otherwise). The RNG states saved are the CPU one
and, for batches on a CUDA device, that device's. Under ZeRO-3 the no-grad forwards also pass
through DeepSpeed's parameter-prefetch trace: a trace recorded on a forward alone is invalidated
by the next backward and recorded again (DeepSpeed's own handling of a changed module order),
after which the forward of pass 1 follows the prefix of the forward-and-backward trace (tested).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import CoinConfig
from .gather import NegativePool
from .losses import info_nce, token_losses, view_means
from .pooling import pool as pool_hidden
from .step import StepOutput, contrastive_weight


def surrogate_scale(pool_ranks: int, accumulation_steps: int) -> int:
    """c of the surrogate c * w * sum(e * g): the micro-batches in one pool (see the contract)."""
    return pool_ranks * accumulation_steps


def _terms(model, batch: dict, cfg: CoinConfig) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(L_gen, pooled embeddings [2B, d], label tokens with a loss) of one micro-batch: coin_step's
    forward and generation loss."""
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n = input_ids.shape[0]
    if n % 2:
        raise ValueError(f"a CoIN batch holds originals then paraphrases: expected an even row count, got {n}")
    hidden = model(input_ids, attention_mask)
    ce, rows = token_losses(hidden, labels, getattr(model, "module", model).head, cfg.lm_loss_chunks)
    gen_loss = view_means(ce, rows, n).sum()  # objective coin (the only one with a pool): both views
    return gen_loss, pool_hidden(hidden, attention_mask, cfg.pooling, batch.get("prompt_last")), ce.numel()


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class _Cached:
    """What pass 1 keeps of one micro-batch."""

    batch: dict
    rng: tuple
    gen_loss: torch.Tensor
    embeddings: torch.Tensor  # [2B, d], detached
    grad: torch.Tensor | None = None  # c * w * dL_ctr/de [2B, d] float32, detached


class PooledStep:
    """One optimiser step of `coin.pool: step` after pass 1 (see the module docstring)."""

    def __init__(self, model, cfg: CoinConfig, cached: list[_Cached], out: StepOutput, rng_after: tuple):
        self.model, self.cfg = model, cfg
        self.out = out  # this rank's step loss (detached) and metrics, for the trainer's agreement and logs
        self._cached = cached
        self._rng_after = rng_after

    def micro_losses(self) -> Iterator[torch.Tensor]:
        """Pass 2: each micro-batch's loss L_gen_a + c w sum(e_a g_a), to backward through the engine
        before asking for the next; afterwards the RNG continues from where pass 1 left it."""
        device = self._cached[0].embeddings.device
        for c in self._cached:
            _set_rng_state(c.rng, device)
            gen_loss, emb, _ = _terms(self.model, c.batch, self.cfg)
            yield gen_loss + (emb.float() * c.grad).sum()
        _set_rng_state(self._rng_after, device)

    def nonfinite_ids(self) -> list[str]:
        """Example ids of this rank's micro-batches whose generation loss or embeddings are not
        finite (a host sync: for reports only)."""
        return [i for c in self._cached
                if not (torch.isfinite(c.gen_loss) and torch.isfinite(c.embeddings).all())
                for i in c.batch["ids"]]


def embed_step(model, batches: list[dict], cfg: CoinConfig, pool: NegativePool | None = None,
               step: int = 0) -> PooledStep:
    """Pass 1 and the pool of one optimiser step: `batches` are this rank's micro-batches of the step
    (all of them: as many as the engine's gradient_accumulation_steps); `step` the optimiser steps
    done (coin.weight_warmup_steps). Collective."""
    accumulation = getattr(model, "gradient_accumulation_steps", None)
    if callable(accumulation) and accumulation() != len(batches):
        raise ValueError(f"a pooled step takes the {accumulation()} micro-batches of one optimiser step "
                         f"(gradient_accumulation_steps), got {len(batches)}")
    pool = pool or NegativePool(enabled=False)
    device = batches[0]["input_ids"].device
    cached, label_tokens = [], 0
    with torch.no_grad():
        for batch in batches:
            rng = _rng_state(device)
            gen_loss, emb, n_labels = _terms(model, batch, cfg)
            cached.append(_Cached(batch, rng, gen_loss, emb))
            label_tokens += n_labels
        rng_after = _rng_state(device)
        b = cached[0].embeddings.shape[0] // 2
        # this rank's originals of every micro-batch, then their paraphrases: [2 A B, d], one gather
        local = torch.cat([c.embeddings[:b] for c in cached] + [c.embeddings[b:] for c in cached]).float()
        gathered, _ = pool.gather(local)
    d, pairs = local.shape[1], len(batches) * b
    leaf = gathered.reshape(pool.size, 2, pairs, d).detach().requires_grad_()
    with torch.enable_grad():
        o, p = leaf[:, 0].reshape(-1, d), leaf[:, 1].reshape(-1, d)
        ctr_loss, ctr_metrics = info_nce(o, p, o, p, 0, cfg.temperature)
        (grad,) = torch.autograd.grad(ctr_loss, leaf)
    ctr_loss = ctr_loss.detach()
    gen_loss = torch.stack([c.gen_loss for c in cached]).mean()
    weight = contrastive_weight(gen_loss, ctr_loss, cfg, step)
    mine = grad[pool.rank_in_pool] * (surrogate_scale(pool.size, len(batches)) * weight)
    for a, c in enumerate(cached):
        c.grad = torch.cat([mine[0, a * b:(a + 1) * b], mine[1, a * b:(a + 1) * b]])

    loss = gen_loss + weight * ctr_loss
    metrics = {
        "loss": loss, "gen_loss": gen_loss, "ctr_loss": ctr_loss, "ctr_weight": weight.detach(), **ctr_metrics,
        # hidden-state gradient norms are not computed here (pass 1 has no graph; gradnorm needs pool: micro)
        "cons_loss": torch.zeros((), device=device), "gen_grad_norm": torch.zeros((), device=device),
        "ctr_grad_norm": torch.zeros((), device=device),
        "pool_size": torch.tensor(float(o.shape[0]), device=device),
        "tokens": sum(batch["attention_mask"].sum() for batch in batches).to(torch.float32),
        "label_tokens": torch.tensor(float(label_tokens), device=device),
    }
    return PooledStep(model, cfg, cached, StepOutput(loss, metrics), rng_after)
