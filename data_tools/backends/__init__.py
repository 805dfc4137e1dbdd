"""Paraphrase backends of `coin augment`: `templates`, `wordnet`, `llm`.

A backend proposes candidates; it never filters (filters.py does, and counts every drop). The
contract every backend follows:

    backend.settings() -> dict                       what changes its output (part of the shard fingerprint)
    backend.propose(units, chunk_index) -> list[list[Candidate]]   one list per unit, in order

`propose` is deterministic given the backend's seed, the units and `chunk_index` (the position of
the chunk of records in the whole input), so a sharded run produces exactly the single-process
output. `make_backend(name, **options)` builds one by name.
"""
from __future__ import annotations

import hashlib

BACKENDS = ("templates", "wordnet", "llm")


def stable_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (stable across processes, unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_backend(name: str, **options):
    if name == "templates":
        from .templates import TemplatesBackend

        return TemplatesBackend(**options)
    if name == "wordnet":
        from .wordnet import WordNetBackend

        return WordNetBackend(**options)
    if name == "llm":
        from .llm import LLMBackend

        return LLMBackend(**options)
    raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
