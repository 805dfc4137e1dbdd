"""The templates of slurm/, submitted with sbatch to a real two-node SLURM cluster on this machine
(tests/slurm/slurm_cluster.py, the `slurm_cluster` fixture of conftest.py).

- the cluster runs a 2-node srun step, one task per node;
- slurm/augment.sh: the job array (one shard per task) and its dependent merge give byte for
  byte the single-process `coin augment` output; a failed shard cancels the merge;
- slurm/train.sbatch on the tiny CPU config: 2 ranks, one per node, meet in a c10d rendezvous
  and finish with an exported model, without requeue; every log line carries its node and rank;
- the same job preempted (USR1 to its steps at a known step): the trainer checkpoints and exits 75,
  the job requeues itself, resumes from the checkpoint and finishes; its losses and final weights
  equal the uninterrupted run's;
- slurm/eval.sbatch evaluates the exported model with 2 ranks on one node;
- a job with a time limit that is really hit: SLURM's own USR1 (--signal=USR1@45) arrives before
  the limit, the trainer checkpoints, the job requeues itself and resumes from that checkpoint;
  a plain scancel then checkpoints too but does not requeue.

The training data comes from the project's own pipeline: `coin data demo` -> `coin augment`
(templates backend) -> `coin pairs`.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest
from slurm_cluster import FINISHED, REPO, LocalCluster, job_env

TRAIN = str(REPO / "slurm" / "train.sbatch")
AUGMENT = str(REPO / "slurm" / "augment.sh")
EVAL = str(REPO / "slurm" / "eval.sbatch")
# Options every test job needs on this cluster: no GPUs, 2 CPUs per node.
LOCAL = ["--gpus-per-node=0", "--cpus-per-task=1"]
STEPS = 40  # optimiser steps of the test training runs: one epoch of the demo pairs, ~15 s here


def coin(*args: str, cwd) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "coin", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"coin {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Demo instruction records, their single-process augmentation, and contrastive pairs."""
    d = tmp_path_factory.mktemp("data")
    coin("data", "demo", str(d / "demo"), "--seed", "0", "--train-per-task", "20", "--eval-per-task", "2", cwd=d)
    augment_args = ["--backend", "templates", "--templates", str(d / "demo" / "templates.json"),
                    "--similarity-model", "none", "--chunk-size", "16"]
    coin("augment", str(d / "demo" / "train.jsonl"), *augment_args, "--out-dir", str(d / "single"),
         "--output", str(d / "augmented.jsonl"), "--no-progress", cwd=d)
    coin("pairs", str(d / "augmented.jsonl"), "--output", str(d / "pairs.jsonl"), cwd=d)
    return {"dir": d, "input": d / "demo" / "train.jsonl", "augment_args": augment_args,
            "augmented": d / "augmented.jsonl", "pairs": d / "pairs.jsonl"}


def logs_of(*paths) -> str:
    return LocalCluster.job_logs(paths)


# ----------------------------------------------------------------------------- the cluster


def test_two_node_step(slurm_cluster, tmp_path):
    out = slurm_cluster.run("srun", "--nodes=2", "--ntasks-per-node=1", "bash", "-c",
                            'echo "$SLURM_PROCID $SLURMD_NODENAME $SLURM_JOB_NUM_NODES"', cwd=tmp_path).stdout
    assert sorted(out.split("\n")[:2]) == ["0 n1 2", "1 n2 2"], out


# ----------------------------------------------------------------------------- augmentation


