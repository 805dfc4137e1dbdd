"""The run config: every class of bad input is a one-line error naming the key."""
import json
import pathlib

import pytest

from coin.training.config import ConfigError, deepspeed_config, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
REPO_CONFIGS = ["configs/tiny.yaml", "configs/llama2_7b_coin.yaml", "configs/llama2_7b_sft.yaml",
                "configs/llama2_7b_coin_lora.yaml", "configs/llama2_7b_sft_lora.yaml"]


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
    assert (cfg.coin.temperature, cfg.coin.max_weight, cfg.coin.pooling, cfg.coin.objective) == (0.05, 1000.0, "last", "coin")
    assert (cfg.data.max_length, cfg.optim.warmup_ratio, cfg.optim.seed, cfg.optim.epochs) == (256, 0.1, 42, 1)
    assert cfg.optim.micro_batch_size * cfg.optim.gradient_accumulation_steps * 8 == 64


@pytest.mark.parametrize("path", ["configs/llama2_7b_coin_lora.yaml", "configs/llama2_7b_sft_lora.yaml"])
def test_the_papers_lora_recipe(monkeypatch, path):
    """The paper's recipe exactly (LoRA r=16, alpha=16 on q/k/v/o, lr 1e-4, micro-batch 2, effective
    batch 64 on 8 GPUs, cutoff 256, tau 0.05, lambda 1000, last-token pooling, 1 epoch, linear decay
    with 10% warm-up, seed 42); the SFT twin differs only by the contrastive term."""
    monkeypatch.chdir(REPO)
    cfg = load_config(path, check_paths=False)
    lora = cfg.model.lora
    assert (lora.r, lora.alpha, sorted(lora.target_modules)) == (16, 16.0, ["k_proj", "o_proj", "q_proj", "v_proj"])
    o = cfg.optim
    assert (o.lr, o.micro_batch_size, o.micro_batch_size * o.gradient_accumulation_steps * 8) == (1e-4, 2, 64)
    assert (o.epochs, o.max_steps, o.schedule, o.warmup_ratio, o.seed) == (1, 0, "linear", 0.1, 42)
    assert cfg.data.max_length == 256 and cfg.data.prompt_format == "plain"
    c = cfg.coin
    assert (c.temperature, c.max_weight, c.weighting, c.pooling) == (0.05, 1000.0, "adaptive", "last")
    assert c.objective == ("cit" if "sft" in path else "coin")
    twin = load_config("configs/llama2_7b_sft_lora.yaml", check_paths=False)
    for section in ("model", "data", "optim", "deepspeed"):
        assert getattr(twin, section) == getattr(cfg, section), section


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
        ("coin.weighting=linear", "coin.weighting: expected one of adaptive, constant, gradnorm"),
        ("coin.objective=ctr", "coin.objective: expected one of coin, cit, sft, consistency"),
        ("coin.grad_ratio=0", "coin.grad_ratio: expected a number > 0"),
        ("coin.consistency_weight=-1", "coin.consistency_weight: expected a number >= 0"),
        ("coin.weight_warmup_steps=-2", "coin.weight_warmup_steps: expected an integer >= 0"),
        ("coin.weight_warmup_steps=1.5", "coin.weight_warmup_steps: expected an integer"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio: expected a number in [0, 1)"),
        ("optim.micro_batch_size=0", "optim.micro_batch_size: expected an integer >= 1"),
        ("data.prompt_template=no placeholder", "data.prompt_template: expected exactly one '{prompt}'"),
        ("model.dtype=int8", "model.dtype: expected one of fp32, bf16, fp16"),
        ("coin=3", "coin: expected a mapping"),
        ("optim.lr", "expected key.sub=value"),
        ("model.lora=5", "model.lora: expected a mapping, got 5"),
        ("model.lora.r=0", "model.lora.r: expected an integer >= 1"),
        ("model.lora.dropout=1", "model.lora.dropout: expected a number in [0, 1)"),
        ("model.lora.target_modules=", "model.lora.target_modules: expected at least one module name"),
        ("model.lora.rank=4", "unknown key 'model.lora.rank' (expected one of: r, alpha, dropout, target_modules)"),
        ("model.quantization=8bit", "model.quantization: a quantized base is frozen: it needs model.lora"),
        ("model.quantization=3bit", "model.quantization: expected null, 8bit or 4bit"),
        ("output.export_merged=true", "output.export_merged: only for LoRA runs (model.lora)"),
        ("data.prompt_format=jinja", "data.prompt_format: expected one of plain, chat"),
        ("data.system_prompt=Be brief.", "data.system_prompt: only used with data.prompt_format: chat"),
        # non-finite numbers, in any float setting and in either YAML spelling
        ("optim.lr=inf", "optim.lr: expected a finite number, got 'inf'"),
        ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
        ("optim.weight_decay=nan", "optim.weight_decay: expected a finite number, got 'nan'"),
        ("optim.max_grad_norm=.nan", "optim.max_grad_norm: expected a finite number, got nan"),
        ("optim.warmup_ratio=-inf", "optim.warmup_ratio: expected a finite number, got '-inf'"),
        ("coin.temperature=inf", "coin.temperature: expected a finite number"),
        ("coin.max_weight=inf", "coin.max_weight: expected a finite number"),
        ("coin.weight=nan", "coin.weight: expected a finite number"),
        ("logging.peak_tflops=inf", "logging.peak_tflops: expected a finite number"),
        ("model.lora.alpha=inf", "model.lora.alpha: expected a finite number"),
        ("data.max_dropped_share=nan", "data.max_dropped_share: expected a finite number"),
        # AdamW's hyper-parameters
        ("optim.lr=0", "optim.lr: expected a number > 0, got 0.0"),
        ("optim.beta1=2", "optim.beta1: expected a number in [0, 1), got 2.0"),
        ("optim.beta1=-0.1", "optim.beta1: expected a number in [0, 1), got -0.1"),
        ("optim.beta2=1", "optim.beta2: expected a number in [0, 1), got 1.0"),
        ("optim.eps=-1", "optim.eps: expected a number > 0, got -1.0"),
        ("optim.eps=0", "optim.eps: expected a number > 0, got 0.0"),
        ("optim.weight_decay=-0.01", "optim.weight_decay: expected a number >= 0, got -0.01"),
        # the embedded tiny model's shape
        ("model.tiny.hidden_size=66", "model.tiny.hidden_size: expected a multiple of model.tiny.num_attention_heads=4, got 66"),
        ("model.tiny.hidden_size=12", "model.tiny.hidden_size: expected an even head size (rotary embeddings)"),
        ("model.tiny.num_key_value_heads=3", "model.tiny.num_key_value_heads: expected a divisor of model.tiny.num_attention_heads=4, got 3"),
        ("model.tiny.num_attention_heads=0", "model.tiny.num_attention_heads: expected an integer >= 1, got 0"),
        ("model.tiny.num_hidden_layers=0", "model.tiny.num_hidden_layers: expected an integer >= 1, got 0"),
        ("model.tiny.intermediate_size=-4", "model.tiny.intermediate_size: expected an integer >= 1, got -4"),
        ("model.tiny.max_position_embeddings=0", "model.tiny.max_position_embeddings: expected an integer >= 1"),
        ("model.tiny.seed=-1", "model.tiny.seed: expected an integer >= 0, got -1"),
        # the truncation policy
        ("data.min_prompt_tokens=-1", "data.min_prompt_tokens: expected an integer >= 0, got -1"),
        ("data.min_prompt_tokens=128", "data.min_prompt_tokens: expected fewer than data.max_length=128, got 128"),
        ("data.max_dropped_share=1.5", "data.max_dropped_share: expected a number in [0, 1], got 1.5"),
        ("data.max_dropped_share=-0.1", "data.max_dropped_share: expected a number in [0, 1], got -0.1"),
    ],
)
def test_bad_values(monkeypatch, train_file, override, expected):
    monkeypatch.chdir(REPO)
    assert expected in _error("configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", override])


