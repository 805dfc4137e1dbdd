#!/usr/bin/env bash
# The one-call GPU check (benchmarks/gpu_check.py does the work; its docstring lists the parts).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [options]                on the GPU machine
#   bash benchmarks/gpu_check.sh OUT_DIR --cpu-dry-run [options]  the same logic at toy size on the CPU
#
# On the GPU machine the packages its image lacks come from .gpu_wheels/ (made beforehand on the
# development machine by `bash scripts/prepare_gpu_wheels.sh`, carried with the working tree) and
# go to a scratch directory on PYTHONPATH: the machine's torch and packages are never touched.
# Always writes OUT_DIR/gpu_check.{json,md,log}; exit status 0 only when every part passed.
# Options: --work DIR, --only PART,..., --budget-s S, --part-timeout PART=S, --peak-tflops T.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--cpu-dry-run] [options]" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
