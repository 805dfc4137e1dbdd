"""Static checks of slurm/: every shell script parses (`bash -n`) and is shellcheck-clean, the
templates keep the settings the preemption contract relies on, and slurm/torchrun_node.py maps
worker exit codes the way train.sbatch reads them. No cluster needed."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
SCRIPTS = sorted(p for p in SLURM.iterdir() if p.suffix in (".sbatch", ".sh"))
sys.path.insert(0, str(SLURM))
import torchrun_node  # noqa: E402


def test_every_template_is_there():
    names = {p.name for p in SCRIPTS}
    assert {"train.sbatch", "augment.sbatch", "augment_merge.sbatch", "augment.sh", "eval.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck; scripts/install.sh --system)")
    # -x: follow sourced files; --shell=bash: .sbatch files have a bash shebang but no .sh suffix
    proc = subprocess.run(["shellcheck", "-x", "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sbatch_options(script: pathlib.Path) -> dict[str, str]:
    opts = {}
    for line in script.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)  # '##SBATCH' lines are disabled
        if m:
            opts[m.group(1)] = m.group(2) or ""
    return opts


def test_train_template_preemption_settings():
    opts = _sbatch_options(SLURM / "train.sbatch")
    assert re.fullmatch(r"USR1@\d+", opts["signal"]), "USR1 to the job steps (not B:), some time before the limit"
    assert opts["open-mode"] == "append" and "requeue" in opts
    assert opts["ntasks-per-node"] == "1", "one torchrun per node"
    text = (SLURM / "train.sbatch").read_text()
    assert "--kill-on-bad-exit=1" in text and "--rdzv-backend=c10d" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text


def test_preempted_exit_code_matches_the_trainer():
    from coin.training.trainer import PREEMPTED_EXIT_CODE

    assert torchrun_node.PREEMPTED == PREEMPTED_EXIT_CODE
    text = (SLURM / "train.sbatch").read_text()
    assert f"grep -qx {PREEMPTED_EXIT_CODE} " in text and f"\n    {PREEMPTED_EXIT_CODE})\n" in text


class _Failure:
    def __init__(self, exitcode):
        self.exitcode = exitcode


@pytest.mark.parametrize("codes, expected", [
    ([75], 75),
    ([75, 75], 75),
    ([1], 1),
    ([75, 1], 1),        # a crash next to a preempted rank is a crash
    ([-9], 137),         # killed by SIGKILL
    ([75, -15], 143),
    ([], 1),
])
def test_node_exit_status(codes, expected):
    assert torchrun_node.exit_code({r: _Failure(c) for r, c in enumerate(codes)}) == expected


def test_torchrun_args_put_ours_first():
    args = torchrun_node.torchrun_args(["--nnodes=2", "-m", "coin.training.train", "--config", "x.yaml"], "/logs")
    assert args[-5:] == ["--nnodes=2", "-m", "coin.training.train", "--config", "x.yaml"]
    assert "--tee=3" in args and any(a.startswith("--log-dir=/logs/") for a in args)


def test_cluster_skip_reason_names_what_is_missing(monkeypatch):
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster, "_which", lambda name: None if name in ("slurmd", "munged") else "/bin/x")
    reason = slurm_cluster.missing_requirements()
    assert "munged, slurmd" in reason and "scripts/install.sh --system" in reason
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    assert "not root" in slurm_cluster.missing_requirements()
