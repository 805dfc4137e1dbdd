"""Seeded, offline perturbations of an instruction, one function per PromptBench attack type.

Each attack takes a clean instruction and returns a `Perturbation`: the new text and the edits
that produced it (character spans of the original). Contracts every attack keeps:

* label words (any case, quoted or not) and placeholders such as `{content}` are never changed:
  tokens overlapping them, and every line holding a placeholder (a template's input and options
  lines), are protected; sentence/semantic edits only touch a line without a placeholder;
* the same (text, attack, seed) gives the same output on every machine (a private
  `random.Random` seeded from a SHA-256 of them; nothing global is touched);
* each attack changes what its level says:

    textbugger   character  inside 1+ words: delete / swap adjacent / visually similar character
    deepwordbug  character  inside 1+ words: swap adjacent / substitute / delete / insert a letter
    textfooler   word       1+ whole words -> WordNet synonyms (re-inflected)
    bertattack   word       1+ whole words -> contextual substitutes (WordNet neighbourhood,
                            ranked by a causal LM when `lm_scorer` is given)
    checklist    sentence   a random 10-character alphanumeric string appended to the instruction
    stresstest   sentence   " and true is true", " and false is not true" or five times
                            " and true is true" appended
    semantic     semantic   the instruction sentence replaced by a paraphrase (a template pool per
                            task, or a user `paraphraser`)

The originals search for the edits that hurt a victim model most (word importance by deletion,
greedy search under a similarity constraint); these generate model-agnostic perturbations from a
seed instead, so every model of a comparison sees the same instructions. docs/eval.md lists the
differences attack by attack.
"""
from __future__ import annotations

import hashlib
import random
import re
import string
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from coin.errors import CoinError

from .tasks import ATTACK_LEVEL, ATTACKS


class PerturbationError(CoinError):
    """An attack that cannot be applied as asked (unknown attack, nothing left to perturb)."""


@dataclass(frozen=True)
class Edit:
    """`original[start:end]` (== old) became `new`; kind: char | word | insert | replace."""

    start: int
    end: int
    old: str
    new: str
    kind: str


@dataclass(frozen=True)
class Perturbation:
    attack: str
    original: str
    text: str
    edits: tuple[Edit, ...] = field(default_factory=tuple)

    @property
    def level(self) -> str:
        return ATTACK_LEVEL[self.attack]


def apply_edits(original: str, edits: Sequence[Edit]) -> str:
    """The text the edits describe (edits may not overlap)."""
    out, at = [], 0
    for e in sorted(edits, key=lambda e: (e.start, e.end)):
        if e.start < at or original[e.start:e.end] != e.old:
            raise ValueError(f"edit {e} does not fit the original")
        out.append(original[at:e.start])
        out.append(e.new)
        at = e.end
    out.append(original[at:])
    return "".join(out)


def stable_seed(*parts) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# ----------------------------------------------------------------------------- words and protection

# Function words the word-level attacks leave alone (as TextFooler's stop-word list does).
STOPWORDS = frozenset("""
a an the and or but nor so yet of to in on at by for with from as into onto upon about over under
is are was were be been being am do does did have has had it its it's this that these those there
here which who whom whose what when where why how if then than not no yes either neither both each
any all some such only very just also your you yours my me i we our us they them their he she his
her him one two three can could should would will shall may might must
""".split())

_CORE_RE = re.compile(r"^([^A-Za-z0-9_{}]*)(.*?)([^A-Za-z0-9_{}]*)$", re.S)


@dataclass(frozen=True)
class Word:
    start: int  # span of the core (the token without surrounding punctuation) in the text
    end: int
    text: str
    protected: bool


