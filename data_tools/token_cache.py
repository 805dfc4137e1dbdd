"""The token cache: contrastive records pre-tokenised to Arrow, as the trainer reads them.

    ds = build_token_cache(records_path, tokenizer, fmt, max_length, cache_dir)   # datasets.Dataset

Columns (one row per contrastive record, in file order):

    id               str
    group            str              hard-negative group (sampler.GroupedBatchSampler takes this column)
    task             str
    input_ids        list[int]        BOS + prompt + response of the original instruction
    prompt_len       int              tokens of prompt (BOS included): labels are -100 before it
    para_input_ids   list[list[int]]  the same for each paraphrase, in record order
    para_prompt_len  list[int]

Tokenisation goes through `prompt.encode_truncated` (the template, BOS/EOS as the format says,
truncation from the prompt body so the response survives). Two kinds of record are left out,
counted in meta.json and reported on stderr, never silently:

- `dropped_truncated` (and `dropped_truncated_by_task`): truncation to `max_length` would cut the
  instruction of the original or of a paraphrase to fewer than `min_prompt_tokens` prompt-body
  tokens (or the template alone does not fit). With long responses the prompt body is what goes,
  and an original and its paraphrase would become the same tokens: a contrastive pair with
  nothing to contrast. `max_dropped_share` (the trainer passes `data.max_dropped_share`) makes a
  file with a larger share of such records a `TruncationError` (a CoinError, status 2) naming
  `max_length` and the share; the cache stays built, so its meta.json can be read.
- `dropped_no_response`: some sequence keeps no response token (an output that tokenises to
  nothing) and would give a loss over zero labels.

Cache key: a hash of the tokenizer's identity (class, vocabulary hash, special token ids, the
tokenisation of a probe string), `fmt.key()` (the chat format: with its system prompt), the chat
template (chat format only), `max_length`, `min_prompt_tokens`, the records file's content hash
and the cache layout version. Any change gives another key, so another directory, which is built.

Layout: `cache_dir/<records stem>-<key16>/` holding `data.arrow` (Arrow stream, read
memory-mapped by `datasets.Dataset.from_file`) and `meta.json` (key parts, counts, timing).

Concurrency: the builder holds an exclusive lock on `cache_dir/<name>.lock` (fcntl) while it
builds into a temporary directory, which it then renames into place (atomic). Other ranks calling
at the same time wait on the lock, then load the finished directory. On file systems where locks
are not honoured each rank builds its own temporary copy and the first rename wins; the result
is the same.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

from coin.errors import CoinError

from .atomic import file_fingerprint, text_fingerprint, write_json
from .progress import progress
from .prompt import MIN_PROMPT_TOKENS, PromptFormat, chat_template, encode_truncated
from .readers import read_records
from .schema import CONTRASTIVE, render_prompt

CACHE_VERSION = 2  # 2: records whose instruction truncation would cut away are left out (min_prompt_tokens)
PROBE = "Probe: Hello, world!\n\n### Response:\n  éü 12345 <tag> {x}"
DATA_FILE, META_FILE = "data.arrow", "meta.json"
BATCH_ROWS = 1000


class TruncationError(CoinError):
    """Too many records of a file would have their instruction cut away at this max_length."""


def features():
    import datasets

    ids = datasets.List(datasets.Value("int32"))
    return datasets.Features({
        "id": datasets.Value("string"),
        "group": datasets.Value("string"),
        "task": datasets.Value("string"),
        "input_ids": ids,
        "prompt_len": datasets.Value("int32"),
        "para_input_ids": datasets.List(ids),
        "para_prompt_len": datasets.List(datasets.Value("int32")),
    })


def tokenizer_fingerprint(tokenizer) -> dict:
    """What identifies a tokenizer's behaviour, independent of where it was loaded from."""
    vocab = sorted(tokenizer.get_vocab().items())
    vocab_hash = hashlib.blake2b(json.dumps(vocab, ensure_ascii=False).encode(), digest_size=16).hexdigest()
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab": vocab_hash,
        "special": {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")},
        "probe": list(tokenizer(PROBE, add_special_tokens=False)["input_ids"]),
    }


