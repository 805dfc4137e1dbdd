"""Loading LLaMA-class causal LMs and their tokenizers, and the embedded tiny default.

Any Hugging Face causal LM whose decoder returns final-norm hidden states and whose output head
is a module works (LLaMA, Mistral, Qwen2, ...): only the Auto classes are used. Under ZeRO-3 the
caller passes the filled DeepSpeed config so that `HfDeepSpeedConfig` exists *before*
`from_pretrained`, and weights are partitioned while they load instead of every rank holding a
full copy.

`name_or_path: tiny` is the embedded default: a random LlamaForCausalLM (hidden 64, 2 layers)
with a real 32000-token SentencePiece LLaMA vocabulary (the LLaMA-format tokenizer shipped by the
`mistral-common` package, installed with `pip install --no-deps mistral-common`). It is written
once, deterministically from its seed, as an ordinary Hugging Face directory under the cache
(`$COIN_CACHE`, default ~/.cache/coin), so every later step uses the same from_pretrained path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import torch
from torch import nn

from coin.paths import cache_root

from .config import ConfigError, LoraConfig, ModelConfig, TinyModelConfig, is_local_path

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"  # what marks a PEFT adapter directory


def _llama_vocab_file() -> str:
    try:
        import mistral_common
    except ImportError:
        raise ConfigError(
            "model.name_or_path: 'tiny' needs the LLaMA-format SentencePiece vocabulary shipped by "
            "mistral-common; install it with `pip install --no-deps mistral-common`"
        ) from None
    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    if not os.path.isfile(path):
        raise ConfigError(f"model.name_or_path: 'tiny': {path} is missing from the installed mistral-common")
    return path


def tiny_model_dir(tiny: TinyModelConfig) -> str:
    """Materialise the tiny default as a HF directory (idempotent, safe across concurrent ranks)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = json.dumps(tiny.__dict__, sort_keys=True)
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    out = os.path.join(cache_root(), f"tiny-llama-{key}")
    if os.path.isfile(os.path.join(out, "model.safetensors")):
        return out
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-llama-", dir=cache_root())
    try:
        shutil.copyfile(_llama_vocab_file(), os.path.join(tmp, "tokenizer.model"))
        tok = AutoTokenizer.from_pretrained(tmp)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=tiny.hidden_size,
            intermediate_size=tiny.intermediate_size,
            num_hidden_layers=tiny.num_hidden_layers,
            num_attention_heads=tiny.num_attention_heads,
            num_key_value_heads=tiny.num_key_value_heads,
            max_position_embeddings=tiny.max_position_embeddings,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.unk_token_id,
            tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny.seed)
            model = LlamaForCausalLM(config)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.pad_token = tok.unk_token
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another rank finished first: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model_path(mcfg: ModelConfig) -> str:
    return tiny_model_dir(mcfg.tiny) if mcfg.name_or_path == "tiny" else mcfg.name_or_path


# Any of these in a directory means it carries a tokenizer (sentencepiece, BPE, WordPiece, fast).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tekken.json")


def model_path_error(path: str, what: str, tokenizer: bool = True) -> str | None:
    """Why `path` (given as `what`, e.g. model.name_or_path or --model) cannot be loaded from disk, or
    None: it is `tiny`, a directory (with tokenizer files, if `tokenizer`), or absent but possibly a hub id."""
    if path == "tiny":
        return None
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        if not is_local_path(path):  # `name` or `org/name`: possibly a hub id
            return None
        return f"{what}: '{path}' was not found on disk (no directory {full})"
    if tokenizer and os.path.isdir(full) and not any(os.path.isfile(os.path.join(full, f)) for f in TOKENIZER_FILES):
        held = sorted(os.listdir(full))
        return (f"{what}: directory '{path}' has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES[:3])} "
                f"or another tokenizer file; it holds {', '.join(held[:10]) or 'nothing'}"
                f"{', ...' if len(held) > 10 else ''}): copy the tokenizer of the model it came from into it "
                f"(`coin export` writes it), or set model.tokenizer")
    return None


