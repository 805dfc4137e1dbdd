"""training/dist.py on a GPU machine, shown on the CPU: which device the ranks use, and that each
rank picks its GPU before the NCCL process group exists (torch and DeepSpeed calls recorded)."""
from __future__ import annotations

import pytest
import torch

from coin.training import dist


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch sees CUDA; set_device and DeepSpeed's init_distributed are recorded, not run."""
    import deepspeed

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(deepspeed, "init_distributed",
                        lambda dist_backend=None, verbose=True, timeout=None: calls.append(("init_distributed", dist_backend)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    for name, value in (("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29800")):
        monkeypatch.setenv(name, value)
    return calls


def test_cuda_ranks_pick_their_gpu_before_the_nccl_group(gpu_machine, monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    dist.init()
    assert gpu_machine == [("set_device", 1), ("init_distributed", "nccl")]
    assert dist.use_cuda() and dist.device() == torch.device("cuda", 1)


def test_ds_accelerator_cpu_keeps_a_gpu_machine_on_the_cpu(gpu_machine, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    dist.init()
    assert gpu_machine == [("init_distributed", "gloo")]  # no GPU chosen, gloo, CPU tensors
    assert not dist.use_cuda() and dist.device() == torch.device("cpu")
