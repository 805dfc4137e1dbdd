"""The `wordnet` backend: synonym substitution with WordNet, offline.

WordNet is not on the Python registry. Debian's `wordnet-base` (and `wordnet-sense-index`)
packages install the database in /usr/share/wordnet; `ensure_wordnet()` copies it once into
`$COIN_CACHE/nltk_data/corpora/wordnet/` together with the `lexnames` file NLTK needs (NLTK
refuses symbolic and hard links that leave its data directories, so the files are copied, ~36 MB),
and returns NLTK's WordNet reader. A missing database is a `CoinError` naming the Debian packages.

Substitution, per candidate: every eligible word is replaced with probability `rate` (at least
one word per candidate) by a synonym from its most frequent sense (`max_senses` senses of the
word's most frequent part of speech, narrowed by a crude context rule: a verb at a sentence
opening, where instructions put imperatives, or after "to"; a noun or adjective after a
determiner), preferring synonyms WordNet has seen in use. Input labels such as "Sentence 1:" at
the start of a line are never replaced. Eligible: alphabetic, at least 3 letters, not a stop word,
not all capitals, in its base form (WordNet's morphy returns it unchanged, so no inflection is
lost), outside placeholders and protected words (label words, options). Capitalisation is kept.
Randomness comes from (seed, record id, candidate number): deterministic and shard-independent.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import warnings

from coin.errors import CoinError
from coin.paths import WORDNET_PACKAGES as DEBIAN_PACKAGES, cache_root, wordnet_disabled, wordnet_hint

from ..filters import Candidate
from ..units import Unit
from . import stable_seed

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
REQUIRED_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")) + tuple(
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
OPTIONAL_FILES = ("index.sense", "cntlist.rev")

# The 45 WordNet lexicographer files (number, name, syntactic category); NLTK reads them from
# `lexnames`, which Debian's packages do not ship.
LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
    "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
    "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
    "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
    "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
)

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves yes also
answer question following given based one two first second another whether either neither may might must
shall let use using please true false
""".split())

_WORD = re.compile(r"[A-Za-z]+")
_READERS: dict[str, object] = {}


def check_wordnet(wordnet_dir: str | None = None) -> str:
    """The WordNet dict directory to use; a `CoinError` saying how to get WordNet if it is incomplete
    (or switched off with COIN_NO_WORDNET)."""
    src = wordnet_dir or os.environ.get("COIN_WORDNET_DIR") or DEFAULT_WORDNET_DIR
    if wordnet_disabled():
        raise CoinError(f"wordnet backend: needs WordNet: {wordnet_hint()}")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise CoinError(
            f"wordnet backend: the WordNet database is missing from {src} (no {', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): install the Debian packages {DEBIAN_PACKAGES} "
            f"(`apt-get install {DEBIAN_PACKAGES}` as root; the first `make demo` or `make test` does it when run "
            f"as root), or pass --wordnet-dir with a WordNet 3.0 dict directory"
        )
    return src


