"""`coin eval`: robustness of instruction following under perturbed instructions.

    coin eval --model runs/demo/train/hf --model runs/demo/sft/hf --tasks sst2,cola \\
        --data runs/demo/data/glue --instructions generated --attacks all --n-examples 300 \\
        --scoring likelihood --out runs/demo/eval

Data-parallel: `torchrun --nproc_per_node 8 -m coin.eval.run ...` (or `torchrun ... -m coin eval
...`) shards the examples over the ranks and gathers the results on every rank; rank 0 writes
the files. Results equal those of one rank. See docs/eval.md for every option and file format.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from coin.errors import CoinError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", action="append", required=True, metavar="PATH",
                   help="a Hugging Face model directory (what training exports), a LoRA adapter directory "
                        "(PEFT format: loaded on its base, merged), or 'tiny'; repeat for side-by-side")
    g.add_argument("--model-name", action="append", default=None, metavar="NAME",
                   help="display name per --model (default: the shortest distinct path suffix)")
    g.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    g.add_argument("--attn-implementation", default="auto", choices=("auto", "eager", "sdpa", "flash_attention_2"),
                   help="auto: eager on CPU (faster there with padding), sdpa on GPU")
    g = p.add_argument_group("tasks and data")
    g.add_argument("--tasks", default="all", help="comma-separated task names, or 'all' (the nine GLUE tasks)")
    g.add_argument("--task-file", default=None, metavar="FILE.json", help="extra task specs (docs/eval.md)")
    g.add_argument("--data", default="hub", metavar="DIR",
                   help="directory of local task files (layout in docs/eval.md), or 'hub' for datasets.load_dataset")
    g.add_argument("--n-examples", type=int, default=300, help="examples per task, a fixed seeded subset (0: all)")
    g.add_argument("--seed", type=int, default=42, help="seeds the example subset and the generated perturbations")
    g.add_argument("--label-words", action="append", default=[], metavar="TASK=W0,W1",
                   help="override a task's label words (in label-id order)")
    g.add_argument("--columns", action="append", default=[], metavar="TASK=FIELD:COL,...",
                   help="which column of the task's file holds each input column and the label: a 0-based "
                        "index or a header name, e.g. sst2=label:0,sentence:1 (default: detected, docs/eval.md)")
    g = p.add_argument_group("instructions")
    g.add_argument("--instructions", default="generated",
                   help="generated | generated:CLEAN.json | promptbench:PATH | FILE.json")
    g.add_argument("--instruction-layout", default="auto", choices=("auto", "task-attack", "attack-task"),
                   help="how a JSON instruction file nests: task -> attack -> list (ours) or attack -> task -> "
                        "list (the CoIN paper's, PromptBench's); auto detects it")
    g.add_argument("--promptbench-victim", default="t5_zeroshot",
                   help="which adv_prompts/<victim>.md of a PromptBench directory (e.g. vicuna_zeroshot)")
    g.add_argument("--attacks", default="all", help="'all', or attack names / levels (textbugger,word,...)")
    g.add_argument("--n-instructions", type=int, default=6, help="clean instructions per task (0: all)")
    g.add_argument("--attack-lm", default=None, metavar="PATH",
                   help="a causal LM ranking bertattack's substitutes (default: seeded choice)")
    g.add_argument("--only-instructions", action="store_true",
                   help="write OUT/instructions.json and stop (inspect or edit, then pass it as --instructions)")
    g = p.add_argument_group("scoring")
    g.add_argument("--scoring", default="likelihood", choices=("likelihood", "generate"))
    g.add_argument("--parse", default="robust", choices=("robust", "strict"), help="generate: how text maps to a label")
    g.add_argument("--label-score", default="calibrated", choices=("calibrated", "sum", "mean"),
                   help="likelihood: how labels are ranked: calibrated (the label's log-likelihood minus its log "
                        "prior under the instruction on content-free inputs), sum or mean of its token log-probs")
    g.add_argument("--max-new-tokens", type=int, default=7)
    g.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass")
    g.add_argument("--max-length", type=int, default=512, help="tokens per sequence (the prompt body is truncated)")
    g.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="take the prompt format (data.prompt_template/add_bos/add_eos) from this run config "
                        "(default: each model's own coin_run_config.yaml, written by coin export)")
    g.add_argument("--prompt-template", default=None, help="override the template (one '{prompt}')")
    g.add_argument("--prompt-format", default=None, choices=("plain", "chat"),
                   help="override the format: plain (the template) or chat (the tokenizer's chat template)")
    g.add_argument("--system-prompt", default=None, help="chat: the system turn (overrides the model's)")
    g = p.add_argument_group("analysis and output")
    g.add_argument("--representation", default="auto",
                   help="task for the representation analysis: a task name, 'auto' (cola if evaluated, else the first), 'none'")
    g.add_argument("--representation-examples", type=int, default=300)
    g.add_argument("--projection", default="auto", choices=("auto", "pca", "umap"))
    g.add_argument("--out", default="runs/eval", help="output directory")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _prompt_format(args):
    """The format given on the command line, or None: each model's own (its coin_run_config.yaml)."""
    from coin.data_tools.prompt import PromptFormat

    fmt = None
    if args.config:
        from coin.training.config import load_config

        fmt = PromptFormat.from_data_config(load_config(args.config, check_paths=False).data)
    if args.prompt_template is not None:
        if args.prompt_template.count("{prompt}") != 1:
            raise CoinError(f"--prompt-template: expected exactly one '{{prompt}}', got {args.prompt_template!r}")
        base = fmt or PromptFormat()
        fmt = PromptFormat(template=args.prompt_template, add_bos=base.add_bos, add_eos=base.add_eos)
    if args.prompt_format is not None or args.system_prompt is not None:
        base = fmt or PromptFormat()
        chat = base.chat if args.prompt_format is None else args.prompt_format == "chat"
        if args.system_prompt is not None and not chat:
            raise CoinError("--system-prompt: only used with the chat format (--prompt-format chat)")
        system = base.system_prompt if args.system_prompt is None else args.system_prompt
        fmt = dataclasses.replace(base, chat=chat, system_prompt=system)
    return fmt


