"""Batched scoring: label-likelihood ranking and greedy generation with robust parsing.

Label likelihood (the default, no parse failures). For a prompt p and each label word w of the
task, the sequence is `data_tools.prompt.encode(tokenizer, fmt, p, w, max_length)`, the exact
sequence training would build with w as the response (the prompt is run once and its key/value
cache shared by the K label words), and

    sum(w)  = sum_{t in response tokens} log P(token_t | tokens_<t)
    mean(w) = sum(w) / (number of response tokens)

`label_scores` returns either. `--label-score` (the runner) chooses how labels are ranked:

    calibrated (default)  sum(w | p) - log prior(w): the prior is the label distribution the
                          instruction induces on content-free inputs (`CONTENT_FREE`), the mean
                          over them of softmax_k sum(w_k | p_cf) (contextual calibration, Zhao et
                          al. 2021; for the ranking the same as domain-conditional PMI, Holtzman et
                          al. 2021). What a label's spelling costs (its number of tokens, their
                          frequencies) is the same with and without the input, so it cancels.
    sum                   the plain sequence log-likelihood (a label spelled with more tokens pays
                          for each; a weak model then answers the shorter label everywhere)
    mean                  per-token mean (removes the count, but favours long labels once a
                          model predicts a word's later tokens from its first)

docs/eval.md#scoring gives the reasons. The prediction is the label with the highest score;
ties go to the lower label id. Rows are right-padded into batches of `batch_size` prompts (all
their candidates together); the model's final-norm hidden states
(`coin.training.model.CoinModel`) go through the output head at the response positions only, in
float32, so the vocabulary-sized logits of the prompt positions are never formed.

Greedy generation (the PromptBench protocol, for comparability): the prompt alone
(`encode(..., response="")`), left-padded in batches, `max_new_tokens` (7) new tokens with
`do_sample=False`; `parse_prediction` maps the text to a label id or -1 (a parse failure, which
is not correct and is reported as its own category).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from coin.data_tools.prompt import PromptFormat, encode
from coin.errors import CoinError

from .tasks import TaskSpec


LABEL_SCORES = ("calibrated", "sum", "mean")
# Zhao et al. (2021)'s content-free inputs, put in every input column of the task.
CONTENT_FREE = ("N/A", "", "[MASK]")


class LabelWordError(CoinError):
    """A label word the model cannot produce (unknown to its vocabulary)."""


def check_label_words(tokenizer, spec: TaskSpec, fmt: PromptFormat, vocab_size: int | None = None,
                      model_name: str = "the model") -> dict[str, list[int]]:
    """Token ids of each label word as a response; LabelWordError if one maps to unk or out of vocab."""
    out: dict[str, list[int]] = {}
    unk = tokenizer.unk_token_id
    for word in spec.label_words:
        ids, plen = encode(tokenizer, fmt, "Answer:", word, 1 << 20)
        resp = ids[plen:]
        if fmt.add_eos and tokenizer.eos_token_id is not None and resp and resp[-1] == tokenizer.eos_token_id:
            resp = resp[:-1]
        bad = None
        if not resp:
            bad = "tokenises to nothing"
        elif unk is not None and unk in resp:
            bad = f"tokenises to the unknown token ({tokenizer.convert_ids_to_tokens(resp)})"
        elif vocab_size is not None and any(i >= vocab_size for i in resp):
            bad = f"has token ids {resp} beyond the model's vocabulary of {vocab_size}"
        if bad:
            raise LabelWordError(
                f"task '{spec.name}': label word '{word}' {bad}: it is missing from the vocabulary of {model_name} "
                f"(choose other words with --label-words {spec.name}=w0,w1,...)"
            )
        out[word] = resp
    return out


def _head_and_decoder(model):
    from coin.training.model import CoinModel

    return CoinModel(model)


@torch.no_grad()
def label_scores(model, tokenizer, fmt: PromptFormat, prompts: Sequence[str], label_words: Sequence[str], *,
                 max_length: int = 512, batch_size: int = 32, score: str = "sum",
                 device: torch.device | None = None, shared_prefix: bool = True) -> list[list[float]]:
    """scores[i][k]: the log-likelihood of label word k as the response to prompts[i], summed over
    its tokens (`score="sum"`) or their mean (`"mean"`).

    With `shared_prefix` (the default) each prompt is run once and its key/value cache reused for
    the K label words (see `score_shared_prefix`); prompts whose K encodings do not share the
    prompt tokens (truncation that depends on the label's length) and models whose cache cannot be
    repeated take the plain path: one full sequence per (prompt, label).
    """
    if score not in ("sum", "mean"):
        raise ValueError(f"score: expected 'sum' or 'mean', got {score!r}")
    mean = score == "mean"
    k = len(label_words)
    encoded = [[encode(tokenizer, fmt, p, w, max_length) for w in label_words] for p in prompts]
    out: list[list[float] | None] = [None] * len(prompts)
    shared, plain = [], []
    for i, rows in enumerate(encoded):
        first_ids, first_len = rows[0]
        same = all(plen == first_len and ids[:plen] == first_ids[:first_len] for ids, plen in rows)
        (shared if shared_prefix and same and all(len(ids) > plen for ids, plen in rows) else plain).append(i)
    for b in range(0, len(shared), batch_size):
        chunk = shared[b:b + batch_size]
        res = score_shared_prefix(
            model, [encoded[i][0][0][: encoded[i][0][1]] for i in chunk],
            [[ids[plen:] for ids, plen in encoded[i]] for i in chunk],
            pad_id=tokenizer.pad_token_id, mean=mean, device=device)
        if res is None:  # this model's cache cannot be shared: score everything the plain way
            plain = sorted(plain + shared[b:])
            break
        for i, r in zip(chunk, res):
            out[i] = r
    if plain:
        rows = [row for i in plain for row in encoded[i]]
        flat = score_sequences(model, rows, pad_id=tokenizer.pad_token_id, batch_rows=batch_size * k, mean=mean,
                               device=device)
        for j, i in enumerate(plain):
            out[i] = flat[j * k:(j + 1) * k]
    return out  # type: ignore[return-value]


@torch.no_grad()
def score_shared_prefix(model, prompts: Sequence[list[int]], candidates: Sequence[Sequence[list[int]]], *,
                        pad_id: int, mean: bool = False,
                        device: torch.device | None = None) -> list[list[float]] | None:
    """Log-likelihood of each candidate continuation after its prompt, the prompt run once.

    prompts[i] are token ids; candidates[i][k] the ids of continuation k (K per prompt, each
    non-empty). Pass 1: prompts left-padded (explicit position ids), the cache kept; the first
    token of every candidate is scored from the last prompt position. Pass 2: the cache repeated
    K times, every candidate's remaining tokens right-padded after it and scored. Returns None
    when the model's cache has no `batch_repeat_interleave` (the caller then uses the plain path).
    """
    from coin.training.model import CoinModel

    device = device or next(model.parameters()).device
    decoder, head = model.get_decoder(), CoinModel(model).head
    n, k = len(prompts), len(candidates[0])
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
    cache = out.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    first = head(out.last_hidden_state[:, -1]).float().log_softmax(-1)  # [n, V]
    first_ids = torch.tensor([[c[0] for c in cands] for cands in candidates], dtype=torch.long, device=device)
    scores = first.gather(1, first_ids).double().cpu()  # [n, k]: the first token of every candidate
    rest = max(len(c) for cands in candidates for c in cands) - 1
    if rest > 0:
        cache.batch_repeat_interleave(k)
        ids2 = torch.full((n * k, rest), pad_id, dtype=torch.long)
        mask2 = torch.zeros((n * k, rest), dtype=torch.long)
        r_idx, p_idx, tgt = [], [], []
        for r in range(n):
            for c in range(k):
                cand = candidates[r][c]
                row = r * k + c
                if len(cand) > 1:
                    ids2[row, : len(cand) - 1] = torch.tensor(cand[:-1], dtype=torch.long)
                    mask2[row, : len(cand) - 1] = 1
                for j in range(len(cand) - 1):  # input position j predicts token j + 1
                    r_idx.append(row)
                    p_idx.append(j)
                    tgt.append(cand[j + 1])
        prompt_len = mask.sum(1).repeat_interleave(k)  # [n * k]
        pos2 = prompt_len[:, None] + torch.arange(rest, device=device)[None, :]
        hidden = decoder(input_ids=ids2.to(device), attention_mask=torch.cat([mask.repeat_interleave(k, 0),
                         mask2.to(device)], 1), position_ids=pos2, past_key_values=cache, use_cache=True).last_hidden_state
        h = hidden[torch.tensor(r_idx, device=device), torch.tensor(p_idx, device=device)]
        logp = head(h).float().log_softmax(-1).gather(1, torch.tensor(tgt, device=device)[:, None])[:, 0]
        flat = scores.view(-1)
        flat.index_add_(0, torch.tensor(r_idx), logp.double().cpu())
    if mean:
        lengths = torch.tensor([[len(c) for c in cands] for cands in candidates], dtype=torch.float64)
        scores = scores / lengths
    return scores.tolist()


@torch.no_grad()
def score_sequences(model, rows: Sequence[tuple[list[int], int]], *, pad_id: int, batch_rows: int = 64,
                    mean: bool = False, device: torch.device | None = None) -> list[float]:
    """Sum (or mean) log-probability of tokens[prompt_len:] given their prefix, per (ids, prompt_len) row."""
    wrapped = _head_and_decoder(model)
    device = device or next(model.parameters()).device
    out: list[float] = []
    for b in range(0, len(rows), batch_rows):
        chunk = rows[b:b + batch_rows]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        r_idx, p_idx, tgt = [], [], []
        for r, (ids, plen) in enumerate(chunk):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, : len(ids)] = 1
            for t in range(max(plen, 1), len(ids)):  # token t is predicted at position t - 1
                r_idx.append(r)
                p_idx.append(t - 1)
                tgt.append(ids[t])
        hidden = wrapped(input_ids.to(device), mask.to(device))
        h = hidden[torch.tensor(r_idx, device=device), torch.tensor(p_idx, device=device)]
        logp = wrapped.head(h).float().log_softmax(-1)
        tok = logp.gather(1, torch.tensor(tgt, device=device)[:, None])[:, 0]
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=device)
        sums.index_add_(0, torch.tensor(r_idx, device=device), tok.double())
        counts = torch.bincount(torch.tensor(r_idx, dtype=torch.long), minlength=len(chunk)).clamp(min=1).double()
        res = sums.cpu() / counts if mean else sums.cpu()
        out += res.tolist()
    return out


def content_free_priors(model, tokenizer, fmt: PromptFormat, spec: TaskSpec, instructions: Sequence[str], *,
                        max_length: int = 512, batch_size: int = 32,
                        device: torch.device | None = None) -> list[list[float]]:
    """Per instruction, log prior(w_k) of the calibrated score: the log of the mean over the
    `CONTENT_FREE` inputs of the label distribution softmax_k sum(w_k | instruction with that input)
    (Zhao et al., 2021)."""
    from .tasks import render_prompt

    c = len(CONTENT_FREE)
    prompts = [render_prompt(spec, text, {col: cf for col in spec.columns}) for text in instructions
               for cf in CONTENT_FREE]
    raw = torch.tensor(label_scores(model, tokenizer, fmt, prompts, spec.label_words, max_length=max_length,
                                    batch_size=batch_size, device=device), dtype=torch.float64)
    return raw.softmax(-1).view(len(instructions), c, -1).mean(1).log().tolist()


def argmax_label(scores: Sequence[float]) -> int:
    """The highest score's index; ties go to the lowest index."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


@torch.no_grad()
def generate_texts(model, tokenizer, fmt: PromptFormat, prompts: Sequence[str], *, max_new_tokens: int = 7,
                   max_length: int = 512, batch_size: int = 32, device: torch.device | None = None) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) of left-padded prompt batches."""
    from transformers import GenerationConfig

    device = device or next(model.parameters()).device
    pad = tokenizer.pad_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, use_cache=True)
    out: list[str] = []
    for b in range(0, len(prompts), batch_size):
        seqs = [encode(tokenizer, fmt, p, "", max(8, max_length - max_new_tokens))[0] for p in prompts[b:b + batch_size]]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            input_ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config)
        new = gen[:, width:].cpu()
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


# ----------------------------------------------------------------------------- parsing

# PromptBench strips these from both ends of the lowercased output before matching.
_PB_STRIP = ",._\"'-+=!?()&^%$#@:\\|{}[]<>/`\n\t\r\v\f\u200b "


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", text.lower())).strip()


# Negation in a generated answer ("not acceptable", "isn't grammatically acceptable", "no entailment").
_NEGATORS = frozenset("not no never non isnt arent wasnt werent doesnt dont didnt cannot cant wont".split())
_NEITHER = frozenset(("neither", "nor"))  # "neither positive nor negative" names no label
_CLAUSE_BREAKS = frozenset("but however though although yet rather instead".split())
_NEGATED_PREFIXES = ("not ", "non ", "non", "un", "in", "im", "il", "ir", "dis")


def _opposite(i: int, label_words: Sequence[str]) -> int | None:
    """The label that says "not label i": one spelled as its negation (not_x, un-x, x for not_x,
    ...), else, in a two-label task, the other one; None when the task has no such label."""
    v = _norm(label_words[i])
    for j, w in enumerate(label_words):
        u = _norm(w)
        if j != i and any(u == p + v or v == p + u for p in _NEGATED_PREFIXES):
            return j
    return 1 - i if len(label_words) == 2 else None


def _negation(before: str) -> str | None:
    """'negated', 'neither' or None: how the up to three words before a label mention, within its
    clause, qualify it."""
    clause = re.split(r"[.,;:!?()\[\]\n]", before)[-1]
    words = [re.sub(r"[^a-z]", "", w) for w in clause.split()]
    for k in range(len(words) - 1, -1, -1):
        if words[k] in _CLAUSE_BREAKS:
            words = words[k + 1:]
            break
    window = words[-3:]
    if any(w in _NEITHER for w in window):
        return "neither"
    return "negated" if any(w in _NEGATORS for w in window) else None


def parse_prediction(text: str, label_words: Sequence[str], mode: str = "robust") -> int:
    """The label id a generated text names, or -1 (a parse failure).

    strict  PromptBench's rule: lowercase, drop <pad>/</s>, strip punctuation and spaces from both
            ends, then the label the text starts with (longest label first).
    robust  the label named earliest in the text, as a whole word, with '_' '-' and spaces
            interchangeable and case ignored ("Answer: Not entailment." -> not_entailment); at one
            position the longest label wins, so "not_entailment" never reads as "entailment". A
            mention negated within its clause ("not acceptable", "isn't really positive", "no
            entailment": not/no/never/n't among the three words before it) names the opposite
            label: the one spelled as its negation (unacceptable, not_entailment), else the other
            label of a two-label task; where there is none (MNLI's "not neutral") or the mention
            is under "neither/nor", it names nothing and the next mention decides.
    """
    low = text.lower().replace("<pad>", "").replace("</s>", "").replace("<s>", "")
    if mode == "strict":
        s = low.strip(_PB_STRIP)
        for i in sorted(range(len(label_words)), key=lambda i: -len(label_words[i])):
            if s.startswith(label_words[i].lower()):
                return i
        return -1
    if mode != "robust":
        raise ValueError(f"parse mode: expected 'strict' or 'robust', got {mode!r}")
    t = _norm(low.replace("\u2019", "'"))
    mentions = []  # (start, -length, id, end)
    for i, w in enumerate(label_words):
        v = _norm(w)
        for m in re.finditer(r"(?<![a-z0-9])" + re.escape(v) + r"(?![a-z0-9])", t):
            mentions.append((m.start(), -len(v), i, m.end()))
    mentions.sort()
    covered_to = -1
    for start, _, i, end in mentions:
        if start < covered_to:
            continue  # inside a longer label named at an earlier or the same position
        covered_to = end
        how = _negation(t[:start])
        if how is None:
            return i
        if how == "negated":
            j = _opposite(i, label_words)
            if j is not None:
                return j
    return -1


def causal_lm_scorer(model, tokenizer, batch_size: int = 16) -> Callable[[Sequence[str]], list[float]]:
    """texts -> total log-likelihood under a causal LM (BOS + text): the `lm_scorer` of bertattack."""
    def score(texts: Sequence[str]) -> list[float]:
        rows = []
        for t in texts:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"]
            if tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id] + ids
            rows.append((ids, 1))
        return score_sequences(model, rows, pad_id=tokenizer.pad_token_id, batch_rows=batch_size)

    return score
