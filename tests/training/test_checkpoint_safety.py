"""Checkpoint safety and integrity on real checkpoints of the shared 2-rank ZeRO-3 run: a planted
pickle payload is refused before it runs, a truncated or altered shard is named by verify,
`output.resume: auto` falls back past a corrupt newest checkpoint, a resume by a different run
is refused, and a save that runs out of space leaves no partial directory and `latest` as it was."""
import errno
import json
import os
import shutil
import types

import pytest
import torch

from coin.cli import main as coin_main
from coin.training import checkpoint as ckpt

NEWEST, OLDER = "step_00000012", "step_00000008"  # keep_last 2 of the straight run
MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


class Payload:
    """What an attacker plants: unpickling it runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture
def run_copy(straight_run, tmp_path):
    """A copy of the straight run's output directory (both checkpoints, `latest`, final metrics)."""
    out = tmp_path / "run"
    shutil.copytree(straight_run["out"], out)
    return out


def _tag_dir(out, tag=NEWEST):
    return out / "checkpoints" / tag


def _shard(tag_dir, name):
    """The one file of the tag directory called `name` (DeepSpeed puts shards under global_stepN/)."""
    found = [p for p in tag_dir.rglob(name)]
    assert len(found) == 1, f"{name} under {tag_dir}: {found}"
    return found[0]


def _rewrite_manifest(tag_dir, path):
    """Record the current size and hash of `path` in the manifest, as an attacker who can write
    the checkpoint directory would."""
    marker = tag_dir / ckpt.COMPLETE
    info = json.loads(marker.read_text())
    info["files"][os.path.relpath(path, tag_dir)] = ckpt.hash_file(str(path))
    marker.write_text(json.dumps(info))


def test_the_real_checkpoint_verifies_and_its_manifest_lists_every_file(run_copy):
    tag_dir = _tag_dir(run_copy)
    info = json.loads((tag_dir / ckpt.COMPLETE).read_text())
    assert sorted(info["files"]) == ckpt.tag_files(str(tag_dir))
    assert any(rel.endswith("optim_states.pt") for rel in info["files"])
    # the hashes are those of the bytes on disk, computed here independently of the save
    import xxhash

    for rel, entry in info["files"].items():
        data = (tag_dir / rel).read_bytes()
        assert entry == {"size": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}
    assert ckpt.verify(str(run_copy / "checkpoints"), NEWEST) is None
    assert ckpt.verify(str(run_copy / "checkpoints"), NEWEST, rank=1, world=2) is None


