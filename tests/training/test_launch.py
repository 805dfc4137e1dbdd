"""`coin train --nproc N` as a launcher: the ranks' own exit status with their one-line message
(no ChildFailedError dump), and `--master-port` (or MASTER_PORT) for runs side by side. Real
2-rank runs on the tiny model (the preemption status, 75, is tested in test_trainer_preemption.py)."""
import copy
import os
import socket
import subprocess
import sys

import pytest

from distributed import free_port
from trainer_helpers import REPO, cli_env, read_records, run_config, write_config


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    """A one-step 2-rank run config on the tiny model (no evaluation, no export)."""
    root = tmp_path_factory.mktemp("launch")
    return root, run_config(root / "data", root / "out", optim={"max_steps": 1},
                            output={"save_every": 0, "export": False}, logging={"eval_every": 0})


def _config(root, cfg, name, **changes):
    cfg = copy.deepcopy(cfg)
    cfg["output"]["dir"] = str(root / f"out-{name}")
    for section, values in changes.items():
        cfg[section].update(values)
    return write_config(root / f"{name}.yaml", cfg)


def _train(config, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "coin", "train", "--config", config, "--nproc", "2", *args],
                            cwd=str(REPO), env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "built successfully" not in line]  # DeepSpeed's JIT op
    assert "ChildFailedError" not in err and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_two_runs_side_by_side_on_their_own_ports(one_step):
    root, cfg = one_step
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    env = dict(cli_env(), MASTER_PORT=str(ports[1]))  # honoured when --master-port is not given
    procs = [_train(_config(root, cfg, "a"), "--master-port", str(ports[0])), _train(_config(root, cfg, "b"), env=env)]
    for name, proc in zip("ab", procs):
        code, out, err = _finish(proc)
        assert code == 0, (name, err[-3000:])
        assert [r["step"] for r in read_records(root / f"out-{name}")] == [1]


def test_a_taken_port_is_one_line_and_status_2(one_step):
    root, cfg = one_step
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = _finish(_train(_config(root, cfg, "taken"), "--master-port", str(port)))
    assert code == 2
    assert _one_line(err) == (f"coin train: error: --master-port {port}: the port is in use on this machine (another "
                              f"run?); pass another one, or leave --master-port and MASTER_PORT unset for a free one")


def test_a_config_error_in_the_ranks_exits_2_with_its_line(one_step, tiny_model_dir):
    """A model directory without tokenizer files passes the config check (it exists) and fails in
    every rank as the tokenizer loads."""
    import shutil

    root, cfg = one_step
    weights = root / "weights_only"
    weights.mkdir()
    shutil.copy(os.path.join(tiny_model_dir, "config.json"), weights / "config.json")
    code, _, err = _finish(_train(_config(root, cfg, "cfg", model={"name_or_path": str(weights)})))
    assert code == 2
    assert _one_line(err) == (f"coin train: error: model.name_or_path: directory '{weights}' has no tokenizer files "
                              f"(expected one of tokenizer.json, tokenizer.model, tokenizer_config.json or another "
                              f"tokenizer file; it holds config.json): copy the tokenizer of the model it came from "
                              f"into it (`coin export` writes it), or set model.tokenizer")


def test_a_data_error_found_by_rank_0_exits_2_with_its_line(one_step):
    """Rank 0 builds the token cache alone; its error reaches every rank, so none dies in a barrier."""
    root, cfg = one_step
    lines = open(cfg["data"]["train"]).read().splitlines()
    lines[3] = '{"id": "broken", "instruction": 5}'
    bad = root / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = _finish(_train(_config(root, cfg, "data", data={"train": str(bad), "cache_dir": str(root / "c2")})))
    assert code == 2
    line = _one_line(err)
    assert line.startswith(f"coin train: error: {bad}: line 4: field ") and "expected" in line


def test_bad_ports_and_the_status_of_failed_ranks(monkeypatch):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from coin.errors import CoinError
    from coin.training.torchrun import exit_status
    from coin.training.train import master_port, torchrun_command

    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert master_port(None) is None and master_port(29601) == 29601
    monkeypatch.setenv("MASTER_PORT", "29602")
    assert master_port(None) == 29602 and master_port(29603) == 29603
    for given, env, match in ((0, "1", "--master-port: expected a port in 1..65535, got 0"),
                              (None, "x", "MASTER_PORT: expected a port number, got 'x'"),
                              (None, "70000", "MASTER_PORT: expected a port in 1..65535, got 70000")):
        monkeypatch.setenv("MASTER_PORT", env)
        with pytest.raises(CoinError, match=match):
            master_port(given)
    assert "--standalone" in torchrun_command(2, None, [])
    assert "--master-port=29601" in torchrun_command(2, 29601, []) and "--standalone" not in torchrun_command(2, 1, [])

    def failure(rank, code):
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code, error_file="/nonexistent")

    for code in (2, 3, 75, 1):  # a rank's own status wins over the SIGTERM the launcher then sent the other
        assert exit_status({0: failure(0, -15), 1: failure(1, code)}) == (code, None)
    assert exit_status({1: failure(1, -9)}) == (137, "coin train: rank 1 (pid 101) was killed by SIGKILL")
