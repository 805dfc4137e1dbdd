"""An independent, plain-PyTorch computation of METHOD.md's CoIN loss, for the tests.

It shares nothing with coin.training.step: every sequence runs through the *unwrapped* Hugging
Face model on its own (no padding, no masks), full-vocabulary logits give the generation loss,
`output_hidden_states` gives the representations, and the InfoNCE is written as METHOD.md states
it (S_ij = cos(o_i, p_j) / tau; CE over rows of S and of S^T).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from coin.data_tools.prompt import PromptFormat, encode

TASKS = [
    ("Classify the sentiment of this review: {x}", "What feeling does this review express? {x}", ["positive", "negative"]),
    ("Is this sentence grammatical? {x}", "Judge whether the grammar is acceptable: {x}", ["acceptable", "unacceptable"]),
]
WORDS = "the movie was great boring actors plot weather cat dog sat on a mat quickly slowly red blue".split()


def make_rows(tokenizer, n: int, seed: int = 0, max_length: int = 48) -> list[dict]:
    """n examples with varied lengths: token rows as the token cache provides them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        inst, para, labels = TASKS[i % len(TASKS)]
        x = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        answer = rng.choice(labels)
        ids, plen = encode(tokenizer, PromptFormat(), inst.format(x=x), answer, max_length)
        pids, pplen = encode(tokenizer, PromptFormat(), para.format(x=x), answer, max_length)
        rows.append({"id": f"ex{i}", "input_ids": ids, "prompt_len": plen, "para_input_ids": pids, "para_prompt_len": pplen})
    return rows


def _sequence(lm, ids: list[int]):
    out = lm(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0], out.hidden_states[-1][0]


def _pool(hidden, prompt_len: int, method: str):
    if method == "last":
        return hidden[-1]
    if method == "prompt_last":
        return hidden[prompt_len - 1]
    return hidden.mean(dim=0)


def _js(logits_p, logits_q):
    """Jensen-Shannon divergence (nats) of softmax(logits_p) and softmax(logits_q), from its definition."""
    p, q = logits_p.float().softmax(-1), logits_q.float().softmax(-1)
    m = (p + q) / 2
    return 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()


def reference_terms(lm, rows: list[dict], pooling: str, objective: str = "coin", with_hidden: bool = False):
    """(L_gen, o [B, d], p [B, d], L_cons) for one rank's rows; with `with_hidden`, also the list of
    each sequence's final hidden states (originals, then paraphrases), the leaves of the losses."""
    sums = [torch.zeros(()), torch.zeros(())]
    counts = [0, 0]
    o, p, states = [], [], [[], []]
    js, positions = torch.zeros(()), 0
    for row in rows:
        response_logits = []
        for view, (ids, plen) in enumerate(((row["input_ids"], row["prompt_len"]), (row["para_input_ids"], row["para_prompt_len"]))):
            logits, hidden = _sequence(lm, ids)
            if with_hidden:  # cut the graph at h: the losses become functions of these leaves
                hidden = hidden.detach().requires_grad_()
                logits = lm.lm_head(hidden)
                states[view].append(hidden)
            for t in range(plen - 1, len(ids) - 1):  # logits at t predict token t + 1 (a response token)
                sums[view] = sums[view] + F.cross_entropy(logits[t].float()[None], torch.tensor([ids[t + 1]]))
                counts[view] += 1
            response_logits.append(logits[plen - 1:len(ids) - 1])
            (o if view == 0 else p).append(_pool(hidden, plen, pooling))
        for k in range(min(len(response_logits[0]), len(response_logits[1]))):  # k-th response token of both views
            js = js + _js(response_logits[0][k], response_logits[1][k])
            positions += 1
    means = [s / max(c, 1) for s, c in zip(sums, counts)]
    gen = means[0] if objective == "sft" else means[0] + means[1]
    out = (gen, torch.stack(o), torch.stack(p), js / max(positions, 1))
    return out + (states[0] + states[1],) if with_hidden else out


def info_nce(o, p, tau: float):
    s = F.cosine_similarity(o[:, None, :], p[None, :, :], dim=-1) / tau
    target = torch.arange(o.shape[0])
    return (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)) / 2


def ramp(cfg, step: int) -> float:
    return 1.0 if not cfg.weight_warmup_steps else min(1.0, step / cfg.weight_warmup_steps)


def weight(gen, ctr, cfg, step: int = 0, norms=None):
    if cfg.weighting == "constant":
        w = torch.tensor(cfg.weight)
    elif cfg.weighting == "gradnorm":
        w = torch.clamp(cfg.grad_ratio * norms[0] / norms[1], max=cfg.max_weight)
    else:
        w = torch.clamp(gen.detach() / ctr.detach(), max=cfg.max_weight)
    return w * ramp(cfg, step)


