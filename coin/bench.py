"""`coin bench`: run the benchmarks in benchmarks/ and rewrite benchmarks/RESULTS.md.

Each benchmarks/bench_<name>.py defines `run(quick: bool = False) -> str | None` (a Markdown
section whose figures are measured side by side in one run). `coin bench all` runs every one of
them in the order below and rewrites their sections of RESULTS.md; `coin bench NAME` runs one.
Sections that are not re-run are kept, and so is the section of a benchmark that measures nothing
on this machine (`run` returns None: the GPU benchmark without a GPU keeps the figures recorded
from a GPU machine; where there are none, its module's NOT_MEASURED text is written).
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import re
import sys

import coin

ORDER = ["lm_loss", "step", "pool", "lora", "loop", "checkpoint", "data", "eval", "robustness", "gpu"]
BEGIN, END = "<!-- bench:{} -->", "<!-- /bench:{} -->"


def bench_dir() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(coin.__file__))), "benchmarks")
    if not os.path.isdir(path):
        from coin.errors import CoinError

        raise CoinError(f"benchmarks/ not found at {path}: run `coin bench` from a source checkout")
    return path


def available() -> list[str]:
    names = [f[len("bench_"):-3] for f in os.listdir(bench_dir()) if f.startswith("bench_") and f.endswith(".py")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _load(name: str):
    if bench_dir() not in sys.path:  # the benchmarks share small helpers (benchmarks/memory.py)
        sys.path.insert(0, bench_dir())
    path = os.path.join(bench_dir(), f"bench_{name}.py")
    spec = importlib.util.spec_from_file_location(f"coin_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _header() -> str:
    import torch

    return (
        "# Benchmark results\n\n"
        "Written by `coin bench all` (one section per benchmarks/bench_*.py; `coin bench NAME` "
        "re-runs one section). Every ratio is measured side by side in one run.\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}. Updated {datetime.date.today().isoformat()}.\n"
    )


def _sections(text: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


def write_results(sections: dict[str, str], path: str) -> None:
    body = _header()
    for name in sorted(sections, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        body += "\n" + BEGIN.format(name) + "\n" + sections[name].rstrip() + "\n" + END.format(name) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(tmp, path)


def section(module, recorded: str | None, quick: bool = False) -> str:
    """A benchmark module's new section; where it measures nothing here (`run` returns None), the
    `recorded` one (figures from another machine), else the module's NOT_MEASURED text."""
    text = module.run(quick=quick)
    if text is None:
        return recorded or module.NOT_MEASURED
    return text


def add_arguments(parser) -> None:
    parser.add_argument("name", help="a benchmark name, or 'all'", nargs="?", default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; figures are noisier)")
    parser.add_argument("--no-write", action="store_true", help="print the sections, leave RESULTS.md alone")


def main(args) -> int:
    names = available()
    if args.name != "all" and args.name not in names:
        from coin.errors import CoinError

        raise CoinError(f"unknown benchmark '{args.name}' (expected all or one of: {', '.join(names)})")
    chosen = names if args.name == "all" else [args.name]
    path = os.path.join(bench_dir(), "RESULTS.md")
    # sections not re-run now (a GPU section recorded on another machine, say) are kept
    sections = _sections(open(path, encoding="utf-8").read()) if os.path.exists(path) else {}
    for name in chosen:
        print(f"== bench {name}", file=sys.stderr, flush=True)
        sections[name] = section(_load(name), sections.get(name), quick=args.quick)
        print(sections[name], flush=True)
        if not args.no_write:  # after each benchmark, so a late failure keeps earlier figures
            write_results(sections, path)
    if not args.no_write:
        print(f"wrote {path}", file=sys.stderr)
    return 0