def test_augment_array_equals_single_process(slurm_cluster, data, tmp_path):
    (tmp_path / "logs").mkdir()
    env = job_env(slurm_cluster, tmp_path / "logs")
    env["SBATCH_OPTS"] = "--cpus-per-task=1"
    out_dir, merged = tmp_path / "shards", tmp_path / "merged.jsonl"
    proc = subprocess.run(["bash", AUGMENT, "-n", "3", str(data["input"]), str(out_dir), str(merged),
                           *data["augment_args"]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id, merge_id = proc.stdout.split()
    merge = slurm_cluster.wait_job(merge_id, timeout=180, logs=[tmp_path / "logs"])
    tasks = slurm_cluster.jobs(array_id)
    assert merge["JobState"] == "COMPLETED", logs_of(tmp_path / "logs")
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2"]
    assert all(t["JobState"] == "COMPLETED" for t in tasks), tasks
    assert sorted(p.name for p in out_dir.glob("shard-*.jsonl")) == [
        f"shard-{i:05d}-of-00003.jsonl" for i in range(3)]
    assert all(p.stat().st_size > 0 for p in out_dir.glob("shard-*.jsonl")), "every shard got records"
    assert merged.read_bytes() == data["augmented"].read_bytes()
    # the merge started only after the last shard had finished
    assert merge["StartTime"] >= max(t["EndTime"] for t in tasks)


def test_augment_failed_shard_cancels_merge(slurm_cluster, data, tmp_path):
    (tmp_path / "logs").mkdir()
    env = job_env(slurm_cluster, tmp_path / "logs")
    env["SBATCH_OPTS"] = "--cpus-per-task=1"
    proc = subprocess.run(["bash", AUGMENT, "-n", "2", str(tmp_path / "missing.jsonl"), str(tmp_path / "shards"),
                           str(tmp_path / "merged.jsonl"), *data["augment_args"]],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id, merge_id = proc.stdout.split()
    merge = slurm_cluster.wait_job(merge_id, timeout=120, logs=[tmp_path / "logs"])
    assert all(t["JobState"] == "FAILED" for t in slurm_cluster.jobs(array_id))
    assert merge["JobState"] == "CANCELLED" and not (tmp_path / "merged.jsonl").exists()


# ----------------------------------------------------------------------------- training


def train_overrides(data, out_dir) -> list[str]:
    """configs/tiny.yaml cut down to a CPU test run of STEPS steps, 2 ranks."""
    return [
        f"output.dir={out_dir}", f"data.train={data['pairs']}", "data.eval=null", "data.max_length=64",
        "optim.micro_batch_size=2", f"optim.max_steps={STEPS}", "optim.warmup_ratio=0.1",
        "output.save_every=0", "logging.log_every=1", "logging.eval_every=0",
        "logging.tensorboard=false", "logging.progress_bar=false",
    ]


def submit_train(cluster, data, root: pathlib.Path, *sbatch_opts: str, overrides=()):
    """sbatch slurm/train.sbatch configs/tiny.yaml OVERRIDES, with its logs under root/logs."""
    logs, out = root / "logs", root / "out"
    logs.mkdir(parents=True)
    env = job_env(cluster, logs)
    job_id = cluster.sbatch(*LOCAL, f"--output={logs}/%x-%j.out", *sbatch_opts, TRAIN, "configs/tiny.yaml",
                            *train_overrides(data, out), *overrides, cwd=REPO, env=env)
    return job_id, out, logs


def metrics(out_dir, kind: str) -> list[dict]:
    """The records of one kind in <output.dir>/metrics.jsonl (a line being written is skipped)."""
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if r.get("kind") == kind]


def losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out_dir, "train")}


