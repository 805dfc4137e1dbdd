"""The learning-rate schedule: linear warm-up, then linear decay, cosine decay or constant.

The schedule is a plain `torch.optim.lr_scheduler.LambdaLR`, handed to `deepspeed.initialize`
(see engine.py), so DeepSpeed steps it once per optimiser step and saves and restores its state
with every checkpoint. The multiplier follows transformers' `get_*_schedule_with_warmup`
(the reference trains through the HF Trainer), with `s` the number of optimiser steps already
taken, `W` the warm-up steps and `T` the total steps:

    warm-up   s < W:  s / W
    linear          max(0, (T - s) / (T - W))
    cosine          max(0, 0.5 * (1 + cos(pi * (s - W) / (T - W))))
    constant        1

`W = ceil(warmup_ratio * T)`, as in the HF Trainer.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig

SCHEDULES = ("linear", "cosine", "constant")


def warmup_steps(ocfg: OptimConfig, total_steps: int) -> int:
    return int(math.ceil(ocfg.warmup_ratio * total_steps))


def lr_multiplier(step: int, schedule: str, warmup: int, total: int) -> float:
    """The factor applied to the peak learning rate after `step` optimiser steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def build_scheduler(optimizer: torch.optim.Optimizer, ocfg: OptimConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR over `optimizer` implementing `ocfg.schedule` for a run of `total_steps`."""
    warmup = warmup_steps(ocfg, total_steps)
    schedule = ocfg.schedule
    return LambdaLR(optimizer, lambda s: lr_multiplier(s, schedule, warmup, total_steps))
