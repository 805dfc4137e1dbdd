"""`coin data`: demo data, importers, validation, conversion and the token cache.

    coin data demo OUT_DIR [--seed 0] [--train-per-task 150] [--eval-per-task 40] [--heldout 6]
    coin data testbed DIR [--seed 0] [--train-per-task 64] [--eval-per-task 32]
    coin data import SRC --output FILE [--from auto|coin-csv|flan|records] [--templates FILE]
                     [--map FIELD=COLUMN ...] [--task NAME] [--make-ids] [--split S] [--skip-invalid]
    coin data validate FILE [--kind auto|instruction|contrastive] [--skip-invalid] [--split S]
    coin data convert SRC OUT                      (e.g. JSONL <-> Parquet; records are validated)
    coin data tokenize RECORDS --cache-dir DIR [--config RUN.yaml | --tokenizer PATH|tiny]
                     [--max-length 256] [--prompt-template T] [--no-bos] [--eos]

Bad input is a `CoinError` (one line naming file, line, field, expectation): `coin` exits 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from coin.cli import assignments
from coin.errors import CoinError

from .readers import read_records, write_records

IMPORT_FORMATS = ("auto", "coin-csv", "flan", "records")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    d = sub.add_parser("demo", help="write the demo FLAN-style multi-task dataset")
    d.add_argument("out_dir")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--train-per-task", type=int, default=150)
    d.add_argument("--eval-per-task", type=int, default=40)
    d.add_argument("--heldout", type=int, default=6, help="unseen templates per task kept for evaluation (of 12)")
    d.add_argument("--tasks", help="comma-separated subset of sst2,cola,qqp,mrpc,mnli,qnli,rte,wnli")

    tb = sub.add_parser("testbed", help="write the yes/no instruction-robustness testbed (see docs/testbed.md)")
    tb.add_argument("out_dir")
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--train-per-task", type=int, default=64)
    tb.add_argument("--eval-per-task", type=int, default=32)

    i = sub.add_parser("import", help="convert outside data into instruction or contrastive records")
    i.add_argument("source", help="file, datasets directory or hf:NAME[:CONFIG]")
    i.add_argument("--output", required=True, help=".jsonl or .parquet")
    i.add_argument("--from", dest="source_format", choices=IMPORT_FORMATS, default="auto",
                   help="coin-csv: the CoIN release; flan: FLAN-style records; records: our schema (with --map)")
    i.add_argument("--templates", help="templates file (flan_v2_patterns.json format) for flan records")
    i.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="take schema FIELD from source COLUMN; repeatable (records format)")
    i.add_argument("--task", help="task name for records without one")
    i.add_argument("--make-ids", action="store_true", help="number records that have no id")
    i.add_argument("--kind", choices=("auto", "instruction", "contrastive"), default="auto")
    i.add_argument("--split", help="split of a datasets source")
    i.add_argument("--seed", type=int, default=0, help="template choice for raw flan records")
    i.add_argument("--skip-invalid", action="store_true", help="count and skip invalid records")

    v = sub.add_parser("validate", help="check a records file against the schema")
    v.add_argument("file")
    v.add_argument("--kind", choices=("auto", "instruction", "contrastive"), default="auto")
    v.add_argument("--split")
    v.add_argument("--skip-invalid", action="store_true", help="report every invalid record instead of stopping")

    c = sub.add_parser("convert", help="rewrite records in another format (validated)")
    c.add_argument("source")
    c.add_argument("output")
    c.add_argument("--split")

    t = sub.add_parser("tokenize", help="build the token cache of contrastive records")
    t.add_argument("records")
    t.add_argument("--cache-dir", required=True)
    t.add_argument("--config", help="run config: model.tokenizer / name_or_path and data.* settings")
    t.add_argument("--tokenizer", help="tokenizer directory or hub id, or 'tiny' (default: from --config, else tiny)")
    t.add_argument("--max-length", type=int, help="default: data.max_length of the config, else 256")
    t.add_argument("--prompt-template", help="default: data.prompt_template of the config")
    t.add_argument("--no-bos", action="store_true")
    t.add_argument("--eos", action="store_true")
    t.add_argument("--skip-invalid", action="store_true")


def _detect(source: str) -> str:
    if source.lower().endswith((".csv", ".tsv")) and os.path.isfile(source):
        with open(source, encoding="utf-8", errors="replace") as f:
            head = f.readline().lower()
        if "original_instruction" in head and "paraphrased_instruction" in head:
            return "coin-csv"
    return "records"


def cmd_testbed(args) -> int:
    from .testbed import write_testbed

    try:
        r = write_testbed(args.out_dir, seed=args.seed, train_per_task=args.train_per_task,
                          eval_per_task=args.eval_per_task)
    except ValueError as e:
        raise CoinError(str(e)) from None
    print(f"wrote testbed to {args.out_dir}: {r['train']} training pairs, {r['eval']} eval rows, "
          f"tasks {','.join(r['tasks'])}")
    return 0


def cmd_demo(args) -> int:
    from .demo import TASKS, write_demo

    tasks = tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else TASKS
    try:
        manifest = write_demo(args.out_dir, seed=args.seed, train_per_task=args.train_per_task,
                              eval_per_task=args.eval_per_task, heldout=args.heldout, tasks=tasks)
    except ValueError as e:
        raise CoinError(str(e)) from None
    r = manifest["records"]
    print(f"wrote demo data to {args.out_dir}: {r['train']} train and {r['eval']} eval records, "
          f"{len(manifest['tasks'])} tasks, {manifest['templates_per_task']['train']} training and "
          f"{manifest['templates_per_task']['heldout']} held-out templates per task")
    for key, name in list(manifest["files"].items()) + [("manifest", "manifest.json")]:
        print(f"  {key:22s} {os.path.join(args.out_dir, name)}")
    return 0


def cmd_import(args) -> int:
    from .importers import import_coin_csv, import_flan, import_records
    from .templates import TemplateSet

    fmt = _detect(args.source) if args.source_format == "auto" else args.source_format
    defaults = {"task": args.task} if args.task else {}
    if fmt == "coin-csv":
        records, report, notes = import_coin_csv(args.source, skip_invalid=args.skip_invalid)
    elif fmt == "flan":
        templates = TemplateSet.load(args.templates) if args.templates else None
        records, report, notes = import_flan(args.source, templates=templates, seed=args.seed,
                                             skip_invalid=args.skip_invalid, split=args.split)
    else:
        records, report, notes = import_records(args.source, kind=args.kind, column_map=assignments(args.map, "--map", "FIELD=COLUMN"),
                                                defaults=defaults, make_ids=args.make_ids,
                                                skip_invalid=args.skip_invalid, split=args.split)
    if not records:
        raise CoinError(f"{args.source}: no valid record to import")
    write_records(args.output, records)
    print(report.line())
    for line in report.examples:
        print(f"  {line}")
    extra = ", ".join(f"{k} {v}" for k, v in notes.items())
    print(f"imported {len(records)} records ({fmt}) into {args.output}" + (f" ({extra})" if extra else ""))
    return 0


def cmd_validate(args) -> int:
    from collections import Counter

    records, report = read_records(args.file, args.kind, skip_invalid=args.skip_invalid, split=args.split)
    print(report.line())
    for line in report.examples:
        print(f"  {line}")
    kinds = Counter(r["schema"] for r in records)
    tasks = Counter(r["task"] for r in records)
    paras = sum(len(r.get("paraphrases") or []) for r in records)
    groups = len({r["group"] for r in records if "group" in r})
    print(f"schemas: {dict(kinds)}; tasks: {dict(sorted(tasks.items()))}; paraphrases: {paras}"
          + (f"; groups: {groups}" if groups else ""))
    return 1 if report.num_invalid else 0


def cmd_convert(args) -> int:
    records, report = read_records(args.source, "auto", split=args.split)
    n = write_records(args.output, records)
    print(f"wrote {n} records to {args.output}")
    return 0


def cmd_tokenize(args) -> int:
    from coin.training.config import DataConfig, ModelConfig, load_config
    from coin.training.model import load_tokenizer

    from .prompt import PromptFormat
    from .token_cache import build_token_cache, cache_path, read_meta

    if args.config:
        cfg = load_config(args.config, check_paths=False)
        mcfg, dcfg = cfg.model, cfg.data
    else:
        mcfg, dcfg = ModelConfig(), DataConfig()
    if args.tokenizer:
        mcfg = ModelConfig(name_or_path=args.tokenizer) if args.tokenizer == "tiny" else \
            ModelConfig(name_or_path=args.tokenizer, tokenizer=args.tokenizer)
    fmt = dataclasses.replace(PromptFormat.from_data_config(dcfg), template=args.prompt_template or dcfg.prompt_template,
                              add_bos=dcfg.add_bos and not args.no_bos, add_eos=dcfg.add_eos or args.eos)
    if fmt.template.count("{prompt}") != 1:
        raise CoinError(f"--prompt-template: expected exactly one '{{prompt}}' placeholder, got {fmt.template!r}")
    max_length = args.max_length or dcfg.max_length
    tok = load_tokenizer(mcfg)
    ds = build_token_cache(args.records, tok, fmt, max_length, args.cache_dir, min_prompt_tokens=dcfg.min_prompt_tokens,
                           max_dropped_share=dcfg.max_dropped_share, skip_invalid=args.skip_invalid)
    path = cache_path(args.records, tok, fmt, max_length, args.cache_dir, dcfg.min_prompt_tokens)
    meta = read_meta(path)
    c = meta["counts"]
    print(f"token cache {path}: {len(ds)} rows, {c['sequences']} sequences, {c['tokens']} tokens, "
          f"longest {c['max_sequence_length']}, {c['sequences_at_max_length']} at max_length {max_length}, "
          f"{c['dropped_truncated']} left out (instruction cut below {dcfg.min_prompt_tokens} tokens), "
          f"{c['dropped_no_response']} left out (no response token)")
    return 0


def main(args) -> int:
    handler = {"demo": cmd_demo, "testbed": cmd_testbed, "import": cmd_import, "validate": cmd_validate, "convert": cmd_convert,
               "tokenize": cmd_tokenize}[args.action]
    return handler(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="coin data")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
