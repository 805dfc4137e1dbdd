"""The LR schedule: warm-up then linear / cosine / constant, as a LambdaLR DeepSpeed can step."""
import math

import pytest
import torch

from coin.training.config import OptimConfig
from coin.training.schedule import build_scheduler, lr_multiplier, warmup_steps


def test_warmup_length_rounds_up():
    assert warmup_steps(OptimConfig(warmup_ratio=0.1), 60) == 6
    assert warmup_steps(OptimConfig(warmup_ratio=0.2), 12) == 3
    assert warmup_steps(OptimConfig(warmup_ratio=0.0), 12) == 0


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_warmup_is_linear_from_zero(schedule):
    assert [lr_multiplier(s, schedule, 4, 20) for s in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]


def test_decays():
    assert lr_multiplier(12, "linear", 4, 20) == pytest.approx(0.5)
    assert lr_multiplier(20, "linear", 4, 20) == 0
    assert lr_multiplier(12, "cosine", 4, 20) == pytest.approx(0.5)
    assert lr_multiplier(8, "cosine", 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(25, "cosine", 4, 20) == 0
    assert lr_multiplier(19, "constant", 4, 20) == 1.0


def test_scheduler_state_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, OptimConfig(lr=0.1, warmup_ratio=0.25, schedule="linear"), total_steps=8)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0, 0.05, 0.1, 0.1 * 5 / 6, 0.1 * 4 / 6])
    state = sched.state_dict()
    opt2 = torch.optim.SGD([p], lr=0.1)
    sched2 = build_scheduler(opt2, OptimConfig(lr=0.1, warmup_ratio=0.25, schedule="linear"), total_steps=8)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