def _plant(run_copy, tmp_path, with_manifest=True):
    marker = tmp_path / "MARKER"
    tag_dir = _tag_dir(run_copy)
    shard = _shard(tag_dir, MODEL_STATES)
    torch.save({"module": Payload(marker)}, str(shard))
    if with_manifest:
        _rewrite_manifest(tag_dir, shard)
    else:  # an older checkpoint: no manifest, only the scan protects
        info = json.loads((tag_dir / ckpt.COMPLETE).read_text())
        del info["files"]
        (tag_dir / ckpt.COMPLETE).write_text(json.dumps(info))
    return marker, shard


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest-rewritten", "no-manifest"])
def test_coin_export_refuses_a_planted_pickle_payload(run_copy, tmp_path, capsys, with_manifest):
    marker, shard = _plant(run_copy, tmp_path, with_manifest)
    assert ckpt.verify(str(run_copy / "checkpoints"), NEWEST) is not None  # the hashes pass, the scan does not
    assert coin_main(["export", str(run_copy), str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    assert MODEL_STATES in errors[0] and "refused" in errors[0] and "system" in errors[0], errors[0]
    assert not marker.exists()
    assert not (tmp_path / "exported").exists()


def test_resume_refuses_a_planted_pickle_payload(run_copy, tmp_path):
    marker, _ = _plant(run_copy, tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=MODEL_STATES):
        ckpt.find_resume(str(run_copy), str(_tag_dir(run_copy)))
    skipped = []
    found = ckpt.find_resume(str(run_copy), "auto", on_skip=lambda tag, problem: skipped.append((tag, problem)))
    assert found == (str(run_copy / "checkpoints"), OLDER)
    assert skipped[0][0] == NEWEST and MODEL_STATES in skipped[0][1]
    assert not marker.exists()


def test_safe_torch_load_refuses_the_payload_and_loads_the_real_shards(run_copy, tmp_path):
    from coin.training.engine import safe_torch_load

    good = _shard(_tag_dir(run_copy, OLDER), OPTIM_STATES)
    marker, shard = _plant(run_copy, tmp_path)
    real = torch.load
    with safe_torch_load():
        with pytest.raises(ckpt.CheckpointError, match=MODEL_STATES) as e:
            torch.load(str(shard), weights_only=False)  # what DeepSpeed asks for is overridden
        assert "refused" in str(e.value) and "\n" not in str(e.value)
        state = torch.load(str(good), weights_only=False)
    assert "optimizer_state_dict" in state
    assert not marker.exists()
    assert torch.load is real  # restored


def test_verify_names_a_truncated_shard(run_copy, capsys):
    tag_dir = _tag_dir(run_copy)
    shard = _shard(tag_dir, OPTIM_STATES)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    problem = ckpt.verify(str(run_copy / "checkpoints"), NEWEST)
    rel = os.path.relpath(shard, tag_dir)
    assert problem is not None and rel in problem and "truncated" in problem, problem
    assert f"{size // 2} bytes, {size} when saved" in problem
    assert coin_main(["export", str(tag_dir), str(run_copy / "exported")]) == 2
    assert rel in capsys.readouterr().err


def test_verify_names_a_same_size_overwrite_of_an_optimizer_shard(run_copy):
    tag_dir = _tag_dir(run_copy)
    shard = _shard(tag_dir, OPTIM_STATES)
    size = shard.stat().st_size
    assert size > 3 * 4096
    with open(shard, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(4096))
    assert shard.stat().st_size == size
    problem = ckpt.verify(str(run_copy / "checkpoints"), NEWEST)
    assert problem is not None and os.path.relpath(shard, tag_dir) in problem and "same size" in problem, problem
    # each rank checks its share: exactly one of the two ranks finds it
    answers = [ckpt.verify(str(run_copy / "checkpoints"), NEWEST, rank=r, world=2) for r in range(2)]
    assert sum(a is not None for a in answers) == 1 and ckpt.first_problem(answers) == problem


def test_verify_names_a_missing_and_an_added_file(run_copy):
    tag_dir = _tag_dir(run_copy)
    shard = _shard(tag_dir, OPTIM_STATES)
    (tag_dir / "extra.pt").write_bytes(b"x")
    problem = ckpt.verify(str(run_copy / "checkpoints"), NEWEST)
    assert problem is not None and "extra.pt" in problem and "manifest" in problem
    (tag_dir / "extra.pt").unlink()
    shard.unlink()
    problem = ckpt.verify(str(run_copy / "checkpoints"), NEWEST)
    assert problem is not None and os.path.relpath(shard, tag_dir) in problem and "missing" in problem


def test_resume_auto_falls_back_past_a_corrupt_newest_checkpoint(run_copy):
    shard = _shard(_tag_dir(run_copy), OPTIM_STATES)
    with open(shard, "r+b") as f:
        f.truncate(100)
    skipped = []
    found = ckpt.find_resume(str(run_copy), "auto", on_skip=lambda tag, problem: skipped.append((tag, problem)))
    assert found == (str(run_copy / "checkpoints"), OLDER)
    assert [tag for tag, _ in skipped] == [NEWEST] and OPTIM_STATES in skipped[0][1]
    assert ckpt.read_latest(str(run_copy / "checkpoints")) == NEWEST  # nothing is rewritten by a resume

    # every checkpoint bad: one error listing both, with the way out
    with open(_shard(_tag_dir(run_copy, OLDER), OPTIM_STATES), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.find_resume(str(run_copy), "auto")
    assert NEWEST in str(e.value) and OLDER in str(e.value) and "output.resume: never" in str(e.value)


def _identity(run_copy, tag=NEWEST) -> dict:
    info = ckpt.read_info(str(run_copy / "checkpoints"), tag)
    return {k: info[k] for k in ("world_size", "micro_batch_size", "gradient_accumulation_steps", "data")}


def test_check_compatible_accepts_the_same_run_and_names_a_changed_world_size(run_copy, straight_run):
    root = str(run_copy / "checkpoints")
    run = _identity(run_copy)
    assert run["world_size"] == 2 and run["micro_batch_size"] == 2
    # the recorded data fingerprints are those of the data files, recomputed here
    assert run["data"] == {"train": ckpt.fingerprint(straight_run["cfg"]["data"]["train"]),
                           "eval": ckpt.fingerprint(straight_run["cfg"]["data"]["eval"])}
    ckpt.check_compatible(root, NEWEST, run)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.check_compatible(root, NEWEST, dict(run, world_size=1))
    msg = str(e.value)
    assert "\n" not in msg and "written by 2 ranks, this run has 1" in msg and "--nproc 2" in msg
    assert "coin export" in msg
    with pytest.raises(ckpt.CheckpointError, match="optim.micro_batch_size=2, this run has 4"):
        ckpt.check_compatible(root, NEWEST, dict(run, micro_batch_size=4))


def test_check_compatible_names_a_changed_data_file_of_the_same_size(run_copy, straight_run, tmp_path):
    root = str(run_copy / "checkpoints")
    train = tmp_path / "train.jsonl"
    text = open(straight_run["cfg"]["data"]["train"], encoding="utf-8").read()
    changed = text.replace("cat", "dog", 1)
    assert changed != text and len(changed) == len(text)
    train.write_text(changed, encoding="utf-8")
    run = _identity(run_copy)
    run["data"] = dict(run["data"], train=ckpt.fingerprint(str(train)))
    assert run["data"]["train"]["size"] == _identity(run_copy)["data"]["train"]["size"]
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.check_compatible(root, NEWEST, run)
    msg = str(e.value)
    assert "\n" not in msg and "data.train changed" in msg and "data.eval" not in msg


def _fake_trainer(root, step, save):
    """What Trainer.save_checkpoint uses of a trainer, on one process (dist.barrier is a no-op)."""
    engine = types.SimpleNamespace(save_checkpoint=save, checkpoint_bytes_estimate=lambda: 5_000_000)
    return types.SimpleNamespace(ckpt_root=str(root), step=step, is_main=True, rank=0, world=1,
                                 engine=engine, client_state=lambda: {})


def test_a_save_that_runs_out_of_space_removes_the_partial_directory(run_copy):
    from coin.training.trainer import Trainer

    root = run_copy / "checkpoints"
    before = sorted(os.listdir(root))

    def save(r, tag, client_state):  # DeepSpeed writes one shard, then the disk is full
        os.makedirs(os.path.join(r, tag, "global_step16"))
        with open(os.path.join(r, tag, "global_step16", MODEL_STATES), "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(r, tag, "global_step16", OPTIM_STATES))

    with pytest.raises(ckpt.CheckpointDiskFullError) as e:
        Trainer.save_checkpoint(_fake_trainer(root, 16, save))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint step_00000016: no space left on {root}"), msg
    assert "needs ~5 MB" in msg and "latest still names the previous one" in msg
    assert sorted(os.listdir(root)) == before  # no step_00000016, nothing else touched
    assert ckpt.read_latest(str(root)) == NEWEST
    assert ckpt.verify(str(root), NEWEST) is None


def test_a_torch_write_failure_on_a_full_disk_is_disk_full_and_other_errors_are_not(run_copy, monkeypatch):
    from coin.training.trainer import Trainer

    root = run_copy / "checkpoints"

    def save(r, tag, client_state):  # torch.save's C++ writer has no errno
        os.makedirs(os.path.join(r, tag))
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10**9, used=10**9, free=1000))
    with pytest.raises(ckpt.CheckpointDiskFullError, match="no space left"):
        Trainer.save_checkpoint(_fake_trainer(root, 16, save))
    assert not (root / "step_00000016").exists() and ckpt.read_latest(str(root)) == NEWEST

    def permission(r, tag, client_state):
        os.makedirs(os.path.join(r, tag))
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(r, tag, "x.pt"))

    with pytest.raises(ckpt.CheckpointError) as e:
        Trainer.save_checkpoint(_fake_trainer(root, 20, permission))
    assert not isinstance(e.value, ckpt.CheckpointDiskFullError) and "x.pt" in str(e.value)
    assert not (root / "step_00000020").exists()

    def bug(r, tag, client_state):  # not an I/O error: raised as it is
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        Trainer.save_checkpoint(_fake_trainer(root, 24, bug))


def test_remove_partial_keeps_the_tag_latest_names(run_copy):
    root = run_copy / "checkpoints"
    ckpt.remove_partial(str(root), NEWEST)
    assert _tag_dir(run_copy).is_dir()
    ckpt.remove_partial(str(root), OLDER)
    assert not _tag_dir(run_copy, OLDER).exists()
