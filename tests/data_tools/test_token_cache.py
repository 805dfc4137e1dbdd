"""The token cache: columns as the trainer reads them, equal to prompt.encode, truncation keeps
the response, the cache key (a change rebuilds), atomic build, several processes at once."""
import concurrent.futures
import multiprocessing
import os

import pytest

from coin.data_tools.prompt import PromptFormat, encode
from coin.data_tools.readers import write_records
from coin.data_tools.schema import DataError, render_prompt
from coin.data_tools.token_cache import build_token_cache, cache_path, read_meta
from coin.training.batch import collate
from data_helpers import WordTokenizer, build_cache_in_process, contrastive


def _records(n=6):
    recs = []
    for i in range(n):
        rec = contrastive(i, group=f"g{i // 2}", output="positive" if i % 2 else "negative")
        if i % 3 == 0:  # a second paraphrase, and the input rendered into the instruction
            rec["paraphrases"] = rec["paraphrases"] + ["Tell me: positive or negative sentiment?"]
        recs.append(rec)
    return recs


@pytest.fixture()
def records_path(tmp_path):
    path = str(tmp_path / "pairs.jsonl")
    write_records(path, _records())
    return path


def test_columns_match_encode(tokenizer, records_path, tmp_path):
    fmt = PromptFormat()
    ds = build_token_cache(records_path, tokenizer, fmt, 256, str(tmp_path / "cache"), show_progress=False)
    assert ds.column_names == ["id", "group", "task", "input_ids", "prompt_len", "para_input_ids", "para_prompt_len"]
    assert len(ds) == 6 and ds["group"] == ["g0", "g0", "g1", "g1", "g2", "g2"]
    for rec, row in zip(_records(), ds):
        ids, plen = encode(tokenizer, fmt, render_prompt(rec), rec["output"], 256)
        assert (row["id"], row["input_ids"], row["prompt_len"]) == (rec["id"], ids, plen)
        assert row["input_ids"][0] == tokenizer.bos_token_id
        assert len(row["para_input_ids"]) == len(rec["paraphrases"]) == len(row["para_prompt_len"])
        for k, (pids, pplen) in enumerate(zip(row["para_input_ids"], row["para_prompt_len"])):
            assert (pids, pplen) == encode(tokenizer, fmt, render_prompt(rec, k), rec["output"], 256)
        # the prompt tokens are masked from the labels: only the response is learned
        batch = collate([{**row, "para_input_ids": row["para_input_ids"][0],
                          "para_prompt_len": row["para_prompt_len"][0]}], tokenizer.pad_token_id)
        learned = batch["labels"][0][batch["labels"][0] != -100].tolist()
        assert tokenizer.decode(learned).strip() == rec["output"]


def test_truncation_keeps_the_response(tokenizer, tmp_path):
    rec = contrastive(0, input="Sentence: " + "a very long review that goes on " * 40, output="positive")
    path = str(tmp_path / "long.jsonl")
    write_records(path, [rec])
    ds = build_token_cache(path, tokenizer, PromptFormat(), 48, str(tmp_path / "c"), show_progress=False)
    row = ds[0]
    assert len(row["input_ids"]) == 48 and all(len(p) == 48 for p in row["para_input_ids"])
    response = tokenizer.decode(row["input_ids"][row["prompt_len"]:])
    assert response.strip() == "positive"
    assert tokenizer.decode(row["input_ids"][:row["prompt_len"]]).endswith("### Response:\n")
    assert read_meta(cache_path(path, tokenizer, PromptFormat(), 48, str(tmp_path / "c")))["counts"][
        "sequences_at_max_length"] == 2


def test_cache_is_reused_and_rebuilt_on_any_change(tokenizer, records_path, tmp_path):
    cache = str(tmp_path / "cache")
    fmt = PromptFormat()
    build_token_cache(records_path, tokenizer, fmt, 256, cache, show_progress=False)
    path = cache_path(records_path, tokenizer, fmt, 256, cache)
    stamp = os.path.getmtime(os.path.join(path, "data.arrow"))
    build_token_cache(records_path, tokenizer, fmt, 256, cache, show_progress=False)
    assert os.path.getmtime(os.path.join(path, "data.arrow")) == stamp
    assert sorted(n for n in os.listdir(cache) if not n.endswith(".lock")) == [os.path.basename(path)]

    paths = {path}
    paths.add(cache_path(records_path, tokenizer, fmt, 128, cache))                              # max length
    paths.add(cache_path(records_path, tokenizer, PromptFormat(add_eos=True), 256, cache))       # format
    paths.add(cache_path(records_path, tokenizer, PromptFormat(template="Q: {prompt}\nA: "), 256, cache))
    tok2 = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok2.add_tokens(["<extra_token>"])
    paths.add(cache_path(records_path, tok2, fmt, 256, cache))                                   # tokenizer
    assert cache_path(records_path, type(tokenizer).from_pretrained(tokenizer.name_or_path), fmt, 256, cache) == path
    write_records(records_path, _records()[:4])                                                  # records
    paths.add(cache_path(records_path, tokenizer, fmt, 256, cache))
    assert len(paths) == 6
    ds = build_token_cache(records_path, tokenizer, fmt, 256, cache, show_progress=False)
    assert len(ds) == 4


def test_invalid_records_and_empty_responses(tokenizer, tmp_path):
    path = str(tmp_path / "bad.jsonl")
    write_records(path, [contrastive(0), {**contrastive(1), "paraphrases": []}])
    with pytest.raises(DataError, match="line 2: field 'paraphrases'"):
        build_token_cache(path, tokenizer, PromptFormat(), 64, str(tmp_path / "c"), show_progress=False)
    assert [n for n in os.listdir(tmp_path / "c") if not n.endswith(".lock")] == []  # nothing half-built left
    ds = build_token_cache(path, tokenizer, PromptFormat(), 64, str(tmp_path / "c"), skip_invalid=True,
                           show_progress=False)
    assert len(ds) == 1
    blank = str(tmp_path / "blank.jsonl")
    write_records(blank, [contrastive(0), contrastive(1, output="\u200b")])  # tokenises to no response token?
    ds = build_token_cache(blank, tokenizer, PromptFormat(), 64, str(tmp_path / "c"), show_progress=False)
    meta = read_meta(cache_path(blank, tokenizer, PromptFormat(), 64, str(tmp_path / "c")))
    assert len(ds) + meta["counts"]["dropped_no_response"] == 2


def test_several_processes_build_once(records_path, tmp_path):
    cache = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=ctx) as pool:
        results = list(pool.map(build_cache_in_process, [(records_path, cache)] * 3))
    assert len({r[2] for r in results}) >= 2  # really several processes
    assert all(r[:2] == results[0][:2] for r in results) and results[0][0] == 6
    names = os.listdir(cache)
    assert len([n for n in names if not n.endswith(".lock")]) == 1  # one cache directory, no temporaries
    expected = build_token_cache(records_path, WordTokenizer(), PromptFormat(), 64, cache, show_progress=False)
    assert list(expected[0]["input_ids"]) == results[0][1]
