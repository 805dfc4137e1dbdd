"""Atomic file writes and file fingerprints.

Every file the data tools write appears complete or not at all: it is written under a temporary
name in the same directory (`.NAME.tmp-<pid>-<random>`), flushed and fsync'ed, then renamed over
the final name with `os.replace` (atomic on POSIX file systems). A crash leaves at most a
temporary file behind, never a truncated final file.

A write that fails because the disk is full (ENOSPC, EDQUOT) or on an I/O error (EIO) removes
the temporary file and raises `DiskFullError`, one line naming what was written, the file and
its directory: "WHAT PATH: no space left on DIR (N bytes to write)".
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from coin.errors import CoinError

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


class DiskFullError(CoinError):
    """A write failed for want of space (or on an I/O error); nothing partial was left behind."""


def disk_full_error(what: str, path: str, error: OSError, size: int | None = None) -> DiskFullError:
    """The one-line DiskFullError for `error` (an OSError with an errno in DISK_ERRNOS)."""
    where = os.path.dirname(os.path.abspath(path))
    reason = "no space left on" if error.errno != errno.EIO else "I/O error on"
    needed = f" ({size} bytes to write)" if size is not None else ""
    return DiskFullError(f"{what} {path}: {reason} {where}{needed}")


def temp_path(path: str) -> str:
    """A temporary name next to `path` (same directory, so the final rename stays atomic)."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8", what: str = "file",
                size: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed
    (a full disk or an I/O error: DiskFullError naming `what`, `path` and `size` when known)."""
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
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            raise disk_full_error(what, path, e, size) from None
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
