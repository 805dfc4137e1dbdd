"""`coin augment --merge` on a full disk: status 2, one line naming the output, nothing partial left."""
import errno
import os

from coin.cli import main as coin


def test_merge_on_a_full_disk(demo_dir, tmp_path, monkeypatch, capsys):
    shards = tmp_path / "s"
    for shard in ("0/2", "1/2"):
        assert coin(["augment", os.path.join(demo_dir, "train.jsonl"), "--backend", "templates", "--templates",
                     os.path.join(demo_dir, "templates.json"), "--out-dir", str(shards), "--chunk-size", "10",
                     "--num-paraphrases", "2", "--no-progress", "--similarity-model", "none",
                     "--shard", shard]) == 0
    size = sum(os.path.getsize(shards / f"shard-{i:05d}-of-00002.jsonl") for i in range(2))
    out_dir = tmp_path / "merged"
    out_dir.mkdir()
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert coin(["augment", "--merge", str(shards), "--output", str(out_dir / "all.jsonl")]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"merged records {out_dir / 'all.jsonl'}: no space left on {out_dir} ({size} bytes to write)")
    assert "\n" not in err
    assert os.listdir(out_dir) == []  # no merged file, no temp file
