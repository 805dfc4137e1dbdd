"""A LoRA training run on 2 real ranks (gloo, DeepSpeed ZeRO-3, the tiny LLaMA): checkpoints hold
the adapters and their optimiser state only, a run resumed from one continues exactly, and the
exported adapter (PEFT format) and merged model give the engine's logits."""
import json

import pytest
import torch

from coin.cli import main as coin_main
from distributed import run_distributed
from trainer_helpers import PROBE_IDS, losses, run_config, safetensors_weights, train_ranks

STEPS = 8
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.1}  # dropout: resume must restore the RNG streams too


def _cfg(data, out, **output):
    return run_config(data, out, model={"lora": LORA}, optim={"max_steps": STEPS},
                      output={"save_every": 4, "export_merged": True, **output})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    data, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("lora")
    results = run_distributed(train_ranks, 2, args=(_cfg(data, out), {"logits_ids": PROBE_IDS}))
    return {"data": data, "out": out, "results": results}


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([PROBE_IDS])).logits.float()


def _adapter_logits(adapter_dir, base_dir) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return _logits(PeftModel.from_pretrained(base, str(adapter_dir)))


def _merged_logits(model_dir) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32))


def test_run_trains_the_adapters(lora_run):
    assert [r["status"] for r in lora_run["results"]] == ["completed", "completed"]
    got = losses(lora_run["out"])
    assert sorted(got) == list(range(1, STEPS + 1))
    adapters = safetensors_weights(lora_run["out"] / "hf")
    b = [v for k, v in adapters.items() if ".lora_B." in k]
    assert len(adapters) == 2 * 4 * 2 and all(v.abs().max() > 0 for v in b)  # B left 0: the adapters moved


def test_checkpoints_hold_adapters_and_optimiser_state_only(lora_run, tiny_model_dir):
    from transformers import AutoConfig

    tag = lora_run["out"] / "checkpoints" / "step_00000008"
    deepspeed_files = [p for p in tag.glob("*.pt") if not p.name.startswith("coin_rng")]
    size = sum(p.stat().st_size for p in deepspeed_files)
    adapters = sum(v.numel() for v in safetensors_weights(lora_run["out"] / "hf").values())
    c = AutoConfig.from_pretrained(tiny_model_dir)
    base = 2 * c.vocab_size * c.hidden_size  # the embedding and the head alone, far below all parameters
    assert size >= 3 * 4 * adapters  # fp32 adapters and two Adam moments
    assert size < 0.05 * 4 * base, (size, [p.name for p in deepspeed_files])


def test_exact_resume_from_a_lora_checkpoint(lora_run, tmp_path):
    """A new run resumed from the step-4 checkpoint: steps 5-8 equal the uninterrupted run."""
    ckpt = lora_run["out"] / "checkpoints" / "step_00000004"
    cfg = _cfg(lora_run["data"], tmp_path / "resumed", resume=str(ckpt), export_merged=False)
    results = run_distributed(train_ranks, 2, args=(cfg, {}))
    assert [r["start_step"] for r in results] == [4, 4] and [r["status"] for r in results] == ["completed"] * 2
    want, got = losses(lora_run["out"]), losses(tmp_path / "resumed")
    assert sorted(got) == list(range(5, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    w_straight, w_resumed = safetensors_weights(lora_run["out"] / "hf"), safetensors_weights(tmp_path / "resumed" / "hf")
    assert w_straight.keys() == w_resumed.keys()
    for k in w_straight:
        torch.testing.assert_close(w_resumed[k], w_straight[k], rtol=0, atol=1e-6)


def test_resume_needs_the_same_trainable_parameters(lora_run):
    from coin.training import checkpoint as ckpt
    from coin.training.config import LoraConfig

    root = str(lora_run["out"] / "checkpoints")
    ckpt.check_trainable(root, "step_00000004", LoraConfig(**LORA))
    with pytest.raises(ckpt.CheckpointError, match=r"trained with model.lora=\{'r': 4.*this run has model.lora=None"):
        ckpt.check_trainable(root, "step_00000004", None)
    with pytest.raises(ckpt.CheckpointError, match="this run has model.lora=.'r': 8"):
        ckpt.check_trainable(root, "step_00000004", LoraConfig(**{**LORA, "r": 8}))


def test_exports_give_the_engine_logits(lora_run, tiny_model_dir):
    engine_logits = lora_run["results"][0]["logits"]
    hf, merged = lora_run["out"] / "hf", lora_run["out"] / "hf_merged"
    assert (hf / "adapter_model.safetensors").is_file() and not (hf / "config.json").exists()
    adapter_config = json.loads((hf / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_model_dir
    assert (adapter_config["r"], adapter_config["lora_alpha"], sorted(adapter_config["target_modules"])) == \
        (4, 8.0, ["k_proj", "o_proj", "q_proj", "v_proj"])
    assert "lora:" in (hf / "coin_run_config.yaml").read_text()
    torch.testing.assert_close(_adapter_logits(hf, tiny_model_dir), engine_logits, rtol=1e-5, atol=1e-5)
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert not any(".lora_" in k or "base_layer" in k for k in safetensors_weights(merged))
    torch.testing.assert_close(_merged_logits(merged), engine_logits, rtol=1e-5, atol=1e-5)
    # the adapter really changes the model: the base alone gives other logits
    assert (_merged_logits(tiny_model_dir) - engine_logits).abs().max() > 1e-3


def test_coin_export_from_a_lora_checkpoint(lora_run, tmp_path, tiny_model_dir):
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert coin_main(["export", str(lora_run["out"]), str(adapter)]) == 0
    want = safetensors_weights(lora_run["out"] / "hf")
    got = safetensors_weights(adapter)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert coin_main(["export", "--merged", str(lora_run["out"]), str(merged)]) == 0
    engine_logits = lora_run["results"][0]["logits"]
    torch.testing.assert_close(_merged_logits(merged), engine_logits, rtol=1e-5, atol=1e-5)
    for k, v in safetensors_weights(lora_run["out"] / "hf_merged").items():
        torch.testing.assert_close(safetensors_weights(merged)[k], v, rtol=0, atol=1e-6)


def test_export_merged_of_a_full_parameter_checkpoint_is_refused(lora_run, tmp_path, capsys):
    import shutil

    import yaml

    tag = tmp_path / "checkpoints" / "step_00000008"
    shutil.copytree(lora_run["out"] / "checkpoints" / "step_00000008", tag)
    run = yaml.safe_load((tag / "run_config.yaml").read_text())
    run["model"]["lora"] = None
    (tag / "run_config.yaml").write_text(yaml.safe_dump(run))
    import json

    from coin.training import checkpoint as ckpt

    marker = tag / ckpt.COMPLETE  # a consistent checkpoint of a full-parameter run: its manifest agrees
    info = json.loads(marker.read_text())
    info["files"]["run_config.yaml"] = ckpt.hash_file(str(tag / "run_config.yaml"))
    marker.write_text(json.dumps(info))
    assert coin_main(["export", "--merged", str(tag), str(tmp_path / "out")]) == 2
    assert "holds full parameters (no model.lora)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
