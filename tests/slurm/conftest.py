"""Fixtures of the slurm/ tests: a real two-node SLURM cluster on this machine, and the
environment the jobs run with.

`slurm_cluster` (module scope) starts munged, slurmctld and slurmd n1 + n2 under a temporary
directory (tests/slurm/slurm_cluster.py), waits for both nodes to be idle, and stops exactly the
daemons it started when the module's tests are done, passed or failed. It skips, with the reason,
when not root or when the Debian packages are missing (`scripts/install.sh --system` installs
them; CI runs that, so CI never skips). When a test that uses the cluster fails, the tail of
every daemon log is attached to the report.
"""
from __future__ import annotations

import shutil
import tempfile

import pytest
from slurm_cluster import ClusterError, LocalCluster, missing_requirements


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    # A short private path: munged's socket path must stay under the 108-byte limit.
    root = tempfile.mkdtemp(prefix="coin-slurm-")
    cluster = LocalCluster(root)
    try:
        cluster.start(timeout=90)
    except ClusterError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the local SLURM cluster did not start: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("slurm_cluster")
    if report.failed and isinstance(cluster, LocalCluster):
        report.sections.append(("slurm daemon logs", cluster.daemon_logs(tail=40)))