def ensure_wordnet(wordnet_dir: str | None = None, nltk_data: str | None = None):
    """NLTK's WordNet reader over Debian's database (set up once, then cached per process).

    `wordnet_dir`: the WordNet `dict` directory (default $COIN_WORDNET_DIR or /usr/share/wordnet).
    `nltk_data`: where the NLTK copy goes (default $COIN_CACHE/nltk_data).
    """
    src = check_wordnet(wordnet_dir)
    if src in _READERS:
        return _READERS[src]
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise CoinError("wordnet backend: needs NLTK (`pip install nltk`)") from None

    root = os.path.abspath(nltk_data or os.path.join(cache_root(), "nltk_data"))
    dest = os.path.join(root, "corpora", "wordnet")
    stamp = os.path.join(dest, ".coin-source")
    source_id = f"{os.path.abspath(src)} {os.path.getsize(os.path.join(src, 'data.noun'))}"
    if not (os.path.isfile(stamp) and open(stamp, encoding="utf-8").read() == source_id):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".wordnet-", dir=os.path.dirname(dest))
        try:
            for name in REQUIRED_FILES + OPTIONAL_FILES:
                if os.path.isfile(os.path.join(src, name)):
                    shutil.copyfile(os.path.join(src, name), os.path.join(tmp, name))
            with open(os.path.join(tmp, "lexnames"), "w", encoding="utf-8") as f:
                for i, entry in enumerate(LEXNAMES):
                    name, category = entry.split()
                    f.write(f"{i:02d}\t{name}\t{category}\n")
            with open(os.path.join(tmp, ".coin-source"), "w", encoding="utf-8") as f:
                f.write(source_id)
            if os.path.isdir(dest):
                shutil.rmtree(dest, ignore_errors=True)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process installed it at the same moment
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if root not in [str(p) for p in nltk.data.path]:
        nltk.data.path.insert(0, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
        reader = WordNetCorpusReader(nltk.data.FileSystemPathPointer(dest), None)
    _READERS[src] = reader
    return reader


# "Sentence 1:", "Question:", "OPTIONS:" at the start of a line: input labels, never replaced.
_FIELD_LABEL = re.compile(r"(?m)^[^\S\n]*[A-Za-z][A-Za-z ]{0,30}?(?:[^\S\n]\d+)?:")
_DETERMINERS = frozenset("a an the this that these those its their his her our your my each every".split())


def _context(text: str, start: int) -> str | None:
    """"verb" at a sentence opening or after "to", "nominal" after a determiner, else None."""
    before = text[:start]
    if re.search(r"(^|[.?!:\n])\s*$", before):
        return "verb"
    prev = re.search(r"([A-Za-z]+)\W*$", before)
    if prev is None:
        return None
    word = prev.group(1).lower()
    if word == "to":
        return "verb"
    return "nominal" if word in _DETERMINERS else None


def _match_case(template: str, word: str) -> str:
    if template.istitle():
        return word[:1].upper() + word[1:]
    return word


class WordNetBackend:
    name = "wordnet"

    def __init__(self, num_candidates: int = 4, rate: float = 0.3, max_senses: int = 1, seed: int = 0,
                 wordnet_dir: str | None = None):
        if not 0 < rate <= 1:
            raise ValueError(f"rate: expected a number in (0, 1], got {rate}")
        self.num_candidates, self.rate, self.max_senses, self.seed = num_candidates, rate, max_senses, seed
        self.wordnet_dir = check_wordnet(wordnet_dir)  # fail early; load (~3-7 s) on first use
        self._wn = None
        self._synonyms: dict[tuple[str, str | None], tuple[str, ...]] = {}

    @property
    def wn(self):
        if self._wn is None:
            self._wn = ensure_wordnet(self.wordnet_dir)
        return self._wn

    def settings(self) -> dict:
        return {"backend": self.name, "num_candidates": self.num_candidates, "rate": self.rate,
                "max_senses": self.max_senses, "seed": self.seed}

    def synonyms(self, word: str, context: str | None = None) -> tuple[str, ...]:
        """Single-word synonyms of `word` from its most frequent senses (none when it is inflected).

        The part of speech is the word's most frequent one, narrowed by `context`: "verb" (the
        word opens a sentence, where instructions put imperatives, or follows "to") or "nominal"
        (it follows a determiner: a noun or adjective). Synonyms WordNet has seen in use (tag
        counts) come first; never-counted ones are used only when nothing else exists.
        """
        key = (word.lower(), context)
        if key not in self._synonyms:
            base = key[0]
            synsets = self.wn.synsets(base)
            allowed = {"verb": {"v"}, "nominal": {"n", "a", "s"}}.get(context)
            if allowed is not None and any(s.pos() in allowed for s in synsets):
                synsets = [s for s in synsets if s.pos() in allowed]
            out: list[tuple[int, str]] = []
            if synsets:
                pos = synsets[0].pos()
                if self.wn.morphy(base, pos) == base:
                    same_pos = [s for s in synsets if s.pos() == pos or {s.pos(), pos} <= {"a", "s"}]
                    for synset in same_pos[: self.max_senses]:
                        for lemma in synset.lemmas():
                            name = lemma.name()
                            if name.isalpha() and name.islower() and name != base and name not in [n for _, n in out]:
                                out.append((lemma.count(), name))
            counted = [n for c, n in sorted(out, key=lambda cn: -cn[0]) if c > 0]
            self._synonyms[key] = tuple(counted or [n for _, n in out])
        return self._synonyms[key]

    def _slots(self, unit: Unit) -> list[tuple[int, int, str, tuple[str, ...]]]:
        """(start, end, word, synonyms) of every word that may be replaced."""
        blocked = [(m.start(), m.end()) for m in re.finditer(r"\{\w+\}", unit.text)]
        blocked += [(m.start(), m.end()) for m in _FIELD_LABEL.finditer(unit.text)]
        for word in unit.protected:
            blocked += [(m.start(), m.end()) for m in
                        re.finditer(r"(?<!\w)" + re.escape(word) + r"(?!\w)", unit.text, re.IGNORECASE)]
        slots = []
        for m in _WORD.finditer(unit.text):
            word = m.group()
            if (len(word) < 3 or word.lower() in STOPWORDS or (word.isupper() and len(word) > 1)
                    or any(s < m.end() and m.start() < e for s, e in blocked)):
                continue
            syns = self.synonyms(word, _context(unit.text, m.start()))
            if syns:
                slots.append((m.start(), m.end(), word, syns))
        return slots

    def propose(self, units: list[Unit], chunk_index: int) -> list[list[Candidate]]:
        out = []
        for unit in units:
            slots = self._slots(unit)
            cands = []
            if slots:
                for k in range(self.num_candidates):
                    rng = random.Random(stable_seed(self.seed, unit.record["id"], k))
                    chosen = [s for s in slots if rng.random() < self.rate] or [rng.choice(slots)]
                    text, pos = [], 0
                    for start, end, word, syns in chosen:
                        text.append(unit.text[pos:start])
                        text.append(_match_case(word, rng.choice(syns)))
                        pos = end
                    text.append(unit.text[pos:])
                    core = "".join(text)
                    cands.append(Candidate(core, unit.finish(core), "wordnet"))
            out.append(cands)
        return out
