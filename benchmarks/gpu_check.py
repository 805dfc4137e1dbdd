"""The one-call GPU check: everything coin needs verified and measured on a CUDA GPU, in one command.

    bash benchmarks/gpu_check.sh OUT_DIR                  on the GPU machine (one H200, bare image)
    bash benchmarks/gpu_check.sh OUT_DIR --cpu-dry-run    the same logic at toy size on the CPU (CI)

Parts, in this order, each in a fresh process under its own deadline (and all under one budget,
`--budget-s`), each timed; a part that fails or runs out of time is reported and the next one runs:

    install           the packages the GPU image lacks (deepspeed, datasets, mistral-common and
                      their missing dependencies) from the wheels in .gpu_wheels/ (made here by
                      scripts/prepare_gpu_wheels.sh), only those not installed there, with
                      `pip install --no-index --find-links .gpu_wheels --no-deps --target WORK/site`:
                      the machine's torch and everything else it has stay as they are
    env               versions, the device, a measured bf16 matrix-product rate, which SDPA kernels run
    fused_adam        DeepSpeed's FusedAdam JIT build (what ds_configs/zero3.json uses) and one step
                      against torch's AdamW; if it fails, the later parts use torch's AdamW and say so
    smoke             a ~100M-parameter random LLaMA, bf16, ZeRO-3 over NCCL, `coin train --nproc 1`:
                      20 CoIN steps with a checkpoint at 10 and held-out evaluations, a second run
                      resumed from step 10 (its losses must continue the first run's within bf16
                      tolerance), `coin export` of the last checkpoint (equal to the run's own
                      export), and `coin eval` of the export on a few examples
    throughput_zero3  CoIN vs SFT on a ~1.1B LLaMA, sequence 1024, bf16, SDPA, ZeRO-3: tokens/s, MFU,
                      peak memory (benchmarks/bench_gpu.py `measure`, its one implementation)
    lm_loss           peak memory and time of the lean LM loss against full logits at a 128256-token
                      vocabulary (Llama-3's), loss and its backward alone
    throughput_zero0  the throughput measurement without ZeRO, for reference

OUT_DIR receives gpu_check.json (every figure), gpu_check.md (the summary, also printed last) and
gpu_check.log (the tail of each part's log): written after every part, so a run cut short still
leaves what it measured. Scratch files go to --work (default a new temporary directory). Exit
status 0 when every part passed (a skipped part counts as passed), 1 otherwise.

The dry run (`--cpu-dry-run`) runs the same parts with gloo on the CPU at toy sizes
(tests/benchmarks/test_gpu_check.py runs it); `fused_adam` is skipped there (DeepSpeed's CPU
accelerator has no FusedAdam; cpu_zero3.json uses torch's AdamW) and `install` installs nothing
(every package is present).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [p for p in (REPO, os.path.join(REPO, "benchmarks")) if p not in sys.path]

import bench_gpu  # noqa: E402  (stdlib-only at import; torch is imported inside the parts)

FORMAT = "coin-gpu-check/1"
PARTS = ("install", "env", "fused_adam", "smoke", "throughput_zero3", "lm_loss", "throughput_zero0")
WHEELS = ".gpu_wheels"
LLAMA3_VOCAB = 128256
SMOKE_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                  num_key_value_heads=4)

SIZES = {
    "gpu": {
        "dtype": "bf16",
        "env": {"matmul": 8192, "repeats": 10},
        "smoke": {"tiny": SMOKE_100M, "steps": 20, "save_every": 10, "eval_every": 10, "micro_batch": 8,
                  "max_length": 128, "train_per_task": 40, "eval_per_task": 8, "eval_tasks": "sst2,rte",
                  "eval_examples": 16, "resume_rtol": 2e-2},
        "throughput": bench_gpu.GPU_SETTING,
        "lm_loss": {"sequences": 8, "seq": 1024, "hidden": 2048, "vocab": LLAMA3_VOCAB, "response": 64,
                    "chunks": 8, "repeats": 3},
    },
    "cpu": {
        "dtype": "bf16",
        "env": {"matmul": 256, "repeats": 3},
        "smoke": {"tiny": {}, "steps": 4, "save_every": 2, "eval_every": 2, "micro_batch": 2, "max_length": 64,
                  "train_per_task": 6, "eval_per_task": 2, "eval_tasks": "sst2", "eval_examples": 4,
                  "resume_rtol": 1e-5},
        "throughput": dict(shape=dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=1024),
                           seq=64, micro_batch=2, response=8, steps=2, warmup=1, dtype="bf16"),
        "lm_loss": {"sequences": 4, "seq": 64, "hidden": 64, "vocab": 32000, "response": 8, "chunks": 8, "repeats": 1},
    },
}
# Seconds per part; the budget caps them further. GPU: the whole check within 8 minutes.
TIMEOUTS = {
    "gpu": {"install": 90, "env": 90, "fused_adam": 120, "smoke": 240, "throughput_zero3": 180, "lm_loss": 60,
            "throughput_zero0": 150},
    # generous: a loaded 2-core CI machine, where the dry run takes about 90 CPU seconds in all
    "cpu": {"install": 60, "env": 120, "fused_adam": 60, "smoke": 400, "throughput_zero3": 150, "lm_loss": 120,
            "throughput_zero0": 150},
}
BUDGET_S = {"gpu": 450, "cpu": 840}
RESERVE_S = 5  # kept back from the budget for the summary
LOG_TAIL_BYTES = 1 << 20  # per part, in gpu_check.log


class Skipped(Exception):
    """A part that does not apply here (the reason is reported)."""


class PartFailed(Exception):
    """A part that ran and failed; `result` holds what it measured before failing."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


