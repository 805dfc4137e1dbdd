"""`coin augment`: paraphrase the instructions of a record file, shard by shard, and merge.

    coin augment INPUT --backend {templates,wordnet,llm} [backend options] --out-dir DIR [--shard I/N]
    coin augment --merge DIR --output FILE

A shard run reads INPUT (instruction or contrastive records, docs/data.md), takes its share of
the chunks (shards.py), and for each record: finds its unit (units.py), asks the backend for
candidates, filters them (filters.py, every drop counted), and writes the record with the kept
paraphrases appended to `paraphrases`. Records that end with no paraphrase at all are left out
of the output and counted (`records_without_paraphrase`). The shard's summary (counts per task,
settings, timing) is written next to it. `--output FILE` without `--merge` merges right after
the run when every shard is finished (the one-process case).

Summary counts, per task (invariants: candidates = kept + surplus + dropped.*,
records_in = records_out + records_without_paraphrase):

    records_in, records_out, records_without_paraphrase,
    no_unit         no paraphrasable unit (input rendered into the instruction, template unknown)
    no_candidates   the backend proposed nothing (e.g. no other template gives the same output)
    candidates, kept, surplus, dropped.<filter> (filters.py)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from coin.cli import assignments
from coin.errors import CoinError

from .atomic import file_fingerprint, text_fingerprint, write_json
from .backends import BACKENDS, make_backend
from .filters import REASONS, SURPLUS, FilterConfig, filter_candidates
from .progress import progress
from .readers import read_records, summary_path
from .shards import ShardFiles, ShardSpec, find_shards, merge_shards, read_json, resolve_shard
from .similarity import Similarity, load_embedder
from .summary import DROP_PREFIX, Counts
from .templates import TemplateSet
from .units import make_unit

SUMMARY_SCHEMA = "coin.augment-summary/1"
TABLE_COLUMNS = [("records_in", "in"), ("records_out", "out"), ("records_without_paraphrase", "no_para"),
                 ("no_unit", "no_unit"), ("no_candidates", "no_cand"), ("candidates", "cand"), ("kept", "kept"),
                 (SURPLUS, "surplus")] + [(DROP_PREFIX + r, r) for r in REASONS]


def with_aliases(templates: TemplateSet | None, aliases: dict[str, str]) -> TemplateSet | None:
    """Record task names mapped onto the templates file's (e.g. mrpc -> glue_mrpc)."""
    if templates is None or not aliases:
        return templates
    patterns = dict(templates.patterns)
    for task, target in aliases.items():
        if target not in patterns:
            raise CoinError(f"--task-alias {task}={target}: no task '{target}' in {templates.source}")
        patterns[task] = patterns[target]
    return TemplateSet({t: [list(p) for p in v] for t, v in patterns.items()}, source=templates.source)


def task_labels(records: Sequence[dict], limit: int = 20) -> dict[str, list[str]]:
    """Label words per task: the distinct outputs of a task when they are few and short
    (classification tasks); none for tasks with free-form outputs."""
    seen: dict[str, dict[str, None]] = {}
    for rec in records:
        out = rec["output"].strip()
        bucket = seen.setdefault(rec["task"], {})
        if bucket is not None and len(out.split()) <= 3:
            bucket[out] = None
        if bucket is not None and (len(bucket) > limit or len(out.split()) > 3):
            seen[rec["task"]] = None
    return {task: list(words) for task, words in seen.items() if words}


def process_chunk(records: Sequence[dict], chunk_index: int, backend, templates: TemplateSet | None,
                  cfg: FilterConfig, similarity: Similarity | None, *, allow_input_edits: bool = False,
                  protect: Sequence[str] = (), labels: dict[str, list[str]] | None = None) -> tuple[list[dict], Counts]:
    """Paraphrase one chunk of records: (output records, counts). `labels`: task -> label words,
    protected like `protect` wherever they occur in a unit."""
    counts = Counts()
    units = []
    for rec in records:
        counts.add(rec["task"], "records_in")
        words = list(protect) + list((labels or {}).get(rec["task"], []))
        unit = make_unit(rec, templates, allow_input_edits=allow_input_edits, protect=words)
        if unit is None:
            counts.add(rec["task"], "no_unit")
        units.append(unit)
    present = [u for u in units if u is not None]
    proposals = backend.propose(present, chunk_index) if present else []
    outcomes = iter(filter_candidates(list(zip(present, proposals)), cfg, similarity))
    cand_iter = iter(proposals)
    out = []
    for rec, unit in zip(records, units):
        new: list[str] = []
        if unit is not None:
            cands, outcome = next(cand_iter), next(outcomes)
            task = rec["task"]
            if not cands:
                counts.add(task, "no_candidates")
            counts.add(task, "candidates", len(cands))
            counts.add(task, "kept", len(outcome.kept))
            for reason, n in outcome.reasons.items():
                counts.add(task, reason if reason == SURPLUS else DROP_PREFIX + reason, n)
            new = outcome.kept
        paraphrases = list(rec.get("paraphrases") or []) + new
        if paraphrases:
            out.append({**rec, "paraphrases": paraphrases})
            counts.add(rec["task"], "records_out")
        else:
            counts.add(rec["task"], "records_without_paraphrase")
    return out, counts


