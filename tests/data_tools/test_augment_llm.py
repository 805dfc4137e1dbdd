"""The llm backend with the tiny random LLaMA: the code path (prompting, batched generation with
left padding, parsing), determinism, sharding and resuming an interrupted shard."""
import json
import os

import pytest

from coin.cli import main as coin
from coin.data_tools.augment import Augmenter
from coin.data_tools.backends.llm import DEFAULT_PROMPT, LLMBackend, clean_generation, split_target
from coin.data_tools.filters import FilterConfig
from coin.data_tools.shards import ShardSpec
from coin.data_tools.templates import TemplateSet
from coin.data_tools.units import make_unit
from data_helpers import read_jsonl, write_jsonl

# A random model writes gibberish: keep the filters that would drop all of it out of the way.
LOOSE = FilterConfig(num_paraphrases=1, disabled=frozenset({"length_ratio", "lost_protected"}))


def test_split_target_and_clean_generation():
    before, target, after = split_target("Premise: {premise}\nDoes it follow that it rained?\n{options_}")
    assert (before, target, after) == ("Premise: {premise}\n", "Does it follow that it rained?", "\n{options_}")
    assert split_target('If {premise}, is "{hypothesis}" true?\n{options_}') == \
        ("", 'If {premise}, is "{hypothesis}" true?\n{options_}', "")
    assert clean_generation('\n  Rewritten instruction: "Is it raining?"\nmore') == "Is it raining?"
    assert clean_generation("  \n ") == ""


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = LLMBackend(tiny_model_dir, num_candidates=2, batch_size=4, max_new_tokens=4, temperature=0.9, seed=11)
    b.load()
    return b


@pytest.fixture(scope="module")
def small_input(demo_dir, tmp_path_factory):
    rows = read_jsonl(os.path.join(demo_dir, "train.jsonl"))[::12]  # 8 records, one per task
    return write_jsonl(tmp_path_factory.mktemp("llm") / "small.jsonl", rows)


def _units(path, templates):
    return [make_unit(r, templates) for r in read_jsonl(path)]


def test_batched_generation_with_left_padding(backend, small_input, demo_dir, monkeypatch):
    assert backend.tokenizer.padding_side == "left" and backend.device == "cpu"
    templates = TemplateSet.load(os.path.join(demo_dir, "templates.json"))
    units = _units(small_input, templates)[:5]
    calls = []
    real = backend.model.generate

    def spy(**kw):
        calls.append(kw["attention_mask"].clone())
        return real(**kw)

    monkeypatch.setattr(backend.model, "generate", spy)
    out = backend.propose(units, chunk_index=0)
    assert [mask.shape[0] for mask in calls] == [4, 1]  # batches of batch_size prompts
    padded = 0
    for mask in calls:
        for row in mask.tolist():
            first = row.index(1)
            assert all(v == 1 for v in row[first:])  # padding only on the left
            padded += first > 0
    assert padded > 0
    assert [len(c) for c in out] == [2] * 5
    for unit, cands in zip(units, out):
        before, _, after = split_target(unit.text)
        for c in cands:
            assert c.core.startswith(before) and c.core.endswith(after) and c.source == "llm"
    first = [[c.core for c in cs] for cs in out[:4]]
    again = backend.propose(units[:4], chunk_index=0)
    assert [[c.core for c in cs] for cs in again] == first  # seeded from (seed, chunk, batch)
    other = backend.propose(units[:4], chunk_index=1)
    assert [[c.core for c in cs] for cs in other] != first


def test_prompt_template_and_chat():
    b = LLMBackend("unused", prompt_template="Paraphrase: {instruction}\n=>")
    b.use_chat = False
    assert b.build_prompt("Do it.") == "Paraphrase: Do it.\n=>"
    assert "{instruction}" in DEFAULT_PROMPT
    from coin.errors import CoinError

    with pytest.raises(CoinError, match="must contain"):
        LLMBackend("m", prompt_template="no slot")
    with pytest.raises(CoinError, match="cannot load model"):
        LLMBackend("/nonexistent/model").load()


class Interrupted(Exception):
    pass


class StopAfter:
    def __init__(self, inner, chunks):
        self.inner, self.name, self.left = inner, inner.name, chunks

    def settings(self):
        return self.inner.settings()

    def propose(self, units, chunk_index):
        if self.left == 0:
            raise Interrupted
        self.left -= 1
        return self.inner.propose(units, chunk_index)


def _run(backend, path, templates, out_dir, spec):
    aug = Augmenter(path, backend, templates=templates, filters=LOOSE, similarity_model="none", chunk_size=4,
                    show_progress=False)
    return aug.run_shard(str(out_dir), spec)


def test_sharded_and_resumed_llm_augmentation(backend, small_input, demo_dir, tmp_path):
    templates = TemplateSet.load(os.path.join(demo_dir, "templates.json"))
    single = _run(backend, small_input, templates, tmp_path / "one", ShardSpec(0, 1))
    reference = (tmp_path / "one" / "shard-00000-of-00001.jsonl").read_bytes()
    out = read_jsonl(tmp_path / "one" / "shard-00000-of-00001.jsonl")
    assert single["counts"]["totals"]["candidates"] == 16 and len(out) >= 4
    assert all(len(r["paraphrases"]) == 1 for r in out)

    for i in range(2):
        _run(backend, small_input, templates, tmp_path / "two", ShardSpec(i, 2))
    from coin.data_tools.augment import merge

    merged = merge(str(tmp_path / "two"), str(tmp_path / "merged.jsonl"))
    assert (tmp_path / "merged.jsonl").read_bytes() == reference and merged["counts"] == single["counts"]

    with pytest.raises(Interrupted):
        _run(StopAfter(backend, 1), small_input, templates, tmp_path / "cut", ShardSpec(0, 1))
    assert sorted(os.listdir(tmp_path / "cut")) == ["shard-00000-of-00001.jsonl.partial",
                                                     "shard-00000-of-00001.progress.json"]
    resumed = _run(StopAfter(backend, 1), small_input, templates, tmp_path / "cut", ShardSpec(0, 1))  # 1 chunk left
    assert (tmp_path / "cut" / "shard-00000-of-00001.jsonl").read_bytes() == reference
    assert resumed["counts"] == single["counts"]


def test_llm_cli(tiny_model_dir, small_input, demo_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Say the same thing differently: {instruction}\nAnswer:")
    argv = ["augment", small_input, "--backend", "llm", "--model", tiny_model_dir, "--templates",
            os.path.join(demo_dir, "templates.json"), "--out-dir", str(tmp_path / "o"), "--output",
            str(tmp_path / "l.jsonl"), "--prompt-template", f"@{prompt}", "--num-candidates", "3",
            "--batch-size", "8", "--max-new-tokens", "3", "--temperature", "0", "--similarity-model", "none",
            "--disable-filter", "length_ratio", "--disable-filter", "lost_protected", "--no-progress"]
    assert coin(argv) == 0
    summary = json.loads((tmp_path / "l.summary.json").read_text())
    assert summary["settings"]["backend"]["prompt_template"].startswith("Say the same thing")
    assert summary["settings"]["backend"]["temperature"] == 0.0  # greedy: one candidate each, not 3
    assert summary["counts"]["totals"]["candidates"] == 8
