"""GPU throughput and MFU of the CoIN step against SFT, on a ~1B-parameter LLaMA.

A random LLaMA of TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads,
intermediate 5632, vocabulary 32000), bf16, SDPA attention, sequence 1024, one GPU under
DeepSpeed ZeRO-3 (ds_configs/zero3.json), micro-batch 4 (8 sequences), 64-token responses. The
variants alternate step by step on one engine: `coin` (pooling, InfoNCE, adaptive weight) and
`sft` (`coin.contrastive: false`, the same 8 sequences). MFU uses CoinModel.flops_per_token and
`--peak-tflops` (989: H100/H200 SXM dense bf16).

Targets: CoIN MFU >= 40% and >= 0.9x SFT's. Without a GPU the section says so and nothing runs.

    python benchmarks/bench_gpu.py [--peak-tflops 989]      (or: coin bench gpu)
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

SEQ, MICRO_BATCH, RESPONSE, STEPS = 1024, 4, 64, 20
MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=2048)


def _child(peak_tflops: float) -> None:
    import torch

    from coin.training import dist
    from coin.training.config import CoinConfig, ModelConfig, RunConfig, TinyModelConfig, deepspeed_config
    from coin.training.engine import Engine
    from coin.training.gather import NegativePool
    from coin.training.model import CoinModel, load_model, tiny_model_dir
    from coin.training.step import coin_step

    dist.init()
    cfg = RunConfig()
    cfg.model = ModelConfig(name_or_path=tiny_model_dir(TinyModelConfig(**MODEL)), dtype="bf16", attn_implementation="sdpa")
    cfg.deepspeed.config = "ds_configs/zero3.json"
    cfg.optim.micro_batch_size = MICRO_BATCH
    ds = deepspeed_config(cfg, dist.world_size(), MODEL["hidden_size"])
    model = CoinModel(load_model(cfg.model, ds))
    engine = Engine(model, ds, cfg.optim, total_steps=10_000)
    device = engine.device
    g = torch.Generator().manual_seed(0)
    n = 2 * MICRO_BATCH
    ids = torch.randint(3, model.lm.config.vocab_size, (n, SEQ), generator=g)
    labels = ids.clone()
    labels[:, : SEQ - RESPONSE] = -100
    batch = {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                                           "prompt_last": torch.full((n,), SEQ - RESPONSE - 1)}.items()}
    variants = {"sft": (CoinConfig(contrastive=False), NegativePool(enabled=False)),
                "coin": (CoinConfig(), NegativePool(enabled=True))}
    times = {k: [] for k in variants}
    for step in range(STEPS + 2):
        for name, (ccfg, pool) in variants.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = coin_step(engine.model, batch, ccfg, pool)
            engine.backward(out.loss)
            engine.step()
            torch.cuda.synchronize()
            if step >= 2:
                times[name].append(time.perf_counter() - t0)
    tokens = n * SEQ
    flops = model.flops_per_token(SEQ, (RESPONSE - 1) / SEQ) * tokens
    result = {"device": torch.cuda.get_device_name(0), "params": model.num_parameters(),
              "memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    for name, ts in times.items():
        t = statistics.median(ts)
        result[name] = {"step_s": t, "tokens_per_s": tokens / t, "mfu": flops / t / (peak_tflops * 1e12)}
    print("RESULT " + json.dumps(result), flush=True)
    dist.shutdown(0)


def run(quick: bool = False, peak_tflops: float = 989.0) -> str:
    import torch

    head = ["## GPU: CoIN vs SFT throughput and MFU (~1.1B LLaMA, bf16, sequence 1024, ZeRO-3, one GPU)", ""]
    command = "Command: `python benchmarks/bench_gpu.py` on a machine with a CUDA GPU."
    if not torch.cuda.is_available():
        return "\n".join(head + [
            "Not measured: no GPU was available where this section was written (the benchmarks ran on a 2-core CPU "
            "machine, and this session had no GPU lent). " + command + " Targets: CoIN MFU at least 40% and at "
            "least 0.9x SFT's MFU."]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           __file__, "--child", str(peak_tflops)], check=True, capture_output=True, text=True)
    res = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):])
    c, s = res["coin"], res["sft"]
    return "\n".join(head + [
        f"Device: {res['device']}; {res['params'] / 1e9:.2f}B parameters; micro-batch {MICRO_BATCH} "
        f"({2 * MICRO_BATCH} sequences of {SEQ}); median of {STEPS} alternating steps; peak {peak_tflops:.0f} TFLOP/s; "
        f"peak memory {res['memory_gib']:.1f} GiB. " + command, "",
        "| variant | step (s) | tokens/s | MFU |", "|---|---:|---:|---:|",
        f"| SFT | {s['step_s']:.3f} | {s['tokens_per_s']:.0f} | {100 * s['mfu']:.1f}% |",
        f"| CoIN | {c['step_s']:.3f} | {c['tokens_per_s']:.0f} | {100 * c['mfu']:.1f}% |", "",
        f"CoIN / SFT MFU: {c['mfu'] / s['mfu']:.3f} (target >= 0.9); CoIN MFU target >= 40%."]) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(float(sys.argv[2]))
    else:
        peak = float(sys.argv[sys.argv.index("--peak-tflops") + 1]) if "--peak-tflops" in sys.argv else 989.0
        print(run(peak_tflops=peak))