@pytest.mark.parametrize("where", ["override", "yaml"])
@pytest.mark.parametrize("key, value, expected", [
    ("contrastive", "false", "coin.contrastive: removed; use coin.objective: cit (contrastive term off, "
                             "originals + paraphrases) or coin.objective: coin"),
    ("gen_loss", "original", "coin.gen_loss: removed; coin.objective decides it (sft: originals only; "
                             "coin, cit, consistency: originals + paraphrases)"),
])
def test_removed_keys_say_what_replaces_them(monkeypatch, train_file, tmp_path, where, key, value, expected):
    monkeypatch.chdir(REPO)
    base = [f"data.train={train_file}", "data.eval=null"]
    if where == "override":
        message = _error("configs/tiny.yaml", base + [f"coin.{key}={value}"])
    else:
        path = tmp_path / "old.yaml"
        path.write_text(f"coin:\n  {key}: {value}\n")
        message = _error(str(path), base)
    assert message == expected and "\n" not in message


def test_lora_settings_and_overrides(monkeypatch, train_file):
    monkeypatch.chdir(REPO)
    base = ["data.train=" + train_file, "data.eval=null"]
    assert load_config("configs/tiny.yaml", base).model.lora is None  # absent: full parameters
    cfg = load_config("configs/tiny.yaml", base + ["model.lora.r=8", "model.lora.target_modules=q_proj,v_proj"])
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.target_modules) == (8, 16.0, ["q_proj", "v_proj"])
    full = load_config("configs/llama2_7b_coin_lora.yaml", ["model.lora=null", "output.export_merged=false"],
                       check_paths=False)
    assert full.model.lora is None
    cfg = load_config("configs/tiny.yaml", base + ["model.lora.r=4", "model.quantization=4bit",
                                                   "deepspeed.config=ds_configs/cpu_zero2.json"])
    assert cfg.model.quantization == "4bit"
    assert "cannot be partitioned by ZeRO-3" in _error(
        "configs/tiny.yaml", base + ["model.lora.r=4", "model.quantization=4bit"])


