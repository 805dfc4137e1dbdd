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
            coin_complete.json                  written last: step, epoch, samples, time, what the
                                                run was (world size, batch sizes, data fingerprints)
                                                and the manifest: size + xxh3_128 of every other file
        step_00000030/ ...

The file name `latest` and its content are DeepSpeed's own convention, so DeepSpeed tools
(`zero_to_fp32.py`, `load_checkpoint(dir)`) work on the directory too.

A save that dies half-way leaves a tag directory without `coin_complete.json` and `latest`
still naming the previous checkpoint: resume uses that one, and the half-written directory is
removed by the next successful save. `keep_last` complete checkpoints are kept.

Resume (`output.resume`): `auto` continues from `<output.dir>/checkpoints/latest` when it exists
(a fresh start otherwise); `never` always starts fresh; anything else is a path to a run output
directory, a `checkpoints/` directory or one tag directory, and must hold a complete checkpoint.

Before anything is loaded (resume, `coin export`), `verify` checks a checkpoint: every file of the
manifest is there with its size and hash, no file was added, and no torch file holds a pickled
global outside torch's weights-only set and the DeepSpeed state types of engine.py (what
`torch.load(weights_only=True)` would refuse: a planted `__reduce__` payload). The loads
themselves then run with weights_only=True (engine.safe_torch_load). With `auto`, a checkpoint
that fails is skipped (the caller says which and why) for the newest one that verifies. A
checkpoint without a manifest (written before coin recorded one) is accepted with a warning: its
files are only scanned for unsafe globals.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import re
import shutil
import time

import numpy as np
import torch
import xxhash
import yaml

from coin.errors import CoinError, warn

LATEST = "latest"
COMPLETE = "coin_complete.json"
RUN_CONFIG = "run_config.yaml"
HF_CONFIG = "hf_config"
_TAG_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(CoinError):
    """A checkpoint that cannot be resumed from (missing, incomplete, corrupt, unsafe, incompatible)."""


class CheckpointDiskFullError(CoinError):
    """A checkpoint save ran out of space: the partial directory is removed, `latest` untouched."""


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
    """Write `text` to `path` so that readers see the old or the new content, never a mix (on
    failure, e.g. a full disk, the temporary file is removed and `path` is untouched)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(path) or ".")


def commit(root: str, tag: str, info: dict, files: dict | None = None) -> None:
    """Rank 0, after every rank finished writing `tag`: mark it complete, then point `latest` at it.

    `files` is the manifest (`hash_files` of every file of the tag directory, the ranks' shares
    merged); None computes it here, in this process."""
    tag_dir = os.path.join(root, tag)
    if files is None:
        files = hash_files(tag_dir, tag_files(tag_dir))
    info = dict(info, files=files)
    write_atomic(os.path.join(tag_dir, COMPLETE), json.dumps(info, indent=1, sort_keys=True) + "\n")
    write_atomic(os.path.join(root, LATEST), tag + "\n")


def prepare_tag(root: str, tag: str) -> None:
    """Rank 0, before a save: remove a directory left under the same tag, half-written by a crash
    or (complete) by a run whose later steps were abandoned for an older checkpoint."""
    path = os.path.join(root, tag)
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(root, exist_ok=True)


def remove_partial(root: str, tag: str) -> None:
    """After a failed save of `tag`: remove its directory unless `latest` already names it."""
    path = os.path.join(root, LATEST)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read().strip() == tag:
                return
    shutil.rmtree(os.path.join(root, tag), ignore_errors=True)


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


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# torch.save's C++ writer reports a failed write without an errno
_WRITE_FAILED = ("file write failed", "PytorchStreamWriter failed", "iostream error", "unexpected pos")


def save_error(e: BaseException, root: str, tag: str, needed_bytes: int) -> CoinError | None:
    """The one-line error for an exception raised while writing checkpoint root/tag, or None when
    it is not an I/O error. A full disk (ENOSPC, EDQUOT, or a torch write failure while less than
    `needed_bytes` is free) is a CheckpointDiskFullError with the size needed."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    io_error = isinstance(e, OSError) or any(m in str(e) for m in _WRITE_FAILED)
    if not io_error:
        return None
    if getattr(e, "errno", None) in _DISK_FULL or (not isinstance(e, OSError) and free is not None
                                                    and free < needed_bytes):
        return CheckpointDiskFullError(
            f"checkpoint {tag}: no space left on {root} (needs ~{needed_bytes / 1e6:.0f} MB"
            + (f", {free / 1e6:.0f} MB free" if free is not None else "") + "): the partial checkpoint was "
            f"removed and {LATEST} still names the previous one")
    reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [""])[0]
    where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
    return CheckpointError(f"checkpoint {tag}: cannot be written to {root}{where}: {reason}: the partial "
                           f"checkpoint was removed and {LATEST} still names the previous one")


