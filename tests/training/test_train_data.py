"""This rank's micro-batch stream over the real token cache and grouped sampler (no DeepSpeed)."""
import pytest
import torch

from coin.training.config import config_from_dict
from coin.training.data import build_data
from coin.training.model import load_tokenizer
from trainer_helpers import run_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    cfg = config_from_dict(run_config(root, root / "out"))
    return cfg, load_tokenizer(cfg.model)


def _same(a, b):
    return a["ids"] == b["ids"] and all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "attention_mask"))


def test_ranks_get_equal_disjoint_micro_batches(setup):
    cfg, tok = setup
    streams = [build_data(cfg, tok, world_size=2, rank=r)[0] for r in (0, 1)]
    assert streams[0].micro_batches_per_epoch == streams[1].micro_batches_per_epoch == 12  # 48 examples / (2 x 2)
    seen = []
    for _ in range(streams[0].micro_batches_per_epoch):
        for s in streams:
            batch = s.next_batch()
            assert len(batch["ids"]) == 2 and batch["input_ids"].shape[0] == 4  # originals + paraphrases
            seen += batch["ids"]
    assert len(seen) == len(set(seen)) == 48


def test_epochs_roll_over_with_new_order_and_paraphrases(setup):
    cfg, tok = setup
    stream = build_data(cfg, tok, world_size=1, rank=0)[0]
    n = stream.micro_batches_per_epoch
    first = [stream.next_batch() for _ in range(n)]
    assert stream.epoch == 0
    second = [stream.next_batch() for _ in range(n)]
    assert stream.epoch == 1
    assert sorted(i for b in first for i in b["ids"]) == sorted(i for b in second for i in b["ids"])
    assert [b["ids"] for b in first] != [b["ids"] for b in second]  # reshuffled
    rows0 = {i: r for b in first for i, r in zip(b["ids"], b["input_ids"][len(b["ids"]):])}
    rows1 = {i: r for b in second for i, r in zip(b["ids"], b["input_ids"][len(b["ids"]):])}
    assert any(not torch.equal(rows0[i], rows1[i]) for i in rows0)  # another paraphrase this epoch


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_mid_epoch_and_across_epochs(setup, workers):
    cfg, tok = setup
    cfg.data.num_workers = workers
    ref = build_data(cfg, tok, world_size=2, rank=1)[0]
    want = [ref.next_batch() for _ in range(30)]
    for cut in (5, 12, 17):
        stream = build_data(cfg, tok, world_size=2, rank=1)[0]
        for _ in range(cut):
            stream.next_batch()
        state = stream.state_dict()
        resumed = build_data(cfg, tok, world_size=2, rank=1)[0]
        resumed.load_state_dict(state)
        assert all(_same(resumed.next_batch(), w) for w in want[cut:cut + 8]), cut
    cfg.data.num_workers = 0


def test_held_out_batches_are_fixed(setup):
    cfg, tok = setup
    _, held_out = build_data(cfg, tok, world_size=2, rank=0)
    assert held_out.micro_batches == 2
    a, b = list(held_out.batches()), list(held_out.batches())
    assert len(a) == 2 and all(_same(x, y) for x, y in zip(a, b))


def test_too_little_data_is_a_clear_error(setup, tmp_path):
    from coin.errors import CoinError
    from trainer_helpers import contrastive_records, write_jsonl

    cfg, tok = setup
    small = write_jsonl(tmp_path / "small.jsonl", contrastive_records(1, "s"))  # 2 examples
    cfg = config_from_dict(run_config(tmp_path, tmp_path / "out", data={"train": small, "eval": None}))
    with pytest.raises(CoinError, match=r"small\.jsonl has 2 examples, fewer than one global micro-batch \(.* = 4\)"):
        build_data(cfg, tok, world_size=2, rank=0)


def test_training_refuses_when_long_responses_would_cut_the_instructions(tmp_path):
    """Every response longer than data.max_length: truncation would cut every instruction away
    (original and paraphrase the same tokens). `coin train` stops before any model loads: one line
    naming max_length, the share and the counts per task, status 2."""
    import subprocess
    import sys

    from trainer_helpers import REPO, cli_env, contrastive_records, write_config, write_jsonl

    records = contrastive_records(8, "t", seed=0)  # 16 records, 4 of each of 4 tasks
    for r in records:
        r["output"] = " ".join(["great"] * 80)  # 80 tokens > max_length 64
    train = write_jsonl(tmp_path / "long.jsonl", records)
    cfg = run_config(tmp_path, tmp_path / "out")
    cfg["data"].update(train=train, eval=None)
    proc = subprocess.run([sys.executable, "-m", "coin", "train", "--config", write_config(tmp_path / "run.yaml", cfg)],
                          cwd=str(REPO), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("coin train: error:")]
    assert errors == [
        f"coin train: error: {train}: at data.max_length=64, 16 of 16 records (100.0%, more than "
        f"data.max_dropped_share=0.05) would keep fewer than data.min_prompt_tokens=8 instruction tokens and are "
        f"left out (grammar: 4, paraphrase: 4, sentiment: 4, topic: 4); raise data.max_length or shorten the responses"
    ]
    assert not (tmp_path / "out" / "hf").exists() and not list((tmp_path / "out").glob("step_*"))
