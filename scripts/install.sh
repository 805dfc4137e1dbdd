#!/usr/bin/env bash
# Installs coin and everything its tests need.
#   scripts/install.sh            Python packages (torch first, CPU build unless one is present)
#   scripts/install.sh --system   also Debian packages: WordNet, a local SLURM, shellcheck (root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
  # torch first and pinned: an unpinned torch (or a package asking for one) pulls GBs of CUDA
  # wheels. On GPU nodes install your CUDA build of torch before running this script.
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".[test,augment,lora]"
# mistral-common ships the LLaMA-format vocabulary of the tiny default; its own pins would
# downgrade numpy, so it is installed without its dependencies.
"$PY" -m pip install --no-deps mistral-common

if [[ "${1:-}" == "--system" ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh --system: needs root for apt-get" >&2
    exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    wordnet-base wordnet-sense-index slurmctld slurmd slurm-client munge shellcheck g++ ninja-build
fi

# `make demo` / `make test` install on first use; this marks it done.
touch .installed