class Augmenter:
    """One configured augmentation run over an input file (any shard of it)."""

    def __init__(self, input_path: str, backend, *, templates: TemplateSet | None = None,
                 filters: FilterConfig | None = None, similarity_model: str = "default", chunk_size: int = 256,
                 skip_invalid: bool = False, allow_input_edits: bool = False, protect: Sequence[str] = (),
                 device: str = "cpu", show_progress: bool = True):
        if chunk_size < 1:
            raise CoinError(f"--chunk-size: expected an integer >= 1, got {chunk_size}")
        self.input_path, self.backend, self.templates = input_path, backend, templates
        self.filters = filters or FilterConfig()
        self.similarity_model, self.chunk_size, self.device = similarity_model, chunk_size, device
        self.skip_invalid, self.allow_input_edits, self.protect = skip_invalid, allow_input_edits, list(protect)
        self.show_progress = show_progress
        self.records, self.report = read_records(input_path, "auto", skip_invalid=skip_invalid)
        self.labels = task_labels(self.records)
        self._similarity: Similarity | None = None

    def settings(self) -> dict:
        return {
            "input": os.path.abspath(self.input_path),
            "input_fingerprint": file_fingerprint(self.input_path),
            "backend": self.backend.settings(),
            "templates": None if self.templates is None else {
                "source": self.templates.source, "fingerprint": text_fingerprint(self.templates.patterns)},
            "filters": self.filters.to_dict(),
            "similarity_model": self.similarity_model,
            "chunk_size": self.chunk_size,
            "skip_invalid": self.skip_invalid,
            "allow_input_edits": self.allow_input_edits,
            "protect": self.protect,
        }

    def fingerprint(self) -> str:
        settings = self.settings()
        settings["input"] = None  # the same files moved elsewhere are the same input
        if settings["templates"]:
            settings["templates"]["source"] = None
        return text_fingerprint(settings)

    def similarity(self) -> Similarity | None:
        if self.similarity_model == "none":
            return None
        if self._similarity is None:
            self._similarity = Similarity(load_embedder(self.similarity_model, self.device))
        return self._similarity

    @property
    def num_chunks(self) -> int:
        return -(-len(self.records) // self.chunk_size)

    def run_shard(self, out_dir: str, spec: ShardSpec) -> dict:
        """Write shard `spec` under `out_dir` (skip it when finished, resume it when partial)."""
        files = ShardFiles(out_dir, spec)
        fingerprint = self.fingerprint()
        if os.path.isfile(files.final):
            summary = read_json(files.summary) if os.path.isfile(files.summary) else {}
            if summary.get("fingerprint") != fingerprint:
                raise CoinError(f"{files.final} exists but was made from another input or other settings: "
                                f"remove it or choose another --out-dir")
            summary["skipped"] = True
            return summary
        os.makedirs(out_dir, exist_ok=True)
        chunks = spec.chunk_range(self.num_chunks)
        state = {"fingerprint": fingerprint, "chunks_done": 0, "bytes": 0, "counts": {}, "seconds": 0.0}
        if os.path.isfile(files.progress) and os.path.isfile(files.partial):
            saved = read_json(files.progress)
            if saved.get("fingerprint") == fingerprint and os.path.getsize(files.partial) >= saved.get("bytes", 0):
                state = saved
        counts = Counts.from_dict(state["counts"])
        start = time.perf_counter()
        done_records = sum(len(self._chunk(c)) for c in list(chunks)[: state["chunks_done"]])
        total_records = sum(len(self._chunk(c)) for c in chunks)
        mode = "r+b" if state["chunks_done"] and os.path.isfile(files.partial) else "wb"
        with open(files.partial, mode) as f, progress(total_records, f"augment {self.backend.name} shard {spec}",
                                                      "instr", self.show_progress) as bar:
            f.truncate(state["bytes"])
            f.seek(state["bytes"])
            bar.update(done_records)
            for c in list(chunks)[state["chunks_done"]:]:
                records = self._chunk(c)
                out, chunk_counts = process_chunk(
                    records, c, self.backend, self.templates, self.filters,
                    self.similarity() if records else None,
                    allow_input_edits=self.allow_input_edits, protect=self.protect, labels=self.labels)
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                counts.merge(chunk_counts)
                state.update(chunks_done=state["chunks_done"] + 1, bytes=f.tell(), counts=counts.to_dict(),
                             seconds=state["seconds"] + time.perf_counter() - start)
                start = time.perf_counter()
                write_json(files.progress, state)
                bar.update(len(records))
        seconds = state["seconds"] + time.perf_counter() - start
        summary = {
            "schema": SUMMARY_SCHEMA,
            "shard": str(spec),
            "chunks": [chunks.start, chunks.stop],
            "records": total_records,
            "fingerprint": fingerprint,
            "settings": self.settings(),
            "validation": self.report.to_dict(),
            "counts": counts.to_dict(),
            "seconds": round(seconds, 3),
            "instructions_per_second": round(total_records / seconds, 1) if seconds > 0 else None,
        }
        write_json(files.summary, summary)
        os.replace(files.partial, files.final)
        if os.path.exists(files.progress):
            os.remove(files.progress)
        return summary

    def _chunk(self, c: int) -> list[dict]:
        return self.records[c * self.chunk_size:(c + 1) * self.chunk_size]


def merge(out_dir: str, output: str) -> dict:
    """Merge the shards of `out_dir` into `output`; write and return the merged summary."""
    summaries = merge_shards(out_dir, output)
    counts = Counts()
    for s in summaries:
        counts.merge(Counts.from_dict(s.get("counts", {})))
    seconds = sum(s.get("seconds", 0.0) for s in summaries)
    records = sum(s.get("records", 0) for s in summaries)
    summary = {
        "schema": SUMMARY_SCHEMA,
        "output": output,
        "shards": len(summaries),
        "records": records,
        "fingerprint": summaries[0].get("fingerprint"),
        "settings": summaries[0].get("settings"),
        "validation": summaries[0].get("validation"),
        "counts": counts.to_dict(),
        "seconds": round(seconds, 3),
        "instructions_per_second": round(records / seconds, 1) if seconds > 0 else None,
    }
    write_json(summary_path(output), summary)
    return summary


def summary_table(summary: dict) -> str:
    return Counts.from_dict(summary["counts"]).table(TABLE_COLUMNS)


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="instruction or contrastive records (.jsonl, .parquet, .csv, ...)")
    p.add_argument("--backend", choices=BACKENDS, help="how candidates are made")
    p.add_argument("--out-dir", help="directory of the shard files")
    p.add_argument("--shard", help="I/N: this process does shard I of N (default: SLURM array variables, else 0/1)")
    p.add_argument("--output", help="merged output file (.jsonl or .parquet); with --merge, or after a run "
                                    "when every shard is finished")
    p.add_argument("--merge", metavar="DIR", help="merge the finished shards of DIR into --output")
    g = p.add_argument_group("input and units")
    g.add_argument("--templates", help="templates file (flan_v2_patterns.json format): required by the templates "
                                       "backend, used by the others to locate the instruction in a template")
    g.add_argument("--task-alias", action="append", default=[], metavar="TASK=TEMPLATES_TASK",
                   help="use the templates of another task name (e.g. mrpc=glue_mrpc); repeatable")
    g.add_argument("--protect", action="append", default=[], metavar="WORD", help="a word that must survive; repeatable")
    g.add_argument("--allow-input-edits", action="store_true",
                   help="paraphrase instructions that have their input rendered in and no known template")
    g.add_argument("--skip-invalid", action="store_true", help="count and skip invalid input records")
    g.add_argument("--chunk-size", type=int, default=256, help="records per unit of work (default 256)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-paraphrases", type=int, default=1, help="new paraphrases kept per record (default 1)")
    g.add_argument("--no-progress", action="store_true")
    f = p.add_argument_group("filters")
    f.add_argument("--similarity-model", default="default",
                   help="sentence-embedding model: default (all-MiniLM-L6-v2, offline), a path or hub id, or none")
    f.add_argument("--similarity-low", type=float, default=0.6)
    f.add_argument("--similarity-high", type=float, default=0.99)
    f.add_argument("--min-length-ratio", type=float, default=0.5)
    f.add_argument("--max-length-ratio", type=float, default=2.0)
    f.add_argument("--disable-filter", action="append", default=[], choices=REASONS, metavar="NAME",
                   help=f"turn a filter off; repeatable ({', '.join(REASONS)})")
    f.add_argument("--device", default="cpu", help="device of the similarity model (default cpu)")
    w = p.add_argument_group("wordnet backend")
    w.add_argument("--wordnet-dir", help="WordNet dict directory (default /usr/share/wordnet)")
    w.add_argument("--replace-rate", type=float, default=0.3, help="probability of replacing an eligible word")
    w.add_argument("--num-candidates", type=int, default=4, help="candidates per instruction (wordnet, llm)")
    m = p.add_argument_group("llm backend")
    m.add_argument("--model", help="local Hugging Face causal LM directory (or hub id)")
    m.add_argument("--prompt-template", help="prompt with {instruction}, or @FILE to read it from a file")
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--max-new-tokens", type=int, default=48)
    m.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    m.add_argument("--top-p", type=float, default=0.95)
    m.add_argument("--chat", choices=("auto", "on", "off"), default="auto", help="use the tokenizer's chat template")
    m.add_argument("--llm-device", default="auto", help="auto: cuda when available, else cpu")
    m.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))