def _check_args(args) -> None:
    for name in ("n_examples", "n_instructions", "representation_examples"):
        if getattr(args, name) < 0:
            raise CoinError(f"--{name.replace('_', '-')}: expected an integer >= 0")
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise CoinError(f"--{name.replace('_', '-')}: expected an integer >= 1")
    if args.max_length < 16:
        raise CoinError("--max-length: expected an integer >= 16")
    if args.model_name and len(args.model_name) != len(args.model):
        raise CoinError(f"--model-name: given {len(args.model_name)} times for {len(args.model)} --model")
    from coin.training.model import model_path_error

    for m in args.model:  # a path must exist; an `org/name` hub id cannot be checked offline
        d = os.path.expanduser(m)
        model_files = ("config.json", "adapter_config.json")
        if os.path.isdir(d) and not any(os.path.isfile(os.path.join(d, f)) for f in model_files):
            raise CoinError(f"--model: '{m}' is not a Hugging Face model directory (no config.json) nor a LoRA "
                            f"adapter directory (no adapter_config.json); `coin export` writes one of them")
        problem = model_path_error(m, "--model")
        if problem:
            raise CoinError(problem)


def run(args) -> dict | None:
    """Everything `main` does, returning the results (None with --only-instructions)."""
    from coin.training import dist

    from .instructions import check_requested_attacks, parse_attacks, resolve_instructions
    from .loaders import column_mappings, load_task_data
    from .report import summary_text, write_report
    from .runner import evaluate_models
    from .tasks import label_word_overrides, load_task_file, parse_tasks

    _check_args(args)
    if args.task_file:
        load_task_file(args.task_file)
    specs = parse_tasks(args.tasks)
    overrides = label_word_overrides(args.label_words)
    names = {s.name for s in specs}
    columns = column_mappings(args.columns)
    for option, given in (("--label-words", overrides), ("--columns", columns)):
        for task in given:
            if task not in names:
                raise CoinError(f"{option}: task '{task}' is not among --tasks ({', '.join(sorted(names))})")
    specs = [s.with_label_words(overrides[s.name]) if s.name in overrides else s for s in specs]
    fmt = _prompt_format(args)
    attacks = parse_attacks(args.attacks)
    progress = not args.no_progress and dist.rank() == 0

    rep_task = args.representation
    if rep_task == "auto":
        rep_task = "cola" if "cola" in names else specs[0].name
    elif rep_task == "none":
        rep_task = None
    elif rep_task not in names:
        raise CoinError(f"--representation: task '{rep_task}' is not among --tasks ({', '.join(sorted(names))})")
    # the data first: a missing or empty dataset fails before any instruction is generated
    tasks = [] if args.only_instructions else [
        load_task_data(s, args.data, args.n_examples or None, args.seed, columns=columns.get(s.name)) for s in specs]

    lm_scorer = None
    if args.attack_lm and "bertattack" in attacks and args.instructions.startswith("generated"):
        from coin.training.config import ModelConfig
        from coin.training.model import load_model, load_tokenizer

        from .scoring import causal_lm_scorer

        mcfg = ModelConfig(name_or_path=args.attack_lm)
        lm_scorer = causal_lm_scorer(load_model(mcfg).to(dist.device()).eval(), load_tokenizer(mcfg))
    iset = resolve_instructions(args.instructions, {s.name: s for s in specs}, attacks=attacks,
                                n_instructions=args.n_instructions or None, seed=args.seed,
                                victim=args.promptbench_victim, lm_scorer=lm_scorer, progress=progress,
                                layout=args.instruction_layout)
    check_requested_attacks(iset, args.attacks)
    if dist.rank() == 0:
        iset.save(os.path.join(args.out, "instructions.json"))
    if args.only_instructions:
        if dist.rank() == 0:
            print(f"coin eval: wrote {os.path.join(args.out, 'instructions.json')} ({len(iset)} instructions)")
        return None

    settings = {
        "tasks": [s.name for s in specs], "data": args.data, "n_examples": args.n_examples, "seed": args.seed,
        "instructions": iset.source, "attacks": [a for a in attacks if a not in iset.skipped],
        "skipped_attacks": iset.skipped, "n_instructions": args.n_instructions,
        "scoring": args.scoring, "parse": args.parse, "label_score": args.label_score,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "max_length": args.max_length,
        "prompt_format": "per model (coin_run_config.yaml, else the default)" if fmt is None else
        {"template": fmt.template, "add_bos": fmt.add_bos, "add_eos": fmt.add_eos}, "dtype": args.dtype,
        "world_size": dist.world_size(),
    }
    results = evaluate_models(
        args.model, tasks, iset, names=args.model_name, dtype=args.dtype,
        attn_implementation=args.attn_implementation, representation_task=rep_task,
        representation_examples=args.representation_examples, projection=args.projection, seed=args.seed,
        settings=settings, scoring=args.scoring, prompt_format=fmt, batch_size=args.batch_size,
        max_length=args.max_length, max_new_tokens=args.max_new_tokens, label_score=args.label_score,
        parse=args.parse, progress=progress,
    )
    if dist.rank() == 0:
        paths = write_report(results, args.out, plots=not args.no_plots)
        print(f"coin eval: {paths['report']}\n" + summary_text(results))
    return results


def main(args) -> int:
    """Run the evaluation; under torchrun/deepspeed (WORLD_SIZE > 1) initialise and end the process group."""
    import torch.distributed as tdist

    from coin.training import dist

    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (tdist.is_available() and tdist.is_initialized())
    if not owns_group:
        run(args)
        return 0
    dist.init()
    try:
        run(args)
    except CoinError as e:  # every rank validates the same input: each leaves cleanly, rank 0 says why
        prefix = "" if dist.rank() == 0 else f"[rank {dist.rank()}] "
        print(f"{prefix}coin eval: error: {e}", file=sys.stderr)
        dist.shutdown(2)
    dist.shutdown(0)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m coin.eval.run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except CoinError as e:
        print(f"coin eval: error: {e}", file=sys.stderr)
        sys.exit(2)
