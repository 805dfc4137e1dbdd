"""The robustness runner: every task x instruction x example, scored, data-parallel over ranks.

`evaluate(model, tokenizer, tasks, instructions, ...)` scores one model and returns its results
(a JSON-ready dict, schema in docs/eval.md); `evaluate_models(...)` loads several checkpoints in
turn and adds the representation analysis, which is what `coin eval` runs.

Sharding. The work items (task, instruction, example) are ordered and cut into batches the same
way whatever the number of ranks: within each task, items sorted by prompt length (then by
position), `batch_size` per batch. Rank r takes batches r, r + W, r + 2W, ... and the outputs are
all-gathered (`torch.distributed.all_gather_object`), so every rank ends with all of them. Since a
batch holds the same sequences under any world size, 2 ranks give exactly the results of 1.
Launch with `torchrun --nproc_per_node N -m coin.eval.run ...`; ranks use
`coin.training.dist` (one device each, gloo on CPU).
"""
from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from coin.data_tools.prompt import PromptFormat
from coin.errors import CoinError
from coin.training import dist

from .instructions import InstructionSet
from .loaders import TaskData
from .metrics import summarize_model, summarize_task
from .scoring import (
    LABEL_SCORES, argmax_label, check_label_words, content_free_priors, generate_texts, label_scores, parse_prediction,
)
from .tasks import render_prompt

RESULTS_FORMAT = "coin-eval/1"