def cache_key(records_path: str, tokenizer, fmt: PromptFormat, max_length: int,
              min_prompt_tokens: int = MIN_PROMPT_TOKENS) -> tuple[str, dict]:
    parts = {
        "version": CACHE_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "format": fmt.key(),
        "max_length": int(max_length),
        "min_prompt_tokens": int(min_prompt_tokens),
        "records": file_fingerprint(records_path),
    }
    if fmt.chat:
        parts["chat_template"] = text_fingerprint(chat_template(tokenizer))
    return text_fingerprint(parts), parts


def cache_path(records_path: str, tokenizer, fmt: PromptFormat, max_length: int, cache_dir: str,
               min_prompt_tokens: int = MIN_PROMPT_TOKENS) -> str:
    """The directory `build_token_cache` uses for these arguments."""
    key, _ = cache_key(records_path, tokenizer, fmt, max_length, min_prompt_tokens)
    return os.path.join(cache_dir, _name(records_path, key))


def _name(records_path: str, key: str) -> str:
    stem = os.path.basename(records_path.rstrip("/")).split(".")[0] or "records"
    return f"{stem}-{key[:16]}"


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _load(path: str):
    import datasets

    return datasets.Dataset.from_file(os.path.join(path, DATA_FILE))


def read_meta(path: str) -> dict:
    """meta.json of a cache directory (key parts, counts, timing)."""
    with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
        return json.load(f)


def _encode_record(tokenizer, fmt: PromptFormat, rec: dict, max_length: int, min_prompt_tokens: int,
                   stats: dict) -> dict | None:
    seqs = []
    for k in [None] + list(range(len(rec["paraphrases"]))):
        prompt = render_prompt(rec, k)
        ids, prompt_len, cut = encode_truncated(tokenizer, fmt, prompt, rec["output"], max_length)
        if cut.cuts_instruction(min_prompt_tokens):
            stats["dropped_truncated"] += 1
            by_task = stats["dropped_truncated_by_task"]
            by_task[rec["task"]] = by_task.get(rec["task"], 0) + 1
            return None
        if prompt_len >= len(ids):
            stats["dropped_no_response"] += 1
            return None
        seqs.append((ids, prompt_len))
    for ids, prompt_len in seqs:
        stats["sequences"] += 1
        stats["tokens"] += len(ids)
        stats["max_sequence_length"] = max(stats["max_sequence_length"], len(ids))
        if len(ids) >= max_length:
            stats["sequences_at_max_length"] += 1
    return {
        "id": rec["id"], "group": rec["group"], "task": rec["task"],
        "input_ids": seqs[0][0], "prompt_len": seqs[0][1],
        "para_input_ids": [s[0] for s in seqs[1:]], "para_prompt_len": [s[1] for s in seqs[1:]],
    }


