"""The `llm` backend: a local Hugging Face causal (or chat) model asked to paraphrase instructions.

What the model rewrites (the *target*): in a template unit, the longest line that holds no
placeholder and is not an option line (typically the question of a FLAN template), spliced back
afterwards; when every line holds placeholders, the whole template (the model is told to keep
the `{placeholders}`, and the `lost_protected` filter drops candidates that do not). Bare
instructions are rewritten whole.

The prompt is `prompt_template` with `{instruction}` replaced by the target; with `chat` (auto:
when the tokenizer has a chat template) it is sent as one user message through the tokenizer's
chat template. Generation is batched (`batch_size` targets, `num_candidates` samples each), with
left padding so every prompt ends at the same position, on CUDA when available (or `device`).
The first non-empty line of each generation, stripped of quotes and a leading label, is the
candidate. `temperature` 0 means greedy decoding, which gives one candidate per target. Before each batch the torch RNG is seeded from (seed, chunk index, batch number): the
same input and settings give the same candidates, in one process or in N shards.
"""
from __future__ import annotations

import re

from coin.errors import CoinError

from ..filters import Candidate
from ..templates import PLACEHOLDER
from ..units import TEMPLATE, Unit
from . import stable_seed

DEFAULT_PROMPT = (
    "Rewrite the following instruction so that it keeps exactly the same meaning but uses different "
    "words. Keep any text in curly braces, such as {sentence}, unchanged. Reply with the rewritten "
    "instruction only.\n\nInstruction: {instruction}\nRewritten instruction:"
)


def split_target(text: str) -> tuple[str, str, str]:
    """(before, target, after): the longest placeholder-free, non-option line, or the whole text."""
    lines = text.split("\n")
    best, best_len = None, 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if (PLACEHOLDER.search(line) or stripped.startswith("- ") or stripped.upper().startswith("OPTIONS")
                or len(stripped.split()) < 3):
            continue
        if len(stripped) > best_len:
            best, best_len = i, len(stripped)
    if best is None:
        return "", text, ""
    line = lines[best]
    lead = line[: len(line) - len(line.lstrip())]
    trail = line[len(line.rstrip()):]
    before = "\n".join(lines[:best] + [""]) + lead
    after = trail + "\n".join([""] + lines[best + 1:])
    return before, line.strip(), after


def clean_generation(text: str) -> str:
    """The first non-empty line of a generation, without surrounding quotes or a leading label."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            line = re.sub(r"^(rewritten instruction|instruction|paraphrase)\s*:\s*", "", line, flags=re.IGNORECASE)
            return line.strip().strip('"').strip("'").strip()
    return ""


class LLMBackend:
    name = "llm"

    def __init__(self, model: str, prompt_template: str = DEFAULT_PROMPT, num_candidates: int = 4,
                 batch_size: int = 8, max_new_tokens: int = 48, temperature: float = 0.8, top_p: float = 0.95,
                 seed: int = 0, device: str = "auto", dtype: str = "auto", chat: str = "auto"):
        if "{instruction}" not in prompt_template:
            raise CoinError("llm backend: --prompt-template must contain '{instruction}'")
        if chat not in ("auto", "on", "off"):
            raise CoinError(f"llm backend: --chat expects auto, on or off, got {chat!r}")
        self.model_name, self.prompt_template = model, prompt_template
        self.num_candidates, self.batch_size, self.max_new_tokens = num_candidates, batch_size, max_new_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.device_name, self.dtype_name, self.chat_mode = device, dtype, chat
        self._loaded = False

    def settings(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "prompt_template": self.prompt_template,
                "num_candidates": self.num_candidates, "batch_size": self.batch_size,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "chat": self.chat_mode}

    def load(self) -> None:
        if self._loaded:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "fp32": torch.float32,
                 "bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype_name)
        if dtype is None:
            raise CoinError(f"llm backend: --dtype expects auto, fp32, bf16 or fp16, got {self.dtype_name!r}")
        try:
            tok = AutoTokenizer.from_pretrained(self.model_name)
            model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - many failure types (missing dir, offline hub, ...)
            raise CoinError(f"llm backend: cannot load model '{self.model_name}' "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        tok.padding_side = "left"  # every prompt ends at the last position: generation continues from there
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
        self.tokenizer, self.model, self.device = tok, model.to(device).eval(), device
        self.use_chat = self.chat_mode == "on" or (self.chat_mode == "auto" and bool(getattr(tok, "chat_template", None)))
        self._loaded = True

    def build_prompt(self, target: str) -> str:
        prompt = self.prompt_template.replace("{instruction}", target)
        if self.use_chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def generate(self, targets: list[str], chunk_index: int) -> list[list[str]]:
        """`num_candidates` cleaned generations per target, batched."""
        import torch

        self.load()
        tok = self.tokenizer
        out: list[list[str]] = []
        for b in range(0, len(targets), self.batch_size):
            prompts = [self.build_prompt(t) for t in targets[b:b + self.batch_size]]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat).to(self.device)
            torch.manual_seed(stable_seed(self.seed, chunk_index, b) % (2**32))
            sample = self.temperature > 0
            n = self.num_candidates if sample else 1  # greedy decoding has one answer
            with torch.no_grad():
                gen = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                    temperature=self.temperature if sample else None, top_p=self.top_p if sample else None,
                    num_return_sequences=n, pad_token_id=tok.pad_token_id,
                )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i in range(len(prompts)):
                out.append([clean_generation(t) for t in texts[i * n:(i + 1) * n]])
        return out

    def propose(self, units: list[Unit], chunk_index: int) -> list[list[Candidate]]:
        parts = [split_target(u.text) if u.kind == TEMPLATE else ("", u.text, "") for u in units]
        generations = self.generate([target for _, target, _ in parts], chunk_index) if units else []
        out = []
        for unit, (before, _, after), gens in zip(units, parts, generations):
            cands = []
            for g in gens:
                core = before + g + after
                cands.append(Candidate(core, unit.finish(core) if g else None, "llm"))
            out.append(cands)
        return out
