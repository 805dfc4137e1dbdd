"""Shared pieces of the training-run tests: tiny contrastive data, run configs, rank functions
for tests/distributed.py, CLI launches of `coin train`, and readers for what a run writes."""
from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
CPU_ZERO3 = str(REPO / "ds_configs" / "cpu_zero3.json")

_WORDS = ("the cat dog movie film great terrible sentence question answer river bank happy sad blue green "
          "runs fast slow quiet loud bright dark story plot actor song").split()
_TASKS = ("sentiment", "grammar", "paraphrase", "topic")


def contrastive_records(n_groups: int, prefix: str = "t", seed: int = 0, per_group: int = 2) -> list[dict]:
    """Contrastive JSONL records (docs/data.md): `per_group` examples share an instruction (a group)."""
    rng = random.Random(seed)
    records = []
    for g in range(n_groups):
        task = _TASKS[g % len(_TASKS)]
        instruction = f"Task {task} #{g}: decide the label of the text"
        paraphrases = [f"For the {task} task (#{g}), label this text", f"Please classify the following ({task} {g})"]
        for j in range(per_group):
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
            records.append({
                "id": f"{prefix}{g}-{j}", "task": task, "instruction": f"{instruction}\n\n{text}",
                "output": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4))),
                "paraphrases": [f"{p}\n\n{text}" for p in paraphrases], "group": f"{prefix}g{g}",
            })
    return records


def write_jsonl(path, records) -> str:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def make_data(root) -> tuple[str, str]:
    root = pathlib.Path(root)
    train = write_jsonl(root / "train.jsonl", contrastive_records(24, "t", seed=0))
    held_out = write_jsonl(root / "eval.jsonl", contrastive_records(4, "e", seed=1))
    return train, held_out


