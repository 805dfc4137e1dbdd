"""benchmarks/gpu_check.sh: the one-call GPU check, run end to end as its CPU dry run (the same
parts at toy size, gloo), a part that fails while the next one still runs, the wheel installer,
and the deadline that kills a part's whole process tree."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gpu  # noqa: E402
import gpu_check  # noqa: E402


def _check(out, work, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--cpu-dry-run", "--work",
                           str(work), *args], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    proc = _check(root / "out", root / "work")
    return proc, json.loads((root / "out" / "gpu_check.json").read_text()), root / "out"


def test_dry_run_end_to_end(dry_run):
    proc, s, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert s["format"] == "coin-gpu-check/1" and s["mode"] == "cpu-dry-run" and s["passed"] is True
    assert list(s["parts"]) == list(gpu_check.PARTS) and s["peak_tflops"] == 989.0
    status = {name: p["status"] for name, p in s["parts"].items()}
    assert status["install"] in ("skipped", "passed")  # skipped without .gpu_wheels/; with it, a plan of nothing
    assert status["fused_adam"] == "skipped"
    for name in ("env", "smoke", "throughput_zero3", "lm_loss", "throughput_zero0"):
        assert status[name] == "passed", s["parts"][name]
    assert all(0 <= p["seconds"] <= p["timeout_s"] + 5 for p in s["parts"].values())

    env = s["parts"]["env"]["result"]
    assert env["deepspeed_accelerator"] == "cpu" and env["packages"]["deepspeed"][0].isdigit()
    assert env["sdpa"]["MATH"] == "ok" and env["matmul_bf16_tflops"] > 0

    smoke = {st["stage"]: st for st in s["parts"]["smoke"]["result"]["stages"]}
    assert list(smoke) == ["data", "train", "resume", "export", "eval"] and all(st["ok"] for st in smoke.values())
    train = smoke["train"]
    assert train["steps"] == 4 and len(train["losses"]) == 4 and train["gen_loss_last"] < train["gen_loss_first"]
    assert len(train["eval_loss"]) == 2 and train["memory_gb"] > 0 and train["tokens_per_s"] > 0
    assert smoke["resume"]["from_step"] == 2 and smoke["resume"]["losses"] == train["losses"][2:]  # CPU: exact
    assert smoke["resume"]["weights_max_abs_diff"] == 0
    assert smoke["export"]["dtypes"] == ["torch.bfloat16"] and smoke["export"]["max_abs_diff_vs_run_export"] == 0
    assert 0 <= smoke["eval"]["clean_accuracy"] <= 1 and 0 <= smoke["eval"]["perturbed_accuracy"] <= 1

    for part, zero, optimizer in (("throughput_zero3", 3, "DeepSpeedZeroOptimizer_Stage3"), ("throughput_zero0", 0, None)):
        r = s["parts"][part]["result"]
        assert r["zero_stage"] == zero and (optimizer is None or r["optimizer"] == optimizer)
        assert r["label_fraction"] == pytest.approx(8 / 64)  # 8-token responses of 64-token sequences
        for variant in ("sft", "coin"):
            assert r[variant]["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r[variant]["step_s"])
            assert r[variant]["mfu"] == pytest.approx(r["flops_per_step"] / r[variant]["step_s"] / 989e12)
    layouts = s["parts"]["lm_loss"]["result"]["layouts"]
    assert set(layouts) == {"response", "all"} and all(v["loss_rel_diff"] < 1e-2 for v in layouts.values())

    t = s["targets"]
    assert t["smoke_green"] is True and t["mfu_targets_met"] is False and t["coin_mfu"] > 0  # toy MFU on a CPU
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]  # the device tool returns <= 8
    md = (out / "gpu_check.md").read_text()
    assert "| smoke | passed |" in md and "### Lean LM loss vs full logits" in md and "CoIN / SFT MFU" in md
    assert len(md) < 12_000 and md.strip() in proc.stdout  # the output's tail is the summary
    assert "==== smoke (passed)" in (out / "gpu_check.log").read_text()


def test_a_failing_part_is_reported_and_the_next_one_still_runs(tmp_path):
    proc = _check(tmp_path / "out", tmp_path / "work", "--only", "env,lm_loss", "--part-timeout", "env=1")
    assert proc.returncode == 1
    s = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert list(s["parts"]) == ["env", "lm_loss"] and s["passed"] is False
    assert s["parts"]["env"]["status"] == "timeout" and "deadline of 1 s" in s["parts"]["env"]["error"]
    assert s["parts"]["lm_loss"]["status"] == "passed" and s["parts"]["lm_loss"]["result"]["layouts"]
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| env | TIMEOUT |" in md and "| lm_loss | passed |" in md and "Last lines of env's log" in md


def test_run_part_reports_crashes_and_kills_the_whole_tree_at_its_deadline(tmp_path):
    env = dict(os.environ)
    crash = gpu_check.run_part("a", [sys.executable, "-c", "raise SystemExit('boom: bad input')"], env, 60,
                               str(tmp_path / "a.log"))
    assert crash["status"] == "failed" and "exited with status 1" in crash["error"] and "boom" in crash["error"]
    said = 'import json; print("RESULT " + json.dumps({"status": "failed", "result": {"x": 1}, "error": "bad"}))'
    reported = gpu_check.run_part("b", [sys.executable, "-c", said], env, 60, str(tmp_path / "b.log"))
    assert (reported["status"], reported["result"], reported["error"]) == ("failed", {"x": 1}, "bad")

    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
            "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(300)")
    t0 = time.monotonic()
    hung = gpu_check.run_part("c", [sys.executable, "-c", hang, str(pid_file)], env, 3, str(tmp_path / "c.log"))
    assert hung["status"] == "timeout" and time.monotonic() - t0 < 60
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.1)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return False


def _wheel(directory: pathlib.Path, name: str, version: str) -> str:
    """A minimal pure-Python wheel (PEP 427) holding module `name` with VALUE = 42."""
    filename = f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(directory / filename, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return filename


def test_installer_installs_only_the_missing_wheels_without_an_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe = _wheel(wheels, "coin_gpu_check_probe", "1.0")
    missing, present = gpu_check.plan_install([probe, "pip-1.0-py3-none-any.whl"], gpu_check.installed_version)
    assert missing == [probe] and "pip" in present  # what is installed is left alone, whatever its version
    site = tmp_path / "site"
    gpu_check.install_wheels(str(wheels), missing, str(site))
    out = subprocess.run([sys.executable, "-c", "import coin_gpu_check_probe as m; print(m.VALUE)"],
                         env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert out.stdout.strip() == "42", out.stderr


def test_coin_bench_gpu_keeps_recorded_figures_without_a_gpu():
    import torch

    from coin import bench

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: `coin bench gpu` measures")
    assert bench_gpu.run(quick=True) is None  # nothing measured on a CPU machine
    assert bench.section(bench_gpu, "## GPU\nH200 figures\n") == "## GPU\nH200 figures\n"
    text = bench.section(bench_gpu, None)
    assert text == bench_gpu.NOT_MEASURED and "NOT MEASURED YET" in text and 'carry\n   `[".gpu_wheels"]`' in text and "gpu_check.sh $OUT" in text


def test_record_puts_a_gpu_run_into_results_md(dry_run, tmp_path):
    from coin import bench

    _, summary, _ = dry_run
    results = tmp_path / "RESULTS.md"
    bench.write_results({"step": "## step\ncpu figures\n", "gpu": bench_gpu.NOT_MEASURED}, str(results))
    dry = tmp_path / "dry.json"
    dry.write_text(json.dumps(summary))
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--record", str(dry), "--results", str(results)]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "only GPU figures go into RESULTS.md" in refused.stderr
    gpu = tmp_path / "gpu.json"  # the dry run's summary standing in for a GPU run's
    gpu.write_text(json.dumps(dict(summary, mode="gpu")))
    done = subprocess.run(cmd[:3] + [str(gpu)] + cmd[4:], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sections = bench._sections(results.read_text())
    assert sections["step"] == "## step\ncpu figures\n" and "NOT MEASURED" not in sections["gpu"]
    assert sections["gpu"].startswith("## GPU: the one-call GPU check on ") and "| smoke | passed |" in sections["gpu"]
    assert "### GPU: CoIN vs SFT throughput" in sections["gpu"]


@pytest.mark.parametrize("script", ["benchmarks/gpu_check.sh", "scripts/prepare_gpu_wheels.sh"])
def test_scripts_parse_and_are_shellcheck_clean(script):
    import shutil

    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck; scripts/install.sh --system)")
    proc = subprocess.run(["shellcheck", "--shell=bash", str(REPO / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
