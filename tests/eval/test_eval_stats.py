import math

import numpy as np
import pytest

from coin.eval.stats import cluster_differences, paired_bootstrap


def test_constant_difference_has_a_point_interval():
    d = cluster_differences([1, 1, 1, 1], [0, 0, 0, 0], ["x", "x", "y", "y"])
    assert d.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    out = paired_bootstrap([d, d, d], n_boot=200)
    assert out["mean"] == 1.0 and out["ci95"] == [1.0, 1.0]
    assert out["n_seeds"] == 3 and out["n_clusters"] == 2


def test_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    n = 2000
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    d = cluster_differences(a, b, list(range(n)))
    out = paired_bootstrap([d], n_boot=1000, seed=3)
    diff = (a - b).astype(float)
    se = diff.std() / math.sqrt(n)  # independent: the standard error of a mean
    assert out["mean"] == pytest.approx(diff.mean())
    width = out["ci95"][1] - out["ci95"][0]
    assert width == pytest.approx(2 * 1.96 * se, rel=0.12)
    assert out["ci95"][0] < diff.mean() < out["ci95"][1]


def test_seed_variation_widens_the_interval():
    zero = cluster_differences([0] * 50, [0] * 50, list(range(50)))
    fifth = cluster_differences([1] * 10 + [0] * 40, [0] * 50, [i % 10 for i in range(50)])
    assert fifth[:, 0].tolist() == [1.0] * 10  # each cluster of 5 units holds one difference
    out = paired_bootstrap([zero, fifth], n_boot=2000)
    assert out["mean"] == pytest.approx(0.1)
    assert out["ci95"][0] == 0.0 and out["ci95"][1] > 0.15


def test_mismatched_units_are_an_error():
    with pytest.raises(ValueError, match="3 units of A, 2 of B"):
        cluster_differences([1, 0, 1], [1, 0], [0, 1, 2])
    with pytest.raises(ValueError, match="at least one cluster"):
        paired_bootstrap([])
