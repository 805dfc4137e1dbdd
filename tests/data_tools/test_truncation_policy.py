"""The truncation policy (issue 12, item 4): a record whose instruction truncation would cut to
fewer than `min_prompt_tokens` prompt-body tokens is left out of the token cache and counted per
task; more than `max_dropped_share` of them refuses; `encode` never exceeds `max_length`.

The word tokenizer of data_helpers gives every word, punctuation mark and newline one token, so
the golden counts below are arithmetic on word counts: a sequence of a prompt of n words and a
response of m words is 1 (BOS) + n + 8 (the marker "\\n\\n### Response:\\n": \\n \\n # # # Response
: \\n) + m tokens.
"""
import os

import pytest

from coin.data_tools.prompt import PromptFormat, encode, encode_truncated
from coin.data_tools.readers import write_records
from coin.data_tools.token_cache import TruncationError, build_token_cache, cache_path, read_meta
from data_helpers import WordTokenizer

MARKER = 8


def _words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{j}" for j in range(n))


def _record(i: int, task: str, n: int, m: int, n_para: int | None = None) -> dict:
    """A contrastive record: an instruction of n words, one paraphrase of n_para (default n), a
    response of m words, no separate input."""
    return {"id": f"r{i}", "task": task, "group": f"g{i}", "instruction": _words("i", n),
            "paraphrases": [_words("p", n if n_para is None else n_para)], "output": _words("o", m)}


def _cut_below(n: int, m: int, max_length: int, min_prompt_tokens: int) -> bool:
    """The policy by hand: the prompt body (n tokens) loses the overflow, at most all of it."""
    overflow = 1 + n + MARKER + m - max_length
    return overflow > 0 and n - min(overflow, n) < min_prompt_tokens


def _build(tmp_path, records, max_length, **kwargs):
    path = str(tmp_path / "pairs.jsonl")
    write_records(path, records)
    cache = str(tmp_path / "cache")
    kwargs.setdefault("show_progress", False)
    ds = build_token_cache(path, WordTokenizer(), PromptFormat(), max_length, cache, **kwargs)
    meta = read_meta(cache_path(path, WordTokenizer(), PromptFormat(), max_length, cache,
                                kwargs.get("min_prompt_tokens", 8)))
    return ds, meta, path


def test_long_responses_refuse_naming_max_length_and_the_share(tmp_path):
    """Every response longer than max_length: every instruction would be cut away (originals and
    paraphrases the same tokens); the cache refuses, naming max_length, the share and the counts."""
    records = [_record(i, "a" if i < 6 else "b", n=12, m=40) for i in range(10)]
    with pytest.raises(TruncationError) as info:
        _build(tmp_path, records, 32, max_dropped_share=0.05)
    msg = str(info.value)
    assert "\n" not in msg
    assert "at data.max_length=32, 10 of 10 records (100.0%, more than data.max_dropped_share=0.05)" in msg
    assert "data.min_prompt_tokens=8" in msg and "(a: 6, b: 4)" in msg and msg.startswith(str(tmp_path))
    # the cache itself is complete, and says the same
    ds, meta, _ = _build(tmp_path, records, 32)
    c = meta["counts"]
    assert (len(ds), c["rows"], c["dropped_truncated"], c["dropped_truncated_by_task"]) == (0, 0, 10, {"a": 6, "b": 4})
    assert c["records_by_task"] == {"a": 6, "b": 4} and c["dropped_no_response"] == 0


def test_min_prompt_tokens_0_keeps_the_reference_truncation(tmp_path):
    """data.min_prompt_tokens: 0 keeps every record: the prompt body goes, then the response's tail."""
    records = [_record(i, "a", n=12, m=40) for i in range(4)]
    ds, meta, _ = _build(tmp_path, records, 32, min_prompt_tokens=0, max_dropped_share=0.0)
    assert len(ds) == 4 and meta["counts"]["dropped_truncated"] == 0
    row = ds[0]
    assert len(row["input_ids"]) == 32 and row["prompt_len"] == 1 + MARKER  # BOS and marker, no body left


