"""The run configuration: one YAML file describes a run; `key.sub=value` overrides it.

Every setting has exactly one home here. The DeepSpeed JSON named by `deepspeed.config` uses
"auto" for everything this file decides (batch sizes, precision, optimiser hyper-parameters,
gradient clipping); `deepspeed_config()` fills those in. A concrete value in the JSON that
contradicts the run config is an error, never silently preferred.

`load_config(path, overrides)` validates everything before anything heavy starts: an unknown key,
a wrong type or an impossible value raises `ConfigError` with a one-line message that names the
key and the expected form.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from coin.data_tools.prompt import MIN_PROMPT_TOKENS
from coin.errors import CoinError, read_json


class ConfigError(CoinError):
    """A bad run configuration; the message is one line naming the key."""


@dataclass
class TinyModelConfig:
    """The embedded default model: a random LlamaForCausalLM with a real LLaMA vocabulary."""

    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the named linear layers; every other parameter is frozen."""

    r: int = 16
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.05
    # module names (the last part of the dotted name) that receive an adapter
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    # "tiny" builds the embedded random tiny LLaMA; anything else is a local directory or hub id
    # of a Hugging Face causal LM (LLaMA, Mistral, Qwen2, ... loaded with the Auto classes).
    name_or_path: str = "tiny"
    tokenizer: str | None = None  # defaults to name_or_path
    dtype: str = "fp32"  # fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    trust_remote_code: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig | None = None  # null: train every parameter; a mapping: LoRA adapters only
    quantization: str | None = None  # null | 8bit | 4bit: the frozen base loaded by bitsandbytes (GPU, LoRA)


@dataclass
class DataConfig:
    train: str = ""  # contrastive records (JSONL or Parquet), see docs/data.md
    eval: str | None = None  # held-out contrastive records for periodic evaluation
    max_length: int = 256  # the reference's cutoff length
    # How an instruction (with its input) becomes a prompt; the response follows it directly.
    prompt_template: str = "{prompt}\n\n### Response:\n"
    # plain: prompt_template around the prompt (the reference); chat: the tokenizer's own chat
    # template, the prompt as the user turn and the output as the assistant turn
    prompt_format: str = "plain"
    system_prompt: str | None = None  # chat only: a system turn before the user turn
    add_bos: bool = True
    add_eos: bool = False  # the reference adds no EOS
    # A record whose instruction truncation would cut to fewer prompt-body tokens than this (in the
    # original or any paraphrase) is left out of the token cache and counted per task (0: never).
    min_prompt_tokens: int = MIN_PROMPT_TOKENS  # 8
    # More than this share of a file's records left out that way: training refuses to start.
    max_dropped_share: float = 0.05
    cache_dir: str | None = None  # token cache; default <output.dir>/token_cache
    num_workers: int = 0
    # with coin.pool: step, the sampler packs hard-negative groups into a whole step's pool (a group
    # then spreads over the micro-batches of one step) instead of into single micro-batches
    spread_groups: bool = False


@dataclass
class CoinConfig:
    # coin: CE(original) + CE(paraphrase) + w * contrastive | cit: CE(original) + CE(paraphrase)
    # (continual instruction tuning, the paper's baseline) | sft: CE(original) only | consistency:
    # CE(original) + CE(paraphrase) + consistency_weight * JS of the two views' response tokens
    objective: str = "coin"
    pooling: str = "last"  # last | prompt_last | mean
    temperature: float = 0.05
    # the contrastive weight w (objective coin): adaptive: min(max_weight, L_gen / L_ctr) (the paper);
    # constant: weight; gradnorm: min(max_weight, grad_ratio * |dL_gen/dh| / |dL_ctr/dh|), h the final hidden states
    weighting: str = "adaptive"
    max_weight: float = 1000.0  # lambda of the paper; also caps gradnorm
    weight: float = 1.0  # the constant weight when weighting = constant
    grad_ratio: float = 0.5  # gradnorm: the contrastive gradient norm at h over the generation one
    consistency_weight: float = 1.0  # objective consistency: the weight of the JS term
    weight_warmup_steps: int = 0  # the contrastive / consistency weight ramps linearly from 0 over these optimiser steps
    gather: bool = True  # negatives from every rank (pool = world x micro-batch)
    gather_group_size: int = 0  # 0: all ranks; k: pools of k consecutive ranks
    lm_loss_chunks: int = 8  # the output projection runs in this many chunks (fixed: same calls on every rank)
    # micro: one pool per micro-step (world x micro-batch pairs); step: one pool per optimiser step
    # (world x micro-batch x accumulation pairs), a cached two-pass step (step_pool.py)
    pool: str = "micro"


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "linear"  # linear | cosine | constant (after warm-up)
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0 disables clipping
    micro_batch_size: int = 2  # examples (each an original + paraphrase) per rank per micro-step
    gradient_accumulation_steps: int = 1
    epochs: int = 1
    max_steps: int = 0  # optimiser steps; 0: as many as `epochs` give
    seed: int = 42