def run_config(data_dir, out_dir, **sections) -> dict:
    """The tiny 2-rank test run: 12 steps of 2 examples per rank, max_length 64."""
    train, held_out = make_data(data_dir) if not (pathlib.Path(data_dir) / "train.jsonl").exists() else (
        str(pathlib.Path(data_dir) / "train.jsonl"), str(pathlib.Path(data_dir) / "eval.jsonl"))
    cfg = {
        "model": {"name_or_path": "tiny", "dtype": "fp32"},
        "data": {"train": train, "eval": held_out, "max_length": 64,
                 "cache_dir": str(pathlib.Path(data_dir) / "cache")},
        "optim": {"lr": 1e-3, "micro_batch_size": 2, "max_steps": 12, "warmup_ratio": 0.2, "seed": 7},
        "deepspeed": {"config": CPU_ZERO3},
        "output": {"dir": str(out_dir), "save_every": 4, "keep_last": 2},
        "logging": {"log_every": 2, "eval_every": 4, "peak_tflops": 0.1, "progress_bar": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path, cfg: dict) -> str:
    import yaml

    pathlib.Path(path).write_text(yaml.safe_dump(cfg))
    return str(path)


STEPS = 12
PROBE_IDS = [1, 450, 4996, 338, 263, 1243, 29889, 13, 2277, 29937]  # a fixed token sequence


def straight_run(tmp_path_factory) -> dict:
    """12 uninterrupted steps on 2 ranks: checkpoints every 4 (keep 2), eval every 4, export at the
    end; returns the data directory, the output directory, the config and each rank's result
    (with the engine's logits of PROBE_IDS after training)."""
    from distributed import run_distributed

    data = tmp_path_factory.mktemp("data")
    out = tmp_path_factory.mktemp("straight")
    cfg = run_config(data, out)
    results = run_distributed(train_ranks, 2, args=(cfg, {"logits_ids": PROBE_IDS}))
    return {"data": data, "out": out, "cfg": cfg, "results": results}


# ----------------------------------------------------------------------------- reading a run


def read_records(out_dir, kind: str = "train") -> list[dict]:
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    with open(path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_records(out_dir)}


def safetensors_weights(hf_dir) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(pathlib.Path(hf_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


# ----------------------------------------------------------------------------- rank functions


class SimulatedCrash(RuntimeError):
    pass


def train_ranks(rank: int, world: int, cfg_dict: dict, options: dict | None = None) -> dict:
    """One rank of a training run (for tests/distributed.py run_distributed).

    options (micro-steps are counted from 1, training forwards only):
      stop_at        rank 0 sends itself SIGUSR1 during that step's forward: a real preemption,
                     deterministically at that step
      crash_commit   the save of that step dies between writing the checkpoint and `latest`
      nan_calls      {rank: [micro-step numbers]} whose loss is made NaN on that rank
      truncate_calls [micro-step numbers] whose labels are all -100 (on every rank)
      logits_ids     a token id list: return the engine's logits for it after training
    with coin.pool: step, counting the no-grad forwards of pass 1 (step_pool._terms) from 1:
      pool_nan_calls {rank: [call numbers]} whose generation loss is made NaN on that rank
      pool_stop_at   rank 0 sends itself SIGUSR1 during that forward
    """
    import torch

    from coin.training import checkpoint as ckpt
    from coin.training.config import config_from_dict
    from coin.training.step import StepOutput, coin_step
    from coin.training.trainer import NonFiniteLossError, Trainer

    options = options or {}
    calls = {"n": 0}

    def step_fn(model, batch, ccfg, pool, step=0, grad_norms=True):
        if not torch.is_grad_enabled():  # evaluation: not a training micro-step
            return coin_step(model, batch, ccfg, pool, step, grad_norms)
        calls["n"] += 1
        n = calls["n"]
        if n in options.get("truncate_calls", ()):
            batch = dict(batch, labels=torch.full_like(batch["labels"], -100))
        out = coin_step(model, batch, ccfg, pool, step, grad_norms)
        if n in options.get("nan_calls", {}).get(rank, ()):
            out = StepOutput(out.loss * float("nan"), out.metrics)
        if options.get("stop_at") == n and rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    if options.get("pool_nan_calls") or options.get("pool_stop_at"):
        from coin.training import step_pool

        real_terms = step_pool._terms

        def terms(model, batch, ccfg):
            gen_loss, emb, n_labels = real_terms(model, batch, ccfg)
            if not torch.is_grad_enabled():  # pass 1
                calls["pool"] = calls.get("pool", 0) + 1
                if calls["pool"] in options.get("pool_nan_calls", {}).get(rank, ()):
                    gen_loss = gen_loss * float("nan")
                if options.get("pool_stop_at") == calls["pool"] and rank == 0:
                    os.kill(os.getpid(), signal.SIGUSR1)
            return gen_loss, emb, n_labels

        step_pool._terms = terms

    if options.get("crash_commit"):
        real_commit = ckpt.commit

        def commit(root, tag, info, files=None):
            if ckpt.step_of(tag) == options["crash_commit"]:
                raise SimulatedCrash(f"killed while saving {tag}")
            real_commit(root, tag, info, files=files)

        ckpt.commit = commit

    trainer = Trainer(config_from_dict(cfg_dict), step_fn=step_fn)
    result = {"rank": rank}
    try:
        trainer.setup()
        result["start_step"] = trainer.step
        try:
            result["status"] = trainer.train()
        except NonFiniteLossError as e:
            result["status"] = "nonfinite"
            result["error"] = str(e)
        result["step"] = trainer.step
        if options.get("logits_ids") is not None:
            ids = torch.tensor([options["logits_ids"]])
            result["logits"] = trainer.engine.logits(ids)
    finally:
        trainer.cleanup()
    return result


# ----------------------------------------------------------------------------- the CLI


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def start_train(config_path, *args, log_path) -> subprocess.Popen:
    """`coin train --config X --nproc 2 ...` in the background (stdout and stderr to log_path)."""
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "coin", "train", "--config", str(config_path), *args],
                            cwd=str(REPO), env=cli_env(), stdout=log, stderr=subprocess.STDOUT)


def wait_for_step(out_dir, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"coin train ended (status {proc.returncode}) before step {step}")
        if path.exists():
            text = path.read_text()
            if sum(1 for line in text.splitlines() if '"kind": "train"' in line) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {path} after {timeout} s")


def children(pid: int) -> list[int]:
    from coin.training.train import _children

    return _children(pid)


def rank_pids(wrapper_pid: int) -> list[int]:
    """The rank processes of `coin train --nproc N`: wrapper -> torchrun -> ranks."""
    ranks = []
    for torchrun in children(wrapper_pid):
        ranks += children(torchrun)
    return sorted(ranks)
