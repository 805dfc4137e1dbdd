"""Export: a Hugging Face model directory any HF tool can load.

    coin export CKPT_DIR OUT_DIR [--merged]

CKPT_DIR is a run output directory, its `checkpoints/` directory or one `checkpoints/step_N`
directory (the newest complete checkpoint is used for the first two). OUT_DIR receives

    model.safetensors (or sharded *.safetensors + index)   consolidated weights
    config.json, generation_config.json                     the model's configs
    tokenizer files                                         the run's tokenizer (pad token set)
    coin_run_config.yaml                                    the run config
    coin_final_metrics.json                                 the run's final metrics (when known)

and loads with `AutoModelForCausalLM.from_pretrained(OUT_DIR)` / `AutoTokenizer.from_pretrained`.

From a checkpoint the ZeRO shards are consolidated offline, in one process without a GPU
(DeepSpeed's zero_to_fp32), then cast to the run's `model.dtype`. The checkpoint is verified
first (checkpoint.verify: sizes and hashes of its manifest, no unsafe pickle) and every file is
loaded with weights_only=True (engine.safe_torch_load). At the end of a run the same
directory is written from the live engine (`<output.dir>/hf`): the parameters are gathered from
the ranks, so no checkpoint round-trip is needed. Both paths give identical weights.

A LoRA run (`model.lora`) exports its adapter in PEFT's format instead (what
`PeftModel.from_pretrained(base, OUT_DIR)` loads; `coin eval` takes it too):

    adapter_model.safetensors, adapter_config.json          the adapters (base_model_name_or_path: the base)
    tokenizer files, coin_run_config.yaml, coin_final_metrics.json

and, on request (`output.export_merged`: `<output.dir>/hf_merged`; `coin export --merged`), the
full model with every adapter merged in, W = W0 + (alpha / r) B A, as an ordinary model
directory. From a checkpoint (adapters only) the base weights are read again from the run's
`model.name_or_path`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import torch
import yaml

from coin.errors import CoinError

from . import checkpoint as ckpt
from .config import dump_yaml

RUN_CONFIG_NAME = "coin_run_config.yaml"
FINAL_METRICS_NAME = "coin_final_metrics.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_A = re.compile(r"^(.*)\.lora_A\.default\.weight$")


def write_hf_dir(state_dict: dict[str, torch.Tensor], hf_config_dir: str, out_dir: str, *,
                 run_config_yaml: str | None = None, final_metrics: dict | None = None,
                 max_shard_size: str = "5GB") -> None:
    """Write weights (keys of a CoinModel: `lm.` + the HF causal LM's names) as an HF directory.

    `hf_config_dir` holds config.json, generation_config.json and the tokenizer files. No model
    is instantiated (inside a ZeRO-3 run transformers would partition it): the tensors go
    straight to safetensors shards (huggingface_hub's `save_torch_state_dict`, the writer
    `save_pretrained` uses), with the tied output head left out as `save_pretrained` does.
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(hf_config_dir)
    weights = {k[len("lm."):] if k.startswith("lm.") else k: v for k, v in state_dict.items()}
    if getattr(config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)  # tied to the input embeddings: rebuilt on load
    if not weights:
        raise CoinError(f"export: no weights to write for {hf_config_dir}/config.json")
    os.makedirs(out_dir, exist_ok=True)
    save_torch_state_dict(weights, out_dir, max_shard_size=max_shard_size, metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    if os.path.isfile(os.path.join(hf_config_dir, "generation_config.json")):
        GenerationConfig.from_pretrained(hf_config_dir).save_pretrained(out_dir)
    _write_companions(hf_config_dir, out_dir, run_config_yaml, final_metrics)


def _write_companions(hf_config_dir: str, out_dir: str, run_config_yaml: str | None,
                      final_metrics: dict | None) -> None:
    """The tokenizer, the run config and the final metrics next to exported weights."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(hf_config_dir).save_pretrained(out_dir)
    if run_config_yaml is not None:
        ckpt.write_atomic(os.path.join(out_dir, RUN_CONFIG_NAME), run_config_yaml)
    if final_metrics is not None:
        ckpt.write_atomic(os.path.join(out_dir, FINAL_METRICS_NAME), json.dumps(final_metrics, indent=1) + "\n")


# ----------------------------------------------------------------------------- LoRA


def peft_adapter_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of a CoinModel state dict under PEFT's file names: `lm.X.lora_A.default.weight`
    -> `base_model.model.X.lora_A.weight` (what PeftModel.save_pretrained writes)."""
    out = {}
    for key, value in state.items():
        name = key[len("lm."):] if key.startswith("lm.") else key
        if re.search(r"\.lora_[AB]\.default\.weight$", name):
            out["base_model.model." + name.replace(".default.weight", ".weight")] = value.contiguous()
    return out


def merge_lora(state: dict[str, torch.Tensor], lora) -> dict[str, torch.Tensor]:
    """A CoinModel state dict with adapters -> the plain model's weights, every adapter merged in:
    `X.weight = X.base_layer.weight + (alpha / r) B A` (computed in float32, cast to the base's dtype)."""
    scaling = lora.alpha / lora.r
    merged = {key.replace(".base_layer.", "."): value for key, value in state.items() if ".lora_" not in key}
    for key in state:
        m = _LORA_A.match(key)
        if m is None:
            continue
        a, b = state[key].float(), state[f"{m.group(1)}.lora_B.default.weight"].float()
        base = merged[f"{m.group(1)}.weight"]
        merged[f"{m.group(1)}.weight"] = (base.float() + scaling * (b @ a)).to(base.dtype)
    return merged


def write_adapter_dir(state: dict[str, torch.Tensor], lora, base_model: str, hf_config_dir: str, out_dir: str, *,
                      run_config_yaml: str | None = None, final_metrics: dict | None = None) -> None:
    """Write the adapters of `state` (CoinModel keys) as a PEFT adapter directory for `base_model`."""
    from safetensors.torch import save_file

    from .model import peft_lora_config

    weights = peft_adapter_weights(state)
    if not weights:
        raise CoinError(f"export: no LoRA adapter weights to write for {hf_config_dir} (model.lora is set)")
    os.makedirs(out_dir, exist_ok=True)
    save_file(weights, os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_lora_config(lora, base_model).save_pretrained(out_dir)
    _write_companions(hf_config_dir, out_dir, run_config_yaml, final_metrics)


# ----------------------------------------------------------------------------- the two paths


def export_from_engine(trainer, out_dir: str, merged_dir: str | None = None) -> None:
    """Collective (end of a run): gather the weights from every rank, rank 0 writes `out_dir`
    (a LoRA run: the adapter; `merged_dir`: also the merged model)."""
    from . import dist
    from .model import resolve_model_path

    lora = trainer.cfg.model.lora
    state = trainer.engine.consolidated_state_dict(trainable_only=lora is not None)
    full = trainer.engine.consolidated_state_dict() if lora is not None and merged_dir else None
    if trainer.is_main:
        tmp_meta = os.path.join(trainer.out_dir, ".hf_config_export")
        shutil.rmtree(tmp_meta, ignore_errors=True)
        trainer.save_hf_config(tmp_meta)
        final = _read_json(os.path.join(trainer.out_dir, "final_metrics.json"))
        run_yaml = dump_yaml(trainer.cfg)
        if lora is None:
            _replace_dir(out_dir, lambda tmp: write_hf_dir(state, tmp_meta, tmp, run_config_yaml=run_yaml,
                                                            final_metrics=final))
            trainer.monitor.print(f"exported the model to {out_dir} (AutoModelForCausalLM.from_pretrained loads it)")
        else:
            base = resolve_model_path(trainer.cfg.model)
            _replace_dir(out_dir, lambda tmp: write_adapter_dir(state, lora, base, tmp_meta, tmp,
                                                                run_config_yaml=run_yaml, final_metrics=final))
            trainer.monitor.print(f"exported the LoRA adapter to {out_dir} (PeftModel.from_pretrained on {base})")
            if full is not None:
                _replace_dir(merged_dir, lambda tmp: write_hf_dir(merge_lora(full, lora), tmp_meta, tmp,
                                                                  run_config_yaml=run_yaml, final_metrics=final))
                trainer.monitor.print(f"exported the merged model to {merged_dir}")
        shutil.rmtree(tmp_meta, ignore_errors=True)
    dist.barrier()


def _base_with_adapters(mcfg, adapters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The run's base model (read from `model.name_or_path`, one process) with the checkpoint's
    adapters: a CoinModel state dict for `merge_lora`."""
    from .model import load_model

    lm = load_model(dataclasses.replace(mcfg, quantization=None))  # merged weights are plain, never quantized
    state = {f"lm.{k}": v for k, v in lm.state_dict().items()}
    missing = [k for k in adapters if k not in state]
    if missing:
        raise CoinError(f"export: the checkpoint's adapter {missing[0]} has no place in the base model "
                        f"{mcfg.name_or_path} with model.lora={mcfg.lora}")
    state.update(adapters)
    return state


def export_checkpoint(path: str, out_dir: str, merged: bool = False) -> str:
    """Consolidate a (ZeRO) checkpoint offline into an HF directory (a LoRA run: its adapter, or
    with `merged` the merged model); returns the tag used."""
    from .config import model_config_from_dict
    from .engine import consolidate_checkpoint
    from .model import DTYPES, resolve_model_path

    root, tag = ckpt.resolve_checkpoint(path)
    problem = ckpt.verify(root, tag)  # manifest sizes + hashes, and no unsafe pickle, before anything loads
    if problem is not None:
        raise ckpt.CheckpointError(problem)
    tag_dir = os.path.join(root, tag)
    hf_config_dir = os.path.join(tag_dir, ckpt.HF_CONFIG)
    if not os.path.isdir(hf_config_dir):
        raise CoinError(f"checkpoint {tag_dir}: no {ckpt.HF_CONFIG}/ (not written by coin train)")
    run_yaml = _read_text(os.path.join(tag_dir, ckpt.RUN_CONFIG))
    # the run's dtype, read from the saved config without validating it (its paths may not exist here)
    run = (yaml.safe_load(run_yaml) or {}) if run_yaml is not None else {}
    name = (run.get("model") or {}).get("dtype", "fp32")
    if name not in DTYPES:
        raise CoinError(f"{tag_dir}/{ckpt.RUN_CONFIG}: model.dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    dtype = DTYPES[name]
    mcfg = model_config_from_dict(run.get("model"), f"{tag_dir}/{ckpt.RUN_CONFIG}")
    if merged and mcfg.lora is None:
        raise CoinError(f"coin export --merged: {tag_dir} holds full parameters (no model.lora): "
                        f"its export is the full model already; leave out --merged")
    state = consolidate_checkpoint(root, tag)  # every file loaded with weights_only=True
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    final = _read_json(os.path.join(os.path.dirname(root), "final_metrics.json"))
    if final is not None and final.get("step") != ckpt.step_of(tag):
        final = None  # metrics of another step: do not mislabel them
    if mcfg.lora is not None and not merged:
        base = resolve_model_path(mcfg)
        _replace_dir(out_dir, lambda tmp: write_adapter_dir(state, mcfg.lora, base, hf_config_dir, tmp,
                                                            run_config_yaml=run_yaml, final_metrics=final))
        return tag
    if mcfg.lora is not None:
        state = merge_lora(_base_with_adapters(mcfg, state), mcfg.lora)
    _replace_dir(out_dir, lambda tmp: write_hf_dir(state, hf_config_dir, tmp, run_config_yaml=run_yaml,
                                                    final_metrics=final))
    return tag


def _replace_dir(out_dir: str, write) -> None:
    """Write into a temporary sibling, then swap it in: OUT_DIR is complete or untouched."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if os.path.isdir(out_dir):
            old = tmp + ".old"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_text(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read_json(path: str) -> dict | None:
    text = _read_text(path)
    return json.loads(text) if text else None


# ----------------------------------------------------------------------------- `coin export`


def add_arguments(parser) -> None:
    parser.add_argument("ckpt_dir", metavar="CKPT_DIR",
                        help="a run output directory, its checkpoints/ directory, or one checkpoints/step_N directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write the Hugging Face model directory")
    parser.add_argument("--merged", action="store_true",
                        help="a LoRA run: write the base model with the adapter merged in (default: the adapter "
                             "in PEFT format)")


def main(args) -> int:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation needs no accelerator
    tag = export_checkpoint(args.ckpt_dir, args.out_dir, merged=args.merged)
    print(f"coin export: {tag} -> {args.out_dir}")
    return 0
