"""Checkpoint directory layout, the `latest` pointer, retention, RNG state and resume.

    <output.dir>/checkpoints/
        latest                      the tag of the newest COMPLETE checkpoint (one line); replaced
                                    atomically (write + fsync + rename) only after every rank has
                                    finished writing that checkpoint
        step_00000020/              one DeepSpeed checkpoint (tag = step_<8-digit optimiser step>)
            mp_rank_00_model_states.pt          module + client state (DeepSpeed)
            zero_pp_rank_*_optim_states.pt     optimiser partitions, one per rank (DeepSpeed)
            coin_rng_rank00000.pt               RNG states of each rank (python, numpy, torch, cuda)
            run_config.yaml                     the run config of the run that wrote it
            hf_config/                          model config, generation config and tokenizer
                                                (what `coin export` needs besides the weights)
            coin_complete.json                  written last: step, epoch, samples, time
        step_00000030/ ...

The file name `latest` and its content are DeepSpeed's own convention, so DeepSpeed tools
(`zero_to_fp32.py`, `load_checkpoint(dir)`) work on the directory too.

A save that dies half-way leaves a tag directory without `coin_complete.json` and `latest`
still naming the previous checkpoint: resume uses that one, and the half-written directory is
removed by the next successful save. `keep_last` complete checkpoints are kept.

Resume (`output.resume`): `auto` continues from `<output.dir>/checkpoints/latest` when it exists
(a fresh start otherwise); `never` always starts fresh; anything else is a path to a run output
directory, a `checkpoints/` directory or one tag directory, and must hold a complete checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time

import numpy as np
import torch
import yaml

from coin.errors import CoinError

LATEST = "latest"
COMPLETE = "coin_complete.json"
RUN_CONFIG = "run_config.yaml"
HF_CONFIG = "hf_config"
_TAG_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(CoinError):
    """A checkpoint that cannot be resumed from (missing, incomplete, incompatible)."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    m = _TAG_RE.match(tag)
    if not m:
        raise CheckpointError(f"'{tag}' is not a checkpoint tag (expected step_<number>)")
    return int(m.group(1))


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def is_complete(root: str, tag: str) -> bool:
    return os.path.isfile(os.path.join(root, tag, COMPLETE))


def list_tags(root: str) -> list[str]:
    """Every tag directory under `root` (complete or not), oldest first."""
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root) if _TAG_RE.match(t) and os.path.isdir(os.path.join(root, t))]
    return sorted(tags, key=step_of)


def read_latest(root: str) -> str | None:
    """The tag named by `latest` when it names a complete checkpoint; else the newest complete one."""
    path = os.path.join(root, LATEST)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tag = f.read().strip()
        if tag and is_complete(root, tag):
            return tag
    complete = [t for t in list_tags(root) if is_complete(root, t)]
    return complete[-1] if complete else None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new content, never a mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def commit(root: str, tag: str, info: dict) -> None:
    """Rank 0, after every rank finished writing `tag`: mark it complete, then point `latest` at it."""
    write_atomic(os.path.join(root, tag, COMPLETE), json.dumps(info, indent=1, sort_keys=True) + "\n")
    write_atomic(os.path.join(root, LATEST), tag + "\n")


def prepare_tag(root: str, tag: str) -> None:
    """Rank 0, before a save: remove a half-written directory left under the same tag by a crash."""
    path = os.path.join(root, tag)
    if os.path.isdir(path) and not is_complete(root, tag):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(root, exist_ok=True)


def prune(root: str, keep_last: int) -> list[str]:
    """Rank 0, after a commit: keep the newest `keep_last` complete checkpoints and `latest`;
    delete older ones and every incomplete directory. Returns the removed tags."""
    latest = read_latest(root)
    complete = [t for t in list_tags(root) if is_complete(root, t)]
    keep = set(complete[-keep_last:]) | ({latest} if latest else set())
    removed = []
    for tag in list_tags(root):
        if tag not in keep:
            shutil.rmtree(os.path.join(root, tag), ignore_errors=True)
            removed.append(tag)
    return removed


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """This process's RNG states, as tensors and plain values only: the file loads with
    `torch.load(weights_only=True)`, no pickle of arbitrary objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rng_path(root: str, tag: str, rank: int) -> str:
    return os.path.join(root, tag, f"coin_rng_rank{rank:05d}.pt")


def save_rng(root: str, tag: str, rank: int) -> None:
    torch.save(rng_state(), rng_path(root, tag, rank))


def load_rng(root: str, tag: str, rank: int) -> None:
    path = rng_path(root, tag, rank)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {os.path.join(root, tag)}: no RNG state for rank {rank} ({path})")
    set_rng_state(torch.load(path, weights_only=True))


# ----------------------------------------------------------------------------- resume


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """(root, tag) of the complete checkpoint that `path` designates.

    `path` may be a run output directory, its `checkpoints/` directory, or one tag directory.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    name = os.path.basename(path)
    if _TAG_RE.match(name):
        root = os.path.dirname(path)
        if not is_complete(root, name):
            raise CheckpointError(f"checkpoint '{path}' is incomplete (no {COMPLETE}: its save did not finish)")
        return root, name
    for root in (path, checkpoints_dir(path)):
        tag = read_latest(root)
        if tag:
            return root, tag
    raise CheckpointError(f"'{path}' holds no complete checkpoint (expected {LATEST} or step_*/{COMPLETE})")


def find_resume(output_dir: str, resume: str) -> tuple[str, str] | None:
    """What `output.resume` asks for: (root, tag), or None for a fresh start."""
    if resume == "never":
        return None
    if resume == "auto":
        root = checkpoints_dir(output_dir)
        tag = read_latest(root)
        return (root, tag) if tag else None
    return resolve_checkpoint(resume)


def completion_info(step: int, **fields) -> dict:
    return {"step": step, "time": time.time(), **fields}


def check_trainable(root: str, tag: str, lora) -> None:
    """The checkpoint trained the same parameters as this run: both full parameters, or LoRA
    adapters with the same `model.lora` (its run_config.yaml says). A CheckpointError otherwise."""
    path = os.path.join(root, tag, RUN_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {os.path.join(root, tag)}: no {RUN_CONFIG} (not written by coin train)")
    with open(path, encoding="utf-8") as f:
        try:
            saved = ((yaml.safe_load(f) or {}).get("model") or {}).get("lora")
        except yaml.YAMLError as e:
            raise CheckpointError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    mine = None if lora is None else dataclasses.asdict(lora)
    if saved != mine:
        raise CheckpointError(
            f"checkpoint {os.path.join(root, tag)}: trained with model.lora={saved}, this run has model.lora={mine} "
            f"(a checkpoint resumes only into a run training the same parameters; export it and start a new run)"
        )