def _from_pretrained(load, path: str, what: str, tokenizer: bool, **kwargs):
    """`load(path)`; a path that is not on disk is said to be so before (and if) the hub fails too."""
    problem = model_path_error(path, what, tokenizer)
    if problem:
        raise ConfigError(problem)
    if path != "tiny" and not os.path.exists(os.path.expanduser(path)):
        _say_once(f"coin: {what}: '{path}' is not a directory on disk here ({os.getcwd()}): trying it as a "
                  f"Hugging Face hub id")
        try:
            return load(path, **kwargs)
        except OSError as e:  # offline, unknown repository, no access
            raise ConfigError(f"{what}: '{path}' was not found on disk (no directory {os.path.abspath(path)}) nor "
                              f"loaded from the Hugging Face hub ({str(e).splitlines()[0] if str(e) else e!r})") from None
    return load(path, **kwargs)


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    import sys

    if message not in _SAID and os.environ.get("RANK", "0") == "0":
        _SAID.add(message)
        print(message, file=sys.stderr, flush=True)


def load_tokenizer(mcfg: ModelConfig, padding_side: str = "right", what: str | None = None):
    """The tokenizer, with a pad token (unk, else eos) when it has none. A directory without
    tokenizer files, or a path that exists neither on disk nor on the hub, is a ConfigError naming
    `what` (default: the config key, model.tokenizer or model.name_or_path)."""
    from transformers import AutoTokenizer

    path = mcfg.tokenizer or resolve_model_path(mcfg)
    what = what or ("model.tokenizer" if mcfg.tokenizer else "model.name_or_path")
    tok = _from_pretrained(AutoTokenizer.from_pretrained, path, what, True, trust_remote_code=mcfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    if tok.pad_token is None:
        raise ConfigError(f"model.tokenizer: '{path}' has no pad, unk or eos token to pad with")
    tok.padding_side = padding_side
    return tok


def load_model(mcfg: ModelConfig, ds_config: dict | None = None, what: str = "model.name_or_path") -> nn.Module:
    """A causal LM from a path or hub id, with LoRA adapters when `mcfg.lora` is set.

    With a ZeRO-3 `ds_config`, an `HfDeepSpeedConfig` is alive during `from_pretrained`, so the
    weights are partitioned as they load. The returned model keeps a reference to it. The adapters
    are added after loading (peft); the engine partitions them with the rest. A PEFT adapter
    directory (what `coin export` writes for a LoRA run) loads, for inference, as its base model
    with the adapter merged in. A path that is neither on disk nor on the hub is a ConfigError
    naming `what`.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(mcfg)
    if is_adapter_dir(path):
        if ds_config is not None:
            raise ConfigError(f"model.name_or_path: '{path}' is a LoRA adapter directory; to train from it, "
                              f"export the merged model (coin export --merged) and start from that")
        return load_adapter_model(path, mcfg)
    hf_ds = None
    if ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)  # must exist before from_pretrained
    extra = {}
    if mcfg.quantization:
        extra = {"quantization_config": _quantization_config(mcfg), "device_map": {"": torch.cuda.current_device()}}
    model = _from_pretrained(
        AutoModelForCausalLM.from_pretrained, path, what, False,
        dtype=DTYPES[mcfg.dtype],
        attn_implementation=mcfg.attn_implementation,
        trust_remote_code=mcfg.trust_remote_code,
        **extra,
    )
    model._coin_hf_ds_config = hf_ds  # keep it alive as long as the model
    model.config.use_cache = False
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mcfg.lora is not None:
        add_lora(model, mcfg.lora)
    return model


# ----------------------------------------------------------------------------- LoRA


def _require_peft(key: str = "model.lora"):
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{key}: LoRA needs the peft package; install it with `pip install peft` "
                          f"(or `pip install -e .[lora]`)") from None
    return peft


def peft_lora_config(lora: LoraConfig, base_model_name_or_path: str | None = None):
    """The peft LoraConfig of `model.lora` (what adapter_config.json holds)."""
    peft = _require_peft()
    return peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM",
                           base_model_name_or_path=base_model_name_or_path)


def add_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Inject LoRA adapters into `model` in place (peft); every other parameter is frozen.

    The model keeps its own class and parameter names; a targeted linear layer `X` becomes
    `X.base_layer` (frozen) plus `X.lora_A.default` and `X.lora_B.default` (trained, B = 0 at the
    start, so the model's outputs are unchanged until the first update).
    """
    peft = _require_peft()
    try:
        peft.inject_adapter_in_model(peft_lora_config(lora), model)
    except ValueError as e:  # peft: no module matched
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"model.lora.target_modules: {lora.target_modules} ({first})") from None
    return model


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(path), ADAPTER_CONFIG))


