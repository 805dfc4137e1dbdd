"""What the training loop costs on top of bare CoIN steps, measured side by side in one run.

2 CPU ranks (torchrun, gloo), DeepSpeed ZeRO-3, the embedded tiny LLaMA, ONE trainer and engine.
Rounds alternate two variants over the SAME micro-batches (the data position is rewound):

    bare   the batches drawn and collated beforehand; per step only
           coin_step -> engine.backward -> engine.step
    loop   Trainer.run_steps: drawing from the grouped sampler, paraphrase choice and collation,
           the per-micro-step all-reduce (non-finite flag, preemption flag, metrics), the step
           record (lr, grad norm, throughput, MFU, memory), metrics.jsonl, TensorBoard and the log
           line every `log_every` steps (no evaluation, no checkpoint: those are not per step)

Overhead = loop time / bare time - 1, the median over rounds (target <= 5% of step time); also
reported: the ratio of all rounds together, and the loop's own time per step measured from inside
(time outside coin_step, backward and optimiser step).
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

STEPS_PER_ROUND = 10
MICRO_BATCH = 4
MAX_LENGTH = 128
LOG_EVERY = 10


def _records(n_groups: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = ("the a movie film plot actor great terrible slow bright story river bank question answer "
             "sentence grammar label text happy sad quiet loud").split()
    out = []
    for g in range(n_groups):
        for j in range(2):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))
            out.append({"id": f"b{g}-{j}", "task": f"task{g % 8}", "group": f"g{g}",
                        "instruction": f"Instruction {g}: classify the text.\n\n{text}",
                        "paraphrases": [f"Paraphrase {g}: label the text.\n\n{text}",
                                        f"Say which label fits ({g}).\n\n{text}"],
                        "output": " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))})
    return out


def _child(work: str, rounds: int) -> None:
    import torch

    from coin.training import dist
    from coin.training.config import load_config
    from coin.training.trainer import Trainer, _to_device

    torch.set_num_threads(1)
    steps = (rounds + 1) * STEPS_PER_ROUND * 2
    cfg = load_config(None, [
        f"data.train={work}/train.jsonl", f"data.max_length={MAX_LENGTH}", f"data.cache_dir={work}/cache",
        "deepspeed.config=ds_configs/cpu_zero3.json", f"optim.micro_batch_size={MICRO_BATCH}",
        f"optim.max_steps={steps}", f"output.dir={work}/run", "output.resume=never", "output.export=false",
        f"logging.log_every={LOG_EVERY}", "logging.eval_every=0", "logging.progress_bar=false",
    ])
    trainer = Trainer(cfg)
    trainer.setup()
    engine, data = trainer.engine, trainer.train_data
    # time spent inside the CoIN step, backward and optimiser step, whoever calls them
    inside = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter() - t
        return wrapper

    trainer.step_fn = timed(trainer.step_fn)
    engine.backward, engine.step = timed(engine.backward), timed(engine.step)
    times = {"bare": [], "loop": [], "bare_outside": [], "loop_outside": []}
    for r in range(rounds + 1):  # round 0 warms up
        # bare: the next STEPS_PER_ROUND micro-batches, drawn beforehand, then rewound for the loop
        state = data.state_dict()
        batches = [_to_device(data.next_batch(), engine.device) for _ in range(STEPS_PER_ROUND)]
        data.load_state_dict(state)
        dist.barrier()
        inside[0], t0 = 0.0, time.perf_counter()
        for i, batch in enumerate(batches):  # the norms where the loop measures them: steps closing a log interval
            out = trainer.step_fn(engine.model, batch, cfg.coin, trainer.pool, grad_norms=(i + 1) % LOG_EVERY == 0)
            engine.backward(out.loss)
            engine.step()
        t_bare, in_bare = time.perf_counter() - t0, inside[0]
        dist.barrier()

        dist.barrier()
        inside[0], t0 = 0.0, time.perf_counter()
        trainer.run_steps(trainer.step + STEPS_PER_ROUND)
        t_loop, in_loop = time.perf_counter() - t0, inside[0]
        dist.barrier()
        if r:
            times["bare"].append(t_bare / STEPS_PER_ROUND)
            times["loop"].append(t_loop / STEPS_PER_ROUND)
            times["bare_outside"].append((t_bare - in_bare) / STEPS_PER_ROUND)
            times["loop_outside"].append((t_loop - in_loop) / STEPS_PER_ROUND)
    trainer.cleanup()
    if dist.rank() == 0:
        print("RESULT " + json.dumps({**times, "params": engine.module.num_parameters()}), flush=True)
    dist.shutdown(0)


def run(quick: bool = False) -> str:
    import socket

    from coin.training.config import TinyModelConfig
    from coin.training.model import tiny_model_dir

    tiny_model_dir(TinyModelConfig())  # build once, before two ranks need it
    rounds = 4 if quick else 15
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="coin-bench-loop-") as work:
        with open(os.path.join(work, "train.jsonl"), "w", encoding="utf-8") as f:
            for rec in _records(n_groups=400):
                f.write(json.dumps(rec) + "\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               os.path.abspath(__file__), "--child", work, str(rounds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_loop child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        res = json.loads(line[len("RESULT "):])
    bare, loop = res["bare"], res["loop"]
    total = sum(loop) / sum(bare) - 1
    per_round = sorted(lo / b - 1 for lo, b in zip(loop, bare))
    lines = [
        "## The training loop: overhead over bare CoIN steps",
        "",
        f"Embedded tiny LLaMA ({res['params'] / 1e6:.1f}M parameters, vocabulary 32000), 2 CPU ranks, DeepSpeed ZeRO-3, "
        f"micro-batch {MICRO_BATCH} ({2 * MICRO_BATCH} sequences of up to {MAX_LENGTH} tokens), one trainer; "
        f"{len(bare)} measured rounds of {STEPS_PER_ROUND} steps per variant, alternating, over the same micro-batches. "
        "`bare` = coin_step + engine.backward + engine.step on batches collated beforehand; `loop` = "
        "Trainer.run_steps (sampling, collation, the per-micro-step all-reduce of flags and metrics, step "
        f"records, metrics.jsonl, TensorBoard and a log line every {LOG_EVERY} steps). "
        "Command: `python benchmarks/bench_loop.py`.",
        "",
        "| variant | step (s), median | step (s), mean |",
        "|---|---:|---:|",
        f"| bare CoIN steps | {statistics.median(bare):.4f} | {statistics.mean(bare):.4f} |",
        f"| training loop | {statistics.median(loop):.4f} | {statistics.mean(loop):.4f} |",
        "",
        f"Loop overhead (median over rounds of loop / bare - 1): {100 * statistics.median(per_round):+.1f}% of step "
        f"time (target at most +5%); over all rounds together {100 * total:+.1f}%; per round from "
        f"{100 * per_round[0]:+.1f}% to {100 * per_round[-1]:+.1f}% (a shared 2-core machine: single rounds are noisy).",
        "",
        "The same rounds timed from inside (rank 0): time per step spent outside the CoIN step, backward and "
        "optimiser step, i.e. the loop's own work. It does not depend on the other variant's timing, so it is "
        "steadier on a shared machine; it is an upper bound, since waiting for the slower rank at the loop's "
        "all-reduce counts here, while in the bare variant the same wait falls inside backward.",
        "",
        "| variant | outside the step (ms/step), median | share of the bare step |",
        "|---|---:|---:|",
        f"| bare CoIN steps | {1e3 * statistics.median(res['bare_outside']):.2f} | "
        f"{100 * statistics.median(res['bare_outside']) / statistics.median(bare):.1f}% |",
        f"| training loop | {1e3 * statistics.median(res['loop_outside']):.2f} | "
        f"{100 * statistics.median(res['loop_outside']) / statistics.median(bare):.1f}% |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        print(run(quick="--quick" in sys.argv))
