"""Progress bars (tqdm, with rate and ETA) for the long loops of the data tools.

On a terminal the bar refreshes continuously; in a log file (SLURM) it prints a line at most
every 30 s. `COIN_PROGRESS=0` or `enabled=False` turns bars off.
"""
from __future__ import annotations

import os
import sys


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True):
    from tqdm.auto import tqdm

    off = not enabled or os.environ.get("COIN_PROGRESS", "1") == "0"
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=off, mininterval=0.5 if tty else 30.0,
                dynamic_ncols=True, smoothing=0.1, file=sys.stderr)
