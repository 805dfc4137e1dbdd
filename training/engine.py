"""The one seam between coin and DeepSpeed (in the spirit of OpenRLHF's DeepspeedStrategy).

Nothing else in the training code imports deepspeed for training: the trainer builds an `Engine`
and calls its few methods. Every method marked *collective* must be called by every rank, in the
same order (ZeRO-3 gathers and partitions parameters inside them).

    engine = Engine(model, ds_config, optim_cfg, total_steps)   # deepspeed.initialize + our LR schedule
    out = coin_step(engine.model, batch, ...)                   # forward through the DeepSpeed engine
    engine.backward(out.loss)                                   # the loss as the step returns it
    if engine.step():                                           # True at an accumulation boundary
        engine.grad_norm(), engine.lr()
    engine.save_checkpoint(root, tag, client_state)             # collective
    client_state = engine.load_checkpoint(root, tag)            # collective
    state_dict = engine.consolidated_state_dict()               # collective; full weights on rank 0
    state_dict = consolidate_checkpoint(root, tag)              # offline (coin export), one process

Every checkpoint file DeepSpeed reads for us (resume, zero_to_fp32 consolidation) is loaded
inside `safe_torch_load()`: torch.load with weights_only=True whatever DeepSpeed asks for, and
only the DeepSpeed state types below allowed beyond torch's own tensors and containers. The list
is what a real checkpoint holds (ZeRO 1-3, fp32/bf16/fp16, found by saving one on CPU and asking
torch.serialization.get_unsafe_globals_in_checkpoint): a pickled object of any other class, a
planted `__reduce__` payload, is refused with a CheckpointError naming the file, before it runs.

Gradient accumulation is DeepSpeed's: `backward` divides the loss by the accumulation steps and
`step` applies the optimiser only at a boundary. The LR schedule (schedule.py) is handed to
`deepspeed.initialize` as a callable, so DeepSpeed steps it once per optimiser step and keeps its
state in the checkpoint.
"""
from __future__ import annotations

import contextlib
import pickle
import re
import warnings

import torch
from torch import nn

from .checkpoint import CheckpointError
from .config import OptimConfig
from .schedule import build_scheduler

# The classes DeepSpeed pickles into its checkpoints (optimiser states): module.name strings.
DEEPSPEED_STATE_TYPES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",  # ZeRO 1/2
)

# DeepSpeed's ZeRO collectives (also those of zero.Init while a model loads) call torch APIs
# deprecated in recent releases: one warning per call, several per step, would drown the log.
warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def _deepspeed_state_classes() -> list[type]:
    import importlib

    out = []
    for name in DEEPSPEED_STATE_TYPES:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


