"""GPU throughput and MFU of the CoIN step against SFT, on a ~1.1B LLaMA, with and without ZeRO-3.

A random LLaMA of TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads,
intermediate 5632, vocabulary 32000), bf16, SDPA attention, sequence 1024, one GPU, micro-batch 4
(8 sequences: originals and paraphrases), 64-token responses. One engine per ZeRO stage, each in
a fresh process: ZeRO-3 (ds_configs/zero3.json) and, for reference, no ZeRO (the same file with
`zero_optimization.stage: 0`). On each engine the variants alternate step by step over the same
batch: `coin` (pooling, InfoNCE, adaptive weight) and `sft` (`coin.objective: cit`, the same
8 sequences). Per variant: median step time (forward + backward + optimiser step, synchronised),
tokens/s, MFU, and the peak allocated GPU memory of one step (torch.cuda.max_memory_allocated
after a reset, the engine's weights and optimiser state included).

MFU = CoinModel.flops_per_token(sequence, label fraction) x tokens/s / peak, with the peak given
as `--peak-tflops` (989: H100/H200 SXM dense bf16, the datasheet's figure; the summary records it).
The label fraction is read off the batch (label positions the output head runs on / tokens).

Targets: CoIN MFU >= 40% and >= 0.9x SFT's (ZeRO-3). Without a GPU nothing runs: `coin bench`
keeps the section RESULTS.md holds (figures recorded from a GPU machine), or writes NOT_MEASURED.
`measure` is also what benchmarks/gpu_check.py (the one-call GPU check) runs, each stage under a
deadline; this file is its only implementation.

    python benchmarks/bench_gpu.py [--peak-tflops 989]      (or: coin bench gpu)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_TFLOPS = 989.0  # H100/H200 SXM, dense bf16 (datasheet)
SHAPE_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, max_position_embeddings=2048)
# The measured setting on a GPU; benchmarks/gpu_check.py --cpu-dry-run swaps in toy sizes.
GPU_SETTING = dict(shape=SHAPE_1B, seq=1024, micro_batch=4, response=64, steps=20, warmup=2, dtype="bf16")
STAGES = {"zero3": "ZeRO-3", "zero0": "no ZeRO"}
TARGETS = {"coin_mfu_min": 0.40, "coin_over_sft_min": 0.90}  # the issue's, for the ZeRO-3 engine


def stage_ds_config(base_path: str, stage: int, out_path: str, torch_adam: bool = False) -> str:
    """Write `base_path` with ZeRO stage `stage` (0: no ZeRO; other ZeRO keys dropped) and, with
    `torch_adam`, torch's AdamW instead of DeepSpeed's FusedAdam; returns `out_path`."""
    with open(base_path, encoding="utf-8") as f:
        ds = json.load(f)
    if stage == 0:
        ds["zero_optimization"] = {"stage": 0}
    else:
        ds.setdefault("zero_optimization", {})["stage"] = stage
    if torch_adam and "optimizer" in ds:
        ds["optimizer"].setdefault("params", {})["torch_adam"] = True
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(ds, f, indent=1)
    os.replace(tmp, out_path)
    return out_path


def measure(ds_config: str, shape: dict, seq: int, micro_batch: int, response: int, steps: int, warmup: int,
            dtype: str, peak_tflops: float) -> dict:
    """In this process (one rank): build the model and the engine, time `steps` alternating CoIN and
    SFT steps after `warmup` rounds, then one step of each for peak memory. Returns the figures."""
    import torch

    from coin.training import dist
    from coin.training.config import CoinConfig, ModelConfig, RunConfig, TinyModelConfig, deepspeed_config
    from coin.training.engine import Engine
    from coin.training.gather import NegativePool
    from coin.training.model import CoinModel, load_model, tiny_model_dir
    from coin.training.step import coin_step

    t_start = time.perf_counter()
    dist.init()
    cuda = dist.use_cuda()
    cfg = RunConfig()
    cfg.model = ModelConfig(name_or_path=tiny_model_dir(TinyModelConfig(**shape)), dtype=dtype, attn_implementation="sdpa")
    cfg.deepspeed.config = ds_config
    cfg.optim.micro_batch_size = micro_batch
    ds = deepspeed_config(cfg, dist.world_size(), shape["hidden_size"])
    model = CoinModel(load_model(cfg.model, ds))
    engine = Engine(model, ds, cfg.optim, total_steps=10_000)
    setup_s = time.perf_counter() - t_start
    device = engine.device
    g = torch.Generator().manual_seed(0)
    n = 2 * micro_batch
    ids = torch.randint(3, model.lm.config.vocab_size, (n, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq - response] = -100
    batch = {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                                           "prompt_last": torch.full((n,), seq - response - 1)}.items()}
    tokens = n * seq
    # the positions the output head runs on: those predicting a label (the step's label_tokens)
    label_fraction = float((labels[:, 1:] != -100).sum()) / tokens
    flops_per_step = model.flops_per_token(seq, label_fraction) * tokens
    variants = {"sft": (CoinConfig(objective="cit"), NegativePool(enabled=False)),
                "coin": (CoinConfig(), NegativePool(enabled=True))}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def one_step(ccfg, pool) -> float:
        sync()
        t0 = time.perf_counter()
        out = coin_step(engine.model, batch, ccfg, pool)
        engine.backward(out.loss)
        engine.step()
        sync()
        seconds = time.perf_counter() - t0
        if not torch.isfinite(out.loss.detach()):
            raise RuntimeError(f"non-finite loss {float(out.loss)}")
        return seconds

    times = {k: [] for k in variants}
    for step in range(warmup + steps):
        for name, (ccfg, pool) in variants.items():
            t = one_step(ccfg, pool)
            if step >= warmup:
                times[name].append(t)
    import torch.distributed as tdist

    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "backend": tdist.get_backend(),
              "zero_stage": engine.zero_stage,
              "params": model.num_parameters(), "dtype": dtype, "seq": seq, "micro_batch": micro_batch,
              "sequences": n, "response": response, "tokens_per_step": tokens, "label_fraction": label_fraction,
              "flops_per_step": flops_per_step, "peak_tflops": peak_tflops, "steps": steps, "warmup": warmup,
              "setup_s": setup_s, "optimizer": type(engine.optimizer).__name__}
    for name, ts in times.items():
        t = statistics.median(ts)
        result[name] = {"step_s": t, "step_s_min": min(ts), "step_s_max": max(ts), "tokens_per_s": tokens / t,
                        "mfu": flops_per_step / t / (peak_tflops * 1e12)}
    if cuda:  # one more step of each, alone, for its peak memory (weights and optimiser state included)
        for name, (ccfg, pool) in variants.items():
            torch.cuda.reset_peak_memory_stats()
            one_step(ccfg, pool)
            result[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["coin_over_sft_mfu"] = result["coin"]["mfu"] / result["sft"]["mfu"]
    return result


def section(results: dict, command: str) -> str:
    """The Markdown of the measured stages (`results`: stage -> measure() output, or an error string)."""
    ok = {k: v for k, v in results.items() if isinstance(v, dict)}
    head = ["## GPU: CoIN vs SFT throughput and MFU (~1.1B LLaMA, bf16, sequence 1024, one GPU)", ""]
    if not ok:
        return "\n".join(head + ["Not measured: " + "; ".join(f"{STAGES.get(k, k)}: {v}" for k, v in results.items()),
                                 "", command]) + "\n"
    any_ = next(iter(ok.values()))
    lines = head + [
        f"Device: {any_['device']}; {any_['params'] / 1e9:.2f}B parameters, {any_['dtype']}; micro-batch "
        f"{any_['micro_batch']} ({any_['sequences']} sequences of {any_['seq']}, {any_['response']}-token responses); "
        f"median of {any_['steps']} alternating steps after {any_['warmup']} warm-up rounds; MFU against "
        f"{any_['peak_tflops']:.0f} TFLOP/s per GPU (dense bf16, datasheet); peak memory of one step "
        f"(torch.cuda.max_memory_allocated). {command}", "",
        "| engine | optimiser | variant | step (s) | tokens/s | MFU | peak memory (GiB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for stage, r in ok.items():
        for name in ("sft", "coin"):
            v = r[name]
            mem = f"{v['peak_memory_gib']:.1f}" if "peak_memory_gib" in v else "n/a"
            lines.append(f"| {STAGES.get(stage, stage)} | {r['optimizer']} | {name.upper() if name == 'sft' else 'CoIN'} "
                         f"| {v['step_s']:.3f} | {v['tokens_per_s']:.0f} | {100 * v['mfu']:.1f}% | {mem} |")
    lines.append("")
    for stage, r in ok.items():
        coin_mfu = r["coin"]["mfu"]
        met = coin_mfu >= TARGETS["coin_mfu_min"] and r["coin_over_sft_mfu"] >= TARGETS["coin_over_sft_min"]
        lines.append(f"{STAGES.get(stage, stage)}: CoIN / SFT MFU {r['coin_over_sft_mfu']:.3f}, CoIN MFU "
                     f"{100 * coin_mfu:.1f}% (targets: >= {TARGETS['coin_over_sft_min']} and >= "
                     f"{100 * TARGETS['coin_mfu_min']:.0f}%: {'met' if met else 'NOT met'}).")
    for stage, err in results.items():
        if not isinstance(err, dict):
            lines.append(f"{STAGES.get(stage, stage)}: not measured ({err}).")
    return "\n".join(lines) + "\n"


# The section while no GPU has run it (`coin bench` keeps a recorded section instead, see run()).
NOT_MEASURED = """## GPU: CoIN vs SFT throughput and MFU (~1.1B LLaMA, bf16, sequence 1024, one GPU)

