"""Checkpoint directory rules without DeepSpeed: the `latest` pointer, completeness, retention,
resume resolution. (The 2-rank save killed half-way is in test_trainer.py.)"""
import os

import pytest

from coin.training import checkpoint as ckpt


def _save(root, step, complete=True):
    tag = ckpt.tag_for(step)
    ckpt.prepare_tag(str(root), tag)
    os.makedirs(root / tag, exist_ok=True)
    import torch

    torch.save({"w": torch.zeros(2)}, root / tag / "weights.pt")  # a real torch file: verify scans it
    if complete:
        ckpt.commit(str(root), tag, ckpt.completion_info(step))
    return tag


def test_latest_moves_only_on_commit(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpt.read_latest(str(root)) is None
    _save(root, 10)
    assert (root / "latest").read_text() == "step_00000010\n"
    _save(root, 20, complete=False)  # a save that died before its commit
    assert ckpt.read_latest(str(root)) == "step_00000010"
    assert ckpt.find_resume(str(tmp_path), "auto") == (str(root), "step_00000010")
    assert ckpt.find_resume(str(tmp_path), "never") is None


def test_latest_pointer_to_incomplete_falls_back(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 10)
    _save(root, 20)
    (root / "step_00000020" / ckpt.COMPLETE).unlink()  # e.g. copied without it
    assert ckpt.read_latest(str(root)) == "step_00000010"


def test_prune_keeps_last_k_and_drops_half_written(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (5, 10, 15):
        _save(root, step)
    _save(root, 17, complete=False)
    _save(root, 20)
    removed = ckpt.prune(str(root), keep_last=2)
    assert sorted(removed) == ["step_00000005", "step_00000010", "step_00000017"]
    assert ckpt.list_tags(str(root)) == ["step_00000015", "step_00000020"]


def test_prepare_tag_clears_a_half_written_directory_of_the_same_tag(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 20, complete=False)
    (root / "step_00000020" / "stale.pt").write_text("old")
    ckpt.prepare_tag(str(root), "step_00000020")
    assert not (root / "step_00000020").exists()


def test_resolve_checkpoint_paths(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    _save(root, 4)
    _save(root, 8)
    want = (str(root), "step_00000008")
    assert ckpt.resolve_checkpoint(str(tmp_path / "run")) == want
    assert ckpt.resolve_checkpoint(str(root)) == want
    assert ckpt.resolve_checkpoint(str(root / "step_00000004")) == (str(root), "step_00000004")
    _save(root, 12, complete=False)
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.resolve_checkpoint(str(root / "step_00000012"))
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_checkpoint(str(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.find_resume(str(tmp_path), str(tmp_path / "nowhere"))


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np
    import torch

    (tmp_path / "t").mkdir()
    ckpt.save_rng(str(tmp_path), "t", 3)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.load_rng(str(tmp_path), "t", 3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want
    with pytest.raises(ckpt.CheckpointError, match="no RNG state for rank 0"):
        ckpt.load_rng(str(tmp_path), "t", 0)