def weights(hf_dir) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(pathlib.Path(hf_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no safetensors weights in {hf_dir}"
    return out


def batch_log(logs: pathlib.Path, job_id: str) -> str:
    return (logs / f"coin-train-{job_id}.out").read_text()


@pytest.fixture(scope="module")
def reference_run(slurm_cluster, data, tmp_path_factory):
    """The uninterrupted run: the training template on 2 nodes, to completion."""
    root = tmp_path_factory.mktemp("train_ref")
    job_id, out, logs = submit_train(slurm_cluster, data, root)
    info = slurm_cluster.wait_job(job_id, timeout=420, logs=[logs])
    return {"job": job_id, "info": info, "out": out, "logs": logs}


def test_train_two_nodes_completes(reference_run):
    job, info, out, logs = (reference_run[k] for k in ("job", "info", "out", "logs"))
    why = logs_of(logs)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", why
    assert info["Restarts"] == "0", "a completed run must not requeue"
    assert info["NodeList"] == "n[1-2]"
    # the exported model
    hf = out / "hf"
    assert (hf / "config.json").is_file() and list(hf.glob("*.safetensors")), why
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    # one rank per node, rendezvous on both nodes
    node_logs = {n: (logs / f"coin-train-{job}.node{n}.out").read_text() for n in (0, 1)}
    started = {}
    for n, text in node_logs.items():
        for node, rank in re.findall(r"\[(n\d) torchrun_node\]: starting rank (\d) of 2 ", text):
            started[int(rank)] = node
    assert sorted(started) == [0, 1] and sorted(started.values()) == ["n1", "n2"], why
    # every line a rank printed carries its node and rank, in the log of that node
    for node_id, text in node_logs.items():
        node = f"n{node_id + 1}"
        ranks = {int(r) for r in re.findall(rf"^\[{node} rank(\d) local0\]: ", text, re.M)}
        assert ranks == {r for r, n in started.items() if n == node}, text
    assert "coin train: 2 rank(s)" in "".join(node_logs.values())
    # per-rank log files and the node status files of run 0
    run0 = logs / job / "run0"
    assert sorted((p.name, p.read_text().strip()) for p in run0.glob("*.status")) == [
        ("n1.status", "0"), ("n2.status", "0")]
    assert len(list(run0.glob("n*/*/attempt_0/0/stdout.log"))) == 2
    assert "training complete" in batch_log(logs, job)


def test_eval_two_ranks_on_one_node(slurm_cluster, reference_run, tmp_path):
    """slurm/eval.sbatch: `coin eval` of the model the training job exported, 2 ranks on one node."""
    rows = [{"sentence": f"the film was {w} and the plot {v}", "label": i % 2, "idx": i}
            for i, (w, v) in enumerate(zip("dull great bad lovely grim fine awful good".split(),
                                           "dragged moved sagged flew stalled soared dragged worked".split()))]
    (tmp_path / "glue").mkdir()
    (tmp_path / "glue" / "sst2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs, out = tmp_path / "logs", tmp_path / "eval"
    logs.mkdir()
    env = job_env(slurm_cluster, logs)
    env["NPROC_PER_NODE"] = "2"
    job = slurm_cluster.sbatch(
        "--gpus-per-node=0", "--cpus-per-task=2", f"--output={logs}/%x-%j.out", EVAL,
        "--model", str(reference_run["out"] / "hf"), "--tasks", "sst2", "--data", str(tmp_path / "glue"),
        "--n-examples", "8", "--attacks", "checklist", "--n-instructions", "1", "--max-length", "64",
        "--batch-size", "4", "--representation", "none", "--no-plots", "--no-progress", "--out", str(out),
        cwd=REPO, env=env)
    info = slurm_cluster.wait_job(job, timeout=240, logs=[logs])
    text = logs_of(logs)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text
    node = info["NodeList"]
    assert node in ("n1", "n2") and f"[{node} rank0]: " in text and f"[{node} rank1]: " in text, text
    assert (out / "report.md").is_file() and json.loads((out / "results.json").read_text())
    predictions = (out / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) >= len(rows), "every example scored (sharded over the two ranks)"


def _stamp(text: str, pattern: str) -> float:
    m = re.search(r"=== (\S+) " + pattern, text)
    assert m, f"no '=== <time> {pattern}' line in:\n{text}"
    return datetime.fromisoformat(m.group(1)).timestamp()


def _statuses(logs: pathlib.Path, job: str, run: int) -> list[str]:
    return sorted(p.read_text().strip() for p in (logs / job / f"run{run}").glob("*.status"))


def _wait_for_step(out: pathlib.Path, step: int, cluster, job: str, logs, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(metrics(out, "train")) >= step:
            return
        state = cluster.job(job).get("JobState")
        if state in FINISHED:  # (REQUEUED, COMPLETING, PENDING, ... are on their way)
            raise AssertionError(f"job {job} is {state} before step {step}:\n{logs_of(logs)}")
        time.sleep(0.2)
    raise AssertionError(f"no step {step} after {timeout} s:\n{logs_of(logs)}")


def test_train_preempted_requeues_and_resumes_exactly(slurm_cluster, data, reference_run, tmp_path):
    """USR1 to every process of the job's steps (what --signal=USR1@T does before the limit; here
    sent at a known step with `scancel --signal=USR1`): every rank finishes its step and saves a
    checkpoint, the job requeues itself, resumes from that checkpoint and completes. Its losses and
    final weights equal the uninterrupted run's."""
    job, out, logs = submit_train(slurm_cluster, data, tmp_path)
    _wait_for_step(out, 3, slurm_cluster, job, logs)
    slurm_cluster.run("scancel", "--signal=USR1", job)
    info = slurm_cluster.wait_job(job, timeout=300, logs=[logs])
    why = logs_of(logs)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", why
    assert info["Restarts"] == "1", "requeued once, then completed without another requeue"
    text = batch_log(logs, job)
    assert "preempted: checkpoint written; requeueing" in text and "training complete" in text, text
    assert _statuses(logs, job, 0) == ["75", "75"] and _statuses(logs, job, 1) == ["0", "0"]

    events = {r["kind"]: r for r in metrics(out, "preempted") + metrics(out, "resume")}
    stop = events["preempted"]["step"]
    assert 3 <= stop < STEPS and events["resume"]["step"] == stop, events
    assert f"preempted by SIGUSR1 after step {stop}" in why and f"resumed at step {stop}" in why

    ref, got = losses(reference_run["out"]), losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6), {s: (ref[s], got[s]) for s in ref if ref[s] != got.get(s)}
    ref_w, got_w = weights(reference_run["out"] / "hf"), weights(out / "hf")
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        assert (ref_w[name] - got_w[name]).abs().max().item() < 1e-5, name


def test_train_time_limit_signal_checkpoints_and_requeues(slurm_cluster, data, tmp_path):
    """A time limit that is really hit: --time=2 --signal=USR1@45. slurmctld checks every 30 s and
    signals once at most 45 + 30 s are left, so USR1 reaches the ranks 45-75 s into the job: after
    the trainer's setup (~20 s here) and well before the limit (120 s). The run is too long to
    finish (max_steps=100000): it must checkpoint on the signal, requeue, and resume from that
    checkpoint (the test above shows a resumed run completing with the uninterrupted run's
    losses). Then a plain `scancel`: the ranks checkpoint on SIGTERM, and the job is NOT requeued."""
    limit, lead = 120, 45
    job, out, logs = submit_train(slurm_cluster, data, tmp_path, "--time=2", f"--signal=USR1@{lead}",
                                  overrides=["optim.max_steps=100000"])
    requeued = slurm_cluster.wait_job(
        job, timeout=limit + 60, logs=[logs],
        until=lambda i: i.get("Restarts") == "1" or i.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED",
                                                                           "TIMEOUT"))
    assert requeued.get("Restarts") == "1", f"not requeued: {requeued}\n{logs_of(logs)}"
    preempted = metrics(out, "preempted")
    assert preempted, f"no preemption checkpoint:\n{logs_of(logs)}"
    stop = preempted[0]["step"]
    _wait_for_step(out, stop + 1, slurm_cluster, job, logs)  # the resumed run is training
    text = batch_log(logs, job)
    why = logs_of(logs)
    # SLURM signals at its first 30-s check with at most lead + 30 s left; the batch script's
    # header is written a moment after the job starts (slack 15 s), the requeue a step and a
    # checkpoint after the signal.
    elapsed = _stamp(text, "preempted: checkpoint written; requeueing") - _stamp(text, rf"job {job} run 0:")
    assert limit - lead - 30 - 15 <= elapsed < limit - 5, f"USR1 due {lead}-{lead + 30} s before the limit, " \
        f"checkpointed {elapsed:.0f} s after the start:\n{why}"
    assert "DUE TO TIME LIMIT" not in why and "batch script: SIGTERM" not in text, "the warning came first"
    assert _statuses(logs, job, 0) == ["75", "75"]
    assert f"preempted by SIGUSR1 after step {stop}" in why
    assert metrics(out, "resume")[0]["step"] == stop and re.search(rf"=== \S+ job {job} run 1:", text), why

    slurm_cluster.run("scancel", job)
    final = slurm_cluster.wait_job(job, timeout=120, logs=[logs])
    text, why = batch_log(logs, job), logs_of(logs)
    assert final["JobState"] == "CANCELLED" and final["Restarts"] == "1", f"{final}\n{why}"
    assert "cancelled: checkpoint written; not requeued" in text, text
    assert _statuses(logs, job, 1) == ["75", "75"] and "preempted by SIGTERM after step" in why
    last = (out / "checkpoints" / "latest").read_text().strip()
    assert int(last.removeprefix("step_")) > stop, "the cancel wrote a checkpoint of the resumed run"