# ----------------------------------------------------------------------------- integrity

HASH = "xxh3_128"
_CHUNK = 8 << 20


def hash_file(path: str) -> dict:
    """{"size", "xxh3_128"} of a file's bytes."""
    h = xxhash.xxh3_128()
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return {"size": size, HASH: h.hexdigest()}


def tag_files(tag_dir: str) -> list[str]:
    """Every file under a tag directory (relative paths, sorted), the completion marker excepted."""
    out = []
    for parent, dirs, names in os.walk(tag_dir):
        dirs.sort()
        for name in names:
            rel = os.path.relpath(os.path.join(parent, name), tag_dir)
            if rel != COMPLETE:
                out.append(rel)
    return sorted(out)


def share(sizes: dict[str, int], rank: int, world: int) -> list[str]:
    """This rank's part of the files (largest first, dealt round-robin): every rank hashes its part."""
    order = sorted(sizes, key=lambda rel: (-sizes[rel], rel))
    return order[rank::world]


def hash_files(tag_dir: str, files: list[str]) -> dict[str, dict]:
    return {rel: hash_file(os.path.join(tag_dir, rel)) for rel in files}


def fingerprint(path: str) -> dict:
    """What a data file (or a directory of them) was: size and xxh3_128 of its content."""
    if os.path.isdir(path):
        files = hash_files(path, tag_files(path))
        return {"size": sum(f["size"] for f in files.values()),
                HASH: xxhash.xxh3_128(json.dumps(files, sort_keys=True).encode()).hexdigest()}
    return hash_file(path)


def read_info(root: str, tag: str) -> dict:
    """The parsed completion marker of root/tag."""
    path = os.path.join(root, tag, COMPLETE)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {os.path.join(root, tag)}: {COMPLETE} cannot be read ({e})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"checkpoint {os.path.join(root, tag)}: {COMPLETE} is not a JSON object")
    return info


def unsafe_globals(path: str) -> list[str]:
    """The pickled globals of a torch file that `engine.safe_torch_load` would refuse (static: the
    pickle is disassembled, nothing is unpickled, no tensor data is read)."""
    from .engine import DEEPSPEED_STATE_TYPES

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # not a torch zip file, or a corrupt one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [f"<unreadable: {first}>"]
    return sorted(set(found) - set(DEEPSPEED_STATE_TYPES))


def verify(root: str, tag: str, rank: int = 0, world: int = 1) -> str | None:
    """What is wrong with checkpoint root/tag (one line naming the file), or None when it is sound.

    With several ranks each checks its share of the files (`share`) and rank 0 also the file set:
    combine the answers of every rank (the first problem by rank, `first_problem`).
    """
    tag_dir = os.path.join(root, tag)
    where = f"checkpoint {tag_dir}"
    try:
        info = read_info(root, tag)
    except CheckpointError as e:
        return str(e)
    files = info.get("files")
    if files is None:  # older format: nothing to compare with; still refuse unsafe pickles
        if rank == 0:
            warn("coin", f"{where}: no manifest in {COMPLETE} (written by an older coin): its files are not "
                         f"verified, only scanned for unsafe pickles")
        present = tag_files(tag_dir)
        sizes = {rel: os.path.getsize(os.path.join(tag_dir, rel)) for rel in present}
    else:
        sizes = {rel: entry["size"] for rel, entry in files.items()}
        if rank == 0:
            present = set(tag_files(tag_dir))
            missing = sorted(set(files) - present)
            if missing:
                return f"{where}: {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            extra = sorted(present - set(files))
            if extra:
                return f"{where}: {extra[0]} was not part of the checkpoint when it was saved (not in its manifest)"
    for rel in share(sizes, rank, world):
        path = os.path.join(tag_dir, rel)
        if files is not None:
            try:
                size = os.path.getsize(path)
            except OSError as e:
                return f"{where}: {rel} cannot be read ({e.strerror})"
            want = files[rel]
            if size != want["size"]:
                return f"{where}: {rel} is truncated or altered ({size} bytes, {want['size']} when saved)"
            try:
                got = hash_file(path)
            except OSError as e:
                return f"{where}: {rel} cannot be read ({e.strerror})"
            if got[HASH] != want[HASH]:
                return f"{where}: {rel} is altered (same size, but its {HASH} differs from the one saved)"
        if rel.endswith(".pt"):
            bad = unsafe_globals(path)
            if bad:
                return (f"{where}: {rel} refused: it pickles {bad[0]}, not a tensor or DeepSpeed state type "
                        f"(loading it could run code)")
    return None


