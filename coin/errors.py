"""The one user-facing error type: `coin` prints its message (one line) and exits with status 2."""


class CoinError(ValueError):
    """Bad input: the message names the file, record or key, and what was expected."""
