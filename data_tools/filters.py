"""Paraphrase filters. Every candidate a backend proposes is kept or dropped for exactly one reason,
and every drop is counted (`dropped.<reason>` in the summary); nothing is discarded silently.

Filters run in this order; the first that fails names the reason:

    empty            the candidate is blank
    identical        the paraphrased instruction equals the original instruction
    near_identical   the paraphrased unit equals the original unit once case, punctuation and
                     spacing are ignored
    length_ratio     words(candidate unit) / words(original unit) outside [min_length_ratio, max_length_ratio]
    lost_protected   the candidate unit's placeholders differ from the original unit's (as a set),
                     or a protected word of the original unit (label words, options, user words)
                     is missing from the paraphrased instruction
    duplicate        equals (as in near_identical) an earlier kept candidate or an existing paraphrase
    similarity_low   cosine(candidate unit, original unit) < similarity_low   (sentence embeddings)
    similarity_high  cosine(candidate unit, original unit) > similarity_high
    surplus          passed the filters above but not needed: `num_paraphrases` were already kept
                     for the record (the similarity filter scores candidates in rounds, only as
                     many per record as it still needs, so surplus candidates are never scored)

Similarity compares units (templates with placeholders, or bare instructions), not rendered
prompts: the shared input would make every pair look alike. `FilterConfig.disabled` turns
filters off by name.
"""
from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .similarity import Similarity
from .templates import placeholders
from .units import Unit, word_present

REASONS = ("empty", "identical", "near_identical", "length_ratio", "lost_protected", "duplicate",
           "similarity_low", "similarity_high")
SURPLUS = "surplus"


@dataclass
class FilterConfig:
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    similarity_low: float = 0.6
    similarity_high: float = 0.99
    num_paraphrases: int = 1  # new paraphrases kept per record, at most
    disabled: frozenset = field(default_factory=frozenset)

    def to_dict(self) -> dict:
        return {"min_length_ratio": self.min_length_ratio, "max_length_ratio": self.max_length_ratio,
                "similarity_low": self.similarity_low, "similarity_high": self.similarity_high,
                "num_paraphrases": self.num_paraphrases, "disabled": sorted(self.disabled)}


@dataclass
class Candidate:
    """One proposed paraphrase: the paraphrased unit and the instruction it renders to."""

    core: str
    text: str | None
    source: str = ""


def normalize(text: str) -> str:
    """Lower case, punctuation and runs of spacing folded to one space."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def cheap_reason(unit: Unit, cand: Candidate, cfg: FilterConfig, seen: set[str]) -> str | None:
    """The first failing filter among those that need no model, or None."""
    on = lambda name: name not in cfg.disabled  # noqa: E731
    if not cand.core.strip() or (cand.text is not None and not cand.text.strip()):
        return "empty"
    if cand.text is None:  # the paraphrased template names a field the instance does not have
        return "lost_protected"
    if on("identical") and cand.text == unit.record["instruction"]:
        return "identical"
    norm = normalize(cand.core)
    if on("near_identical") and norm == normalize(unit.text):
        return "near_identical"
    if on("length_ratio"):
        ratio = len(cand.core.split()) / max(1, len(unit.text.split()))
        if not cfg.min_length_ratio <= ratio <= cfg.max_length_ratio:
            return "length_ratio"
    if on("lost_protected"):
        if set(placeholders(cand.core)) != set(unit.placeholders):
            return "lost_protected"
        if any(not word_present(w, cand.text) for w in unit.protected):
            return "lost_protected"
    if on("duplicate") and normalize(cand.text) in seen:
        return "duplicate"
    return None


@dataclass
class Outcome:
    """What the filters made of one record's candidates."""

    kept: list[str]
    reasons: Counter  # reason -> candidates dropped for it (incl. surplus)


def filter_candidates(items: Sequence[tuple[Unit, list[Candidate]]], cfg: FilterConfig,
                      similarity: Similarity | None) -> list[Outcome]:
    """Filter the candidates of several records at once (one embedding batch per round for all of
    them); kept paraphrases keep the candidates' order."""
    survivors: list[list[Candidate]] = []
    outcomes: list[Outcome] = []
    for unit, cands in items:
        reasons: Counter = Counter()
        seen = {normalize(p) for p in unit.record.get("paraphrases") or []}
        passed = []
        for cand in cands:
            reason = cheap_reason(unit, cand, cfg, seen)
            if reason is None:
                seen.add(normalize(cand.text))
                passed.append(cand)
            else:
                reasons[reason] += 1
        survivors.append(passed)
        outcomes.append(Outcome([], reasons))

    # Similarity in rounds: each round scores, per record, only as many candidates as it still
    # needs, so most records cost one embedding; the rest is surplus, never scored.
    use_sim = similarity is not None and not {"similarity_low", "similarity_high"} <= set(cfg.disabled)
    queues = [deque(passed) for passed in survivors]
    cache: dict = {}
    while True:
        batch = []
        for r, (queue, outcome) in enumerate(zip(queues, outcomes)):
            for _ in range(min(cfg.num_paraphrases - len(outcome.kept), len(queue))):
                batch.append((r, queue.popleft()))
        if not batch:
            break
        scores = similarity.cosine_pairs([(c.core, items[r][0].text) for r, c in batch], cache) if use_sim \
            else [None] * len(batch)
        for (r, cand), score in zip(batch, scores):
            outcome = outcomes[r]
            if use_sim and "similarity_low" not in cfg.disabled and score < cfg.similarity_low:
                outcome.reasons["similarity_low"] += 1
            elif use_sim and "similarity_high" not in cfg.disabled and score > cfg.similarity_high:
                outcome.reasons["similarity_high"] += 1
            else:
                outcome.kept.append(cand.text)
    for queue, outcome in zip(queues, outcomes):
        if queue:
            outcome.reasons[SURPLUS] += len(queue)
    return outcomes
