"""Export: the Hugging Face directory written at the end of the shared 2-rank ZeRO-3 run, and
`coin export` from a checkpoint, load with from_pretrained and give the engine's logits."""
import json

import torch

from coin.cli import main as coin_main
from trainer_helpers import PROBE_IDS, STEPS, safetensors_weights


def _logits(hf_dir) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([PROBE_IDS])).logits.float()


def test_end_of_run_export_equals_engine_logits(straight_run):
    from transformers import AutoTokenizer, GenerationConfig

    hf = straight_run["out"] / "hf"
    engine_logits = straight_run["results"][0]["logits"]
    torch.testing.assert_close(straight_run["results"][1]["logits"], engine_logits, rtol=0, atol=0)
    torch.testing.assert_close(_logits(hf), engine_logits, rtol=1e-5, atol=1e-5)
    assert (hf / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(str(hf))
    assert tok.pad_token is not None and len(tok) == 32000
    assert GenerationConfig.from_pretrained(str(hf)).bos_token_id == 1
    assert "name_or_path: tiny" in (hf / "coin_run_config.yaml").read_text()
    final = json.loads((hf / "coin_final_metrics.json").read_text())
    assert final["status"] == "completed" and final["train"]["step"] == STEPS and final["eval"]["step"] == STEPS


def test_coin_export_from_checkpoint(straight_run, tmp_path):
    out = tmp_path / "exported"
    assert coin_main(["export", str(straight_run["out"]), str(out)]) == 0  # run dir -> latest checkpoint
    want = safetensors_weights(straight_run["out"] / "hf")
    got = safetensors_weights(out)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    torch.testing.assert_close(_logits(out), straight_run["results"][0]["logits"], rtol=1e-5, atol=1e-5)
    assert json.loads((out / "coin_final_metrics.json").read_text())["step"] == STEPS


def test_coin_export_refuses_an_incomplete_checkpoint(straight_run, tmp_path, capsys):
    import shutil

    src = straight_run["out"] / "checkpoints" / "step_00000012"
    broken = tmp_path / "checkpoints" / "step_00000012"
    shutil.copytree(src, broken)
    (broken / "coin_complete.json").unlink()
    assert coin_main(["export", str(broken), str(tmp_path / "out")]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
