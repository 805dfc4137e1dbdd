"""The run config: every class of bad input is a one-line error naming the key."""
import json
import pathlib

import pytest

from coin.training.config import ConfigError, deepspeed_config, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
REPO_CONFIGS = ["configs/tiny.yaml", "configs/llama2_7b_coin.yaml", "configs/llama2_7b_sft.yaml"]


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("{}\n")
    return str(path)


def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_repository_configs_are_valid(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path, check_paths=False)
    ds = deepspeed_config(cfg, world_size=8, hidden_size=4096)
    assert ds["train_batch_size"] == cfg.optim.micro_batch_size * cfg.optim.gradient_accumulation_steps * 8
    assert "auto" not in json.dumps(ds)


def test_paper_settings_in_the_7b_config(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config("configs/llama2_7b_coin.yaml", check_paths=False)
    assert (cfg.coin.temperature, cfg.coin.max_weight, cfg.coin.pooling, cfg.coin.gen_loss) == (0.05, 1000.0, "last", "both")
    assert (cfg.data.max_length, cfg.optim.warmup_ratio, cfg.optim.seed, cfg.optim.epochs) == (256, 0.1, 42, 1)
    assert cfg.optim.micro_batch_size * cfg.optim.gradient_accumulation_steps * 8 == 64


def test_overrides_are_typed(monkeypatch, train_file):
    monkeypatch.chdir(REPO)
    cfg = load_config("configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", "optim.lr=1e-4",
                                            "coin.gather=false", "optim.max_steps=7", "coin.temperature=0.1"])
    assert cfg.optim.lr == 1e-4 and cfg.coin.gather is False and cfg.optim.max_steps == 7 and cfg.coin.temperature == 0.1


@pytest.mark.parametrize(
    "override, expected",
    [
        ("coin.temprature=0.1", "unknown key 'coin.temprature'"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("coin.temperature=abc", "coin.temperature: expected a number, got 'abc'"),
        ("optim.micro_batch_size=2.5", "optim.micro_batch_size: expected an integer"),
        ("coin.gather=maybe", "coin.gather: expected true or false"),
        ("coin.temperature=0", "coin.temperature: expected a number > 0"),
        ("coin.temperature=-1", "coin.temperature: expected a number > 0"),
        ("coin.pooling=cls", "coin.pooling: expected one of last, prompt_last, mean"),
        ("coin.weighting=linear", "coin.weighting: expected one of adaptive, constant"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio: expected a number in [0, 1)"),
        ("optim.micro_batch_size=0", "optim.micro_batch_size: expected an integer >= 1"),
        ("data.prompt_template=no placeholder", "data.prompt_template: expected exactly one '{prompt}'"),
        ("model.dtype=int8", "model.dtype: expected one of fp32, bf16, fp16"),
        ("coin=3", "coin: expected a mapping"),
        ("optim.lr", "expected key.sub=value"),
    ],
)
def test_bad_values(monkeypatch, train_file, override, expected):
    monkeypatch.chdir(REPO)
    assert expected in _error("configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", override])


def test_missing_paths(monkeypatch, train_file, tmp_path):
    monkeypatch.chdir(REPO)
    assert "data.train: path 'nope.jsonl' does not exist" in _error("configs/tiny.yaml", ["data.train=nope.jsonl"])
    assert "config file 'missing.yaml' does not exist" in _error("missing.yaml")
    assert "deepspeed.config: file 'ds_configs/none.json' does not exist" in _error(
        "configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", "deepspeed.config=ds_configs/none.json"])
    assert "model.name_or_path: directory './no-model' does not exist" in _error(
        "configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", "model.name_or_path=./no-model"])


def _ds_error(monkeypatch, train_file, tmp_path, **changes) -> str:
    """The error for the tiny config with ds_configs/cpu_zero3.json changed by `changes`."""
    monkeypatch.chdir(REPO)
    ds = json.load(open("ds_configs/cpu_zero3.json"))
    ds.update(changes)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return _error("configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", f"deepspeed.config={path}"])


def test_micro_batch_must_match_the_deepspeed_file(monkeypatch, train_file, tmp_path):
    msg = _ds_error(monkeypatch, train_file, tmp_path, train_micro_batch_size_per_gpu=16)
    assert "optim.micro_batch_size" in msg and "train_micro_batch_size_per_gpu=16" in msg


def test_precision_must_match_the_deepspeed_file(monkeypatch, train_file, tmp_path):
    msg = _ds_error(monkeypatch, train_file, tmp_path, bf16={"enabled": True})
    assert "model.dtype" in msg and "bf16.enabled=True" in msg


def test_scheduler_block_is_refused(monkeypatch, train_file, tmp_path):
    assert "optim.schedule" in _ds_error(monkeypatch, train_file, tmp_path, scheduler={"type": "WarmupLR"})


def test_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    assert "not valid YAML" in _error(str(path))
    path.write_text("- a list\n")
    assert "expected a mapping of sections" in _error(str(path))