def plan_batches(groups: Sequence[Sequence[int]], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of item ids: each group (a task) sorted by length then id, cut every batch_size."""
    out: list[list[int]] = []
    for group in groups:
        order = sorted(group, key=lambda i: (lengths[i], i))
        out += [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    return out


def run_sharded(batches: Sequence[Sequence[int]], fn: Callable[[Sequence[int]], Sequence[Any]], *,
                desc: str = "", progress: bool = True) -> dict[int, Any]:
    """{item id: fn's output} over all batches; this rank runs batches[rank::world], then all-gather."""
    from tqdm.auto import tqdm

    r, w = dist.rank(), dist.world_size()
    local: dict[int, Any] = {}
    mine = list(batches[r::w])
    for batch in tqdm(mine, desc=desc, disable=not (progress and r == 0), leave=False):
        for i, value in zip(batch, fn(batch)):
            local[i] = value
    if w == 1:
        return local
    gathered: list[dict | None] = [None] * w
    torch.distributed.all_gather_object(gathered, local)
    merged: dict[int, Any] = {}
    for part in gathered:
        merged.update(part or {})
    return merged


def _vocab_size(model) -> int | None:
    emb = model.get_output_embeddings()
    weight = getattr(emb, "weight", None)
    if weight is None:
        return None
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def evaluate(model, tokenizer, tasks: Sequence[TaskData], instructions: InstructionSet, *,
             scoring: str = "likelihood", prompt_format: PromptFormat | None = None, batch_size: int = 32,
             max_length: int = 512, max_new_tokens: int = 7, label_score: str = "calibrated",
             parse: str = "robust", progress: bool = True, model_name: str = "model",
             device: torch.device | None = None) -> dict:
    """Score every (task, instruction, example) and summarise (metrics.summarize_task/_model).

    Returns {"model", "scoring", "label_score", "tasks": {task: summary}, "overall": {...},
    "seconds", "examples_per_second"}; each instruction row of a task summary carries
    `predictions` (label id per example, -1 = parse failure) and `scores` (likelihood: the ranked
    scores, `label_score` of scoring.py) or `outputs` (generate); with `calibrated`, also `prior`
    (the instruction's log prior per label, computed on every rank: a few prompts per instruction).
    Raises LabelWordError before any scoring when a label word is not in the model's vocabulary.
    """
    if scoring not in ("likelihood", "generate"):
        raise ValueError(f"scoring: expected 'likelihood' or 'generate', got {scoring!r}")
    if label_score not in LABEL_SCORES:
        raise ValueError(f"label_score: expected one of {', '.join(LABEL_SCORES)}, got {label_score!r}")
    fmt = prompt_format or PromptFormat()
    for td in tasks:
        if not instructions.for_task(td.spec.name):
            raise CoinError(f"instruction set {instructions.source!r}: no instructions for task '{td.spec.name}'")
        if not td.examples:
            raise CoinError(f"task '{td.spec.name}': no examples to evaluate (an empty dataset)")
    model.eval()
    vocab = _vocab_size(model)
    for td in tasks:
        check_label_words(tokenizer, td.spec, fmt, vocab, model_name)

    # items: (task position, instruction, example position)
    items: list[tuple[int, Any, int]] = []
    prompts: list[str] = []
    groups: list[list[int]] = []
    for t, td in enumerate(tasks):
        group = []
        for ins in instructions.for_task(td.spec.name):
            for e, ex in enumerate(td.examples):
                group.append(len(items))
                items.append((t, ins, e))
                prompts.append(render_prompt(td.spec, ins.text, ex))
        groups.append(group)
    batches = plan_batches(groups, [len(p) for p in prompts], batch_size)
    calibrate = scoring == "likelihood" and label_score == "calibrated"
    priors: dict[tuple[int, str], list[float]] = {}  # (task position, instruction key) -> log prior
    if calibrate:
        for t, td in enumerate(tasks):
            ins_list = instructions.for_task(td.spec.name)
            values = content_free_priors(model, tokenizer, fmt, td.spec, [i.text for i in ins_list],
                                         max_length=max_length, batch_size=batch_size, device=device)
            priors.update({(t, ins.key): v for ins, v in zip(ins_list, values)})

    def run_batch(batch: Sequence[int]) -> list[tuple]:
        spec = tasks[items[batch[0]][0]].spec
        ps = [prompts[i] for i in batch]
        if scoring == "likelihood":
            scores = label_scores(model, tokenizer, fmt, ps, spec.label_words, max_length=max_length,
                                  batch_size=len(ps), score="mean" if label_score == "mean" else "sum", device=device)
            if calibrate:
                scores = [[v - p for v, p in zip(row, priors[items[i][0], items[i][1].key])]
                          for i, row in zip(batch, scores)]
            return [(argmax_label(s), s) for s in scores]
        texts = generate_texts(model, tokenizer, fmt, ps, max_new_tokens=max_new_tokens, max_length=max_length,
                               batch_size=len(ps), device=device)
        return [(parse_prediction(t, spec.label_words, parse), t) for t in texts]

    start = time.perf_counter()
    outputs = run_sharded(batches, run_batch, desc=f"{model_name}: {scoring}", progress=progress)
    seconds = time.perf_counter() - start

    task_results: dict[str, dict] = {}
    for t, td in enumerate(tasks):
        rows: dict[str, dict] = {}
        for i in groups[t]:
            _, ins, e = items[i]
            row = rows.setdefault(ins.key, {
                "key": ins.key, "attack": ins.attack, "level": ins.level, "index": ins.index, "text": ins.text,
                "predictions": [None] * len(td), ("scores" if scoring == "likelihood" else "outputs"): [None] * len(td),
                **({"prior": priors[t, ins.key]} if calibrate else {}),
            })
            pred, extra = outputs[i]
            row["predictions"][e] = int(pred)
            row["scores" if scoring == "likelihood" else "outputs"][e] = extra
        summary = summarize_task(list(rows.values()), td.labels)
        summary.update(n_examples=len(td), total_examples=td.total, source=td.source, example_ids=td.ids,
                       labels=td.labels, label_words=list(td.spec.label_words))
        task_results[td.spec.name] = summary
    return {
        "model": model_name,
        "scoring": scoring,
        "label_score": label_score if scoring == "likelihood" else None,
        "tasks": task_results,
        "overall": summarize_model(task_results),
        "seconds": seconds,
        "examples_per_second": len(items) / seconds if seconds > 0 else float("nan"),
    }


def unique_names(paths: Sequence[str]) -> list[str]:
    """Short distinct display names for model paths (`tiny`, `coin/hf`, `sft/hf`)."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    names = []
    for i, p in enumerate(parts):
        k = 1
        while True:
            name = "/".join(p[-k:])
            if all(name != "/".join(q[-k:]) for j, q in enumerate(parts) if j != i) or k >= len(p):
                break
            k += 1
        names.append(name)
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def model_prompt_format(path: str) -> tuple[PromptFormat, str]:
    """The prompt format a model was trained with: `data.prompt_format/prompt_template/add_bos/
    add_eos/system_prompt` of the run config `coin export` writes next to the weights (or the
    adapter: coin_run_config.yaml), else the default. Returns (format, where it came from)."""
    import yaml

    from coin.training.export import RUN_CONFIG_NAME

    cfg_path = os.path.join(path, RUN_CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        return PromptFormat(), "default"
    with open(cfg_path, encoding="utf-8") as f:
        try:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        except yaml.YAMLError as e:
            raise CoinError(f"{cfg_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    default = PromptFormat()
    fmt = PromptFormat(template=data.get("prompt_template", default.template),
                       add_bos=bool(data.get("add_bos", default.add_bos)),
                       add_eos=bool(data.get("add_eos", default.add_eos)),
                       chat=data.get("prompt_format", "plain") == "chat", system_prompt=data.get("system_prompt"))
    if not isinstance(fmt.template, str) or fmt.template.count("{prompt}") != 1:
        raise CoinError(f"{cfg_path}: data.prompt_template: expected one '{{prompt}}', got {fmt.template!r}")
    if data.get("prompt_format", "plain") not in ("plain", "chat"):
        raise CoinError(f"{cfg_path}: data.prompt_format: expected plain or chat, got {data.get('prompt_format')!r}")
    return fmt, cfg_path


def evaluate_models(models: Sequence[str], tasks: Sequence[TaskData], instructions: InstructionSet, *,
                    names: Sequence[str] | None = None, dtype: str = "fp32", attn_implementation: str = "auto",
                    representation_task: str | None = None, representation_examples: int = 300,
                    projection: str = "auto", seed: int = 42, settings: Mapping[str, Any] | None = None,
                    **eval_kwargs) -> dict:
    """Load each model (a HF directory, a LoRA adapter directory: its base with the adapter
    merged in, or `tiny`) in turn, evaluate it, optionally analyse its representations; returns
    {"format", "settings", "models": {name: results}}.

    `attn_implementation="auto"` is eager on CPU and sdpa on GPU; `eval_kwargs` go to `evaluate`.
    Without `prompt_format`, each model is prompted as it was trained (`model_prompt_format`)."""
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer, resolve_model_path

    from .analysis import representation_analysis

    names = list(names) if names else unique_names(models)
    device = dist.device()
    if attn_implementation == "auto":  # PyTorch's CPU SDPA with a padding mask is ~10x slower than eager
        attn_implementation = "eager" if device.type == "cpu" else "sdpa"
    out_models: dict[str, dict] = {}
    fixed_format = eval_kwargs.pop("prompt_format", None)
    for name, path in zip(names, models):
        mcfg = ModelConfig(name_or_path=path, dtype=dtype, attn_implementation=attn_implementation)
        fmt, fmt_source = (fixed_format, "given") if fixed_format is not None else model_prompt_format(
            resolve_model_path(mcfg))
        try:
            tokenizer = load_tokenizer(mcfg, what="--model")
            model = load_model(mcfg, what="--model").to(device)
        except CoinError:
            raise
        except (OSError, ValueError) as e:  # not a model directory, or a hub id while offline
            raise CoinError(f"--model {path}: could not load a causal LM and its tokenizer "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        res = evaluate(model, tokenizer, tasks, instructions, model_name=name, device=device, prompt_format=fmt,
                       **eval_kwargs)
        res["path"] = path
        res["prompt_format"] = {"format": "chat" if fmt.chat else "plain", "template": fmt.template,
                                "add_bos": fmt.add_bos, "add_eos": fmt.add_eos, "system_prompt": fmt.system_prompt,
                                "source": fmt_source}
        if representation_task:
            td = next((t for t in tasks if t.spec.name == representation_task), None)
            if td is not None:
                res["representation"] = representation_analysis(
                    model, tokenizer, td, instructions, prompt_format=fmt,
                    n_examples=representation_examples, projection=projection, seed=seed,
                    max_length=eval_kwargs.get("max_length", 512), batch_size=eval_kwargs.get("batch_size", 32),
                    progress=eval_kwargs.get("progress", True), device=device,
                )
        out_models[name] = res
        del model
        gc.collect()
    return {"format": RESULTS_FORMAT, "settings": dict(settings or {}), "models": out_models}
