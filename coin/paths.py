"""Where coin keeps what it builds once and reuses: `$COIN_CACHE`, default ~/.cache/coin
(the tiny default model, NLTK's view of WordNet)."""
import os


def cache_root() -> str:
    return os.environ.get("COIN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "coin"))
