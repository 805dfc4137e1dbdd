"""Confidence intervals for the difference between two arms evaluated on the same examples.

`paired_bootstrap` takes, for each seed, the per-unit correctness of arm A and of arm B on the
same units (a unit is one example under one instruction of one task), grouped into clusters (the
units of one example of one task: its instructions move together, because answers to the same
example are correlated). The statistic is the mean over seeds of (accuracy A - accuracy B), and
its 95% interval comes from a two-level bootstrap: resample the seeds with replacement, then
within each resampled seed resample the clusters with replacement. Both sources of variation the
experiment has (training randomness, the finite example set) are therefore in the interval.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def cluster_differences(a: Sequence[int], b: Sequence[int], clusters: Sequence) -> np.ndarray:
    """Per cluster, the sum of (a - b) over its units and the unit count: array (n_clusters, 2)."""
    if not (len(a) == len(b) == len(clusters)):
        raise ValueError(f"paired correctness: {len(a)} units of A, {len(b)} of B, {len(clusters)} cluster ids")
    index: dict = {}
    out: list[list[float]] = []
    for x, y, c in zip(a, b, clusters):
        row = index.setdefault(c, len(out))
        if row == len(out):
            out.append([0.0, 0.0])
        out[row][0] += float(x) - float(y)
        out[row][1] += 1.0
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def paired_bootstrap(per_seed: Sequence[np.ndarray], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """per_seed: one `cluster_differences` array per seed. Returns {'mean', 'ci95': [lo, hi],
    'n_seeds', 'n_clusters'}; the mean is the mean over seeds of the unit-weighted difference."""
    if not per_seed or any(len(d) == 0 for d in per_seed):
        raise ValueError("paired bootstrap: every seed needs at least one cluster")
    mean = float(np.mean([d[:, 0].sum() / d[:, 1].sum() for d in per_seed]))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for r in range(n_boot):
        picks = rng.integers(0, len(per_seed), len(per_seed))
        vals = []
        for s in picks:
            d = per_seed[s]
            idx = rng.integers(0, len(d), len(d))
            vals.append(d[idx, 0].sum() / d[idx, 1].sum())
        stats[r] = np.mean(vals)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {"mean": mean, "ci95": [float(lo), float(hi)], "n_seeds": len(per_seed),
            "n_clusters": int(np.mean([len(d) for d in per_seed]))}