@dataclass
class DeepSpeedConfig:
    config: str = "ds_configs/zero3.json"
    collective_timeout_s: float = 1800.0  # a rank waiting longer than this in a collective fails the run


@dataclass
class OutputConfig:
    dir: str = "runs/coin"
    save_every: int = 0  # optimiser steps between checkpoints; 0: only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto: latest complete checkpoint in dir | never | a checkpoint path
    export: bool = True  # write a Hugging Face model to <dir>/hf at the end
    export_merged: bool = False  # LoRA: also the base with the adapter merged in, to <dir>/hf_merged


@dataclass
class LoggingConfig:
    log_every: int = 10
    eval_every: int = 0  # optimiser steps between held-out evaluations; 0: never
    tensorboard: bool = True
    progress_bar: bool = True  # shown on rank 0 when stderr is a terminal
    peak_tflops: float = 989.0  # per device, for MFU (H100 SXM dense bf16)
    max_nonfinite_steps: int = 3  # stop after this many consecutive non-finite losses (0: never stop, skip them)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    coin: CoinConfig = field(default_factory=CoinConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "model.dtype": ("fp32", "bf16", "fp16"),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "data.prompt_format": ("plain", "chat"),
    "coin.pooling": ("last", "prompt_last", "mean"),
    "coin.objective": ("coin", "cit", "sft", "consistency"),
    "coin.weighting": ("adaptive", "constant", "gradnorm"),
    "coin.pool": ("micro", "step"),
    "optim.schedule": ("linear", "cosine", "constant"),
}