def protected_spans(text: str, label_words: Sequence[str]) -> list[tuple[int, int]]:
    """Spans of label words (case-insensitive, whole words), `{placeholders}` and every line that
    holds a placeholder (the input and options lines of a template are not the instruction)."""
    spans = [m.span() for m in re.finditer(r"\{[^{}]*\}", text)]
    at = 0
    for line in text.split("\n"):
        if "{" in line or "}" in line:
            spans.append((at, at + len(line)))
        at += len(line) + 1
    for w in label_words:
        variants = {w, w.replace("_", " "), w.replace("_", "-")}
        for v in variants:
            if not v.strip():
                continue
            pat = r"(?<![A-Za-z0-9_])" + re.escape(v) + r"(?![A-Za-z0-9_])"
            spans += [m.span() for m in re.finditer(pat, text, flags=re.I)]
    return spans


def words(text: str, label_words: Sequence[str]) -> list[Word]:
    spans = protected_spans(text, label_words)
    out = []
    for m in re.finditer(r"\S+", text):
        cm = _CORE_RE.match(m.group(0))
        lead, core = cm.group(1), cm.group(2)
        if not core:
            continue
        start = m.start() + len(lead)
        end = start + len(core)
        prot = "{" in core or "}" in core or any(s < end and start < e for s, e in spans)
        out.append(Word(start, end, core, prot))
    return out