def _norm(grads):
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))


def reference_grad_norms(lm, rank_rows: list[list[dict]], cfg, gather: bool = True):
    """(|dL_gen/dh|, |dL_reg/dh|) of the one-process global loss at every sequence's hidden states:
    L_gen = mean_r L_gen_r, L_reg = the global-pool InfoNCE (coin) or mean_r L_cons_r (consistency)."""
    with torch.enable_grad():
        return _grad_norms(lm, rank_rows, cfg, gather)


def _grad_norms(lm, rank_rows, cfg, gather):
    terms = [reference_terms(lm, rows, cfg.pooling, cfg.objective, with_hidden=True) for rows in rank_rows]
    leaves = [h for t in terms for h in t[4]]
    gen = torch.stack([t[0] for t in terms]).mean()
    if cfg.objective == "consistency":
        reg = torch.stack([t[3] for t in terms]).mean()
    elif gather:
        reg = info_nce(torch.cat([t[1] for t in terms]), torch.cat([t[2] for t in terms]), cfg.temperature)
    else:
        reg = torch.stack([info_nce(t[1], t[2], cfg.temperature) for t in terms]).mean()
    g_gen = torch.autograd.grad(gen, leaves, retain_graph=True, allow_unused=True)
    g_reg = torch.autograd.grad(reg, leaves, allow_unused=True)
    return _norm(g_gen).detach(), _norm(g_reg).detach()


def reference_loss(lm, rank_rows: list[list[dict]], cfg, gather: bool | int = True, detach_others: bool = False,
                   step: int = 0):
    """The single-process CoIN loss of a global batch split into ranks' micro-batches.

    gather=True: one pool of every rank's pairs; False: each rank's pool is its own micro-batch;
    an int k: pools of k consecutive ranks.
    L = mean_r L_gen_r + w * L_ctr, w from the (mean) detached losses or the hidden-state gradient
    norms (gradnorm), times the warm-up ramp at `step`; objective consistency: mean_r L_gen_r +
    w * mean_r L_cons_r; cit and sft: mean_r L_gen_r. `detach_others` builds the WRONG variant
    (pooled embeddings of other ranks carry no gradient) to show the test can fail.
    """
    gens, os_, ps, cons = zip(*(reference_terms(lm, rows, cfg.pooling, cfg.objective) for rows in rank_rows))
    gen = torch.stack(gens).mean()
    if cfg.objective in ("cit", "sft"):
        return gen
    if cfg.objective == "consistency":
        return gen + cfg.consistency_weight * ramp(cfg, step) * torch.stack(cons).mean()
    norms = reference_grad_norms(lm, rank_rows, cfg, gather is not False) if cfg.weighting == "gradnorm" else None
    if gather is True:
        b = os_[0].shape[0]
        o, p = torch.cat(os_), torch.cat(ps)
        if detach_others:
            terms = []
            for r in range(len(rank_rows)):
                keep = torch.zeros(o.shape[0], 1)
                keep[r * b:(r + 1) * b] = 1
                o_r = o * keep + o.detach() * (1 - keep)
                p_r = p * keep + p.detach() * (1 - keep)
                s = F.cosine_similarity(o_r[:, None, :], p_r[None, :, :], dim=-1) / cfg.temperature
                target = torch.arange(o.shape[0])
                rows_r = slice(r * b, (r + 1) * b)
                terms.append((F.cross_entropy(s[rows_r], target[rows_r]) + F.cross_entropy(s.T[rows_r], target[rows_r])) / 2)
            ctr = torch.stack(terms).mean()
        else:
            ctr = info_nce(o, p, cfg.temperature)
    else:
        k = 1 if gather is False else gather
        pools = [range(start, start + k) for start in range(0, len(rank_rows), k)]
        ctr = torch.stack([info_nce(torch.cat([os_[r] for r in pool]), torch.cat([ps[r] for r in pool]), cfg.temperature)
                           for pool in pools]).mean()
    return gen + weight(gen, ctr, cfg, step, norms) * ctr


def reference_step_loss(lm, step_rows: list[list[list[dict]]], cfg, pool_ranks: int | None = None, step: int = 0):
    """The single-process loss of one optimiser step of `coin.pool: step` on its global batch.

    step_rows[r][a]: the rows of rank r's micro-batch a. A pool holds every micro-batch of the step
    of `pool_ranks` consecutive ranks (default: all ranks, one pool). L = the mean over the step's
    micro-batches of L_gen + w * the mean over pools of L_ctr, w from those two means: the loss
    `reference_loss` computes with the micro-batches in rank-major order (a pool's are consecutive).
    """
    k = pool_ranks or len(step_rows)
    micro = [rows for rank in step_rows for rows in rank]
    return reference_loss(lm, micro, cfg, gather=k * len(step_rows[0]), step=step)