def test_missing_paths(monkeypatch, train_file, tmp_path):
    monkeypatch.chdir(REPO)
    assert "data.train: path 'nope.jsonl' does not exist" in _error("configs/tiny.yaml", ["data.train=nope.jsonl"])
    assert "config file 'missing.yaml' does not exist" in _error("missing.yaml")
    assert "deepspeed.config: file 'ds_configs/none.json' does not exist" in _error(
        "configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", "deepspeed.config=ds_configs/none.json"])
    assert "model.name_or_path: directory './no-model' does not exist" in _error(
        "configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", "model.name_or_path=./no-model"])


def test_a_valid_tiny_shape_and_edge_values_pass(monkeypatch, train_file):
    """The bounds are not off by one: beta1 = 0, weight_decay = 0, an even head size of 6 and
    grouped-query heads (8 heads over 2 key/value heads) are accepted."""
    monkeypatch.chdir(REPO)
    cfg = load_config("configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", "optim.beta1=0",
                                            "optim.weight_decay=0", "model.tiny.hidden_size=48",
                                            "model.tiny.num_attention_heads=8", "model.tiny.num_key_value_heads=2",
                                            "data.min_prompt_tokens=0", "data.max_dropped_share=1"])
    assert (cfg.optim.beta1, cfg.model.tiny.hidden_size // cfg.model.tiny.num_attention_heads) == (0.0, 6)


@pytest.mark.parametrize("key", ["model.tokenizer", "model.name_or_path"])
@pytest.mark.parametrize("path", ["./no-such-dir", "../no-such-dir", "/no/such/dir", "~/no-such-coin-dir", "a/b/c"])
def test_local_paths_that_do_not_exist(monkeypatch, train_file, key, path):
    """A value that is a path (see config.is_local_path) must be a directory; checked in
    load_config, before any hub lookup."""
    monkeypatch.chdir(REPO)
    msg = _error("configs/tiny.yaml", [f"data.train={train_file}", "data.eval=null", f"{key}={path}"])
    assert msg == f"{key}: directory '{path}' does not exist"


def test_hub_ids_and_existing_directories_pass_validation(monkeypatch, train_file, tmp_path):
    """`org/name` and `name` cannot be checked offline: they are left to the loader (which says it
    tries the hub); an existing directory passes."""
    monkeypatch.chdir(REPO)
    base = [f"data.train={train_file}", "data.eval=null"]
    cfg = load_config("configs/tiny.yaml", base + ["model.tokenizer=some-org/some-tokenizer"])
    assert cfg.model.tokenizer == "some-org/some-tokenizer"
    assert load_config("configs/tiny.yaml", base + ["model.tokenizer=gpt2"]).model.tokenizer == "gpt2"
    assert load_config("configs/tiny.yaml", base + [f"model.tokenizer={tmp_path}"]).model.tokenizer == str(tmp_path)


def test_cli_exits_2_on_a_bad_value_before_anything_starts(monkeypatch, train_file, tmp_path):
    """`coin train` with optim.lr=inf: one line on stderr naming optim.lr, status 2, nothing written."""
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "coin", "train", "--config", "configs/tiny.yaml",
                           f"data.train={train_file}", "data.eval=null", f"output.dir={out}", "optim.lr=inf"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["coin train: error: optim.lr: expected a finite number, got 'inf'"]
    assert not out.exists()


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


@pytest.mark.parametrize("stage", ["three", 4, -1, 2.0, True, None])
def test_zero_stage_must_be_an_integer_0_to_3(monkeypatch, train_file, tmp_path, stage):
    monkeypatch.chdir(REPO)
    zero = dict(json.load(open("ds_configs/cpu_zero3.json"))["zero_optimization"], stage=stage)
    msg = _ds_error(monkeypatch, train_file, tmp_path, zero_optimization=zero)
    assert msg == f"deepspeed.config: {tmp_path / 'ds.json'}: zero_optimization.stage: expected an integer 0..3, got {stage!r}"


def test_zero_optimization_must_be_an_object(monkeypatch, train_file, tmp_path):
    msg = _ds_error(monkeypatch, train_file, tmp_path, zero_optimization="stage3")
    assert msg.endswith("zero_optimization: expected a JSON object, got 'stage3'")