@contextlib.contextmanager
def safe_torch_load():
    """Within: every `torch.load` (DeepSpeed's checkpoint engine, zero_to_fp32) runs with
    weights_only=True and the DeepSpeed state types allowed; a refused or unreadable file is a
    CheckpointError naming it. Not thread-safe (it replaces torch.load for the duration)."""
    real = torch.load
    allowed = _deepspeed_state_classes()

    def load(f, map_location=None, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        with torch.serialization.safe_globals(allowed):
            try:
                return real(f, map_location=map_location, **kwargs)
            except pickle.UnpicklingError as e:
                text = str(e)
                m = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
                what = f"it pickles {m.group(1)}, " if m else ""
                raise CheckpointError(f"{f}: refused: {what}not a tensor or DeepSpeed state type "
                                      f"(loading it could run code)") from None
            except (RuntimeError, EOFError, OSError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"{f}: cannot be loaded ({first})") from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def consolidate_checkpoint(root: str, tag: str) -> dict[str, torch.Tensor]:
    """One process, no accelerator: the full fp32 weights of a ZeRO checkpoint (zero_to_fp32),
    every file loaded through `safe_torch_load`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_torch_load():
        return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)


class Engine:
    def __init__(self, model: nn.Module, ds_config: dict, ocfg: OptimConfig, total_steps: int):
        import deepspeed

        ds_config = dict(ds_config)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if "optimizer" not in ds_config:  # the run config still decides: plain AdamW from optim.*
            optimizer = torch.optim.AdamW(
                params, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.eps, weight_decay=ocfg.weight_decay
            )
            ds_config["zero_allow_untested_optimizer"] = True
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=optimizer,
            config=ds_config,
            lr_scheduler=lambda opt: build_scheduler(opt, ocfg, total_steps),
            dist_init_required=False,
        )
        self.gradient_accumulation_steps = int(self.ds.gradient_accumulation_steps())
        self.zero_stage = int(self.ds.zero_optimization_stage())

    # ------------------------------------------------------------------ training

    @property
    def model(self) -> nn.Module:
        """What the CoIN step calls: the DeepSpeed engine (its forward runs ZeRO-3's hooks)."""
        return self.ds

    @property
    def module(self) -> nn.Module:
        """The wrapped CoinModel (its parameters are partitioned under ZeRO-3)."""
        return self.ds.module

    @property
    def device(self) -> torch.device:
        return self.ds.device

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> bool:
        """Finish a micro-step; returns True when it was an accumulation boundary (optimiser stepped)."""
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.step()
        return bool(boundary)

    def grad_norm(self) -> float | None:
        """Global gradient norm of the last optimiser step, before clipping (None where DeepSpeed has none)."""
        norm = self.ds.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if torch.is_tensor(norm) else norm)

    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    def zero_grad(self) -> None:
        self.ds.zero_grad()

    # ------------------------------------------------------------------ checkpoints

    @property
    def has_frozen_parameters(self) -> bool:
        """True when some parameters do not train (LoRA: the whole base model)."""
        return any(not p.requires_grad for p in self.module.parameters())

    def save_checkpoint(self, root: str, tag: str, client_state: dict) -> None:
        """Collective. Model, optimiser, scheduler and `client_state` under root/tag.

        Frozen parameters are left out (LoRA: the checkpoint holds the adapters and their optimiser
        state only; the base is read again from `model.name_or_path` on resume). DeepSpeed's own
        `latest` file is NOT written: checkpoint.py writes it once the whole checkpoint (ours
        included) is complete.
        """
        self.ds.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False,
                                exclude_frozen_parameters=True)

    def checkpoint_bytes_estimate(self) -> int:
        """About how many bytes a checkpoint takes: per trained parameter its fp32 master copy and
        Adam's two moments (12 bytes), plus the 16/32-bit weights where ZeRO-3 does not hold them."""
        per = 12 + (0 if self.zero_stage == 3 else 4)
        return sum(getattr(p, "ds_numel", p.numel()) * per for p in self.module.parameters() if p.requires_grad)

    def load_checkpoint(self, root: str, tag: str) -> dict:
        """Collective. Restores model, optimiser and scheduler; returns the client state.

        Every file is read through `safe_torch_load` (weights_only). Strict about the module's keys, except that frozen parameters (absent from the checkpoint,
        see `save_checkpoint`) keep the values they were loaded with.
        """
        with safe_torch_load():
            path, client_state = self.ds.load_checkpoint(
                root, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True,
                load_module_strict=not self.has_frozen_parameters,
            )
        if path is None:
            from coin.errors import CoinError

            raise CoinError(f"checkpoint {root}/{tag}: DeepSpeed could not load it")
        return client_state or {}

    # ------------------------------------------------------------------ weights

    def consolidated_state_dict(self, trainable_only: bool = False) -> dict[str, torch.Tensor] | None:
        """Collective. The full (unpartitioned) weights of the wrapped module, on CPU, on rank 0.

        Parameters are gathered one at a time (peak extra memory: the largest tensor), in the
        module's parameter dtype (fp32, or bf16/fp16 when training in 16 bits). Other ranks get None.
        `trainable_only`: the trained parameters alone (LoRA: the adapters), no buffers.
        """
        import deepspeed
        import torch.distributed as dist

        is_main = not dist.is_initialized() or dist.get_rank() == 0
        state: dict[str, torch.Tensor] = {}
        for name, param in self.module.named_parameters():
            if trainable_only and not param.requires_grad:
                continue
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=hasattr(param, "ds_id")):
                if is_main:
                    state[name] = param.detach().to("cpu", copy=True)
        if not is_main:
            return None
        if trainable_only:
            return state
        persistent = set(self.module.state_dict().keys())
        for name, buf in self.module.named_buffers():
            if name in persistent:
                state[name] = buf.detach().to("cpu", copy=True)
        return state

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Collective. Full-vocabulary logits of the wrapped causal LM in eval mode (no dropout:
        LoRA's), for checks and tests."""
        lm = self.module.lm
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        training = lm.training
        lm.eval()
        try:
            out = lm(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                     use_cache=False)
        finally:
            lm.train(training)
        return out.logits.float().cpu()
