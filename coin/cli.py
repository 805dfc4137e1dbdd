"""The `coin` command. Each subcommand lives in the module that does the work; that module
defines `add_arguments(parser)` and `main(args) -> int` and is imported only when chosen."""
from __future__ import annotations

import argparse
import importlib
import sys

from coin.errors import CoinError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("coin.training.train", "train with CoIN (or plain SFT) under DeepSpeed"),
    "pretrain": ("coin.training.pretrain", "short causal-LM pre-training of the tiny default on a corpus"),
    "export": ("coin.training.export", "consolidate a checkpoint into a Hugging Face model directory"),
    "data": ("coin.data_tools.cli", "demo data, importers, validation, token cache"),
    "augment": ("coin.data_tools.augment", "paraphrase instructions (templates, wordnet or llm backends)"),
    "pairs": ("coin.data_tools.pairs", "build contrastive records with hard-negative groups"),
    "eval": ("coin.eval.run", "robustness evaluation under perturbed instructions"),
    "demo": ("coin.pipeline", "the whole pipeline on the embedded tiny default"),
    "bench": ("coin.bench", "benchmarks that print figures and rewrite benchmarks/RESULTS.md"),
}


def assignments(items, option: str, form: str, error: type[CoinError] = CoinError) -> dict[str, str]:
    """Repeated `NAME=VALUE` options (`--map`, `--task-alias`, `--label-words`) -> {NAME: VALUE};
    a malformed item raises `error` (a CoinError) naming the option and the expected `form`."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise error(f"{option}: expected {form}, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="coin", description="Contrastive Instruction Tuning at scale.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help, or the unknown-command error and exits
        parser.print_help()
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"coin {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except CoinError as e:
        print(f"coin {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
