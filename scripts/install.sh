#!/usr/bin/env bash
# Installs coin and everything its demo and tests need (what `make demo` / `make test` run once).
#   scripts/install.sh            Python packages (torch first, CPU build unless one is present), and
#                                 Debian's WordNet when root with apt-get (the word-level attacks)
#   scripts/install.sh --system   also the rest of the Debian packages the full test suite uses:
#                                 a local SLURM, munge, shellcheck, g++, ninja (root)
# Without root or apt-get, or when apt-get fails, WordNet is left out with a note: the evaluation
# then skips the two attacks that need it (textfooler, bertattack) and says so; the tests that
# need it skip. COIN_NO_WORDNET=1 skips the WordNet install (and makes coin ignore any WordNet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORDNET_PACKAGES=(wordnet-base wordnet-sense-index)
SYSTEM_PACKAGES=(slurmctld slurmd slurm-client munge shellcheck g++ ninja-build)

if ! "$PY" -c "import torch" 2>/dev/null; then
  # torch first and pinned: an unpinned torch (or a package asking for one) pulls GBs of CUDA
  # wheels. On GPU nodes install your CUDA build of torch before running this script.
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".[test,augment,lora]"
# mistral-common ships the LLaMA-format vocabulary of the tiny default; its own pins would
# downgrade numpy, so it is installed without its dependencies.
"$PY" -m pip install --no-deps mistral-common

# The files, not dpkg's word: a package dpkg believes installed may have lost them.
wordnet_present() {
  local f
  for f in index.noun index.verb index.adj index.adv data.noun data.verb data.adj data.adv; do
    [[ -f "${COIN_WORDNET_DIR:-/usr/share/wordnet}/$f" ]] || return 1
  done
}

as_root_with_apt() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

skipping="the evaluation will skip the word-level attacks (textfooler, bertattack) and the tests that need WordNet will skip"
updated=0
if [[ "${1:-}" == "--system" ]]; then
  if ! as_root_with_apt; then
    echo "install.sh --system: needs root and apt-get" >&2
    exit 1
  fi
  apt-get update -q
  updated=1
  apt_install "${SYSTEM_PACKAGES[@]}"
fi

# WordNet (the word-level attacks): `apt-get install --reinstall`, because a package dpkg believes
# installed may have lost its files (for a package not installed it is a plain install).
no_wordnet=${COIN_NO_WORDNET:-}
if [[ "${no_wordnet,,}" =~ ^(|0|false|no)$ ]] && ! wordnet_present; then
  if ! as_root_with_apt; then
    echo "install.sh: note: WordNet is not installed and cannot be here (needs root and apt-get): $skipping." \
         "To add it: apt-get install ${WORDNET_PACKAGES[*]} (as root), or set COIN_WORDNET_DIR to a WordNet 3 dict directory." >&2
  elif { (( updated )) || apt-get update -q; } && apt_install --reinstall "${WORDNET_PACKAGES[@]}" && wordnet_present; then
    echo "install.sh: installed WordNet (${WORDNET_PACKAGES[*]})"
  elif [[ "${1:-}" == "--system" ]]; then
    echo "install.sh --system: apt-get could not install ${WORDNET_PACKAGES[*]}" >&2
    exit 1
  else
    echo "install.sh: note: apt-get could not install ${WORDNET_PACKAGES[*]}: $skipping." >&2
  fi
fi

# `make demo` / `make test` install on first use; this marks it done.
touch .installed
