"""Atomic file writes and file fingerprints.

Every file the data tools write appears complete or not at all: it is written under a temporary
name in the same directory (`.NAME.tmp-<pid>-<random>`), flushed and fsync'ed, then renamed over
the final name with `os.replace` (atomic on POSIX file systems). A crash leaves at most a
temporary file behind, never a truncated final file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any


def temp_path(path: str) -> str:
    """A temporary name next to `path` (same directory, so the final rename stays atomic)."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed."""
    if "b" in mode:
        encoding = None
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def file_fingerprint(path: str, chunk: int = 1 << 20) -> str:
    """blake2b of the file's bytes (a directory: of every file under it, by relative path)."""
    h = hashlib.blake2b(digest_size=16)
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode())
                h.update(file_fingerprint(full).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def text_fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object."""
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()
