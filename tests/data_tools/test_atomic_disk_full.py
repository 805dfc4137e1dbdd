"""A full disk while writing atomically: one-line DiskFullError naming the file, no temp file left."""
import errno
import os

import pytest

from coin.data_tools import atomic
from coin.data_tools.atomic import DiskFullError


def test_enospc_removes_the_temp_file_and_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(DiskFullError) as info:
        with atomic.atomic_open(str(target), what="summary", size=12) as f:
            f.write("x" * 12)
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert str(info.value) == f"summary {target}: no space left on {tmp_path} (12 bytes to write)"
    assert os.listdir(tmp_path) == []  # neither the final file nor a temp file


def test_other_errors_pass_through_and_clean_up(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(str(tmp_path / "a.txt")) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