def _build(records_path: str, tokenizer, fmt: PromptFormat, max_length: int, min_prompt_tokens: int, out_dir: str,
           parts: dict, skip_invalid: bool, show_progress: bool) -> dict:
    import pyarrow as pa

    start = time.perf_counter()
    records, report = read_records(records_path, CONTRASTIVE, skip_invalid=skip_invalid)
    feats = features()
    schema = feats.arrow_schema
    stats = {"records": len(records), "records_by_task": {}, "rows": 0, "dropped_truncated": 0,
             "dropped_truncated_by_task": {}, "dropped_no_response": 0, "sequences": 0, "tokens": 0,
             "sequences_at_max_length": 0, "max_sequence_length": 0}
    for rec in records:
        stats["records_by_task"][rec["task"]] = stats["records_by_task"].get(rec["task"], 0) + 1
    batch: dict[str, list] = {name: [] for name in feats}

    def flush(writer):
        if batch["id"]:
            writer.write_batch(pa.RecordBatch.from_pydict(batch, schema=schema))
            for v in batch.values():
                v.clear()

    with pa.OSFile(os.path.join(out_dir, DATA_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer, \
            progress(len(records), f"tokenize {os.path.basename(records_path)}", "rec", show_progress) as bar:
        for rec in records:
            row = _encode_record(tokenizer, fmt, rec, max_length, min_prompt_tokens, stats)
            bar.update(1)
            if row is None:
                continue
            for name, value in row.items():
                batch[name].append(value)
            stats["rows"] += 1
            if len(batch["id"]) >= BATCH_ROWS:
                flush(writer)
        flush(writer)
    meta = {"key_parts": parts, "records_path": os.path.abspath(records_path),
            "tokenizer_name_or_path": getattr(tokenizer, "name_or_path", ""), "validation": report.to_dict(),
            "counts": stats, "seconds": round(time.perf_counter() - start, 3)}
    write_json(os.path.join(out_dir, META_FILE), meta)
    return meta


def _per_task(counts: dict) -> str:
    return ", ".join(f"{task}: {n}" for task, n in sorted(counts.items()))


def report_line(meta: dict) -> str:
    """One line of what a cache holds and what it left out (printed when it is built)."""
    c, parts = meta["counts"], meta["key_parts"]
    notes = []
    if c["dropped_truncated"]:
        notes.append(f"left out {c['dropped_truncated']} whose instruction max_length {parts['max_length']} would cut "
                     f"to fewer than {parts['min_prompt_tokens']} tokens ({_per_task(c['dropped_truncated_by_task'])})")
    if c["dropped_no_response"]:
        notes.append(f"left out {c['dropped_no_response']} with no response token")
    return (f"{c['rows']} rows from {c['records']} records{''.join(', ' + n for n in notes)}, "
            f"{c['sequences_at_max_length']} sequences at max_length {parts['max_length']}")


def check_dropped_share(meta: dict, max_dropped_share: float, records_path: str) -> None:
    """A TruncationError naming max_length, the share and the counts per task when more than
    `max_dropped_share` of the records were left out because truncation would cut their instruction."""
    c, parts = meta["counts"], meta["key_parts"]
    share = c["dropped_truncated"] / c["records"] if c["records"] else 0.0
    if share > max_dropped_share:
        raise TruncationError(
            f"{records_path}: at data.max_length={parts['max_length']}, {c['dropped_truncated']} of {c['records']} "
            f"records ({share:.1%}, more than data.max_dropped_share={max_dropped_share:g}) would keep fewer than "
            f"data.min_prompt_tokens={parts['min_prompt_tokens']} instruction tokens and are left out "
            f"({_per_task(c['dropped_truncated_by_task'])}); raise data.max_length or shorten the responses"
        )


def build_token_cache(records_path: str, tokenizer, fmt: PromptFormat, max_length: int, cache_dir: str, *,
                      min_prompt_tokens: int = MIN_PROMPT_TOKENS, max_dropped_share: float | None = None,
                      skip_invalid: bool = False, show_progress: bool = True):
    """The tokenised records as a memory-mapped `datasets.Dataset`, built once per cache key.

    Safe to call from several ranks at once (see the module doc). Raises `DataError` on an
    invalid record unless `skip_invalid` (then they are counted in meta.json's `validation`), and
    `TruncationError` when a larger share of the records than `max_dropped_share` (None: no limit)
    was left out because truncation would cut their instruction (the cache stays built).
    """
    key, parts = cache_key(records_path, tokenizer, fmt, max_length, min_prompt_tokens)
    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, _name(records_path, key))
    if not os.path.isfile(os.path.join(final, META_FILE)):
        with _locked(final + ".lock"):
            if not os.path.isfile(os.path.join(final, META_FILE)):
                _build_into(final, records_path, tokenizer, fmt, max_length, min_prompt_tokens, cache_dir, parts,
                            skip_invalid, show_progress)
    if max_dropped_share is not None:
        check_dropped_share(read_meta(final), max_dropped_share, records_path)
    return _load(final)


def _build_into(final: str, records_path: str, tokenizer, fmt: PromptFormat, max_length: int, min_prompt_tokens: int,
                cache_dir: str, parts: dict, skip_invalid: bool, show_progress: bool) -> None:
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=cache_dir)
    try:
        meta = _build(records_path, tokenizer, fmt, max_length, min_prompt_tokens, tmp, parts, skip_invalid,
                      show_progress)
        try:
            os.rename(tmp, final)
        except OSError:  # another process (without a working lock) finished first
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"token cache: {report_line(meta)} -> {final}", file=sys.stderr)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
