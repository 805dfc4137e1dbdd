"""The one user-facing error type: `coin` prints its message (one line) and exits with status 2."""


class CoinError(ValueError):
    """Bad input: the message names the file, record or key, and what was expected."""


def read_json(path: str, error: type[CoinError] = CoinError, what: str = "file"):
    """The parsed JSON of `path`; a missing file or invalid JSON raises `error` (a CoinError)
    naming the file, and the line of the syntax error."""
    import json
    import os

    if not os.path.isfile(path):
        raise error(f"{what} '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except UnicodeDecodeError as e:
            raise error(f"{path}: not UTF-8 text ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise error(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def warn(prog: str, message: str) -> None:
    """A user-facing warning: one line `PROG: warning: MESSAGE` on stderr, from rank 0 only (every
    rank of a launcher meets the same input and would repeat it)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)
