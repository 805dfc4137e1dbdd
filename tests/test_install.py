"""scripts/install.sh's system-package logic, run against stand-ins for python, apt-get and id
(nothing is installed): Debian's WordNet comes with the first use when root with apt-get and its
files are missing; otherwise, or when apt-get fails, a note says what is skipped and the install
still succeeds."""
import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
WORDNET_FILES = [f"{k}.{p}" for k in ("index", "data") for p in ("noun", "verb", "adj", "adv")]


def _stub(bin_dir: pathlib.Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A copy of install.sh in its own tree, and a bin directory of stand-ins first on PATH."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    log = tmp_path / "calls.log"
    _stub(bin_dir, "python-stub", f'echo "python $*" >> {log}')  # pip installs: recorded, not run
    _stub(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}\n'
                              f'if [[ " $* " == *" wordnet-base "* ]]; then\n'
                              f'  [[ -n "${{APT_FAILS:-}}" ]] && exit 100\n'
                              f'  for f in {" ".join(WORDNET_FILES)}; do touch {wordnet}/$f; done\n'
                              f'fi')
    _stub(bin_dir, "id", 'echo "${FAKE_UID:-0}"')

    def run(*args, **env):
        full = {k: v for k, v in os.environ.items() if k != "COIN_NO_WORDNET"}
        full.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(bin_dir / "python-stub"),
                    COIN_WORDNET_DIR=str(wordnet), **env)
        proc = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh"), *args], capture_output=True,
                              text=True, env=full, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, [c for c in calls if c.startswith("apt-get")], tmp_path / ".installed"

    return run, wordnet


def test_root_with_apt_installs_wordnet_once(sandbox):
    run, wordnet = sandbox
    proc, apt, marker = run()
    assert proc.returncode == 0, proc.stderr
    assert apt == ["apt-get update -q", "apt-get install -y -q --no-install-recommends --reinstall wordnet-base "
                                        "wordnet-sense-index"]
    assert "installed WordNet" in proc.stdout and marker.exists()
    assert sorted(os.listdir(wordnet)) == sorted(WORDNET_FILES)
    proc, apt, _ = run()  # the files are there now: nothing to do
    assert proc.returncode == 0 and apt == []


@pytest.mark.parametrize("case,env", [("not root", {"FAKE_UID": "1000"}), ("apt-get fails", {"APT_FAILS": "1"})])
def test_without_root_or_apt_the_install_notes_what_is_skipped(sandbox, case, env):
    run, _ = sandbox
    proc, apt, marker = run(**env)
    assert proc.returncode == 0 and marker.exists(), proc.stderr
    assert "note:" in proc.stderr and "will skip the word-level attacks (textfooler, bertattack)" in proc.stderr
    assert (apt == []) == (case == "not root")


def test_the_switch_skips_wordnet_and_system_needs_root(sandbox):
    run, _ = sandbox
    proc, apt, _ = run(COIN_NO_WORDNET="1")
    assert proc.returncode == 0 and apt == [] and "note:" not in proc.stderr
    proc, apt, _ = run("--system", FAKE_UID="1000")
    assert proc.returncode == 1 and "needs root and apt-get" in proc.stderr and apt == []
    proc, apt, _ = run("--system")  # the rest of the Debian packages, then WordNet
    assert proc.returncode == 0, proc.stderr
    assert apt[0] == "apt-get update -q" and "slurmctld" in apt[1] and "wordnet-base" in apt[2]