# ============================================================================ install


def wheel_name(filename: str) -> tuple[str, str]:
    """(distribution, version) from a wheel file name (PEP 427: name-version-...-tag.whl)."""
    name, version = filename.split("-")[:2]
    return name, version


def plan_install(wheels: list[str], installed) -> tuple[list[str], dict[str, str]]:
    """Which wheels to install: those whose distribution `installed(name)` (its version, or None)
    does not know. Returns (wheel files to install, {present distribution: installed version})."""
    missing, present = [], {}
    for w in sorted(wheels):
        name, _ = wheel_name(w)
        version = installed(name)
        if version is None:
            missing.append(w)
        else:
            present[name] = version
    return missing, present


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install_wheels(wheel_dir: str, files: list[str], site: str) -> None:
    """`pip install --no-index --find-links wheel_dir --no-deps --target site` of exactly `files`'
    distributions at their versions: nothing is fetched, nothing already installed is touched."""
    specs = ["{}=={}".format(*wheel_name(f)) for f in files]
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheel_dir, "--no-deps",
           "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--target", site, *specs]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def part_install(ctx: dict) -> dict:
    wheel_dir = os.path.join(REPO, WHEELS)
    if not os.path.isdir(wheel_dir):
        if ctx["mode"] == "cpu":
            raise Skipped(f"no {WHEELS}/ here (scripts/prepare_gpu_wheels.sh makes it); on the CPU every package is installed")
        raise PartFailed(f"{wheel_dir} is missing: run `bash scripts/prepare_gpu_wheels.sh` on the development machine "
                         f"and name {WHEELS} in the device call's carry")
    wheels = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")]
    missing, present = plan_install(wheels, installed_version)
    result = {"wheel_mib": round(sum(os.path.getsize(os.path.join(wheel_dir, w)) for w in wheels) / 2**20, 1),
              "missing": ["{}=={}".format(*wheel_name(w)) for w in missing], "present": present,
              "installed_to": None}
    if missing and ctx["mode"] == "gpu":  # the dry run only plans (every package is installed on the CPU)
        install_wheels(wheel_dir, missing, ctx["site"])
        result["installed_to"] = ctx["site"]
    return result


# ============================================================================ env