def first_problem(problems: list[str | None]) -> str | None:
    return next((p for p in problems if p), None)


def check_compatible(root: str, tag: str, run: dict) -> None:
    """The checkpoint was written by a run like this one (`run`: world_size, micro_batch_size,
    gradient_accumulation_steps, data fingerprints, as `completion_info` records them): a
    CheckpointError naming the old and the new value otherwise. Keys the checkpoint does not
    record (an older format) are not compared."""
    where = f"checkpoint {os.path.join(root, tag)}"
    saved = read_info(root, tag)
    world = saved.get("world_size")
    if world is not None and world != run["world_size"]:
        raise CheckpointError(
            f"{where}: written by {world} ranks, this run has {run['world_size']} (ZeRO partitions the optimiser "
            f"state per rank): resume with --nproc {world}, or `coin export {os.path.join(root, tag)} OUT` and start "
            f"a new run with model.name_or_path: OUT")
    for key in ("micro_batch_size", "gradient_accumulation_steps"):
        if key in saved and saved[key] != run[key]:
            raise CheckpointError(f"{where}: written with optim.{key}={saved[key]}, this run has {run[key]} "
                                  f"(exact resume needs the same; export it and start a new run instead)")
    for split, fp in (saved.get("data") or {}).items():
        now = run["data"].get(split)
        if fp != now:
            def show(f):
                return "none" if f is None else f"{f['size']} bytes, {HASH} {f[HASH][:12]}"

            raise CheckpointError(
                f"{where}: data.{split} changed since it was saved (was {show(fp)}; now {show(now)}): resume needs "
                f"the same data; restore it, or start a new run (output.resume: never, or a new output.dir)")


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
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # refused global, truncated zip, I/O error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be loaded ({first})") from None
    set_rng_state(state)


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


def find_resume(output_dir: str, resume: str, verify=verify, on_skip=None) -> tuple[str, str] | None:
    """What `output.resume` asks for: (root, tag) of a checkpoint that verifies, or None for a
    fresh start. `verify(root, tag)` -> problem or None (a multi-rank run passes one that agrees
    across ranks). With `auto` a checkpoint that fails is skipped for the next older complete one
    (`on_skip(tag, problem)` is told); if every one fails, a CheckpointError lists them. A named
    checkpoint that fails is a CheckpointError."""
    if resume == "never":
        return None
    if resume == "auto":
        root = checkpoints_dir(output_dir)
        latest = read_latest(root)
        if latest is None:
            return None
        candidates = [latest] + [t for t in reversed(list_tags(root)) if t != latest and is_complete(root, t)]
        skipped = []
        for tag in candidates:
            problem = verify(root, tag)
            if problem is None:
                return root, tag
            skipped.append(problem)
            if on_skip is not None:
                on_skip(tag, problem)
        raise CheckpointError(f"no checkpoint under {root} verifies ({'; '.join(skipped)}): "
                              f"set output.resume: never to start afresh, or restore a good checkpoint")
    root, tag = resolve_checkpoint(resume)
    problem = verify(root, tag)
    if problem is not None:
        raise CheckpointError(problem)
    return root, tag


def completion_info(step: int, **fields) -> dict:
    """The completion marker's fields (the manifest is added by `commit`). The trainer records
    epoch, consumed_samples, world_size, micro_batch_size, gradient_accumulation_steps and
    data ({"train": fingerprint, "eval": ...}): what `check_compatible` compares on resume."""
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