NOT MEASURED YET: nothing in coin has run on a GPU so far (no GPU was lent to the sessions that
wrote it). The whole GPU check (a CUDA smoke run of train, checkpoint, resume, export and eval;
this table, with and without ZeRO-3; the lean LM loss against full logits at a 128k vocabulary)
is one prepared command, `bash benchmarks/gpu_check.sh OUT_DIR`, whose logic runs in CI as a CPU
dry run (tests/benchmarks/test_gpu_check.py). To run it on the lent GPU machine (one H200, bare
image, no network), within about 8 minutes:

1. once, in the checkout the device tool sends (the session's own): `bash
   scripts/prepare_gpu_wheels.sh` (writes the ignored .gpu_wheels/, about 12 MiB: deepspeed
   built with no ops, datasets, mistral-common and their missing dependencies, for Python 3.12);
2. one device-tool call: `run` with command `bash benchmarks/gpu_check.sh $OUT`, carry
   `[".gpu_wheels"]`, timeout_s 540; it writes $OUT/gpu_check.json, gpu_check.md and
   gpu_check.log and prints the summary last;
3. here: `python benchmarks/gpu_check.py --record <fetched>/gpu_check.json` puts its figures
   into this section (device, date, command).

`coin bench gpu` (`python benchmarks/bench_gpu.py`) measures this table alone on a GPU machine.
Targets: CoIN MFU at least 40% and at least 0.9x SFT's MFU (ZeRO-3); the smoke run green.
"""


def run(quick: bool = False, peak_tflops: float = PEAK_TFLOPS) -> str | None:
    """The section, measured on this machine's GPU; None without one (nothing measured here:
    `coin bench` keeps the section RESULTS.md holds, else writes NOT_MEASURED)."""
    import tempfile

    import torch

    command = "Command: `python benchmarks/bench_gpu.py` (or every GPU check in one call: `bash benchmarks/gpu_check.sh OUT`)."
    if not torch.cuda.is_available():
        return None
    setting = dict(GPU_SETTING, steps=5 if quick else GPU_SETTING["steps"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in STAGES:
            ds = stage_ds_config(os.path.join(REPO, "ds_configs", "zero3.json"), int(stage[-1]),
                                 os.path.join(tmp, f"{stage}.json"))
            spec = json.dumps(dict(setting, ds_config=ds, peak_tflops=peak_tflops))  # a fresh process per stage
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", spec], capture_output=True,
                                  text=True, cwd=REPO)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode == 0 and lines:
                results[stage] = json.loads(lines[-1][len("RESULT "):])
            else:
                results[stage] = f"exit status {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}"
    return section(results, command)


def _child(spec: dict) -> None:
    from coin.training import dist

    print("RESULT " + json.dumps(measure(**spec)), flush=True)
    dist.shutdown(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(json.loads(sys.argv[2]))
    else:
        peak = float(sys.argv[sys.argv.index("--peak-tflops") + 1]) if "--peak-tflops" in sys.argv else PEAK_TFLOPS
        print(run(quick="--quick" in sys.argv, peak_tflops=peak) or NOT_MEASURED)
