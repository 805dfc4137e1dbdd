#!/usr/bin/env bash
# Prepares .gpu_wheels/ (ignored by git): the packages coin needs that the GPU machine's bare image
# lacks, as wheels for CPython 3.12 on manylinux x86_64, for benchmarks/gpu_check.sh to install
# there without a network. Run it here (it needs the package index), then name .gpu_wheels in the
# device call's `carry`.
#
#   bash scripts/prepare_gpu_wheels.sh [DEST]      (default .gpu_wheels)
#
# What the image has (torch 2.11 CUDA 13, transformers, accelerate, peft, safetensors, sentencepiece,
# tensorboard, pyarrow, numpy, pandas, fsspec, huggingface-hub, einops, msgpack, ninja, psutil,
# py-cpuinfo, nvidia-ml-py, typing-extensions, ...) is not carried; what it lacks is:
#   deepspeed        (+ hjson, pydantic, pydantic-core, annotated-types, typing-inspection)
#   datasets         the token cache is an Arrow file read through it (+ dill, multiprocess)
#   mistral-common   ships the LLaMA vocabulary of the tiny default (its own needs are not used)
# DeepSpeed publishes only a source archive: its wheel is built here with no ops prebuilt
# (DS_BUILD_OPS=0; FusedAdam JIT-compiles on the GPU, which benchmarks/gpu_check.py checks).
# Versions are the ones the CPU test suite runs with. Pure-Python wheels, one binary
# (pydantic-core); about 12 MiB in all (the device tool carries at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${1:-.gpu_wheels}
DEEPSPEED=deepspeed==0.19.8
WHEELS=(
  hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  mistral-common==1.13.1
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/wheels" "$tmp/sdist"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d "$tmp/wheels" "${WHEELS[@]}"
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp/sdist" "$DEEPSPEED"
# --no-build-isolation: DeepSpeed's setup.py imports torch (this machine's CPU build; nothing
# compiled depends on it with DS_BUILD_OPS=0, and the wheel is py3-none-any)
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/wheels" "$tmp/sdist"/deepspeed-*.tar.gz

count=$(find "$tmp/wheels" -name '*.whl' | wc -l)
if [[ $count -ne $((${#WHEELS[@]} + 1)) ]]; then
  echo "prepare_gpu_wheels: expected $((${#WHEELS[@]} + 1)) wheels, got $count:" >&2
  ls "$tmp/wheels" >&2
  exit 1
fi
rm -rf "$DEST"
mv "$tmp/wheels" "$DEST"
find "$DEST" -name '*.whl' -printf '%s %f\n' | sort -k2 | awk '{printf "%8.2f MiB  %s\n", $1 / 1048576, $2}'
du -sh "$DEST"
