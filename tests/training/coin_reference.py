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


def reference_terms(lm, rows: list[dict], pooling: str, gen_loss: str):
    """(L_gen, o [B, d], p [B, d]) for one rank's rows."""
    sums = [torch.zeros(()), torch.zeros(())]
    counts = [0, 0]
    o, p = [], []
    for row in rows:
        for view, (ids, plen) in enumerate(((row["input_ids"], row["prompt_len"]), (row["para_input_ids"], row["para_prompt_len"]))):
            logits, hidden = _sequence(lm, ids)
            for t in range(plen - 1, len(ids) - 1):  # logits at t predict token t + 1 (a response token)
                sums[view] = sums[view] + F.cross_entropy(logits[t].float()[None], torch.tensor([ids[t + 1]]))
                counts[view] += 1
            (o if view == 0 else p).append(_pool(hidden, plen, pooling))
    means = [s / max(c, 1) for s, c in zip(sums, counts)]
    gen = means[0] + means[1] if gen_loss == "both" else means[0]
    return gen, torch.stack(o), torch.stack(p)


def info_nce(o, p, tau: float):
    s = F.cosine_similarity(o[:, None, :], p[None, :, :], dim=-1) / tau
    target = torch.arange(o.shape[0])
    return (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)) / 2


def weight(gen, ctr, cfg):
    if cfg.weighting == "constant":
        return torch.tensor(cfg.weight)
    return torch.clamp(gen.detach() / ctr.detach(), max=cfg.max_weight)


def reference_loss(lm, rank_rows: list[list[dict]], cfg, gather: bool | int = True, detach_others: bool = False):
    """The single-process CoIN loss of a global batch split into ranks' micro-batches.

    gather=True: one pool of every rank's pairs; False: each rank's pool is its own micro-batch;
    an int k: pools of k consecutive ranks.
    L = mean_r L_gen_r + w * L_ctr, w from the (mean) detached losses. `detach_others` builds the
    WRONG variant (pooled embeddings of other ranks carry no gradient) to show the test can fail.
    """
    gens, os_, ps = zip(*(reference_terms(lm, rows, cfg.pooling, cfg.gen_loss) for rows in rank_rows))
    gen = torch.stack(gens).mean()
    if not cfg.contrastive:
        return gen
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
    return gen + weight(gen, ctr, cfg) * ctr


def reference_step_loss(lm, step_rows: list[list[list[dict]]], cfg, pool_ranks: int | None = None):
    """The single-process loss of one optimiser step of `coin.pool: step` on its global batch.

    step_rows[r][a]: the rows of rank r's micro-batch a. A pool holds every micro-batch of the step
    of `pool_ranks` consecutive ranks (default: all ranks, one pool). L = the mean over the step's
    micro-batches of L_gen + w * the mean over pools of L_ctr, w from those two means: the loss
    `reference_loss` computes with the micro-batches in rank-major order (a pool's are consecutive).
    """
    k = pool_ranks or len(step_rows)
    micro = [rows for rank in step_rows for rows in rank]
    return reference_loss(lm, micro, cfg, gather=k * len(step_rows[0]))