def load_adapter_model(path: str, mcfg: ModelConfig) -> nn.Module:
    """A PEFT adapter directory for inference: its base model (adapter_config.json's
    `base_model_name_or_path`) with the adapter merged into the weights."""
    from transformers import AutoModelForCausalLM

    from coin.errors import read_json

    peft = _require_peft(f"model '{path}'")
    cfg_path = os.path.join(path, ADAPTER_CONFIG)
    base = read_json(cfg_path, ConfigError, what="adapter config").get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{cfg_path}: base_model_name_or_path: expected the base model's path or id, got {base!r}")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=DTYPES[mcfg.dtype],
                                                     attn_implementation=mcfg.attn_implementation,
                                                     trust_remote_code=mcfg.trust_remote_code)
    except OSError as e:
        raise ConfigError(f"{cfg_path}: base model '{base}' could not be loaded ({str(e).splitlines()[0]})") from None
    model = peft.PeftModel.from_pretrained(model, path).merge_and_unload()
    model.config.use_cache = False
    return model


def _quantization_config(mcfg: ModelConfig):
    """bitsandbytes loading of the frozen base (GPU only); a clear error where it cannot work."""
    key = f"model.quantization: {mcfg.quantization}"
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: bitsandbytes quantization needs a CUDA GPU, and none is visible")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"{key}: needs the bitsandbytes package (`pip install bitsandbytes`, GPU only)") from None
    from transformers import BitsAndBytesConfig

    if mcfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=DTYPES[mcfg.dtype])


class CoinModel(nn.Module):
    """Wraps a causal LM for the CoIN step: forward returns final-norm hidden states, not logits.

    The output head is applied later, by the loss, to the label positions only (`head`). It is
    called as a module so that ZeRO-3's hooks gather its partitioned weight.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Positions count real tokens, so a left-padded row sees the same positions as the same
        # row padded on the right (HF would otherwise number the padding too).
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (works on ZeRO-3 partitioned parameters too)."""
        return sum(_numel(p) for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops_per_token(self, seq_len: float, label_fraction: float) -> float:
        """Training FLOPs per token (forward + backward), for MFU.

        nanoGPT/PaLM's count, adapted to the lean LM loss: 6 x the decoder's matrix parameters
        (the input embedding is a lookup), + 12 L H T for attention, + 6 x the output head's
        parameters only for the fraction of tokens that carry a label (the head runs there alone).
        A frozen parameter (LoRA's base) counts 4, not 6: forward and input gradient, no weight
        gradient.
        """
        cfg = self.lm.config
        embed, head = self.lm.get_input_embeddings().weight, self.head.weight
        skip = {id(embed), id(head)}
        body = sum((6 if p.requires_grad else 4) * _numel(p) for p in self.parameters() if id(p) not in skip)
        head_flops = (6 if head.requires_grad else 4) * _numel(head)
        return body + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len + head_flops * label_fraction


def _numel(p: torch.Tensor) -> int:
    return getattr(p, "ds_numel", p.numel())