def build_backend(args, templates: TemplateSet | None):
    if args.backend == "templates":
        if templates is None:
            raise CoinError("--backend templates needs --templates FILE (flan_v2_patterns.json format)")
        return make_backend("templates", templates=templates, seed=args.seed)
    if args.backend == "wordnet":
        return make_backend("wordnet", num_candidates=args.num_candidates, rate=args.replace_rate, seed=args.seed,
                            wordnet_dir=args.wordnet_dir)
    if not args.model:
        raise CoinError("--backend llm needs --model (a local Hugging Face causal LM directory)")
    options = dict(model=args.model, num_candidates=args.num_candidates, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                   seed=args.seed, device=args.llm_device, dtype=args.dtype, chat=args.chat)
    if args.prompt_template:
        text = args.prompt_template
        if text.startswith("@"):
            try:
                with open(text[1:], encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as e:
                raise CoinError(f"--prompt-template: cannot read {text[1:]} ({e.strerror})") from None
        options["prompt_template"] = text
    return make_backend("llm", **options)


def print_summary(summary: dict, title: str, stream=None) -> None:
    stream = stream or sys.stdout
    print(title, file=stream)
    print(summary_table(summary), file=stream)
    validation = summary.get("validation") or {}
    if validation.get("invalid"):
        parts = ", ".join(f"{k} {v}" for k, v in validation["invalid"].items())
        print(f"skipped invalid input records: {parts}", file=stream)


def main(args) -> int:
    if args.merge:
        if not args.output:
            raise CoinError("--merge DIR needs --output FILE")
        summary = merge(args.merge, args.output)
        print_summary(summary, f"merged {summary['shards']} shards of {args.merge} into {args.output} "
                               f"(summary: {summary_path(args.output)})")
        return 0
    if not args.input or not args.backend or not args.out_dir:
        raise CoinError("expected INPUT --backend {templates,wordnet,llm} --out-dir DIR (or --merge DIR --output FILE)")
    if args.num_paraphrases < 1:
        raise CoinError(f"--num-paraphrases: expected an integer >= 1, got {args.num_paraphrases}")
    if args.num_candidates < 1:
        raise CoinError(f"--num-candidates: expected an integer >= 1, got {args.num_candidates}")
    spec = resolve_shard(args.shard)
    templates = TemplateSet.load(args.templates) if args.templates else None
    templates = with_aliases(templates, assignments(args.task_alias, "--task-alias", "TASK=TEMPLATES_TASK"))
    filters = FilterConfig(min_length_ratio=args.min_length_ratio, max_length_ratio=args.max_length_ratio,
                           similarity_low=args.similarity_low, similarity_high=args.similarity_high,
                           num_paraphrases=args.num_paraphrases, disabled=frozenset(args.disable_filter))
    backend = build_backend(args, templates)
    aug = Augmenter(args.input, backend, templates=templates, filters=filters,
                    similarity_model=args.similarity_model, chunk_size=args.chunk_size,
                    skip_invalid=args.skip_invalid, allow_input_edits=args.allow_input_edits,
                    protect=args.protect, device=args.device, show_progress=not args.no_progress)
    if aug.report.num_invalid:
        print(aug.report.line(), file=sys.stderr)
    summary = aug.run_shard(args.out_dir, spec)
    files = ShardFiles(args.out_dir, spec)
    done = find_shards(args.out_dir)
    merge_now = bool(args.output) and all(i in done for i in range(spec.count))
    if summary.get("skipped"):
        print(f"shard {spec} is already complete: {files.final} (skipped)")
    elif merge_now:
        print(f"shard {spec}: {files.final} ({summary['records']} records, "
              f"{summary['instructions_per_second']} instructions/s)")
    else:
        print_summary(summary, f"shard {spec}: {files.final} ({summary['records']} records, "
                               f"{summary['instructions_per_second']} instructions/s)")
    if args.output:
        if merge_now:
            summary = merge(args.out_dir, args.output)
            print_summary(summary, f"merged into {args.output} (summary: {summary_path(args.output)})")
        else:
            print(f"not merging yet: {spec.count - len(done)} of {spec.count} shards unfinished "
                  f"(run `coin augment --merge {args.out_dir} --output {args.output}` when all are done)")
    return 0
