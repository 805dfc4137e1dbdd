"""`coin pretrain`: short causal-LM pre-training of the embedded tiny LLaMA on a text corpus.

    coin pretrain --corpus FILE --out DIR [--steps 200] [--seed 0] [--lr 1e-3] [--batch-size 16]
                  [--max-length 64] [--no-progress]

One process, a plain torch loop (AdamW, constant learning rate), seeded: the corpus's non-empty
lines are tokenized once, and each step takes a seeded random batch of lines (padded, padding
masked out of the loss). The result is a Hugging Face directory (model.safetensors, config,
tokenizer) that `model.name_or_path=DIR` loads; it is written under a temporary name and renamed,
so DIR appears complete or not at all.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

from coin.errors import CoinError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="text file, one sentence per line")
    p.add_argument("--out", required=True, help="output Hugging Face model directory (must not exist)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")


def pretrain(corpus: str, out: str, steps: int = 200, seed: int = 0, lr: float = 1e-3, batch_size: int = 16,
             max_length: int = 64, progress: bool = True) -> list[float]:
    """Pre-train the tiny default on `corpus`, write it to `out`; returns the loss of every step."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from coin.data_tools.progress import progress as bar

    from .config import TinyModelConfig
    from .model import tiny_model_dir

    if steps < 1 or batch_size < 1 or max_length < 2:
        raise CoinError("coin pretrain: --steps and --batch-size must be at least 1, --max-length at least 2")
    if os.path.exists(out):
        raise CoinError(f"{out}: already exists (coin pretrain writes a new directory)")
    try:
        with open(corpus, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError as e:
        raise CoinError(f"{corpus}: cannot read the corpus ({e.strerror})") from None
    if not lines:
        raise CoinError(f"{corpus}: the corpus has no non-empty line")
    base = tiny_model_dir(TinyModelConfig())
    tok = AutoTokenizer.from_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    ids = [tok(ln, truncation=True, max_length=max_length - 1)["input_ids"] + [tok.eos_token_id] for ln in lines]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.unk_token_id
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    with bar(total=steps, desc="pretrain", unit="step", enabled=progress) as pb:
        for _ in range(steps):
            pick = torch.randint(len(ids), (batch_size,), generator=gen).tolist()
            width = max(len(ids[i]) for i in pick)
            x = torch.full((batch_size, width), pad, dtype=torch.long)
            mask = torch.zeros((batch_size, width), dtype=torch.long)
            for r, i in enumerate(pick):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            labels = x.masked_fill(mask == 0, -100)
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            pb.update(1)
            pb.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return losses


def main(args) -> int:
    losses = pretrain(args.corpus, args.out, steps=args.steps, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                      max_length=args.max_length, progress=not args.no_progress)
    print(f"pre-trained {len(losses)} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}; wrote {args.out}")
    return 0
