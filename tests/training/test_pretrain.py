"""coin pretrain: a few steps on the testbed corpus write a loadable model and lower the loss."""
from __future__ import annotations

import pytest

from coin.cli import main as coin
from coin.data_tools.testbed import write_testbed
from coin.errors import CoinError
from coin.training.pretrain import pretrain


def test_pretrain_writes_a_loadable_dir_and_the_loss_drops(tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    write_testbed(tmp_path / "tb", seed=0, train_per_task=4, eval_per_task=2)
    corpus = str(tmp_path / "tb" / "corpus.txt")
    losses = pretrain(corpus, str(tmp_path / "m"), steps=6, seed=0, lr=3e-3, batch_size=8, progress=False)
    assert len(losses) == 6 and losses[-1] < losses[0]
    model = LlamaForCausalLM.from_pretrained(str(tmp_path / "m"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert model(**tok("a red box", return_tensors="pt")).logits.shape[-1] == model.config.vocab_size
    again = pretrain(corpus, str(tmp_path / "m2"), steps=6, seed=0, lr=3e-3, batch_size=8, progress=False)
    assert again == losses  # deterministic per seed
    with pytest.raises(CoinError, match="already exists"):
        pretrain(corpus, str(tmp_path / "m"), steps=1, progress=False)
    assert coin(["pretrain", "--corpus", corpus, "--out", str(tmp_path / "m3"), "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "m3" / "model.safetensors").is_file()
