"""Deterministic sharding of `coin augment`, shard files, resume state, and the merge step.

The valid input records are cut into chunks of `chunk_size` records (chunk c holds records
[c*S, (c+1)*S)). Shard I of N processes the contiguous chunk range
[floor(C*I/N), floor(C*(I+1)/N)) of the C chunks. Backends and filters work chunk by chunk and
seed from the chunk index, so concatenating the shards in order gives exactly the
single-process output.

Files in the output directory, per shard (`I`, `N` zero-padded to 5 digits):

    shard-I-of-N.jsonl            the finished shard (renamed into place when complete)
    shard-I-of-N.summary.json     its counts and settings fingerprint (written just before the rename)
    shard-I-of-N.jsonl.partial    the shard being written (the temporary name)
    shard-I-of-N.progress.json    chunks done, bytes written and counts so far (resume point)

A rerun skips a finished shard whose fingerprint matches and resumes a partial one after its
last complete chunk. The shard comes from `--shard I/N`, else from SLURM's array variables
(SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT, or SLURM_ARRAY_TASK_MIN/MAX and
SLURM_ARRAY_TASK_STEP), else 0/1.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from coin.errors import CoinError

from .atomic import atomic_open

SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.jsonl$")


@dataclass(frozen=True)
class ShardSpec:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def chunk_range(self, num_chunks: int) -> range:
        return range(num_chunks * self.index // self.count, num_chunks * (self.index + 1) // self.count)


def parse_shard(text: str, source: str = "--shard") -> ShardSpec:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise CoinError(f"{source}: expected I/N (shard I of N, 0 <= I < N), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 0 <= index < count:
        raise CoinError(f"{source}: expected I/N with 0 <= I < N, got {text!r}")
    return ShardSpec(index, count)


def shard_from_env(env: Mapping[str, str]) -> ShardSpec | None:
    """The shard of a SLURM array task, or None outside a job array."""
    task = env.get("SLURM_ARRAY_TASK_ID")
    if task is None or task == "":
        return None

    def num(name: str) -> int | None:
        value = env.get(name)
        if value is None or value == "":
            return None
        if not value.strip().lstrip("-").isdigit():
            raise CoinError(f"{name}: expected an integer, got {value!r}")
        return int(value)

    task_id = num("SLURM_ARRAY_TASK_ID")
    low, high, step = num("SLURM_ARRAY_TASK_MIN"), num("SLURM_ARRAY_TASK_MAX"), num("SLURM_ARRAY_TASK_STEP") or 1
    count = num("SLURM_ARRAY_TASK_COUNT")
    low = 0 if low is None else low
    if count is None:
        if high is None:
            raise CoinError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                            "SLURM_ARRAY_TASK_MAX is: cannot tell the number of shards (pass --shard I/N)")
        count = (high - low) // step + 1
    index = (task_id - low) // step
    if not 0 <= index < count:
        raise CoinError(f"SLURM_ARRAY_TASK_ID={task_id} is outside the array ({count} tasks from {low}, step {step})")
    return ShardSpec(index, count)


def resolve_shard(arg: str | None, env: Mapping[str, str] | None = None) -> ShardSpec:
    if arg:
        return parse_shard(arg)
    spec = shard_from_env(os.environ if env is None else env)
    return spec if spec is not None else ShardSpec(0, 1)


@dataclass
class ShardFiles:
    out_dir: str
    spec: ShardSpec

    @property
    def final(self) -> str:
        return os.path.join(self.out_dir, self.spec.stem + ".jsonl")

    @property
    def partial(self) -> str:
        return self.final + ".partial"

    @property
    def summary(self) -> str:
        return os.path.join(self.out_dir, self.spec.stem + ".summary.json")

    @property
    def progress(self) -> str:
        return os.path.join(self.out_dir, self.spec.stem + ".progress.json")


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CoinError(f"{path}: cannot read ({e})") from None


def find_shards(out_dir: str) -> dict[int, tuple[str, int]]:
    """index -> (path, count) of the finished shards in `out_dir`."""
    found = {}
    for path in glob.glob(os.path.join(out_dir, "shard-*-of-*.jsonl")):
        m = SHARD_RE.match(os.path.basename(path))
        if m:
            found[int(m.group(1))] = (path, int(m.group(2)))
    return found


def merge_shards(out_dir: str, output: str) -> list[dict]:
    """Concatenate every shard of `out_dir` in order into `output` (atomically); return the shard
    summaries. Raises if shards are missing, from different runs, or disagree on N."""
    if not os.path.isdir(out_dir):
        raise CoinError(f"--merge: directory '{out_dir}' does not exist")
    found = find_shards(out_dir)
    if not found:
        raise CoinError(f"--merge: no finished shard files (shard-IIIII-of-NNNNN.jsonl) in '{out_dir}'")
    counts = {count for _, count in found.values()}
    if len(counts) != 1:
        raise CoinError(f"--merge: '{out_dir}' mixes shard files of different shard counts {sorted(counts)}")
    n = counts.pop()
    missing = [i for i in range(n) if i not in found]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise CoinError(f"--merge: '{out_dir}' is missing {len(missing)} of {n} shards ({shown}): "
                        f"they are unfinished or were never run")
    summaries = []
    for i in range(n):
        spath = ShardFiles(out_dir, ShardSpec(i, n)).summary
        if not os.path.isfile(spath):
            raise CoinError(f"--merge: shard {i}/{n} has no summary file {spath}")
        summaries.append(read_json(spath))
    prints = {s.get("fingerprint") for s in summaries}
    if len(prints) != 1:
        raise CoinError(f"--merge: the shards in '{out_dir}' were made with different inputs or settings")
    if output.lower().endswith(".parquet"):
        from .readers import read_records, write_records

        records = []
        for i in range(n):
            records += read_records(found[i][0])[0]
        write_records(output, records)
    else:
        size = sum(os.path.getsize(found[i][0]) for i in range(n))
        with atomic_open(output, "wb", what="merged records", size=size) as out:
            for i in range(n):
                with open(found[i][0], "rb") as f:
                    shutil.copyfileobj(f, out)
    return summaries
