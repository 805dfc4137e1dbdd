"""The training recipe: `setup()`, `train()`, `save_checkpoint()`, `cleanup()`, top to bottom.

    trainer = Trainer(cfg)
    trainer.setup()              # process group, data, model, DeepSpeed engine, resume, monitor
    status = trainer.train()     # "completed" or "preempted"
    trainer.cleanup()            # flush and close (the process group stays: dist.shutdown ends it)

`train()` is `run_steps(total_steps)` (the loop) followed by the end of the run: a last held-out
evaluation, the final checkpoint, the Hugging Face export and the status file.

One optimiser step is `gradient_accumulation_steps` micro-steps; one micro-step is

    batch = next micro-batch of this rank            (data.py: grouped sampler, equal on all ranks)
    out   = coin_step(engine.model, batch, ...)      (step.py: the pure CoIN step, one forward)
    agree = all_reduce([loss non-finite?, stop requested?, metrics...])   (ONE collective)
    skip the micro-batch if any rank's loss is non-finite; else engine.backward(out.loss)
    engine.step()                                    (optimiser + LR schedule at a boundary)

and at a boundary: log the step, evaluate, checkpoint; if a SIGTERM/SIGUSR1 reached any rank,
every rank saves a checkpoint and the run ends with `PREEMPTED_EXIT_CODE` (75). All ranks take
every branch together because every branch depends only on agreed (all-reduced) values.

With `coin.pool: step` one optimiser step is instead `_pooled_step`: the step's micro-batches
are drawn first, step_pool.embed_step embeds them all without gradients and builds the step-wide
pool, ONE agreement for the whole step (on those pass-1 values), then each micro-batch's
forward, engine.backward and engine.step in turn (the optimiser at the last).

Non-finite losses: the micro-batch is reported (step, micro-step, example ids of every rank) and
skipped — no backward, no optimiser step, DeepSpeed's accumulation counter untouched; after
`logging.max_nonfinite_steps` non-finite micro-batches in a row (0: never) the run stops with
`NONFINITE_EXIT_CODE` (3). With `coin.pool: step` the unit is the step: all of its micro-batches
are skipped together, before any backward, and count once.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as torch_dist

from coin.errors import CoinError

from . import checkpoint as ckpt
from . import dist, step_pool
from .config import RunConfig, deepspeed_config, dump_yaml
from .preempt import PREEMPT_SIGNALS, PREEMPTED_EXIT_CODE  # noqa: F401 - 75, SIGTERM/SIGUSR1 (preempt.py)

NONFINITE_EXIT_CODE = 3  # stopped after too many non-finite losses in a row

# The step's metrics, in the order they travel in the per-micro-step all-reduce.
STEP_METRICS = ("loss", "gen_loss", "ctr_loss", "ctr_weight", "ctr_acc", "pos_cos", "neg_cos", "pool_size",
                "cons_loss", "gen_grad_norm", "ctr_grad_norm", "tokens", "label_tokens")
SUMMED = ("tokens", "label_tokens")  # world totals; every other metric is the mean over ranks


class NonFiniteLossError(CoinError):
    """Too many consecutive non-finite losses."""


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; the loop agrees on it across ranks at every micro-step."""

    def __init__(self, signals=PREEMPT_SIGNALS):
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a trainer elsewhere is not preemptible
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: RunConfig, step_fn=None):
        from .step import coin_step

        self.cfg = cfg
        self.step_fn = step_fn or coin_step
        self.out_dir = cfg.output.dir
        self.step = 0  # optimiser steps done
        self.consumed_samples = 0  # examples drawn over the world, skipped micro-batches included
        self.nonfinite_in_row = 0
        self.last_saved_step = -1
        self.last_eval: dict | None = None
        self.last_record: dict | None = None
        self.total_steps: int | None = None  # known once the data is read
        self.is_main = False  # known once the process group is up

    # ================================================================== setup

    def setup(self) -> None:
        from transformers import AutoConfig

        from .data import build_data
        from .engine import Engine
        from .gather import NegativePool
        from .model import CoinModel, load_model, load_tokenizer, resolve_model_path
        from .monitor import Monitor

        cfg = self.cfg
        # first: replaces preempt.exit_on_preemption; a signal while the model loads must not kill the job
        self.preemption = Preemption()
        # then, before anything can fail: a rerun in an old output dir no longer says "completed"
        # (rank 0 by the launcher's RANK, which the process group takes too; the directory is made)
        self.is_main = os.environ.get("RANK", "0") == "0"
        self._write_status("running", None)
        dist.init(cfg.deepspeed.collective_timeout_s)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        seed_everything(cfg.optim.seed)
        self.pool = NegativePool(enabled=cfg.coin.gather, group_size=cfg.coin.gather_group_size)

        def prepare():  # rank 0 first: it materialises the tiny default; the others then find it
            os.makedirs(self.out_dir, exist_ok=True)
            resolve_model_path(cfg.model)

        dist.main_first(prepare)

        # data first: a bad data file fails in seconds, before any model loads
        self.tokenizer = load_tokenizer(cfg.model)
        self.train_data, self.eval_data = build_data(cfg, self.tokenizer, self.world, self.rank)
        steps_per_epoch = self.train_data.micro_batches_per_epoch // cfg.optim.gradient_accumulation_steps
        if steps_per_epoch < 1:
            raise CoinError(
                f"data.train: {self.train_data.micro_batches_per_epoch} micro-batches per rank per epoch, fewer than "
                f"optim.gradient_accumulation_steps={cfg.optim.gradient_accumulation_steps}: not one optimiser step"
            )
        self.total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch

        # the checkpoint to resume from, verified and checked against this run before any model loads
        self.ckpt_root = ckpt.checkpoints_dir(self.out_dir)
        self.data_fingerprints = {"train": ckpt.fingerprint(cfg.data.train)}
        if cfg.data.eval:
            self.data_fingerprints["eval"] = ckpt.fingerprint(cfg.data.eval)
        self.resume_skipped: list[dict] = []
        resume = ckpt.find_resume(self.out_dir, cfg.output.resume, verify=self._verify, on_skip=self._skipped)
        if resume is not None:
            ckpt.check_trainable(*resume, self.cfg.model.lora)  # before DeepSpeed reads mismatched tensors
            ckpt.check_compatible(*resume, self._run_identity())

        model_path = resolve_model_path(cfg.model)
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
        self.ds_config = deepspeed_config(cfg, self.world, hf_config.hidden_size)
        model = CoinModel(load_model(cfg.model, self.ds_config))
        self.engine = Engine(model, self.ds_config, cfg.optim, self.total_steps)

        if resume is not None:
            self._resume(*resume)
        else:
            seed_everything(cfg.optim.seed + self.rank)  # distinct RNG streams per rank from here on

        self.monitor = Monitor(
            self.out_dir, enabled=self.is_main, log_every=cfg.logging.log_every, tensorboard=cfg.logging.tensorboard,
            progress_bar=cfg.logging.progress_bar, total_steps=self.total_steps, start_step=self.step,
            world_size=self.world, flops_per_token=model.flops_per_token, peak_tflops=cfg.logging.peak_tflops,
        )
        if self.is_main:
            run_yaml, ds_json = dump_yaml(cfg), json.dumps(self.ds_config, indent=1)
            ckpt.write_atomic(os.path.join(self.out_dir, "config.yaml"), run_yaml)
            ckpt.write_atomic(os.path.join(self.out_dir, "ds_config.json"), ds_json + "\n")
            self.monitor.write_text("config/run", run_yaml)
            self.monitor.write_text("config/deepspeed", ds_json)
            self.monitor.print(
                f"coin train: {self.world} rank(s), {model.num_parameters() / 1e6:.1f}M parameters"
                + (f" ({model.num_parameters(trainable_only=True) / 1e6:.2f}M trained: LoRA)" if cfg.model.lora else "")
                + f", {self.total_steps} steps of {cfg.optim.micro_batch_size} x {cfg.optim.gradient_accumulation_steps} "
                f"x {self.world} examples, {steps_per_epoch} steps per epoch, output {self.out_dir}"
                + (f", resumed at step {self.step}" if resume else "")
            )
            for skipped in self.resume_skipped:
                self.monitor.event("resume_skipped", f"skipped checkpoint {skipped['tag']}: {skipped['problem']}",
                                   step=self.step, **skipped)
            if resume:
                self.monitor.event("resume", f"resumed from {resume[0]}/{resume[1]}", step=self.step, tag=resume[1])

    def _verify(self, root: str, tag: str) -> str | None:
        """Collective. ckpt.verify over the ranks (each checks its share of the files): the first
        problem any rank found, the same answer on every rank."""
        mine = ckpt.verify(root, tag, self.rank, self.world)
        if self.world == 1:
            return mine
        everyone = [None] * self.world
        torch_dist.all_gather_object(everyone, mine)
        return ckpt.first_problem(everyone)

    def _skipped(self, tag: str, problem: str) -> None:
        """`output.resume: auto` passed over a checkpoint that does not verify: say so now (stderr)
        and in metrics.jsonl once the monitor exists."""
        from coin.errors import warn

        warn("coin train", f"skipping checkpoint {tag}: {problem}")
        self.resume_skipped.append({"tag": tag, "problem": problem})

    def _run_identity(self) -> dict:
        """What a checkpoint records of the run that wrote it, and a resume must match."""
        o = self.cfg.optim
        return {"world_size": self.world, "micro_batch_size": o.micro_batch_size,
                "gradient_accumulation_steps": o.gradient_accumulation_steps, "data": self.data_fingerprints}

    def _resume(self, root: str, tag: str) -> None:
        state = self.engine.load_checkpoint(root, tag).get("coin")
        if state is None:
            raise ckpt.CheckpointError(f"checkpoint {root}/{tag}: no coin training state (not written by coin train)")
        o = self.cfg.optim
        expected = {"world_size": self.world, "micro_batch_size": o.micro_batch_size,
                    "gradient_accumulation_steps": o.gradient_accumulation_steps}
        for key, value in expected.items():
            if state[key] != value:
                raise ckpt.CheckpointError(
                    f"checkpoint {root}/{tag}: written with {key}={state[key]}, this run has {value} "
                    f"(exact resume needs the same; export it and start a new run instead)"
                )
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.last_saved_step = self.step
        try:
            self.train_data.load_state_dict(state["data"])
        except ValueError as e:  # the data changed since the checkpoint
            raise ckpt.CheckpointError(f"checkpoint {root}/{tag}: data.train: {e}") from None
        ckpt.load_rng(root, tag, self.rank)

    # ================================================================== the loop

    def train(self) -> str:
        """Run to `total_steps`; returns "completed", or "preempted" after a signal (checkpoint written)."""
        cfg = self.cfg
        if self.run_steps(self.total_steps) == "preempted":
            return "preempted"
        if self.eval_data is not None and cfg.logging.eval_every and (self.last_eval or {}).get("step") != self.step:
            self.evaluate()
        if self.last_saved_step != self.step:
            self.save_checkpoint()
        self._write_final_metrics("completed")
        if cfg.output.export:
            from .export import export_from_engine

            export_from_engine(self, os.path.join(self.out_dir, "hf"),
                               os.path.join(self.out_dir, "hf_merged") if cfg.output.export_merged else None)
        self._write_status("completed", 0)
        return "completed"

    def run_steps(self, until: int) -> str:
        """Optimiser steps up to step `until`; returns "done", or "preempted" (checkpoint written)."""
        cfg, engine = self.cfg, self.engine
        engine.train()
        advance = self._pooled_step if cfg.coin.pool == "step" else self._micro_step
        window = _Window()
        t_step = time.perf_counter()
        while self.step < until:
            outcome, stop, lr = advance(window)
            if outcome == "skipped" and stop and window.micro_steps == 0:
                return self._preempted()
            if outcome != "stepped":
                continue

            self.step += 1
            now = time.perf_counter()
            record = window.record(self.step, self.world * cfg.optim.micro_batch_size)
            if not self._measures_norms(self.step):
                record.update(gen_grad_norm=None, ctr_grad_norm=None)  # not measured this step
            record.update(epoch=self.train_data.epoch, lr=lr, grad_norm=engine.grad_norm(),
                          consumed_samples=self.consumed_samples, time=time.time())
            record.update(self.monitor.perf(record["tokens"], record["label_tokens"], record["samples"], now - t_step))
            self.monitor.log_step(record)
            self.last_record = record
            window = _Window()

            if stop:  # a signal reached some rank: every rank saves now, nothing else
                return self._preempted()
            if self.eval_data is not None and cfg.logging.eval_every and self.step % cfg.logging.eval_every == 0:
                self.evaluate()
            if cfg.output.save_every and self.step % cfg.output.save_every == 0:
                self.save_checkpoint()
            t_step = time.perf_counter()
        return "done"

    def _micro_step(self, window: "_Window") -> tuple[str, bool, float]:
        """One micro-step (`coin.pool: micro`): -> (outcome, stop agreed, lr); outcome "skipped"
        (non-finite loss somewhere), "inside" (an accumulation window goes on) or "stepped"."""
        engine = self.engine
        batch = self.train_data.next_batch()
        self.consumed_samples += len(batch["ids"]) * self.world
        out = self.step_fn(engine.model, _to_device(batch, engine.device), self.cfg.coin, self.pool, step=self.step,
                           grad_norms=self._measures_norms(self.step + 1))
        nonfinite, stop, metrics = self._agree(out)
        if nonfinite:
            self._report_nonfinite(batch, out)
            return "skipped", stop, 0.0
        self.nonfinite_in_row = 0
        engine.backward(out.loss)
        window.add(metrics)
        lr = engine.lr()
        return ("stepped" if engine.step() else "inside"), stop, lr

    def _pooled_step(self, window: "_Window") -> tuple[str, bool, float]:
        """One optimiser step with a step-wide pool (`coin.pool: step`, step_pool.py): the step's
        micro-batches are drawn first, pass 1 embeds them all, then ONE agreement for the whole
        step (its loss and metrics from pass 1; a non-finite value on any rank skips every
        micro-batch of the step, before any backward, and counts once towards
        logging.max_nonfinite_steps), then pass 2 backwards micro-batch by micro-batch."""
        engine = self.engine
        batches = [self.train_data.next_batch() for _ in range(engine.gradient_accumulation_steps)]
        self.consumed_samples += sum(len(b["ids"]) for b in batches) * self.world
        pooled = step_pool.embed_step(engine.model, [_to_device(b, engine.device) for b in batches],
                                      self.cfg.coin, self.pool, step=self.step)
        nonfinite, stop, metrics = self._agree(pooled.out)
        if nonfinite:
            self._report_nonfinite({"ids": pooled.nonfinite_ids()}, pooled.out, skipped="step")
            return "skipped", stop, 0.0
        self.nonfinite_in_row = 0
        lr = engine.lr()
        boundary = False
        for loss in pooled.micro_losses():
            engine.backward(loss)
            boundary = engine.step()
        assert boundary, "the last micro-batch of a pooled step is DeepSpeed's accumulation boundary"
        window.add(metrics, micro_steps=len(batches))
        return "stepped", stop, lr

    def _measures_norms(self, step: int) -> bool:
        """Whether optimiser step `step` measures the hidden-state gradient norms (`coin_step`'s
        `grad_norms`): objectives coin and consistency with `coin.pool: micro`, on the last step of
        each logging interval, and on every step where the weighting needs them (gradnorm). They
        cost two passes through the head and the loss; the same answer on every rank."""
        from .step import needs_grad_norms

        c = self.cfg.coin
        if c.objective not in ("coin", "consistency") or c.pool != "micro":
            return False
        return needs_grad_norms(c) or self.monitor.closes_interval(step)

    def _agree(self, out) -> tuple[bool, bool, dict]:
        """The one collective of a micro-step (of a step, with `coin.pool: step`): non-finite flag,
        stop flag and metrics of every rank."""
        device = self.engine.device
        nonfinite = (~torch.isfinite(out.loss.detach())).any().to(torch.float64).reshape(1)
        stop = torch.tensor([1.0 if self.preemption.requested else 0.0], dtype=torch.float64, device=device)
        vec = torch.cat([nonfinite.to(device), stop, _metrics_vector(out, device)])
        if self.world > 1:
            torch_dist.all_reduce(vec, op=torch_dist.ReduceOp.SUM)
        vec = vec.tolist()  # the only host sync of the micro-step
        metrics = {k: v if k in SUMMED else v / self.world for k, v in zip(STEP_METRICS, vec[2:])}
        return vec[0] > 0, vec[1] > 0, metrics

    def _report_nonfinite(self, batch: dict, out, skipped: str = "micro-batch") -> None:
        """Every rank: say which examples gave a non-finite loss; stop after too many in a row."""
        self.nonfinite_in_row += 1
        local = {"rank": self.rank, "loss": float(out.loss.detach()), "ids": list(batch["ids"])}
        everyone = [local]
        if self.world > 1:  # every rank is here: the flag was agreed
            everyone = [None] * self.world
            torch_dist.all_gather_object(everyone, local)
        bad = [r for r in everyone if not np.isfinite(r["loss"])]
        limit = self.cfg.logging.max_nonfinite_steps
        self.monitor.event(
            "nonfinite",
            f"non-finite loss at step {self.step + 1} ({skipped} skipped, {self.nonfinite_in_row} in a row): "
            + "; ".join(f"rank {r['rank']} loss {r['loss']} ids {r['ids']}" for r in bad),
            step=self.step, in_row=self.nonfinite_in_row, ranks=bad,
        )
        if limit and self.nonfinite_in_row >= limit:
            self._write_final_metrics("nonfinite")
            self._write_status("nonfinite", NONFINITE_EXIT_CODE)
            dist.barrier()  # a launcher kills the other ranks when the first one exits
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step + 1} "
                f"(logging.max_nonfinite_steps={limit}); last examples: "
                + "; ".join(f"rank {r['rank']} ids {r['ids']}" for r in bad)
            )

    def _preempted(self) -> str:
        name = signal.Signals(self.preemption.signum).name if self.preemption.signum else "a signal on another rank"
        self.monitor.event("preempted", f"preempted by {name} after step {self.step}: saving a checkpoint",
                           step=self.step)
        if self.last_saved_step != self.step:
            self.save_checkpoint()
        self._write_final_metrics("preempted")
        self._write_status("preempted", PREEMPTED_EXIT_CODE)
        dist.barrier()  # a launcher kills the other ranks when the first one exits
        return "preempted"

    # ================================================================== evaluation

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss and contrastive accuracy: the step's metrics averaged over the eval set."""
        engine = self.engine
        engine.eval()
        sums = torch.zeros(len(STEP_METRICS) + 1, dtype=torch.float64, device=engine.device)
        for batch in self.eval_data.batches():
            out = self.step_fn(engine.model, _to_device(batch, engine.device), self.cfg.coin, self.pool, step=self.step,
                               grad_norms=False)  # not reported by evaluation
            sums[:-1] += _metrics_vector(out, engine.device)
            sums[-1] += len(batch["ids"])
        if self.world > 1:
            torch_dist.all_reduce(sums, op=torch_dist.ReduceOp.SUM)
        engine.train()
        n_batches = self.eval_data.micro_batches * self.world
        metrics = {k: float(v) / (1 if k in SUMMED else n_batches) for k, v in zip(STEP_METRICS, sums[:-1].tolist())}
        metrics["examples"] = int(sums[-1])
        self.monitor.log_eval(self.step, metrics)
        self.last_eval = {"step": self.step, **metrics}
        return metrics

    # ================================================================== checkpoints

    def client_state(self) -> dict:
        o = self.cfg.optim
        return {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "nonfinite_in_row": self.nonfinite_in_row,
            "data": self.train_data.state_dict(),
            "world_size": self.world,
            "micro_batch_size": o.micro_batch_size,
            "gradient_accumulation_steps": o.gradient_accumulation_steps,
            "total_steps": self.total_steps,
        }

    def save_checkpoint(self) -> None:
        """Collective. Writes checkpoints/step_N, hashes its files (each rank a share), then (rank 0)
        writes the completion marker with the manifest and moves `latest`.

        A save that fails on a rank (a full disk, an I/O error) removes the partial directory and
        leaves `latest` as it was; a full disk is a CheckpointDiskFullError (one line, status 2),
        other I/O errors a CheckpointError. The other ranks are ended by the launcher."""
        root, tag = self.ckpt_root, ckpt.tag_for(self.step)
        t0 = time.perf_counter()
        try:
            if self.is_main:
                ckpt.prepare_tag(root, tag)
            dist.barrier()
            written = self.engine.save_checkpoint(root, tag, {"coin": self.client_state()})
            written[os.path.basename(ckpt.rng_path(root, tag, self.rank))] = ckpt.save_rng(root, tag, self.rank)
            if self.is_main:
                ckpt.write_atomic(os.path.join(root, tag, ckpt.RUN_CONFIG), dump_yaml(self.cfg))
                self.save_hf_config(os.path.join(root, tag, ckpt.HF_CONFIG))
            dist.barrier()  # every rank's files are on disk: only now may they be hashed and `latest` move
            t_hash = time.perf_counter()
            files = self._manifest(root, tag, written)
            t_hash = time.perf_counter() - t_hash
            if self.is_main:
                ckpt.commit(root, tag, ckpt.completion_info(
                    self.step, epoch=self.train_data.epoch, consumed_samples=self.consumed_samples,
                    **self._run_identity()), files=files)
        except (OSError, RuntimeError, ckpt.DiskFullError) as e:  # DiskFullError: ckpt.write_atomic's
            error = ckpt.save_error(e, root, tag, self.engine.checkpoint_bytes_estimate())
            if error is None:  # not an I/O error: a bug, or a crash; nothing to tidy
                raise
            ckpt.remove_partial(root, tag)
            raise error from None
        if self.is_main:
            removed = ckpt.prune(root, self.cfg.output.keep_last)
            self.monitor.event("checkpoint", f"checkpoint {tag} saved in {time.perf_counter() - t0:.1f} s "
                               f"(hashing {t_hash:.2f} s)"
                               + (f" (removed {', '.join(removed)})" if removed else ""), step=self.step, tag=tag,
                               seconds=time.perf_counter() - t0, hash_seconds=t_hash)
        dist.barrier()
        self.last_saved_step = self.step

    def _manifest(self, root: str, tag: str, written: dict | None = None) -> dict:
        """Collective. size + hash of every file of root/tag, rank 0 gets it (the others an empty
        dict). `written`: this rank's files hashed while written (Engine.save_checkpoint,
        ckpt.save_rng), taken as they are when the file still has the size written; rank 0
        lists the files, and those that nobody hashed so (run_config.yaml, hf_config/, ...) are
        dealt out (ckpt.share) and each rank hashes its share from disk."""
        tag_dir = os.path.join(root, tag)
        everyone = [written or {}]
        if self.world > 1:  # only rank 0 uses them
            everyone = [None] * self.world if self.is_main else None
            torch_dist.gather_object(written or {}, everyone, dst=0)
        listing = [None]
        if self.is_main:
            hashed = {rel: entry for part in everyone for rel, entry in part.items()}
            sizes = {rel: os.path.getsize(os.path.join(tag_dir, rel)) for rel in ckpt.tag_files(tag_dir)}
            done = {rel: hashed[rel] for rel, size in sizes.items() if rel in hashed and hashed[rel]["size"] == size}
            listing = [{rel: size for rel, size in sizes.items() if rel not in done}]
        if self.world > 1:
            torch_dist.broadcast_object_list(listing, src=0)
        mine = ckpt.hash_files(tag_dir, ckpt.share(listing[0], self.rank, self.world))
        parts = [mine]
        if self.world > 1:
            parts = [None] * self.world if self.is_main else None
            torch_dist.gather_object(mine, parts, dst=0)
        if not self.is_main:
            return {}
        for part in parts:
            done.update(part)
        return dict(sorted(done.items()))

    def save_hf_config(self, path: str) -> None:
        """Rank 0: model config, generation config and tokenizer (what an export needs besides weights)."""
        from transformers import GenerationConfig

        lm = self.engine.module.lm
        os.makedirs(path, exist_ok=True)
        lm.config.save_pretrained(path)
        gen = lm.generation_config if getattr(lm, "generation_config", None) is not None else \
            GenerationConfig.from_model_config(lm.config)
        gen.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def _write_status(self, status: str, exit_code: int | None, error: str | None = None) -> None:
        """Rank 0: <output.dir>/run_status.json, read by `coin train --nproc` to recover the exit code
        ("running" with exit_code null from setup on; "failed" carries the error's one-line message)."""
        if not self.is_main:
            return
        info = {"status": status, "exit_code": exit_code, "step": self.step, "total_steps": self.total_steps,
                "launch_id": os.environ.get("COIN_LAUNCH_ID"), "time": time.time()}
        if error is not None:
            info["error"] = error
        ckpt.write_atomic(os.path.join(self.out_dir, "run_status.json"), json.dumps(info, indent=1) + "\n")

    def write_failed(self, error: BaseException, exit_code: int) -> None:
        """Rank 0, after `error` ended the run: run_status.json says "failed" with the error's first line."""
        if not self.is_main or not os.path.isdir(self.out_dir):
            return
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not isinstance(error, CoinError):
            message = f"{type(error).__name__}: {message}"
        try:
            self._write_status("failed", exit_code, error=message)
        except (OSError, CoinError) as e:  # e.g. the disk that is full: the exit code still says it
            print(f"coin train: could not write run_status.json: {e}", file=sys.stderr, flush=True)

    def _write_final_metrics(self, status: str) -> None:
        """Rank 0: <output.dir>/final_metrics.json, the last train record and the last evaluation."""
        if not self.is_main:
            return
        final = {"status": status, "step": self.step, "train": self.last_record, "eval": self.last_eval}
        ckpt.write_atomic(os.path.join(self.out_dir, "final_metrics.json"), json.dumps(final, indent=1) + "\n")

    # ================================================================== end

    def cleanup(self) -> None:
        if getattr(self, "preemption", None) is not None:
            self.preemption.restore()
        if getattr(self, "monitor", None) is not None:
            self.monitor.close()


class _Window:
    """Metrics of the micro-steps of one optimiser step."""

    def __init__(self):
        self.micro_steps = 0
        self.sums = dict.fromkeys(STEP_METRICS, 0.0)

    def add(self, metrics: dict, micro_steps: int = 1) -> None:
        """The agreed metrics of `micro_steps` micro-steps (a pooled step's cover all of its own)."""
        self.micro_steps += micro_steps
        for k, v in metrics.items():
            self.sums[k] += v if k in SUMMED else v * micro_steps

    def record(self, step: int, samples_per_micro_step: int) -> dict:
        n = max(self.micro_steps, 1)
        rec = {"step": step}
        rec.update({k: v if k in SUMMED else v / n for k, v in self.sums.items()})
        rec["samples"] = samples_per_micro_step * self.micro_steps
        return rec


def _metrics_vector(out, device: torch.device) -> torch.Tensor:
    """The step's metrics in STEP_METRICS order, float64 on `device` (no host sync)."""
    return torch.stack([out.metrics[k].detach().to(device=device, dtype=torch.float64).reshape(())
                        for k in STEP_METRICS])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