def test_a_few_long_records_are_dropped_and_counted_per_task(tmp_path, capsys):
    max_length, min_tokens = 32, 8
    shapes = [("a", 10, 5, None)] * 57 + [
        ("a", 20, 16, None),  # overflow 13 of a 20-token body: 7 left < 8 -> dropped
        ("a", 20, 15, None),  # overflow 12: exactly 8 left -> kept, 32 tokens
        ("b", 5, 18, 6),      # the original fits exactly (32), its paraphrase keeps 5 -> dropped
        ("c", 10, 40, None),  # the response alone is longer than max_length -> dropped
    ]
    records = [_record(i, task, n, m, n_para) for i, (task, n, m, n_para) in enumerate(shapes)]
    expected = {}
    for task, n, m, n_para in shapes:
        if any(_cut_below(k, m, max_length, min_tokens) for k in (n, n if n_para is None else n_para)):
            expected[task] = expected.get(task, 0) + 1
    assert expected == {"a": 1, "b": 1, "c": 1}  # 3 of 61 (4.9%): below the default share of 5%

    ds, meta, path = _build(tmp_path, records, max_length, max_dropped_share=0.05)
    c = meta["counts"]
    assert c["dropped_truncated"] == 3 and c["dropped_truncated_by_task"] == expected
    assert c["records"] == 61 and c["rows"] == len(ds) == 58
    assert c["records_by_task"] == {"a": 59, "b": 1, "c": 1}
    assert "r57" not in ds["id"] and "r59" not in ds["id"] and "r60" not in ds["id"]
    kept = ds[ds["id"].index("r58")]
    assert len(kept["input_ids"]) == max_length and kept["prompt_len"] == 1 + 8 + MARKER
    err = capsys.readouterr().err
    assert "token cache: 58 rows from 61 records, left out 3 whose instruction max_length 32 would cut to " \
           "fewer than 8 tokens (a: 1, b: 1, c: 1)" in err

    # the share is checked on a cache that is already built, too: 3 / 61 > 0.04
    with pytest.raises(TruncationError, match=r"3 of 61 records \(4\.9%, more than data\.max_dropped_share=0\.04\)"):
        build_token_cache(path, WordTokenizer(), PromptFormat(), max_length, str(tmp_path / "cache"),
                          max_dropped_share=0.04, show_progress=False)


@pytest.mark.parametrize("m", [0, 1, 5, 30])
@pytest.mark.parametrize("n", [1, 20])
def test_a_marker_longer_than_max_length_never_exceeds_it(n, m):
    """The template's own tokens (BOS + 42 marker tokens) exceed max_length 16: the sequence is their
    first 16 tokens, flagged overlong; before, a negative slice returned more than 16."""
    fmt = PromptFormat(template="{prompt}\n" + _words("marker", 40) + "\n")
    ids, prompt_len, cut = encode_truncated(WordTokenizer(), fmt, _words("i", n), _words("o", m), 16)
    assert len(ids) == 16 and prompt_len == 16 and cut.overlong and cut.cuts_instruction(0)
    assert encode(WordTokenizer(), fmt, _words("i", n), _words("o", m), 16) == (ids, prompt_len)
    template_only = WordTokenizer()(fmt.render(""), add_special_tokens=True)["input_ids"]  # BOS + 42
    assert len(template_only) == 43 and ids == template_only[:16]  # the body cut, nothing past max_length


@pytest.mark.parametrize("max_length", [8, 12, 20, 33])
def test_encode_never_exceeds_max_length(max_length):
    """Any prompt and response length: at most max_length tokens, prompt_len within them, and
    exactly max_length when the whole would be longer."""
    tok = WordTokenizer()
    for n in (0, 3, 30):
        for m in (0, 2, 40):
            ids, prompt_len, cut = encode_truncated(tok, PromptFormat(add_eos=True), _words("i", n), _words("o", m),
                                                    max_length)
            whole = 1 + n + MARKER + m + 1
            assert len(ids) == min(whole, max_length) and 0 <= prompt_len <= len(ids)
            assert cut.overlong == (1 + MARKER > max_length)


def test_a_marker_longer_than_max_length_drops_every_record(tmp_path):
    path = str(tmp_path / "pairs.jsonl")
    write_records(path, [_record(i, "a", n=3, m=2) for i in range(3)])
    fmt = PromptFormat(template="{prompt}\n" + _words("marker", 40) + "\n")
    cache = str(tmp_path / "cache")
    ds = build_token_cache(path, WordTokenizer(), fmt, 16, cache, show_progress=False)
    meta = read_meta(cache_path(path, WordTokenizer(), fmt, 16, cache))
    assert len(ds) == 0 and meta["counts"]["dropped_truncated"] == 3 and meta["counts"]["dropped_no_response"] == 0
    assert meta["key_parts"]["version"] == 2 and meta["key_parts"]["min_prompt_tokens"] == 8


def test_min_prompt_tokens_is_part_of_the_cache_key(tmp_path):
    path = str(tmp_path / "pairs.jsonl")
    write_records(path, [_record(0, "a", n=3, m=2)])
    cache = str(tmp_path / "cache")
    paths = {cache_path(path, WordTokenizer(), PromptFormat(), 32, cache, k) for k in (0, 8, 9)}
    assert len(paths) == 3 and all(os.path.basename(p).startswith("pairs-") for p in paths)
