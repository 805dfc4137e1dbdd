"""Where coin keeps what it builds once and reuses: `$COIN_CACHE`, default ~/.cache/coin
(the tiny default model, NLTK's view of WordNet), and where it finds WordNet.

WordNet (the word-level attacks of `coin eval`, the `wordnet` backend of `coin augment`) is a
system package, not a Python one: Debian's `wordnet-base` and `wordnet-sense-index` (the first
`make demo` / `make test` installs them when run as root with apt-get). `COIN_WORDNET_DIR` points
both users at another WordNet 3 dict directory; `COIN_NO_WORDNET=1` makes coin behave as on a
machine without WordNet, whatever is installed (how the tests exercise that path).
"""
import os

WORDNET_PACKAGES = "wordnet-base wordnet-sense-index"


def cache_root() -> str:
    return os.environ.get("COIN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "coin"))


def wordnet_disabled() -> bool:
    """True when `COIN_NO_WORDNET` is set to anything but '', 0, false or no."""
    return os.environ.get("COIN_NO_WORDNET", "").strip().lower() not in ("", "0", "false", "no")


def wordnet_hint() -> str:
    """How to get WordNet, for the messages of everything that needs it."""
    if wordnet_disabled():
        return "WordNet is switched off by COIN_NO_WORDNET; unset it to use an installed WordNet"
    return (f"install Debian's {WORDNET_PACKAGES} (`apt-get install {WORDNET_PACKAGES}` as root; the first "
            f"`make demo` or `make test` does it when run as root), or set COIN_WORDNET_DIR to a WordNet 3 dict directory")
