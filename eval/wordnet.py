"""A small reader of the WordNet 3.x database files, for the word-level attacks.

It reads the Princeton database directly (`index.<pos>`, `data.<pos>`, `<pos>.exc`), as Debian's
`wordnet-base` installs it in /usr/share/wordnet, or as NLTK keeps it under
`<nltk_data>/corpora/wordnet`. That avoids NLTK's corpus setup (a `lexnames` file and a download
it cannot make offline) and loads in about a second: only the index is parsed; synsets are read
on demand by seeking to their byte offset in the data file.

What the attacks need, and nothing more:

    wn = WordNet.load()                 # finds the database; WordNetMissing (a CoinError) if absent
    wn.base_forms("sentences")          # ["sentence"] (WordNet's morphy: exceptions + suffix rules)
    wn.synonyms("determine")            # lemmas sharing a synset with the word (most frequent senses first)
    wn.neighbours("grammar")            # synonyms, hypernyms, hyponyms and sister terms
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from coin.errors import CoinError
from coin.paths import wordnet_disabled, wordnet_hint


class WordNetMissing(CoinError):
    """No WordNet database was found."""


POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet's morphological detachment rules (morphy), per part of speech.
_RULES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


@dataclass(frozen=True)
class Synset:
    pos: str
    offset: int
    lemmas: tuple[str, ...]
    pointers: tuple[tuple[str, str, int], ...]  # (symbol, pos, offset)


def candidate_dirs() -> list[str]:
    dirs = []
    if os.environ.get("COIN_WORDNET_DIR"):  # the same variable as the wordnet augmentation backend
        dirs.append(os.environ["COIN_WORDNET_DIR"])
    dirs.append("/usr/share/wordnet")
    nltk_paths = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    nltk_paths += [os.path.expanduser("~/nltk_data"), "/usr/share/nltk_data", "/usr/local/share/nltk_data"]
    for p in nltk_paths:
        dirs.append(os.path.join(p, "corpora", "wordnet"))
    return dirs


def find_wordnet() -> str | None:
    """The first candidate directory holding the database; None if none does (or COIN_NO_WORDNET)."""
    if wordnet_disabled():
        return None
    for d in candidate_dirs():
        if all(os.path.isfile(os.path.join(d, f"{kind}.{name}")) for name in POS_FILES.values() for kind in ("index", "data")):
            return d
    return None


class WordNet:
    _instances: dict[str, "WordNet"] = {}

    def __init__(self, root: str):
        self.root = root
        self._index: dict[str, dict[str, list[int]]] = {p: {} for p in POS_FILES}
        self._exc: dict[str, dict[str, list[str]]] = {p: {} for p in POS_FILES}
        self._cache: dict[tuple[str, int], Synset] = {}
        for pos, name in POS_FILES.items():
            with open(os.path.join(root, f"index.{name}"), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith(" "):
                        continue  # licence header
                    parts = line.split()
                    n_synsets, n_ptrs = int(parts[2]), int(parts[3])
                    offsets = parts[4 + n_ptrs + 2:]
                    self._index[pos][parts[0]] = [int(o) for o in offsets[:n_synsets]]
            exc = os.path.join(root, f"{name}.exc")
            if os.path.isfile(exc):
                with open(exc, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) >= 2:
                            self._exc[pos].setdefault(parts[0], []).extend(parts[1:])

    @classmethod
    def load(cls, root: str | None = None) -> "WordNet":
        """The database under `root` (default: the first found, see `candidate_dirs`), cached."""
        root = root or find_wordnet()
        if root is None:
            where = "" if wordnet_disabled() else f" (looked in {', '.join(candidate_dirs())})"
            raise WordNetMissing(f"the word-level attacks (textfooler, bertattack) need WordNet: {wordnet_hint()}{where}")
        if root not in cls._instances:
            cls._instances[root] = cls(root)
        return cls._instances[root]

    # ------------------------------------------------------------------ lookup

    def has(self, word: str, pos: str | None = None) -> bool:
        key = word.lower().replace(" ", "_")
        return any(key in self._index[p] for p in ([pos] if pos else POS_FILES))

    def base_forms(self, word: str, pos: str | None = None) -> list[str]:
        """Lemmas of `word` in WordNet (the word itself first when it is one), per morphy."""
        w = word.lower()
        out: list[str] = []
        for p in [pos] if pos else list(POS_FILES):
            cands = [w] + self._exc[p].get(w, [])
            cands += [w[: -len(suf)] + rep for suf, rep in _RULES[p] if w.endswith(suf) and len(w) > len(suf)]
            for c in cands:
                if c in self._index[p] and c not in out:
                    out.append(c)
        return out

    def synsets(self, word: str, max_senses: int | None = None, pos: str = "nvar") -> list[Synset]:
        """Synsets of the word's base forms, most frequent senses first, for the parts of speech in `pos`."""
        out: list[Synset] = []
        w = word.lower()
        for pos in [p for p in POS_FILES if p in pos]:
            for base in self.base_forms(w, pos):
                offs = self._index[pos][base]
                for off in offs[:max_senses] if max_senses else offs:
                    out.append(self.synset(pos, off))
        return out

    def synset(self, pos: str, offset: int) -> Synset:
        pos = "a" if pos == "s" else pos
        key = (pos, offset)
        if key not in self._cache:
            with open(os.path.join(self.root, f"data.{POS_FILES[pos]}"), "rb") as f:  # a seek per new synset
                f.seek(offset)
                line = f.readline().decode("utf-8", errors="replace")
            fields = line.split(" | ")[0].split()
            n_words = int(fields[3], 16)
            lemmas = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]) for i in range(n_words))
            at = 4 + 2 * n_words
            n_ptrs = int(fields[at])
            ptrs = []
            for i in range(n_ptrs):
                sym, off, ppos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                ptrs.append((sym, ppos, int(off)))
            self._cache[key] = Synset(pos, offset, lemmas, tuple(ptrs))
        return self._cache[key]

    def _related(self, ss: Synset, symbols: tuple[str, ...]) -> list[Synset]:
        return [self.synset(p, o) for sym, p, o in ss.pointers if sym in symbols]

    # ------------------------------------------------------------------ candidates

    def synonyms(self, word: str, max_senses: int = 2, pos: str = "nvar") -> list[str]:
        """Single-word lemmas sharing one of the word's `max_senses` most frequent senses."""
        return _words(word, self.synsets(word, max_senses, pos), self)

    def neighbours(self, word: str, max_senses: int = 2, pos: str = "nvar") -> list[str]:
        """Contextual substitutes: synonyms, hypernyms, hyponyms, similar-to and sister terms."""
        out: list[Synset] = []
        for ss in self.synsets(word, max_senses, pos):
            out.append(ss)
            hyper = self._related(ss, ("@", "@i"))
            out += hyper
            out += self._related(ss, ("~", "~i", "&", "^"))
            for h in hyper[:2]:
                out += self._related(h, ("~",))[:12]
        return _words(word, out, self)


def _words(word: str, synsets: list[Synset], wn: WordNet) -> list[str]:
    bases = set(wn.base_forms(word)) | {word.lower()}
    out: list[str] = []
    for ss in synsets:
        for lemma in ss.lemmas:
            low = lemma.lower()
            if "_" in low or "-" in low or not low.isalpha() or low in bases or low in out:
                continue
            out.append(low)
    return out