# ----------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) is list:
        return "a list of strings"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args) + (" or null" if type(None) in typing.get_args(tp) else "")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotated type `tp`; ints are accepted where floats are."""
    if typing.get_origin(tp) is list:  # list[str]: a YAML list, or "a,b,c" (an override)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    origin_args = typing.get_args(tp)
    if origin_args:  # Optional[X]
        if value is None and type(None) in origin_args:
            return None
        inner = [a for a in origin_args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # inf, -inf, nan (`.inf`, `inf`, `nan`): no setting can use one
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


# Keys that existed once: a config that still has one fails with what to write instead.
_REMOVED = {
    "coin.contrastive": "coin.contrastive: removed; use coin.objective: cit (contrastive term off, "
                        "originals + paraphrases) or coin.objective: coin",
    "coin.gen_loss": "coin.gen_loss: removed; coin.objective decides it (sft: originals only; "
                     "coin, cit, consistency: originals + paraphrases)",
}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in _REMOVED:
            raise ConfigError(_REMOVED[full])
        if key not in hints:
            raise ConfigError(f"unknown key '{full}' (expected one of: {', '.join(names)})")
        tp = hints[key]
        optional = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{full}.")
        elif optional:  # an optional section (model.lora): null, or a mapping over its defaults
            kwargs[key] = None if value is None else _build(optional[0], value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value), the value read as YAML (`1e-4`, `true`, `null`, ...)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}': expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, float) or isinstance(value, (int, bool)) or value is None:
        pass
    elif not isinstance(value, str):
        value = raw  # lists and mappings are not settings here; keep the text for the type check
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def config_from_dict(data: dict, *, check_paths: bool = True) -> RunConfig:
    cfg = _build(RunConfig, data or {}, "")
    validate(cfg, check_paths=check_paths)
    return cfg


def model_config_from_dict(data: dict | None, source: str) -> ModelConfig:
    """The `model` section of a saved run config (`source`), typed, without the path checks of
    `validate` (export and evaluation read it where the run's files may not exist)."""
    try:
        mcfg = _build(ModelConfig, data or {}, "model.")
        _validate_lora(mcfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return mcfg


def load_config(path: str | None, overrides: list[str] | None = None, *, check_paths: bool = True) -> RunConfig:
    """Read a YAML run config (or only defaults when `path` is None), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file '{path}' does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, check_paths=check_paths)


# ----------------------------------------------------------------------------- validation


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: RunConfig, *, check_paths: bool = True) -> None:
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _require(value in choices, f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    c, o, d = cfg.coin, cfg.optim, cfg.data
    _require(c.temperature > 0, f"coin.temperature: expected a number > 0, got {c.temperature}")
    _require(c.max_weight >= 0, f"coin.max_weight: expected a number >= 0, got {c.max_weight}")
    _require(c.weight >= 0, f"coin.weight: expected a number >= 0, got {c.weight}")
    _require(c.gather_group_size >= 0, f"coin.gather_group_size: expected an integer >= 0, got {c.gather_group_size}")
    _require(c.lm_loss_chunks >= 1, f"coin.lm_loss_chunks: expected an integer >= 1, got {c.lm_loss_chunks}")
    _require(c.grad_ratio > 0, f"coin.grad_ratio: expected a number > 0, got {c.grad_ratio}")
    _require(c.consistency_weight >= 0, f"coin.consistency_weight: expected a number >= 0, got {c.consistency_weight}")
    _require(c.weight_warmup_steps >= 0,
             f"coin.weight_warmup_steps: expected an integer >= 0, got {c.weight_warmup_steps}")
    _require(c.pool == "micro" or c.objective == "coin",
             f"coin.pool: 'step' pools contrastive negatives; it needs coin.objective: coin, got {c.objective!r}")
    _require(c.pool == "micro" or c.weighting != "gradnorm",
             "coin.weighting: gradnorm needs coin.pool: micro (the step-wide pool has no hidden-state gradients in pass 1)")
    _require(not d.spread_groups or c.pool == "step",
             f"data.spread_groups: true packs groups into a step's pool; it needs coin.pool: step, got {c.pool!r}")
    _require(o.lr > 0, f"optim.lr: expected a number > 0, got {o.lr}")
    _require(0 <= o.beta1 < 1, f"optim.beta1: expected a number in [0, 1), got {o.beta1}")
    _require(0 <= o.beta2 < 1, f"optim.beta2: expected a number in [0, 1), got {o.beta2}")
    _require(o.eps > 0, f"optim.eps: expected a number > 0, got {o.eps}")
    _require(o.weight_decay >= 0, f"optim.weight_decay: expected a number >= 0, got {o.weight_decay}")
    _require(o.micro_batch_size >= 1, f"optim.micro_batch_size: expected an integer >= 1, got {o.micro_batch_size}")
    _require(
        o.gradient_accumulation_steps >= 1,
        f"optim.gradient_accumulation_steps: expected an integer >= 1, got {o.gradient_accumulation_steps}",
    )
    _require(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio: expected a number in [0, 1), got {o.warmup_ratio}")
    _require(o.max_grad_norm >= 0, f"optim.max_grad_norm: expected a number >= 0, got {o.max_grad_norm}")
    _require(o.epochs >= 1, f"optim.epochs: expected an integer >= 1, got {o.epochs}")
    _require(o.max_steps >= 0, f"optim.max_steps: expected an integer >= 0, got {o.max_steps}")
    _require(d.max_length >= 8, f"data.max_length: expected an integer >= 8, got {d.max_length}")
    _require(d.min_prompt_tokens >= 0, f"data.min_prompt_tokens: expected an integer >= 0, got {d.min_prompt_tokens}")
    _require(d.min_prompt_tokens < d.max_length,
             f"data.min_prompt_tokens: expected fewer than data.max_length={d.max_length}, got {d.min_prompt_tokens}")
    _require(0 <= d.max_dropped_share <= 1,
             f"data.max_dropped_share: expected a number in [0, 1], got {d.max_dropped_share}")
    _require(
        d.prompt_template.count("{prompt}") == 1,
        f"data.prompt_template: expected exactly one '{{prompt}}' placeholder, got {d.prompt_template!r}",
    )
    _require(d.system_prompt is None or d.prompt_format == "chat",
             "data.system_prompt: only used with data.prompt_format: chat (the plain format has no system turn)")
    _validate_lora(cfg.model)
    _validate_tiny(cfg.model.tiny)
    _require(not cfg.output.export_merged or cfg.model.lora is not None,
             "output.export_merged: only for LoRA runs (model.lora); a full-parameter export is the full model already")
    _require(cfg.output.keep_last >= 1, f"output.keep_last: expected an integer >= 1, got {cfg.output.keep_last}")
    _require(cfg.output.save_every >= 0, f"output.save_every: expected an integer >= 0, got {cfg.output.save_every}")
    _require(cfg.logging.log_every >= 1, f"logging.log_every: expected an integer >= 1, got {cfg.logging.log_every}")
    _require(cfg.logging.eval_every >= 0, f"logging.eval_every: expected an integer >= 0, got {cfg.logging.eval_every}")
    _require(cfg.logging.peak_tflops > 0, f"logging.peak_tflops: expected a number > 0, got {cfg.logging.peak_tflops}")
    _require(
        cfg.logging.max_nonfinite_steps >= 0,
        f"logging.max_nonfinite_steps: expected an integer >= 0, got {cfg.logging.max_nonfinite_steps}",
    )
    if check_paths:
        _require(bool(d.train), "data.train: expected the path of a contrastive records file, got nothing")
        _require(os.path.exists(d.train), f"data.train: path '{d.train}' does not exist")
        if d.eval:
            _require(os.path.exists(d.eval), f"data.eval: path '{d.eval}' does not exist")
        # A local path must exist (checked here, before any hub lookup); an `org/name` hub id
        # cannot be checked offline (see is_local_path).
        for key, name in (("model.name_or_path", cfg.model.name_or_path), ("model.tokenizer", cfg.model.tokenizer)):
            if name is not None and is_local_path(name):
                _require(os.path.isdir(os.path.expanduser(name)), f"{key}: directory '{name}' does not exist")
    t = cfg.deepspeed.collective_timeout_s
    _require(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0,
             f"deepspeed.collective_timeout_s: expected a finite number of seconds > 0, got {t!r}")
    # The DeepSpeed file is read now so that a contradiction fails before any model loads.
    ds = deepspeed_config(cfg, world_size=1)
    _require(
        cfg.model.quantization is None or zero_stage(ds, cfg.deepspeed.config) != 3,
        f"model.quantization: a bitsandbytes-quantized base cannot be partitioned by ZeRO-3 "
        f"({cfg.deepspeed.config}); use a ZeRO-2 config such as ds_configs/zero2.json",
    )


def is_local_path(name: str) -> bool:
    """Whether a model or tokenizer name is a path on disk rather than a Hugging Face hub id: it
    starts with `.`, `/` or `~` (`./x`, `../x`, `/x`, `~/x`), holds a backslash, or has more than
    one `/` (`a/b/c`). `tiny`, `name` and `org/name` are hub ids when no such directory exists."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _validate_tiny(t: TinyModelConfig) -> None:
    """The embedded tiny LLaMA's shape: what LlamaConfig would otherwise refuse deep inside loading."""
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings"):
        value = getattr(t, name)
        _require(value >= 1, f"model.tiny.{name}: expected an integer >= 1, got {value}")
    _require(t.seed >= 0, f"model.tiny.seed: expected an integer >= 0, got {t.seed}")
    _require(t.hidden_size % t.num_attention_heads == 0,
             f"model.tiny.hidden_size: expected a multiple of model.tiny.num_attention_heads={t.num_attention_heads}, "
             f"got {t.hidden_size}")
    head_dim = t.hidden_size // t.num_attention_heads
    _require(head_dim % 2 == 0,
             f"model.tiny.hidden_size: expected an even head size (rotary embeddings) hidden_size / "
             f"num_attention_heads, got {t.hidden_size} / {t.num_attention_heads} = {head_dim}")
    _require(t.num_attention_heads % t.num_key_value_heads == 0,
             f"model.tiny.num_key_value_heads: expected a divisor of model.tiny.num_attention_heads="
             f"{t.num_attention_heads}, got {t.num_key_value_heads}")


def _validate_lora(m: ModelConfig) -> None:
    _require(m.quantization in (None, "8bit", "4bit"),
             f"model.quantization: expected null, 8bit or 4bit, got {m.quantization!r}")
    lora = m.lora
    if lora is None:
        _require(m.quantization is None, "model.quantization: a quantized base is frozen: it needs model.lora")
        return
    _require(lora.r >= 1, f"model.lora.r: expected an integer >= 1, got {lora.r}")
    _require(lora.alpha > 0, f"model.lora.alpha: expected a number > 0, got {lora.alpha}")
    _require(0 <= lora.dropout < 1, f"model.lora.dropout: expected a number in [0, 1), got {lora.dropout}")
    _require(bool(lora.target_modules), "model.lora.target_modules: expected at least one module name, got none")


# ----------------------------------------------------------------------------- DeepSpeed JSON

AUTO = "auto"


def _read_ds_file(path: str) -> dict:
    ds = read_json(path, ConfigError, what="deepspeed.config: file")
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed.config: '{path}' must hold a JSON object")
    zero_stage(ds, path)
    return ds


def zero_stage(ds: dict, path: str) -> int:
    """The ZeRO stage of a DeepSpeed config (0 when it has no zero_optimization block); anything but
    an integer 0..3 is a ConfigError naming the file and the field."""
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"deepspeed.config: {path}: zero_optimization: expected a JSON object, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 3:
        raise ConfigError(f"deepspeed.config: {path}: zero_optimization.stage: expected an integer 0..3, got {stage!r}")
    return stage


def _fill(ds: dict, dotted: str, value: Any, source: str, path: str) -> None:
    """Put `value` at `dotted` when the file says "auto" or nothing; a different value is an error."""
    node = ds
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    current = node.get(parts[-1], AUTO)
    if current == AUTO:
        node[parts[-1]] = value
    elif current != value:
        raise ConfigError(
            f"{source}: the run config gives {value!r} but {path} sets {dotted}={current!r} "
            f"(use \"auto\" there: the run config is the one source of truth)"
        )


def deepspeed_config(cfg: RunConfig, world_size: int, hidden_size: int | None = None) -> dict:
    """The DeepSpeed config dict for this run: the JSON file with every "auto" filled in."""
    path = cfg.deepspeed.config
    ds = _read_ds_file(path)
    o = cfg.optim
    if "scheduler" in ds:
        raise ConfigError(
            f"deepspeed.config: {path} has a 'scheduler' block; set optim.schedule/optim.warmup_ratio instead"
        )
    _fill(ds, "train_micro_batch_size_per_gpu", o.micro_batch_size, "optim.micro_batch_size", path)
    _fill(ds, "gradient_accumulation_steps", o.gradient_accumulation_steps, "optim.gradient_accumulation_steps", path)
    _fill(ds, "train_batch_size", o.micro_batch_size * o.gradient_accumulation_steps * world_size,
          "optim.micro_batch_size x optim.gradient_accumulation_steps x world size", path)
    _fill(ds, "gradient_clipping", o.max_grad_norm, "optim.max_grad_norm", path)
    _fill(ds, "bf16.enabled", cfg.model.dtype == "bf16", "model.dtype", path)
    _fill(ds, "fp16.enabled", cfg.model.dtype == "fp16", "model.dtype", path)
    if "optimizer" in ds:
        params = ds["optimizer"].setdefault("params", {})
        _fill(params, "lr", o.lr, "optim.lr", path)
        _fill(params, "betas", [o.beta1, o.beta2], "optim.beta1/beta2", path)
        _fill(params, "eps", o.eps, "optim.eps", path)
        _fill(params, "weight_decay", o.weight_decay, "optim.weight_decay", path)
    zero = ds.get("zero_optimization", {})
    if hidden_size is not None:
        for key, value in (
            ("reduce_bucket_size", hidden_size * hidden_size),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
            ("stage3_param_persistence_threshold", 10 * hidden_size),
        ):
            if zero.get(key) == AUTO:
                zero[key] = value
    leftover = [k for k, v in _walk(ds) if v == AUTO and not (hidden_size is None and k.startswith("zero_optimization."))]
    if leftover:
        raise ConfigError(f"deepspeed.config: {path} has \"auto\" at {', '.join(leftover)}, which the run config does not decide")
    return ds


def _walk(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], d


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