def _time_cuda(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of `fn` on the current CUDA stream (CUDA events, after warm-up)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def part_env(ctx: dict) -> dict:
    import platform

    import torch

    s = ctx["sizes"]["env"]
    res: dict = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                 "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(), "packages": {}}
    problems = []
    for name in ("deepspeed", "transformers", "accelerate", "datasets", "mistral_common"):  # what coin imports
        try:
            module = __import__(name)
            res["packages"][name] = getattr(module, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure is a finding
            res["packages"][name] = f"IMPORT FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            problems.append(f"{name} does not import")
    for name in ("peft", "safetensors", "sentencepiece", "tensorboard", "pyarrow", "pydantic", "huggingface_hub"):
        res["packages"][name] = installed_version(name) or "not installed"
    try:
        from deepspeed.accelerator import get_accelerator

        res["deepspeed_accelerator"] = get_accelerator()._name
    except Exception as e:  # noqa: BLE001
        res["deepspeed_accelerator"] = f"unknown ({type(e).__name__})"
    want = "cuda" if ctx["mode"] == "gpu" else "cpu"
    if res["deepspeed_accelerator"] != want:
        problems.append(f"DeepSpeed's accelerator is {res['deepspeed_accelerator']}, expected {want}")
    if ctx["mode"] == "gpu" and not torch.cuda.is_available():
        raise PartFailed("no CUDA device visible to torch", res)

    dtype = torch.bfloat16
    n = s["matmul"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        res["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                         "multiprocessors": p.multi_processor_count,
                         "nccl": ".".join(map(str, torch.cuda.nccl.version())), "bf16": torch.cuda.is_bf16_supported(),
                         "cudnn": torch.backends.cudnn.version()}
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                                  "power.limit", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            res["device"]["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            res["device"]["nvidia_smi"] = f"unavailable ({type(e).__name__})"
        # random data, never zeros (they run faster than real data)
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        t = _time_cuda(lambda: a @ b, s["repeats"])
        res["matmul_bf16_tflops"] = 2 * n**3 / t / 1e12
        del a, b
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t0 = time.perf_counter()
        for _ in range(s["repeats"]):
            a @ b
        res["matmul_bf16_tflops"] = 2 * n**3 * s["repeats"] / (time.perf_counter() - t0) / 1e12
    res["matmul_size"] = n
    res["sdpa"] = _sdpa_backends(ctx)
    if problems:
        raise PartFailed("; ".join(problems), res)
    return res


def _sdpa_backends(ctx: dict) -> dict:
    """Which SDPA kernels run a causal bf16 attention of the throughput shape (and their time on a GPU)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    t = ctx["sizes"]["throughput"]
    shape = t["shape"]
    heads, head_dim = shape["num_attention_heads"], shape["hidden_size"] // shape["num_attention_heads"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(2 * t["micro_batch"], heads, t["seq"], head_dim, device=device, dtype=torch.bfloat16)
               for _ in range(3))
    out = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if device == "cuda":
                    ms = 1e3 * _time_cuda(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 5)
                    out[backend.name] = f"ok, {ms:.2f} ms"
                else:
                    out[backend.name] = "ok"
        except RuntimeError as e:
            out[backend.name] = f"unavailable ({str(e).splitlines()[0][:80] if str(e) else 'RuntimeError'})"
    return out


# ============================================================================ fused_adam


def part_fused_adam(ctx: dict) -> dict:
    if ctx["mode"] == "cpu":
        raise Skipped("DeepSpeed's CPU accelerator has no FusedAdam (cpu_zero3.json uses torch's AdamW)")
    import torch

    t0 = time.perf_counter()
    from deepspeed.ops.adam import FusedAdam

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4096, 1024, device="cuda"))
    ref = torch.nn.Parameter(p.detach().clone())
    opt = FusedAdam([p], lr=1e-3, weight_decay=0.01, adam_w_mode=True)  # JIT-builds the op on first use
    build_s = time.perf_counter() - t0
    ref_opt = torch.optim.AdamW([ref], lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn_like(p)
        p.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    rel = float((p - ref).norm() / ref.norm())
    res = {"build_s": build_s, "rel_diff_vs_torch_adamw": rel}
    if not rel < 1e-5:
        raise PartFailed(f"FusedAdam differs from torch's AdamW by {rel:.2e} (relative) after 3 steps", res)
    return res


# ============================================================================ smoke


_PRINT = threading.Lock()


def run_logged(cmd: list[str], prefix: str = "") -> tuple[int, str]:
    """Run `cmd`, echoing its output line by line with `prefix` (so a part killed at its deadline
    keeps the log, and stages running side by side stay readable); returns (status, output)."""
    with _PRINT:
        print(f"{prefix}$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        with _PRINT:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()
        lines.append(line)
    return proc.wait(), "".join(lines)


def _coin(stage: str, *args: str) -> tuple[int, str]:
    return run_logged([sys.executable, "-m", "coin", *args], prefix=f"[{stage}] ")


def _records(out_dir: str, kind: str) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r.get("kind") == kind]


def _weights(hf_dir: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(os.listdir(hf_dir)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(hf_dir, f)))
    return out


def _max_abs_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise PartFailed(f"the two exports hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def part_smoke(ctx: dict) -> dict:
    s = ctx["sizes"]["smoke"]
    work = os.path.join(ctx["work"], "smoke")
    shutil.rmtree(work, ignore_errors=True)
    data, run_a, run_b = os.path.join(work, "data"), os.path.join(work, "run"), os.path.join(work, "resumed")
    steps, save = s["steps"], s["save_every"]
    stages: list[dict] = []
    result: dict = {"stages": stages, "model": s["tiny"] or "the embedded tiny default", "dtype": ctx["sizes"]["dtype"],
                    "ds_config": ctx["ds"]["zero3"], "optimizer": ctx["optimizer"]}

    def stage(name: str, fn) -> dict:
        t0 = time.perf_counter()
        with _PRINT:
            print(f"\n== smoke: {name}", flush=True)
        try:
            out = fn() or {}
            return {"stage": name, "ok": True, "seconds": round(time.perf_counter() - t0, 1), **out}
        except Exception as e:  # noqa: BLE001 - every stage reports, the independent ones still run
            with _PRINT:
                print(f"[{name}] " + traceback.format_exc().replace("\n", f"\n[{name}] "), flush=True)
            return {"stage": name, "ok": False, "seconds": round(time.perf_counter() - t0, 1),
                    "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}

    def make_data():
        from coin.cli import main as coin_main  # pure Python stages: in this process

        def call(*args):
            if coin_main(list(args)) != 0:
                raise PartFailed(f"coin {' '.join(args)} failed")

        call("data", "demo", data, "--train-per-task", str(s["train_per_task"]), "--eval-per-task", str(s["eval_per_task"]))
        for split, templates in (("train", "templates.json"), ("eval", "heldout_templates.json")):
            call("augment", os.path.join(data, f"{split}.jsonl"), "--backend", "templates", "--templates",
                 os.path.join(data, templates), "--out-dir", os.path.join(data, f"augment-{split}"), "--output",
                 os.path.join(data, f"{split}.augmented.jsonl"), "--similarity-model", "none", "--no-progress")
            call("pairs", os.path.join(data, f"{split}.augmented.jsonl"), "--output", os.path.join(data, f"{split}.pairs.jsonl"))

    def overrides(out_dir: str) -> list[str]:
        o = [f"data.train={data}/train.pairs.jsonl", f"data.eval={data}/eval.pairs.jsonl",
             f"data.max_length={s['max_length']}", f"data.cache_dir={work}/token_cache",
             f"model.dtype={ctx['sizes']['dtype']}", "model.attn_implementation=sdpa",
             f"optim.micro_batch_size={s['micro_batch']}", f"optim.max_steps={steps}",
             f"output.dir={out_dir}", f"output.save_every={save}", "output.keep_last=2",
             "logging.log_every=1", f"logging.eval_every={s['eval_every']}", f"logging.peak_tflops={ctx['peak_tflops']}",
             "logging.progress_bar=false", f"deepspeed.config={ctx['ds']['zero3']}"]
        return o + [f"model.tiny.{k}={v}" for k, v in s["tiny"].items()]

    def train(stage: str, out_dir: str, *extra: str) -> str:
        rc, text = _coin(stage, "train", "--config", os.path.join(REPO, "configs", "tiny.yaml"), "--nproc", "1",
                         *overrides(out_dir), *extra)
        if rc != 0:
            raise PartFailed(f"coin train exited with status {rc}")
        with open(os.path.join(out_dir, "run_status.json"), encoding="utf-8") as f:
            status = json.load(f)
        if status.get("status") != "completed":
            raise PartFailed(f"run_status.json says {status}")
        return text

    def check_train():
        text = train("train", run_a)
        recs = _records(run_a, "train")
        got = [r["step"] for r in recs]
        if got != list(range(1, steps + 1)):
            raise PartFailed(f"metrics.jsonl has train steps {got}, expected 1..{steps}")
        bad = [r["step"] for r in recs if not all(_finite(r[k]) for k in ("loss", "gen_loss", "ctr_loss"))]
        if bad:
            raise PartFailed(f"non-finite losses at steps {bad}")
        if not recs[-1]["gen_loss"] < recs[0]["gen_loss"]:
            raise PartFailed(f"the generation loss did not fall: {recs[0]['gen_loss']:.4f} -> {recs[-1]['gen_loss']:.4f}")
        evals = _records(run_a, "eval")
        if [e["step"] for e in evals] != list(range(s["eval_every"], steps + 1, s["eval_every"])) or \
                not all(_finite(e["loss"]) for e in evals):
            raise PartFailed(f"held-out evaluations: {[(e['step'], e['loss']) for e in evals]}")
        root = os.path.join(run_a, "checkpoints")
        for step in (save, steps):
            if not os.path.isfile(os.path.join(root, f"step_{step:08d}", "coin_complete.json")):
                raise PartFailed(f"checkpoint step {step} is missing or incomplete under {root}")
        if not os.path.isfile(os.path.join(run_a, "hf", "config.json")):
            raise PartFailed(f"no export at {run_a}/hf")
        later = recs[1:] or recs  # the first step includes warm-up
        # ZeRO-3 prefetching gives up on a step whose module order changed (DeepSpeed says so)
        return {"steps": steps, "trace_cache_invalidations": text.count("Invalidate trace cache"), "gen_loss_first": recs[0]["gen_loss"],
                "gen_loss_last": recs[-1]["gen_loss"], "losses": [r["loss"] for r in recs],
                "eval_loss": [e["loss"] for e in evals],
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
                "mfu": statistics.median(r["mfu"] for r in later), "memory_gb": recs[-1]["memory_gb"],
                "step_time_s": statistics.median(r["step_time_s"] for r in later)}

    def check_resume():
        train("resume", run_b, f"output.resume={run_a}/checkpoints/step_{save:08d}")
        resumed = [r["step"] for r in _records(run_b, "resume")]
        if resumed != [save]:
            raise PartFailed(f"the second run's resume events: {resumed}, expected [{save}]")
        want = {r["step"]: r["loss"] for r in _records(run_a, "train")}
        got = {r["step"]: r["loss"] for r in _records(run_b, "train")}
        if sorted(got) != list(range(save + 1, steps + 1)):
            raise PartFailed(f"the resumed run made steps {sorted(got)}, expected {save + 1}..{steps}")
        rel = {k: abs(got[k] - want[k]) / max(abs(want[k]), 1e-12) for k in got}
        out = {"from_step": save, "max_rel_diff": max(rel.values()), "rtol": s["resume_rtol"],
               "losses": [got[k] for k in sorted(got)],
               "weights_max_abs_diff": _max_abs_diff(_weights(os.path.join(run_a, "hf")), _weights(os.path.join(run_b, "hf")))}
        if out["max_rel_diff"] > s["resume_rtol"]:
            raise PartFailed(f"resumed losses differ from the straight run by up to {out['max_rel_diff']:.2e} "
                             f"(relative; tolerance {s['resume_rtol']}): {rel}")
        return out

    def check_export():
        out_dir = os.path.join(work, "export")
        rc, _ = _coin("export", "export", os.path.join(run_a, "checkpoints", f"step_{steps:08d}"), out_dir)
        if rc != 0:
            raise PartFailed(f"coin export exited with status {rc}")
        import torch

        offline, live = _weights(out_dir), _weights(os.path.join(run_a, "hf"))
        diff = _max_abs_diff(offline, live)
        dtypes = sorted({str(t.dtype) for t in offline.values()})
        for k in live:  # both hold the run's dtype; bf16 rounding of the same fp32 master weights
            torch.testing.assert_close(offline[k].float(), live[k].float(), rtol=8e-3, atol=1e-5)
        return {"tensors": len(offline), "dtypes": dtypes, "max_abs_diff_vs_run_export": diff}

    def check_eval():
        out_dir = os.path.join(work, "eval")
        rc, _ = _coin("eval", "eval", "--model", os.path.join(run_a, "hf"), "--tasks", s["eval_tasks"], "--data",
                      os.path.join(data, "glue"), "--instructions", "generated:" + os.path.join(data, "heldout_templates.json"),
                      "--attacks", "character", "--n-examples", str(s["eval_examples"]), "--n-instructions", "2",
                      "--dtype", ctx["sizes"]["dtype"], "--representation", "none", "--no-plots", "--no-progress",
                      "--out", out_dir)
        if rc != 0:
            raise PartFailed(f"coin eval exited with status {rc}")
        with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        (model,) = results["models"].values()
        overall = model["overall"]
        clean, perturbed = overall["by_level"]["clean"]["accuracy"], overall["perturbed"]["accuracy"]
        if not (_finite(clean) and _finite(perturbed)):
            raise PartFailed(f"accuracies: clean {clean}, perturbed {perturbed}")
        with open(os.path.join(out_dir, "predictions.jsonl"), encoding="utf-8") as f:
            scores = [x for line in f for x in json.loads(line)["score"]]
        if not scores or not all(_finite(x) for x in scores):  # a NaN score would still give an accuracy
            raise PartFailed(f"label scores: {len(scores)}, {sum(not _finite(x) for x in scores)} not finite")
        return {"tasks": s["eval_tasks"], "examples": s["eval_examples"], "label_scores": len(scores),
                "clean_accuracy": clean, "perturbed_accuracy": perturbed}

    for name, fn in (("data", make_data), ("train", check_train)):
        stages.append(stage(name, fn))
        if not stages[-1]["ok"]:
            break
    else:  # the three checks of the finished run are independent: side by side
        import safetensors.torch  # noqa: F401 - imported once here, not by two threads at a time
        after = (("resume", check_resume), ("export", check_export), ("eval", check_eval))
        with ThreadPoolExecutor(len(after)) as pool:
            stages += list(pool.map(lambda item: stage(*item), after))
    failed = [st["stage"] for st in stages if not st["ok"]]
    if failed or len(stages) != 5:
        raise PartFailed("smoke stages failed: " + ", ".join(f"{st['stage']} ({st['error']})" for st in stages
                                                            if not st["ok"]), result)
    return result


# ============================================================================ throughput, lm_loss


def part_throughput(ctx: dict, stage: str) -> dict:
    return bench_gpu.measure(ds_config=ctx["ds"][stage], peak_tflops=ctx["peak_tflops"], **ctx["sizes"]["throughput"])


def part_lm_loss(ctx: dict) -> dict:
    """Loss + backward alone (hidden states in, gradients of hidden states and head out): the lean
    loss (coin.training.losses.token_losses: label positions only, fixed chunks, recomputed in
    backward) against full logits over every position then CE on the labels (what HF does)."""
    import torch
    import torch.nn.functional as F

    from coin.training.batch import IGNORE_INDEX
    from coin.training.losses import token_losses

    s = ctx["sizes"]["lm_loss"]
    cuda = torch.cuda.is_available() and ctx["mode"] == "gpu"
    device, dtype = ("cuda" if cuda else "cpu"), torch.bfloat16
    torch.manual_seed(0)
    head = torch.nn.Linear(s["hidden"], s["vocab"], bias=False, device=device, dtype=dtype)
    hidden = torch.randn(s["sequences"], s["seq"], s["hidden"], device=device, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, s["vocab"], (s["sequences"], s["seq"]), device=device)

    def full(labels):
        logits = head(hidden[:, :-1]).float()
        return F.cross_entropy(logits.reshape(-1, s["vocab"]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)

    def lean(labels):
        ce, _ = token_losses(hidden, labels, head, s["chunks"])
        return ce.mean()

    def measure(fn, labels) -> dict:
        def step():
            loss = fn(labels)
            loss.backward()
            hidden.grad = head.weight.grad = None
            return loss.item()

        step()  # warm-up
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            loss = step()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            seconds = _time_cuda(step, s["repeats"], warmup=0)
        else:
            from memory import time_and_peak

            loss = step()
            times, peak = time_and_peak(step, s["repeats"])
            peak, seconds = max(peak, 0.0), min(times)  # RSS: memory freed before the call reads as < 0
        return {"loss": loss, "peak_mib": peak, "step_s": seconds}

    rows = {}
    for layout in ("response", "all"):
        labels = ids.clone()
        if layout == "response":
            labels[:, : s["seq"] - s["response"]] = IGNORE_INDEX
        f, l = measure(full, labels), measure(lean, labels)
        rows[layout] = {"full": f, "lean": l, "peak_ratio": l["peak_mib"] / f["peak_mib"] if f["peak_mib"] > 0 else None,
                        "loss_rel_diff": abs(f["loss"] - l["loss"]) / abs(f["loss"])}
    res = {"setting": s, "memory": "torch.cuda.max_memory_allocated" if cuda else "peak RSS (benchmarks/memory.py)",
           "layouts": rows}
    worst = max(r["loss_rel_diff"] for r in rows.values())
    if worst > 1e-2:
        raise PartFailed(f"lean and full-logits losses differ by {worst:.2e} (relative)", res)
    return res


PART_FUNCTIONS = {
    "install": part_install, "env": part_env, "fused_adam": part_fused_adam, "smoke": part_smoke,
    "throughput_zero3": lambda ctx: part_throughput(ctx, "zero3"), "lm_loss": part_lm_loss,
    "throughput_zero0": lambda ctx: part_throughput(ctx, "zero0"),
}


def run_child(name: str, ctx_path: str) -> int:
    """One part in this process: prints `RESULT {"status", "result", "error"}` last, exits 0."""
    with open(ctx_path, encoding="utf-8") as f:
        ctx = json.load(f)
    try:
        payload = {"status": "passed", "result": PART_FUNCTIONS[name](ctx), "error": None}
    except Skipped as e:
        payload = {"status": "skipped", "result": {}, "error": str(e)}
    except PartFailed as e:
        traceback.print_exc()
        payload = {"status": "failed", "result": e.result, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - reported in the summary with the log's tail
        traceback.print_exc()
        payload = {"status": "failed", "result": {}, "error": f"{type(e).__name__}: {str(e).strip()[:500]}"}
    print("RESULT " + json.dumps(payload, default=str), flush=True)
    if "torch" in sys.modules:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            from coin.training import dist

            dist.shutdown(0)  # destroys the group and leaves through os._exit
    return 0


# ============================================================================ the orchestrator


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    from coin.training.train import _children

    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _kill_tree(pid: int) -> None:
    for p in reversed(_tree(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children_cpu_s() -> float:
    """CPU seconds of every finished process below this one (the parts and what they started)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_part(name: str, cmd: list[str], env: dict, timeout: float, log_path: str) -> dict:
    """Run one part's command with a deadline; its whole process tree is killed at the deadline.
    Returns {"status", "seconds", "timeout_s", "result", "error"} (status: passed, failed,
    timeout or skipped), from the `RESULT` line the part prints last, or from its exit."""
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            rc = proc.wait()
            timed_out = True
    seconds = time.monotonic() - t0
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
    out = {"status": "failed", "seconds": round(seconds, 1), "cpu_s": round(_children_cpu_s() - cpu0, 1),
           "timeout_s": round(timeout, 1), "result": {}, "error": None}
    if lines:
        try:
            out.update(json.loads(lines[-1][len("RESULT "):]))
        except json.JSONDecodeError as e:
            out["error"] = f"unreadable RESULT line ({e})"
    if timed_out and lines:  # it reported, then hung on the way out: what it reported stands
        out["error"] = ((out["error"] or "") + f" (then hung at exit: killed at its deadline of {timeout:.0f} s)").strip()
    elif timed_out:
        out.update(status="timeout", error=f"killed at its deadline of {timeout:.0f} s")
    elif not lines:
        out["error"] = f"exited with status {rc} before reporting: " + " | ".join(text.strip().splitlines()[-3:])[-600:]
    return out


def child_env(mode: str, work: str, site: str | None) -> dict:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.setdefault("COIN_CACHE", os.path.join(work, "cache"))  # the generated models (CI points it at its cache)
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(work, "torch_extensions"))  # DeepSpeed's JIT ops, built once
    if mode == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    else:
        env.pop("DS_ACCELERATOR", None)  # DeepSpeed finds the GPU itself
    path = [site] if site else []
    env["PYTHONPATH"] = os.pathsep.join(path + [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                           if p and p not in (REPO, site)])
    return env


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(x, spec: str = ".3g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def targets(parts: dict) -> dict:
    """The issue's targets against the measured figures (None where not measured)."""
    r = (parts.get("throughput_zero3") or {}).get("result") or {}
    coin_mfu = (r.get("coin") or {}).get("mfu")
    ratio = r.get("coin_over_sft_mfu")
    smoke = (parts.get("smoke") or {}).get("status")
    t = bench_gpu.TARGETS
    met = None if coin_mfu is None else bool(coin_mfu >= t["coin_mfu_min"] and ratio >= t["coin_over_sft_min"])
    return dict(bench_gpu.TARGETS, coin_mfu=coin_mfu, coin_over_sft_mfu=ratio, mfu_targets_met=met,
                smoke_green=None if smoke in (None, "skipped") else smoke == "passed")


def markdown(summary: dict) -> str:
    parts = summary["parts"]
    lines = [f"# coin GPU check ({summary['mode']})", "",
             f"Started {summary['started']}; {summary['seconds']:.0f} s in all (budget {summary['budget_s']:.0f} s). "
             f"Command: `{summary['command']}`. MFU peak used: {summary['peak_tflops']:.0f} TFLOP/s per GPU "
             "(dense bf16, H100/H200 SXM datasheet).", "",
             "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name in summary["order"]:
        p = parts.get(name)
        if p is None:
            lines.append(f"| {name} | not run | | |")
            continue
        note = (p.get("error") or "").replace("|", "/").replace("\n", " ")[:200]
        shown = p["status"].upper() if p["status"] in ("failed", "timeout") else p["status"]
        lines.append(f"| {name} | {shown} | {p['seconds']:.1f} | {note} |")
    env = (parts.get("env") or {}).get("result") or {}
    if env:
        dev = env.get("device") or {}
        lines += ["", f"Environment: Python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
                      f"DeepSpeed accelerator {env.get('deepspeed_accelerator')}; packages "
                      + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()) + "."]
        if dev:
            lines.append(f"Device: {dev.get('name')} (sm {dev.get('capability')}, {_fmt(dev.get('memory_gib'), '.0f')} GiB, "
                         f"{dev.get('multiprocessors')} SMs, NCCL {dev.get('nccl')}); nvidia-smi: {dev.get('nvidia_smi')}.")
        if "matmul_bf16_tflops" in env:
            lines.append(f"Measured bf16 matrix product ({env['matmul_size']}^3, random data): "
                         f"{env['matmul_bf16_tflops']:.4g} TFLOP/s. SDPA kernels (causal bf16, throughput shape): "
                         + ", ".join(f"{k} {v}" for k, v in env["sdpa"].items()) + ".")
    fa = (parts.get("fused_adam") or {}).get("result") or {}
    if fa:
        lines.append(f"FusedAdam: JIT build and load {_fmt(fa.get('build_s'), '.1f')} s, relative difference from torch's "
                     f"AdamW after 3 steps {_fmt(fa.get('rel_diff_vs_torch_adamw'), '.1e')}.")
    lines.append(f"Optimiser used by the training parts: {summary['optimizer']}.")
    smoke = (parts.get("smoke") or {}).get("result") or {}
    if smoke.get("stages"):
        lines += ["", f"Smoke run ({smoke.get('model')}, {smoke.get('dtype')}, `coin train --nproc 1`, "
                      f"{smoke.get('ds_config')}):", "", "| stage | ok | seconds | figures |", "|---|---|---:|---|"]
        for st in smoke["stages"]:
            figures = {k: v for k, v in st.items() if k not in ("stage", "ok", "seconds", "losses", "eval_loss")}
            text = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in figures.items())
            lines.append(f"| {st['stage']} | {'yes' if st['ok'] else 'NO'} | {st['seconds']:.1f} | {text.replace('|', '/')[:400]} |")
    tp = {stage: (parts.get(f"throughput_{stage}") or {}) for stage in bench_gpu.STAGES}
    tp_results = {k: (v.get("result") if v.get("status") == "passed" else (v.get("error") or "not run"))
                  for k, v in tp.items() if v}
    if tp_results:
        lines += [""] + bench_gpu.section(tp_results, "").replace("## ", "### ", 1).rstrip().splitlines()
    lm = (parts.get("lm_loss") or {}).get("result") or {}
    if lm.get("layouts"):
        s = lm["setting"]
        lines += ["", f"### Lean LM loss vs full logits (vocabulary {s['vocab']}, {s['sequences']} sequences of {s['seq']}, "
                      f"hidden {s['hidden']}, bf16; loss + backward alone; memory: {lm['memory']})", "",
                  "| labelled positions | full peak (MiB) | lean peak (MiB) | lean/full | full step (s) | lean step (s) | loss rel. diff |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for layout, r in lm["layouts"].items():
            what = f"response (last {s['response']})" if layout == "response" else "all"
            lines.append(f"| {what} | {r['full']['peak_mib']:.0f} | {r['lean']['peak_mib']:.0f} | {_fmt(r['peak_ratio'], '.3f')} "
                         f"| {r['full']['step_s']:.4f} | {r['lean']['step_s']:.4f} | {r['loss_rel_diff']:.1e} |")
    t = summary["targets"]
    mfu = "n/a" if t["coin_mfu"] is None else f"{100 * t['coin_mfu']:.1f}%"
    lines += ["", f"Targets: CoIN MFU >= {100 * t['coin_mfu_min']:.0f}% (measured {mfu}), "
                  f"CoIN/SFT MFU >= {t['coin_over_sft_min']} (measured {_fmt(t['coin_over_sft_mfu'])}): "
                  f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[t['mfu_targets_met']] }; smoke run green: "
                  f"{ {True: 'yes', False: 'NO', None: 'not run'}[t['smoke_green']] }."]
    for name in summary["order"]:
        p = parts.get(name) or {}
        if p.get("status") in ("failed", "timeout"):
            lines += ["", f"Last lines of {name}'s log:", "```", *(l[:200] for l in p.get("log_tail", [])[-8:]), "```"]
    return "\n".join(lines) + "\n"


def record(json_path: str, results_path: str) -> None:
    """Write a GPU run's summary (its gpu_check.json) as the `gpu` section of RESULTS.md, which
    `coin bench` keeps on machines without a GPU."""
    from coin import bench
    from coin.errors import CoinError, read_json

    summary = read_json(json_path, CoinError, what="--record: file")
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise CoinError(f"--record: {json_path} is not a gpu_check summary (expected format {FORMAT})")
    if summary.get("mode") != "gpu":
        raise CoinError(f"--record: {json_path} is a {summary.get('mode')} run; only GPU figures go into RESULTS.md")
    device = ((summary["parts"].get("env") or {}).get("result") or {}).get("device", {}).get("name", "unknown device")
    body = markdown(summary).split("\n", 1)[1]  # below the page title
    text = (f"## GPU: the one-call GPU check on {device} ({summary['started'][:10]})\n\n"
            f"Recorded with `python benchmarks/gpu_check.py --record gpu_check.json` from the run below; "
            f"targets and every figure in that file.\n" + body)
    with open(results_path, encoding="utf-8") as f:
        sections = bench._sections(f.read())
    sections["gpu"] = text
    bench.write_results(sections, results_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="output directory: gpu_check.json, gpu_check.md, gpu_check.log")
    ap.add_argument("--record", metavar="GPU_CHECK.json", default=None,
                    help="instead of running: put a GPU run's figures into benchmarks/RESULTS.md")
    ap.add_argument("--results", default=os.path.join(REPO, "benchmarks", "RESULTS.md"), help=argparse.SUPPRESS)
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same parts at toy size on the CPU (gloo)")
    ap.add_argument("--work", default=None, help="scratch directory (default: a new temporary directory)")
    ap.add_argument("--only", default=None, help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget for all parts (GPU 450, CPU 840)")
    ap.add_argument("--part-timeout", action="append", default=[], metavar="PART=SECONDS", help="one part's deadline")
    ap.add_argument("--peak-tflops", type=float, default=bench_gpu.PEAK_TFLOPS, help="per-GPU peak for MFU (989)")
    args = ap.parse_args(argv)
    if args.record:
        from coin.errors import CoinError

        try:
            record(args.record, args.results)
        except CoinError as e:
            print(f"gpu_check: error: {e}", file=sys.stderr)
            return 2
        print(f"gpu_check: recorded {args.record} in {args.results}")
        return 0
    if args.out is None:
        ap.error("the output directory is required (or --record GPU_CHECK.json)")
    mode = "cpu" if args.cpu_dry_run else "gpu"
    order = list(PARTS)
    if args.only:
        chosen = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in PARTS]
        if unknown:
            ap.error(f"--only: unknown part(s) {', '.join(unknown)} (expected some of {', '.join(PARTS)})")
        order = [p for p in PARTS if p in chosen]
    timeouts = dict(TIMEOUTS[mode])
    for item in args.part_timeout:
        name, _, value = item.partition("=")
        if name not in PARTS:
            ap.error(f"--part-timeout: unknown part '{name}' (expected one of {', '.join(PARTS)})")
        try:
            timeouts[name] = float(value)
        except ValueError:
            ap.error(f"--part-timeout: expected PART=SECONDS, got {item!r}")
    budget = args.budget_s if args.budget_s is not None else BUDGET_S[mode]

    os.makedirs(args.out, exist_ok=True)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="coin-gpu-check-"))
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    site = os.path.join(work, "site") if mode == "gpu" else None
    base_ds = os.path.join(REPO, "ds_configs", "zero3.json" if mode == "gpu" else "cpu_zero3.json")
    ctx = {"mode": mode, "work": work, "site": site, "sizes": SIZES[mode], "peak_tflops": args.peak_tflops,
           "ds": {}, "optimizer": ""}
    ctx_path = os.path.join(work, "context.json")

    def set_optimizer(torch_adam: bool, why: str) -> None:
        for stage in bench_gpu.STAGES:
            ctx["ds"][stage] = bench_gpu.stage_ds_config(base_ds, int(stage[-1]), os.path.join(work, f"ds_{stage}.json"),
                                                         torch_adam=torch_adam)
        ctx["optimizer"] = why
        _write(ctx_path, json.dumps(ctx, indent=1))

    if mode == "cpu":
        set_optimizer(False, "torch's AdamW (cpu_zero3.json: torch_adam)")
    else:
        set_optimizer(False, "DeepSpeed's FusedAdam (ds_configs/zero3.json)")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_start = time.monotonic()
    summary = {"format": FORMAT, "mode": "gpu" if mode == "gpu" else "cpu-dry-run", "started": started,
               "command": "bash benchmarks/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else argv),
               "budget_s": budget, "peak_tflops": args.peak_tflops, "order": order, "work": work, "parts": {}}
    json_path, md_path, log_path = (os.path.join(args.out, f"gpu_check.{ext}") for ext in ("json", "md", "log"))

    def write_summary() -> None:
        summary["seconds"] = round(time.monotonic() - t_start, 1)
        summary["optimizer"] = ctx["optimizer"]
        summary["targets"] = targets(summary["parts"])
        summary["passed"] = all(p["status"] in ("passed", "skipped") for p in summary["parts"].values()) and \
            len(summary["parts"]) == len(order)
        _write(json_path, json.dumps(summary, indent=1, default=str) + "\n")
        _write(md_path, markdown(summary))
        chunks = []
        for name in order:
            part_log = os.path.join(logs, f"{name}.log")
            if os.path.isfile(part_log):
                with open(part_log, "rb") as f:
                    f.seek(max(0, os.path.getsize(part_log) - LOG_TAIL_BYTES))
                    chunks.append(f"==== {name} ({summary['parts'].get(name, {}).get('status', '?')})\n"
                                  + f.read().decode("utf-8", "replace"))
        _write(log_path, "\n".join(chunks))

    print(f"[gpu_check] {summary['mode']}: parts {', '.join(order)}; budget {budget:.0f} s; work {work}", flush=True)
    for name in order:
        remaining = budget - (time.monotonic() - t_start) - RESERVE_S
        env_res = summary["parts"].get("env", {})
        if remaining < 10:
            part = {"status": "skipped", "seconds": 0.0, "timeout_s": 0.0, "result": {},
                    "error": f"the budget of {budget:.0f} s is spent"}
        elif mode == "gpu" and name != "install" and (env_res.get("result") or {}).get("cuda_available") is False:
            part = {"status": "skipped", "seconds": 0.0, "timeout_s": 0.0, "result": {},
                    "error": "no CUDA device (see env)"}
        else:
            timeout = min(timeouts[name], remaining)
            print(f"[gpu_check] {name}: running (deadline {timeout:.0f} s)", flush=True)
            env = child_env(mode, work, site)
            part = run_part(name, [sys.executable, os.path.abspath(__file__), "--part", name, ctx_path], env, timeout,
                            os.path.join(logs, f"{name}.log"))
            with open(os.path.join(logs, f"{name}.log"), encoding="utf-8", errors="replace") as f:
                tail = [l for l in f.read().splitlines() if not l.startswith("RESULT ")][-40:]
            if part["status"] in ("failed", "timeout"):
                part["log_tail"] = [l[:300] for l in tail]
        summary["parts"][name] = part
        if name == "fused_adam" and mode == "gpu" and part["status"] != "passed":
            set_optimizer(True, f"torch's AdamW (torch_adam; FusedAdam {part['status']}: {part.get('error')})")
        print(f"[gpu_check] {name}: {part['status']} in {part['seconds']:.1f} s"
              + (f" ({part['error']})" if part.get("error") else ""), flush=True)
        write_summary()
    write_summary()
    print("\n" + open(md_path, encoding="utf-8").read(), flush=True)
    # last, whatever the summary's length (the device tool shows the output's last 12,000 characters)
    print("[gpu_check] " + " | ".join(f"{n} {p['status']} {p['seconds']:.0f}s" for n, p in summary["parts"].items()), flush=True)
    print(f"[gpu_check] wrote {json_path}, {md_path}, {log_path}", flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--part"]:
        sys.exit(run_child(sys.argv[2], sys.argv[3]))
    sys.exit(main())
