"""`coin augment` end to end with the templates backend: output, summary counts, deterministic
sharding (N shards merged == one process), SLURM array variables, skip and resume, merge errors."""
import json
import os

import pytest

from coin.cli import main as coin
from coin.data_tools.augment import Augmenter
from coin.data_tools.backends import make_backend
from coin.data_tools.filters import FilterConfig
from coin.data_tools.shards import ShardSpec, parse_shard, resolve_shard, shard_from_env
from coin.data_tools.templates import TemplateSet, render
from coin.errors import CoinError
from data_helpers import read_jsonl, write_jsonl


def _args(demo_dir, out_dir, *extra):
    return ["augment", os.path.join(demo_dir, "train.jsonl"), "--backend", "templates", "--templates",
            os.path.join(demo_dir, "templates.json"), "--out-dir", str(out_dir), "--chunk-size", "10",
            "--num-paraphrases", "2", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(demo_dir, tmp_path_factory, similarity):
    """One-process run with every filter on (similarity with all-MiniLM-L6-v2)."""
    out = tmp_path_factory.mktemp("aug-ref")
    assert coin(_args(demo_dir, out / "shards", "--output", str(out / "train_aug.jsonl"))) == 0
    return out


def test_output_and_summary(reference, demo_dir):
    source = {r["id"]: r for r in read_jsonl(os.path.join(demo_dir, "train.jsonl"))}
    out = read_jsonl(reference / "train_aug.jsonl")
    summary = json.loads((reference / "train_aug.summary.json").read_text())
    t = summary["counts"]["totals"]
    assert t["records_in"] == 96 == t["records_out"] + t.get("records_without_paraphrase", 0)
    assert t["candidates"] == t["kept"] + t.get("surplus", 0) + sum(v for k, v in t.items() if k.startswith("dropped."))
    assert t["kept"] == sum(len(r["paraphrases"]) for r in out) and len(out) == t["records_out"] > 80
    assert set(summary["counts"]["per_task"]) == {"sst2", "cola", "qqp", "mrpc", "mnli", "qnli", "rte", "wnli"}
    assert summary["settings"]["similarity_model"] == "default" and summary["shards"] == 1
    templates = TemplateSet.load(os.path.join(demo_dir, "templates.json"))
    for rec in out:
        src = source[rec["id"]]
        assert {k: v for k, v in rec.items() if k != "paraphrases"} == src
        assert 1 <= len(rec["paraphrases"]) <= 2
        others = {render(t[0], rec["fields"]) for j, t in enumerate(templates.get(rec["task"])) if j != rec["template_id"]}
        assert set(rec["paraphrases"]) <= others  # each is the instance under another training template
        for p in rec["paraphrases"]:
            assert p != rec["instruction"]
            for name, value in rec["fields"].items():
                if name != "answer":
                    assert value in p  # the instance (and its options) is unchanged


def test_sharded_run_equals_one_process(reference, demo_dir, tmp_path, capsys):
    for i in (2, 0, 1):  # any order
        assert coin(_args(demo_dir, tmp_path / "shards", "--shard", f"{i}/3")) == 0
    names = sorted(os.listdir(tmp_path / "shards"))
    assert names == [f"shard-0000{i}-of-00003.{ext}" for i in range(3) for ext in ("jsonl", "summary.json")]
    capsys.readouterr()
    assert coin(["augment", "--merge", str(tmp_path / "shards"), "--output", str(tmp_path / "merged.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "merged 3 shards" in printed and "TOTAL" in printed and "similarity_low" in printed
    assert (tmp_path / "merged.jsonl").read_bytes() == (reference / "train_aug.jsonl").read_bytes()
    merged = json.loads((tmp_path / "merged.summary.json").read_text())
    single = json.loads((reference / "train_aug.summary.json").read_text())
    assert merged["counts"] == single["counts"] and merged["shards"] == 3
    assert coin(["augment", "--merge", str(tmp_path / "shards"), "--output", str(tmp_path / "merged.parquet")]) == 0
    from coin.data_tools.readers import read_records

    assert read_records(str(tmp_path / "merged.parquet"))[0] == read_records(str(reference / "train_aug.jsonl"))[0]


def test_shard_from_slurm_array_variables(demo_dir, tmp_path, monkeypatch):
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}) == ShardSpec(2, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3",
                           "SLURM_ARRAY_TASK_MAX": "9", "SLURM_ARRAY_TASK_STEP": "2"}) == ShardSpec(1, 4)
    assert resolve_shard("1/2", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == ShardSpec(1, 2)
    assert resolve_shard(None, {}) == ShardSpec(0, 1)
    for bad in ({"SLURM_ARRAY_TASK_ID": "1"}, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"},
                {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}):
        with pytest.raises(CoinError):
            shard_from_env(bad)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(CoinError, match="--shard: expected I/N"):
            parse_shard(bad)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert coin(_args(demo_dir, tmp_path, "--similarity-model", "none")) == 0
    assert sorted(os.listdir(tmp_path)) == ["shard-00001-of-00002.jsonl", "shard-00001-of-00002.summary.json"]


class FlakyBackend:
    """The templates backend, failing after `fail_after` chunks (an interrupted job)."""

    def __init__(self, templates, fail_after=None):
        self.inner = make_backend("templates", templates=templates, seed=0)
        self.name = self.inner.name
        self.fail_after = fail_after
        self.chunks = []

    def settings(self):
        return self.inner.settings()

    def propose(self, units, chunk_index):
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise KeyboardInterrupt("preempted")
        self.chunks.append(chunk_index)
        return self.inner.propose(units, chunk_index)


def _augmenter(demo_dir, backend):
    templates = TemplateSet.load(os.path.join(demo_dir, "templates.json"))
    return Augmenter(os.path.join(demo_dir, "train.jsonl"), backend, templates=templates,
                     filters=FilterConfig(num_paraphrases=2), similarity_model="none", chunk_size=10,
                     show_progress=False)


def test_rerun_skips_finished_and_resumes_interrupted_shards(demo_dir, tmp_path):
    templates = TemplateSet.load(os.path.join(demo_dir, "templates.json"))
    straight = _augmenter(demo_dir, FlakyBackend(templates)).run_shard(str(tmp_path / "a"), ShardSpec(0, 1))

    flaky = FlakyBackend(templates, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        _augmenter(demo_dir, flaky).run_shard(str(tmp_path / "b"), ShardSpec(0, 1))
    left = sorted(os.listdir(tmp_path / "b"))
    assert left == ["shard-00000-of-00001.jsonl.partial", "shard-00000-of-00001.progress.json"]
    assert json.loads((tmp_path / "b" / "shard-00000-of-00001.progress.json").read_text())["chunks_done"] == 3

    again = FlakyBackend(templates)
    resumed = _augmenter(demo_dir, again).run_shard(str(tmp_path / "b"), ShardSpec(0, 1))
    assert again.chunks == list(range(3, 10))  # only the chunks not yet written
    assert (tmp_path / "b" / "shard-00000-of-00001.jsonl").read_bytes() == \
        (tmp_path / "a" / "shard-00000-of-00001.jsonl").read_bytes()
    assert resumed["counts"] == straight["counts"]
    assert sorted(os.listdir(tmp_path / "b")) == ["shard-00000-of-00001.jsonl", "shard-00000-of-00001.summary.json"]

    third = FlakyBackend(templates, fail_after=0)  # a finished shard is skipped: the backend is not called
    assert _augmenter(demo_dir, third).run_shard(str(tmp_path / "b"), ShardSpec(0, 1))["skipped"] is True

    other = _augmenter(demo_dir, FlakyBackend(templates))
    other.filters = FilterConfig(num_paraphrases=1)
    with pytest.raises(CoinError, match="was made from another input or other settings"):
        other.run_shard(str(tmp_path / "b"), ShardSpec(0, 1))


def test_merge_errors(demo_dir, tmp_path):
    with pytest.raises(CoinError, match="does not exist"):
        coin_main_merge(tmp_path / "none", tmp_path / "o.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoinError, match="no finished shard files"):
        coin_main_merge(tmp_path / "empty", tmp_path / "o.jsonl")
    assert coin(_args(demo_dir, tmp_path / "s", "--shard", "0/3", "--similarity-model", "none")) == 0
    assert coin(_args(demo_dir, tmp_path / "s", "--shard", "2/3", "--similarity-model", "none")) == 0
    with pytest.raises(CoinError, match=r"missing 1 of 3 shards \(1\)"):
        coin_main_merge(tmp_path / "s", tmp_path / "o.jsonl")
    assert coin(_args(demo_dir, tmp_path / "s", "--shard", "1/3", "--similarity-model", "none",
                      "--seed", "5")) == 0
    with pytest.raises(CoinError, match="different inputs or settings"):
        coin_main_merge(tmp_path / "s", tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def coin_main_merge(out_dir, output):
    from coin.data_tools.augment import merge

    return merge(str(out_dir), str(output))


def test_cli_errors_exit_2(demo_dir, tmp_path, capsys):
    train = os.path.join(demo_dir, "train.jsonl")
    cases = [
        (["augment", train, "--backend", "templates", "--out-dir", str(tmp_path)], "needs --templates"),
        (_args(demo_dir, tmp_path, "--shard", "4/2"), "--shard: expected I/N"),
        (["augment", train, "--backend", "llm", "--out-dir", str(tmp_path)], "needs --model"),
        (["augment", "--merge", str(tmp_path)], "needs --output FILE"),
        (["augment", train, "--backend", "templates"], "expected INPUT --backend"),
        (_args(demo_dir, tmp_path, "--task-alias", "sst2=nothing"), "no task 'nothing'"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert coin(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("coin augment: error:") and err.count("\n") == 1


def test_records_without_a_unit_are_counted(tmp_path):
    rows = [{"id": f"m{i}", "task": "sst2", "instruction": f"Sentence: film {i}.\nPositive or negative?",
             "output": "positive"} for i in range(3)]
    path = write_jsonl(tmp_path / "merged.jsonl", rows)
    templates = tmp_path / "t.json"
    templates.write_text(json.dumps({"sst2": [["Is it good? {sentence}", "{answer}"]]}))
    assert coin(["augment", path, "--backend", "templates", "--templates", str(templates), "--out-dir",
                 str(tmp_path / "o"), "--similarity-model", "none", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "o" / "shard-00000-of-00001.summary.json").read_text())
    assert summary["counts"]["totals"] == {"no_unit": 3, "records_in": 3, "records_without_paraphrase": 3}
    assert (tmp_path / "o" / "shard-00000-of-00001.jsonl").read_text() == ""