def _match_case(template: str, word: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _n_targets(n_eligible: int, rate: float) -> int:
    return max(1, min(n_eligible, round(rate * n_eligible)))


# ----------------------------------------------------------------------------- character level

# Visually similar characters (TextBugger's sub-C), single code points.
HOMOGLYPHS = {
    "a": "ɑ", "c": "ϲ", "d": "ԁ", "e": "е", "g": "ɡ", "h": "һ", "i": "і", "j": "ј", "l": "ӏ", "n": "ո",
    "o": "о", "p": "р", "q": "ԛ", "s": "ѕ", "u": "ս", "v": "ѵ", "w": "ԝ", "x": "х", "y": "у",
    "A": "Α", "B": "Β", "C": "Ϲ", "E": "Ε", "H": "Η", "I": "Ι", "K": "Κ", "M": "Μ", "N": "Ν", "O": "Ο",
    "P": "Ρ", "S": "Ѕ", "T": "Τ", "X": "Χ", "Y": "Υ", "Z": "Ζ",
}


def _textbugger_word(w: str, rng: random.Random) -> str:
    ops = ["delete", "sub"]
    if len(w) >= 4 and any(w[i] != w[i + 1] for i in range(1, len(w) - 2)):
        ops.append("swap")
    if not any(c in HOMOGLYPHS for c in w):
        ops.remove("sub")
    op = rng.choice(ops)
    if op == "delete":  # never the first or last character, as TextBugger
        i = rng.randrange(1, len(w) - 1)
        return w[:i] + w[i + 1:]
    if op == "swap":
        choices = [i for i in range(1, len(w) - 2) if w[i] != w[i + 1]]
        i = rng.choice(choices)
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    i = rng.choice([i for i, c in enumerate(w) if c in HOMOGLYPHS])
    return w[:i] + HOMOGLYPHS[w[i]] + w[i + 1:]


def _deepwordbug_word(w: str, rng: random.Random) -> str:
    for _ in range(20):
        op = rng.choice(["swap", "substitute", "delete", "insert"])
        i = rng.randrange(len(w))
        if op == "swap" and i + 1 < len(w) and w[i] != w[i + 1]:
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if op == "substitute":
            c = rng.choice(string.ascii_letters)
            if c != w[i]:
                return w[:i] + c + w[i + 1:]
        if op == "delete" and len(w) > 3:
            return w[:i] + w[i + 1:]
        if op == "insert":
            return w[:i] + rng.choice(string.ascii_letters) + w[i:]
    return w[:-1] + ("a" if w[-1] != "a" else "b")


def _char_attack(text: str, attack: str, label_words, rng: random.Random, rate: float, edit_word) -> Perturbation:
    eligible = [w for w in words(text, label_words) if not w.protected and w.text.isalpha() and len(w.text) >= 3]
    if not eligible:
        raise PerturbationError(f"{attack}: no word of 3+ letters outside the label words to perturb in {text!r}")
    targets = sorted(rng.sample(eligible, _n_targets(len(eligible), rate)), key=lambda w: w.start)
    edits = []
    for w in targets:
        new = edit_word(w.text, rng)
        if new != w.text:
            edits.append(Edit(w.start, w.end, w.text, new, "char"))
    return Perturbation(attack, text, apply_edits(text, edits), tuple(edits))


def textbugger(text: str, label_words: Sequence[str], seed: int = 0, rate: float = 0.25) -> Perturbation:
    rng = random.Random(stable_seed(seed, "textbugger", text))
    return _char_attack(text, "textbugger", label_words, rng, rate, _textbugger_word)


def deepwordbug(text: str, label_words: Sequence[str], seed: int = 0, rate: float = 0.25) -> Perturbation:
    rng = random.Random(stable_seed(seed, "deepwordbug", text))
    return _char_attack(text, "deepwordbug", label_words, rng, rate, _deepwordbug_word)


# ----------------------------------------------------------------------------- word level


def _suffix_kind(word: str, base: str) -> str:
    w = word.lower()
    if w == base:
        return ""
    for kind in ("ing", "ed", "s"):
        if w.endswith(kind):
            return kind
    return "?"


def inflect(lemma: str, kind: str) -> str:
    """Crude English inflection of a lemma: '' (none), 's', 'ed', 'ing'."""
    vowels = "aeiou"
    if kind == "s":
        if lemma.endswith(("s", "x", "z", "ch", "sh")):
            return lemma + "es"
        if lemma.endswith("y") and len(lemma) > 1 and lemma[-2] not in vowels:
            return lemma[:-1] + "ies"
        return lemma + "s"
    if kind == "ed":
        if lemma.endswith("e"):
            return lemma + "d"
        if lemma.endswith("y") and len(lemma) > 1 and lemma[-2] not in vowels:
            return lemma[:-1] + "ied"
        return lemma + "ed"
    if kind == "ing":
        if lemma.endswith("ie"):
            return lemma[:-2] + "ying"
        if lemma.endswith("e") and not lemma.endswith("ee") and len(lemma) > 2:
            return lemma[:-1] + "ing"
        return lemma + "ing"
    return lemma


# Parts of speech a substitute may come from, by the inflection it must take.
_POS_FOR_KIND = {"": "nvar", "s": "nv", "ed": "v", "ing": "v"}


def _substitutes(word: str, wordnet, kind_fn, label_words) -> list[str]:
    bases = wordnet.base_forms(word)
    if not bases:
        return []
    kind = _suffix_kind(word, bases[0])
    if kind == "?":
        return []
    banned = {w.lower() for w in label_words} | {word.lower()} | set(bases)
    out = []
    for cand in kind_fn(word, _POS_FOR_KIND[kind]):
        new = inflect(cand, kind)
        if new.lower() in banned or not new.isalpha() or new.lower() in out:
            continue
        out.append(new.lower())
    return out


def _word_attack(text, attack, label_words, wordnet, rng, rate, candidates_fn, choose) -> Perturbation:
    if wordnet is None:
        from .wordnet import WordNet

        wordnet = WordNet.load()
    pool = []
    for w in words(text, label_words):
        if w.protected or not w.text.isalpha() or len(w.text) < 3 or w.text.lower() in STOPWORDS:
            continue
        cands = _substitutes(w.text, wordnet, candidates_fn(wordnet), label_words)
        if cands:
            pool.append((w, cands))
    if not pool:
        raise PerturbationError(f"{attack}: no content word with WordNet substitutes in {text!r}")
    targets = sorted(rng.sample(pool, _n_targets(len(pool), rate)), key=lambda t: t[0].start)
    edits = []
    for w, cands in targets:
        new = _match_case(w.text, choose(text, w, cands, rng))
        edits.append(Edit(w.start, w.end, w.text, new, "word"))
    return Perturbation(attack, text, apply_edits(text, edits), tuple(edits))


def textfooler(text: str, label_words: Sequence[str], seed: int = 0, rate: float = 0.25, wordnet=None) -> Perturbation:
    rng = random.Random(stable_seed(seed, "textfooler", text))
    return _word_attack(
        text, "textfooler", label_words, wordnet, rng, rate,
        lambda wn: (lambda w, pos: wn.synonyms(w, max_senses=2, pos=pos)),
        lambda _text, _w, cands, r: r.choice(cands[:8]),
    )


LMScorer = Callable[[Sequence[str]], Sequence[float]]


def bertattack(text: str, label_words: Sequence[str], seed: int = 0, rate: float = 0.25, wordnet=None,
               lm_scorer: LMScorer | None = None, top_k: int = 12) -> Perturbation:
    """Contextual substitutes: WordNet neighbours; with `lm_scorer` (texts -> log-likelihoods), the
    candidate giving the most likely instruction wins (a causal LM standing in for BERT's fill-in)."""
    rng = random.Random(stable_seed(seed, "bertattack", text))

    def choose(text, w, cands, r):
        cands = cands[:top_k]
        if lm_scorer is None:
            return r.choice(cands)
        variants = [text[: w.start] + _match_case(w.text, c) + text[w.end:] for c in cands]
        scores = list(lm_scorer(variants))
        return cands[max(range(len(cands)), key=lambda i: (scores[i], -i))]

    return _word_attack(
        text, "bertattack", label_words, wordnet, rng, rate,
        lambda wn: (lambda w, pos: wn.neighbours(w, max_senses=2, pos=pos)), choose,
    )


# ----------------------------------------------------------------------------- sentence level

STRESS_SUFFIXES = (" and true is true", " and false is not true", " and true is true" * 5)
_TRAILING_RE = re.compile(r"[\s.:?!;,]*$")


def body_line(text: str) -> tuple[int, int] | None:
    """Span of the instruction sentence: the longest line with letters and no placeholder."""
    best = None
    at = 0
    for line in text.split("\n"):
        span = (at, at + len(line))
        if "{" not in line and "}" not in line and re.search(r"[A-Za-z]", line):
            if best is None or len(line.strip()) > len(text[best[0]:best[1]].strip()):
                best = span
        at += len(line) + 1
    return best


def _insertion_point(text: str) -> int:
    span = body_line(text)
    if span is None:
        return len(_TRAILING_RE.sub("", text))
    line = text[span[0]:span[1]]
    return span[0] + len(_TRAILING_RE.sub("", line))


def checklist(text: str, label_words: Sequence[str] = (), seed: int = 0) -> Perturbation:
    rng = random.Random(stable_seed(seed, "checklist", text))
    alphabet = string.ascii_letters + string.digits
    token = "".join(rng.choice(alphabet) for _ in range(10))
    at = _insertion_point(text)
    edit = Edit(at, at, "", " " + token, "insert")
    return Perturbation("checklist", text, apply_edits(text, [edit]), (edit,))


def stresstest(text: str, label_words: Sequence[str] = (), seed: int = 0) -> Perturbation:
    rng = random.Random(stable_seed(seed, "stresstest", text))
    suffix = rng.choice(STRESS_SUFFIXES)
    at = _insertion_point(text)
    edit = Edit(at, at, "", suffix, "insert")
    return Perturbation("stresstest", text, apply_edits(text, [edit]), (edit,))


# ----------------------------------------------------------------------------- semantic level


def _mentions(text: str, word: str) -> bool:
    return bool(protected_spans(text, [word]))


def semantic(text: str, label_words: Sequence[str], seed: int = 0, index: int = 0, pool: Sequence[str] = (),
             paraphraser: Callable[[str], str] | None = None) -> Perturbation:
    """Replace the instruction sentence by a paraphrase, keeping placeholder lines.

    With `paraphraser` (e.g. an LLM), its output is used when it still names every label word the
    sentence named; otherwise (and by default) `pool[k]` is used, k a seeded permutation of the
    pool taken at `index`, so that the instructions of one task get distinct paraphrases.
    """
    span = body_line(text)
    if span is None:
        span = (0, 0)
    line = text[span[0]:span[1]]
    lead = line[: len(line) - len(line.lstrip())]
    trail = line[len(line.rstrip()):]
    body = line.strip()
    needed = [w for w in label_words if _mentions(body, w)]
    new = None
    if paraphraser is not None:
        cand = (paraphraser(body) or "").strip()
        if cand and cand.lower() != body.lower() and all(_mentions(cand, w) for w in needed) and "\n" not in cand:
            new = cand
    if new is None:
        if not pool:
            raise PerturbationError("semantic: no paraphrase pool and no usable paraphraser output")
        order = list(range(len(pool)))
        random.Random(stable_seed(seed, "semantic-pool", *pool)).shuffle(order)
        for k in range(len(pool)):
            cand = pool[order[(index + k) % len(pool)]].strip()
            if cand.lower() != body.lower() and all(_mentions(cand, w) for w in needed):
                new = cand
                break
        if new is None:
            raise PerturbationError(f"semantic: no paraphrase in the pool names the label words {needed}")
    replacement = lead + new + trail
    if span == (0, 0) and text:
        replacement += "\n"
    edit = Edit(span[0], span[1], line if span != (0, 0) else "", replacement, "replace")
    return Perturbation("semantic", text, apply_edits(text, [edit]), (edit,))


# ----------------------------------------------------------------------------- dispatch


def perturb(text: str, attack: str, label_words: Sequence[str], *, seed: int = 0, index: int = 0,
            rate: float = 0.25, wordnet=None, lm_scorer: LMScorer | None = None,
            pool: Sequence[str] = (), paraphraser: Callable[[str], str] | None = None) -> Perturbation:
    """Apply one attack (see the module docstring) to one instruction."""
    if attack == "textbugger":
        return textbugger(text, label_words, seed, rate)
    if attack == "deepwordbug":
        return deepwordbug(text, label_words, seed, rate)
    if attack == "textfooler":
        return textfooler(text, label_words, seed, rate, wordnet)
    if attack == "bertattack":
        return bertattack(text, label_words, seed, rate, wordnet, lm_scorer)
    if attack == "checklist":
        return checklist(text, label_words, seed)
    if attack == "stresstest":
        return stresstest(text, label_words, seed)
    if attack == "semantic":
        return semantic(text, label_words, seed, index, pool, paraphraser)
    raise PerturbationError(f"unknown attack '{attack}' (expected one of {', '.join(ATTACKS)})")


def perturb_all(clean: Mapping[str, Sequence[str]], label_words: Mapping[str, Sequence[str]],
                pools: Mapping[str, Sequence[str]], *, attacks: Sequence[str] = ATTACKS, seed: int = 0,
                rate: float = 0.25, wordnet=None, lm_scorer: LMScorer | None = None,
                paraphraser: Callable[[str], str] | None = None, progress: bool = False) -> dict[str, dict[str, list[str]]]:
    """task -> attack -> [perturbed instruction i of clean[task][i]], every attack applied to every one;
    None (with a warning) where an attack finds nothing to perturb."""
    from tqdm.auto import tqdm

    if any(a in ("textfooler", "bertattack") for a in attacks) and wordnet is None:
        from .wordnet import WordNet

        wordnet = WordNet.load()
    out: dict[str, dict[str, list[str]]] = {}
    jobs = [(t, a) for t in clean for a in attacks]
    for task, attack in tqdm(jobs, desc="perturbing instructions", disable=not progress, leave=False):
        texts = out.setdefault(task, {"clean": list(clean[task])}).setdefault(attack, [])
        for i, text in enumerate(clean[task]):
            try:
                p = perturb(text, attack, label_words[task], seed=seed, index=i, rate=rate, wordnet=wordnet,
                            lm_scorer=lm_scorer, pool=pools.get(task, ()), paraphraser=paraphraser)
            except PerturbationError as e:  # e.g. an instruction that is all label words and placeholders
                warnings.warn(f"{task} instruction {i}: {e}; this variant is left out", stacklevel=2)
                texts.append(None)
                continue
            texts.append(p.text)
    return out
