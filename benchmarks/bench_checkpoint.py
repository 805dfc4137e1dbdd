"""What the checkpoint manifest (size + xxh3_128 of every file) costs on top of a save.

2 CPU ranks (torchrun, gloo), DeepSpeed ZeRO-3, ONE trainer per model, after one optimiser step
(so that Adam's moments exist and the optimiser files have their full size). Every round saves
four times, one save per variant, in an order that rotates from round to round:

    none   Trainer.save_checkpoint without the manifest (its hashing replaced by an empty one)
    read   every file hashed after the save: each rank reads its share of the files back through
           an 8 MiB buffer (readinto) and hashes the buffer (coin's first manifest)
    mmap   the same, each rank mapping its files and hashing the mapped pages in place
           (checkpoint.hash_file)
    write  coin's manifest now: DeepSpeed's files are hashed while they are written
           (Engine.save_checkpoint, checkpoint.save_hashed), the few small files left (run
           config, HF config) afterwards with hash_file

Save time = Trainer.save_checkpoint on rank 0 (barriers, DeepSpeed's files, RNG, run config, HF
config, the manifest, the completion marker and `latest`, pruning); manifest step = its
`_manifest` call (for `write` most of the hashing is inside DeepSpeed's writes instead).
Overhead = save / save(none) - 1 in the same round, median and range over rounds (the machine is
shared and noisy: only ratios of interleaved saves are compared); hashing share from inside =
rank 0's time in xxh3 (while writing, plus the manifest step) over its save. Target: the
manifest costs at most 10% of the save. Two models: the embedded tiny LLaMA and a wider one
(hidden 256, 4 layers) whose checkpoint is about 240 MB.

    python benchmarks/bench_checkpoint.py [--quick]        (or: coin bench checkpoint)
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import xxhash

VARIANTS = ("none", "read", "mmap", "write")
MODELS = {  # name -> (description, config overrides)
    "tiny": ("embedded tiny LLaMA (hidden 64, 2 layers)", []),
    "wide": ("tiny LLaMA widened (hidden 256, intermediate 704, 4 layers)",
             ["model.tiny.hidden_size=256", "model.tiny.intermediate_size=704", "model.tiny.num_hidden_layers=4"]),
}


def _records(n_groups: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the a movie film plot actor great terrible story river bank question answer text happy sad".split()
    out = []
    for g in range(n_groups):
        for j in range(2):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
            out.append({"id": f"c{g}-{j}", "task": f"task{g % 4}", "group": f"g{g}",
                        "instruction": f"Instruction {g}: classify the text.\n\n{text}",
                        "paraphrases": [f"Paraphrase {g}: label the text.\n\n{text}"],
                        "output": " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))})
    return out


def hash_file_read(path: str, chunk: int = 8 << 20) -> dict:
    """The manifest entry as coin computed it before mmap: read back through a buffer, then hash."""
    h = xxhash.xxh3_128()
    size = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return {"size": size, "xxh3_128": h.hexdigest()}


def _child(work: str, model: str, rounds: int) -> None:
    import torch

    from coin.training import checkpoint as ckpt
    from coin.training import dist
    from coin.training.config import load_config
    from coin.training.trainer import Trainer

    torch.set_num_threads(1)
    out = os.path.join(work, f"run-{model}")
    cfg = load_config(None, [
        f"data.train={work}/train.jsonl", "data.max_length=64", f"data.cache_dir={work}/cache",
        "deepspeed.config=ds_configs/cpu_zero3.json", "optim.micro_batch_size=2", "optim.max_steps=1000",
        f"output.dir={out}", "output.resume=never", "output.export=false", "output.keep_last=1",
        "logging.log_every=1000", "logging.eval_every=0", "logging.progress_bar=false", "logging.tensorboard=false",
        *MODELS[model][1],
    ])
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.run_steps(1)  # Adam's moments exist from the first step on

    manifest, hash_seconds = trainer._manifest, [0.0]

    def timed_manifest(root, tag, written=None):
        t = time.perf_counter()
        try:
            return manifest(root, tag, written)
        finally:
            hash_seconds[0] = time.perf_counter() - t

    mmap_hash = ckpt.hash_file
    tee_seconds = [0.0]

    class TimedHashingWriter(ckpt.HashingWriter):  # the same writes, with the time spent hashing them
        def write(self, data) -> int:
            view = memoryview(data).cast("B")
            for i in range(0, len(view), ckpt._TEE_PIECE):
                piece = view[i:i + ckpt._TEE_PIECE]
                self.f.write(piece)
                t = time.perf_counter()
                self.h.update(piece)
                tee_seconds[0] += time.perf_counter() - t
            self.size += len(view)
            return len(view)

    ckpt.HashingWriter = TimedHashingWriter

    def use(manifest_fn, hash_file, on_write: bool):
        trainer._manifest, ckpt.hash_file, trainer.engine.hash_on_write = manifest_fn, hash_file, on_write

    variant_setup = {
        "none": lambda: use(lambda root, tag, written=None: {}, mmap_hash, False),
        "read": lambda: use(timed_manifest, hash_file_read, False),
        "mmap": lambda: use(timed_manifest, mmap_hash, False),
        "write": lambda: use(timed_manifest, mmap_hash, True),
    }
    times = {v: [] for v in VARIANTS}
    hashing = {v: [] for v in VARIANTS}
    inside = {v: [] for v in VARIANTS}  # all hashing on rank 0: while written + the manifest step
    step = trainer.step
    for r in range(rounds + 1):  # round 0 warms up (the first save also copies DeepSpeed's scripts)
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            variant_setup[variant]()
            step += 1
            trainer.step = step  # a tag of its own per save; keep_last=1 prunes the older ones
            hash_seconds[0] = tee_seconds[0] = 0.0
            dist.barrier()
            t0 = time.perf_counter()
            trainer.save_checkpoint()
            elapsed = time.perf_counter() - t0
            if r:
                times[variant].append(elapsed)
                hashing[variant].append(hash_seconds[0])
                inside[variant].append((hash_seconds[0] + tee_seconds[0]) / elapsed)
    # a last save as coin does it: the checkpoint verifies (its manifest is true), its size is the figure
    variant_setup["write"]()
    step += 1
    trainer.step = step
    trainer.save_checkpoint()
    root, tag = ckpt.checkpoints_dir(out), ckpt.tag_for(step)
    problem = trainer._verify(root, tag)
    trainer.cleanup()
    if dist.rank() == 0:
        files = ckpt.read_info(root, tag)["files"]
        print("RESULT " + json.dumps({
            "times": times, "hashing": hashing, "inside": inside, "params": trainer.engine.module.num_parameters(),
            "bytes": sum(f["size"] for f in files.values()), "files": len(files), "verify": problem,
        }), flush=True)
    dist.shutdown(0)


def measure(work: str, model: str, rounds: int) -> dict:
    """Run the 2-rank child for `model` (see the module docstring); its RESULT record."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # the child imports coin from this checkout, installed or not
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           os.path.abspath(__file__), "--child", work, model, str(rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_checkpoint child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    if res["verify"] is not None:
        raise RuntimeError(f"bench_checkpoint: the hashed checkpoint does not verify: {res['verify']}")
    return res


def overheads(res: dict, variant: str) -> list[float]:
    """save(variant) / save(none) - 1, round by round (sorted)."""
    return sorted(t / base - 1 for t, base in zip(res["times"][variant], res["times"]["none"]))


def _load() -> str:
    with open("/proc/loadavg", encoding="utf-8") as f:
        return " ".join(f.read().split()[:3])


def run(quick: bool = False) -> str:
    from coin.training.config import TinyModelConfig
    from coin.training.model import tiny_model_dir

    tiny_model_dir(TinyModelConfig())  # build once, before two ranks need it
    rounds = 2 if quick else 25
    load_before = _load()
    results = {}
    with tempfile.TemporaryDirectory(prefix="coin-bench-checkpoint-") as work:
        with open(os.path.join(work, "train.jsonl"), "w", encoding="utf-8") as f:
            for rec in _records(n_groups=40):
                f.write(json.dumps(rec) + "\n")
        for model in MODELS:
            results[model] = measure(work, model, rounds)
    return report(results, rounds, load_before, _load())


def report(results: dict, rounds: int, load_before: str, load_after: str) -> str:
    """The RESULTS.md section for {model: measure(...)}."""
    lines = [
        "## Checkpoint integrity: hashing overhead",
        "",
        "What the manifest of every checkpoint (size + xxh3_128 of each file, in `coin_complete.json`) adds to a "
        "save. 2 CPU ranks, DeepSpeed ZeRO-3, after one optimiser step; per round four saves, one per variant, in "
        f"rotating order; {rounds} measured rounds after a warm-up round. `none` = no manifest; `read` = every "
        "file read back after the save through an 8 MiB buffer and hashed (coin's first manifest); `mmap` = "
        "the same with each file mapped and hashed in place (`checkpoint.hash_file`); `write` = coin's manifest "
        "now: DeepSpeed's files and the RNG files hashed while they are written (`checkpoint.save_hashed`), the "
        "small rest (run config, HF config) with `hash_file`. Each rank hashes what it wrote, and a share of the "
        "rest. Save = `Trainer.save_checkpoint` on rank 0; manifest step = its `_manifest` call (for `write` "
        "most of the hashing happens inside the writes, so the overhead column is the figure). Overhead = save "
        "/ save(`none`) - 1 within a round. Hashing share, from inside = rank 0's time in xxh3 (while writing, "
        "plus the manifest step) over its save, median: it does not depend on another save's timing, so it "
        "is steadier than the overhead on a shared machine. The files go to the page cache of a local disk (DeepSpeed does not "
        "fsync them), the case where hashing weighs most. Command: `python benchmarks/bench_checkpoint.py`.",
        "",
        f"Machine: {os.cpu_count()} CPUs (`nproc`), shared with other work: 1/5/15-minute load average "
        f"{load_before} before, {load_after} after.",
        "",
    ]
    for model, res in results.items():
        lines += [
            f"**{MODELS[model][0]}**: {res['params'] / 1e6:.1f}M parameters, checkpoint {res['bytes'] / 1e6:.0f} MB "
            f"in {res['files']} files.",
            "",
            "| variant | save (s), median | save (s), range | manifest step (s), median | overhead vs `none`, "
            "median | overhead, range | hashing share, from inside |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for variant in VARIANTS:
            t, h = res["times"][variant], res["hashing"][variant]
            row = f"| {variant} | {statistics.median(t):.3f} | {min(t):.3f}-{max(t):.3f} | "
            if variant == "none":
                row += "- | - | - | - |"
            else:
                o = overheads(res, variant)
                row += f"{statistics.median(h):.3f} | {100 * statistics.median(o):+.1f}% | " \
                       f"{100 * o[0]:+.1f}% to {100 * o[-1]:+.1f}% | {100 * statistics.median(res['inside'][variant]):.1f}% |"
            lines.append(row)
        lines.append("")
    lines.append("Target: the manifest costs at most 10% of the save time.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        print(run(quick="--quick" in sys.argv))
