"""What a run reports: a metrics JSONL file, TensorBoard scalars, a log line, a progress bar.

Everything here runs on rank 0 only (other ranks get a Monitor whose methods do nothing).

- `<output.dir>/metrics.jsonl`: one JSON object per line, written every optimiser step
  (`"kind": "train"`), every evaluation (`"kind": "eval"`) and for events (`"kind"`:
  `"nonfinite"`, `"checkpoint"`, `"preempted"`, `"resume"`). On resume the file is cut back to the
  resumed step, so it always describes the lineage of the current weights (rewritten atomically).
  A full disk (or an I/O error) while writing it stops the run with a one-line DiskFullError
  naming the file.
- TensorBoard (`<output.dir>/tensorboard/`): every `logging.log_every` steps the means over the
  interval of the train scalars below; the eval scalars after each evaluation; the run config and
  the DeepSpeed config once, as text.
- A plain log line per interval on stdout (and a tqdm bar with ETA on stderr when stderr is a
  terminal and `logging.progress_bar` is on).

Throughput: tokens/s and samples/s over the whole world (real tokens, padding excluded); MFU is
`flops_per_token * tokens/s / (peak_tflops * 1e12 * world_size)` with nanoGPT's count adapted to
the lean LM loss (`CoinModel.flops_per_token`): `6 N_decoder + 12 L H T + 6 N_head x label
fraction` (the input embedding is a lookup; the output head runs on label positions only);
memory is the peak allocated accelerator memory, or the peak resident memory on CPU, in GiB.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time

import torch

from coin.data_tools.atomic import DISK_ERRNOS, atomic_open, disk_full_error

from .dist import use_cuda

TRAIN_SCALARS = (
    "loss", "gen_loss", "ctr_loss", "ctr_weight", "ctr_acc", "pos_cos", "neg_cos", "pool_size", "lr", "grad_norm",
    "cons_loss", "gen_grad_norm", "ctr_grad_norm",
)
PERF_SCALARS = ("tokens_per_s", "samples_per_s", "mfu", "memory_gb", "step_time_s")
EVAL_SCALARS = ("loss", "gen_loss", "ctr_loss", "ctr_acc", "pos_cos", "neg_cos", "cons_loss")


def memory_gb() -> float:
    if use_cuda():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Monitor:
    def __init__(self, output_dir: str, *, enabled: bool, log_every: int, tensorboard: bool, progress_bar: bool,
                 total_steps: int, start_step: int, world_size: int, flops_per_token, peak_tflops: float):
        self.enabled = enabled
        self.log_every = log_every
        self.total_steps = total_steps
        self.world_size = world_size
        self.flops_per_token = flops_per_token  # (mean sequence length, label fraction) -> FLOPs
        self.peak_flops = peak_tflops * 1e12
        self.metrics_path = os.path.join(output_dir, "metrics.jsonl")
        self._interval: list[dict] = []
        self._start = time.time()
        self._start_step = start_step
        self.writer = None
        self.bar = None
        self._file = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate(start_step)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"), purge_step=start_step + 1)
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stderr)

    # ------------------------------------------------------------------ files

    def _truncate(self, step: int) -> None:
        """Drop records of steps after `step` (left by a run that died after its last checkpoint)."""
        if not os.path.isfile(self.metrics_path):
            return
        kept = []
        with open(self.metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if rec.get("step", 0) <= step:
                    kept.append(json.dumps(rec) + "\n")
        with atomic_open(self.metrics_path, what="metrics", size=sum(len(line) for line in kept)) as f:
            f.writelines(kept)

    def _write(self, record: dict) -> None:
        line = json.dumps(_finite(record), allow_nan=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise disk_full_error("metrics", self.metrics_path, e, len(line)) from None
            raise

    def write_text(self, tag: str, text: str) -> None:
        """Once per run: the run config and the DeepSpeed config, as TensorBoard text."""
        if self.writer is not None:
            self.writer.add_text(tag, "```\n" + text + "\n```", global_step=self._start_step)

    # ------------------------------------------------------------------ throughput

    def perf(self, tokens: float, label_tokens: float, samples: float, seconds: float) -> dict:
        seconds = max(seconds, 1e-9)
        tokens_per_s = tokens / seconds
        seq_len = tokens / max(samples * 2, 1)  # two sequences (original + paraphrase) per sample
        flops_per_token = self.flops_per_token(seq_len, label_tokens / max(tokens, 1))
        return {
            "tokens_per_s": tokens_per_s,
            "samples_per_s": samples / seconds,
            "mfu": flops_per_token * tokens_per_s / (self.peak_flops * self.world_size),
            "memory_gb": memory_gb(),
            "step_time_s": seconds,
        }

    # ------------------------------------------------------------------ records

    def log_step(self, record: dict) -> None:
        """One optimiser step's record (`step`, the step metrics, lr, grad_norm, perf fields)."""
        if not self.enabled:
            return
        self._write({"kind": "train", **record})
        self._interval.append(record)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        step = record["step"]
        if self.closes_interval(step):
            self._flush_interval(step)

    def closes_interval(self, step: int) -> bool:
        """Whether optimiser step `step` ends a logging interval (every `logging.log_every` steps
        and the last step). Known on every rank, enabled or not."""
        return step % self.log_every == 0 or step == self.total_steps

    def _flush_interval(self, step: int) -> None:
        recs, self._interval = self._interval, []
        if not recs:
            return
        # over the records that have the value (the hidden-state gradient norms are measured on
        # the interval's last step only, unless the weighting needs them every step)
        present = {k: [r[k] for r in recs if r.get(k) is not None] for k in TRAIN_SCALARS}
        mean = {k: sum(v) / len(v) for k, v in present.items() if v}
        mean["lr"] = recs[-1]["lr"]
        perf = self.perf(sum(r["tokens"] for r in recs), sum(r["label_tokens"] for r in recs),
                         sum(r["samples"] for r in recs), sum(r["step_time_s"] for r in recs))
        perf["step_time_s"] = perf["step_time_s"] / len(recs)
        if self.writer is not None:
            for k, v in mean.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            for k in PERF_SCALARS:
                self.writer.add_scalar(f"perf/{k}", perf[k], step)
            self.writer.flush()
        elapsed = time.time() - self._start
        done = step - self._start_step
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        gnorm = f"{mean['grad_norm']:.3f}" if "grad_norm" in mean else "n/a"
        self.print(
            f"step {step}/{self.total_steps} | loss {mean['loss']:.4f} gen {mean['gen_loss']:.4f} "
            f"ctr {mean['ctr_loss']:.4f} w {mean['ctr_weight']:.3g} acc {mean['ctr_acc']:.3f} "
            f"cos+ {mean['pos_cos']:.3f} cos- {mean['neg_cos']:.3f} pool {mean['pool_size']:.0f} | "
            f"lr {mean['lr']:.3e} gnorm {gnorm} | {perf['tokens_per_s']:.0f} tok/s "
            f"{perf['samples_per_s']:.2f} samples/s mfu {100 * perf['mfu']:.2f}% | "
            f"{perf['step_time_s']:.3f} s/step mem {perf['memory_gb']:.2f} GiB | eta {_hms(eta)}"
        )

    def log_eval(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._write({"kind": "eval", "step": step, **metrics})
        if self.writer is not None:
            for k in EVAL_SCALARS:
                self.writer.add_scalar(f"eval/{k}", metrics[k], step)
            self.writer.flush()
        self.print(
            f"eval step {step} | loss {metrics['loss']:.4f} gen {metrics['gen_loss']:.4f} "
            f"ctr {metrics['ctr_loss']:.4f} "
            f"acc {metrics['ctr_acc']:.3f} cos+ {metrics['pos_cos']:.3f} cos- {metrics['neg_cos']:.3f} "
            f"({metrics['examples']} examples)"
        )

    def event(self, kind: str, message: str, **fields) -> None:
        if not self.enabled:
            return
        self._write({"kind": kind, **fields})
        self.print(message)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _finite(value):
    """NaN and infinities as the strings "nan", "inf", "-inf": metrics.jsonl stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
