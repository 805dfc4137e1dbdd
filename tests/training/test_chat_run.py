"""The chat format end to end, in one process: LoRA training under DeepSpeed ZeRO-2 with
`data.prompt_format: chat` (a tiny LLaMA whose tokenizer carries the ChatML template), the adapter
and merged exports, and `coin eval` on each, prompting through the same chat template by default."""
import json
import shutil

import pytest

from coin.cli import main as coin_main
from distributed import run_distributed
from trainer_helpers import REPO, losses, run_config, train_ranks

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM = "Answer with one word."


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tiny_model_dir):
    from transformers import AutoTokenizer

    model_dir = tmp_path_factory.mktemp("chat-model") / "tiny-chat"
    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = QWEN2_TEMPLATE  # the template's markers stay plain text: the vocabulary is the model's
    tok.save_pretrained(str(model_dir))
    data, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("chat")
    cfg = run_config(data, out, model={"name_or_path": str(model_dir), "lora": {"r": 4, "alpha": 8.0}},
                     data={"prompt_format": "chat", "system_prompt": SYSTEM, "max_length": 96},
                     deepspeed={"config": str(REPO / "ds_configs" / "cpu_zero2.json")},
                     optim={"max_steps": 4}, output={"save_every": 0, "export_merged": True},
                     logging={"eval_every": 2})
    results = run_distributed(train_ranks, 1, args=(cfg, {}))
    return {"model": model_dir, "data": data, "out": out, "results": results}


def test_training_reads_the_chat_format(chat_run):
    from coin.data_tools.token_cache import read_meta

    assert chat_run["results"][0]["status"] == "completed"
    assert sorted(losses(chat_run["out"])) == [1, 2, 3, 4]
    caches = [p for p in (chat_run["data"] / "cache").iterdir() if p.is_dir() and p.name.startswith("train-")]
    meta = read_meta(str(caches[0]))
    assert "chat_template" in meta["key_parts"] and SYSTEM in meta["key_parts"]["format"]
    assert meta["counts"]["rows"] == 48 and meta["counts"]["dropped_no_response"] == 0


def _eval(model, glue, out):
    argv = ["eval", "--model", str(model), "--data", str(glue), "--tasks", "sst2", "--n-examples", "4",
            "--n-instructions", "1", "--attacks", "checklist", "--out", str(out), "--no-progress",
            "--representation", "none", "--no-plots"]
    assert coin_main(argv) == 0
    (res,) = json.loads((out / "results.json").read_text())["models"].values()
    scores = [json.loads(line)["score"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    return res, scores


def test_eval_takes_the_adapter_and_the_merged_model(chat_run, tmp_path):
    glue = tmp_path / "glue"
    glue.mkdir()
    rows = [{"sentence": s, "label": i % 2, "idx": i}
            for i, s in enumerate(["a dull film", "a great film", "boring actors", "a lovely plot"])]
    (glue / "sst2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter, adapter_scores = _eval(chat_run["out"] / "hf", glue, tmp_path / "eval-adapter")
    merged, merged_scores = _eval(chat_run["out"] / "hf_merged", glue, tmp_path / "eval-merged")
    for res in (adapter, merged):  # prompted as trained: the chat template with the run's system prompt
        fmt = res["prompt_format"]
        assert (fmt["format"], fmt["system_prompt"]) == ("chat", SYSTEM) and fmt["source"].endswith("coin_run_config.yaml")
    assert len(adapter_scores) == 8  # 4 examples x (clean + checklist)
    for a, m in zip(adapter_scores, merged_scores):
        assert a == pytest.approx(m, abs=1e-4)


def test_eval_options_override_the_format():
    import argparse

    from coin.errors import CoinError
    from coin.eval import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    fmt = run._prompt_format(parser.parse_args(["--model", "tiny", "--prompt-format", "chat", "--system-prompt", "Hi."]))
    assert fmt.chat and fmt.system_prompt == "Hi."
    assert run._prompt_format(parser.parse_args(["--model", "tiny"])) is None  # each model's own format
    with pytest.raises(CoinError, match="--system-prompt: only used with the chat format"):
        run._prompt_format(parser.parse_args(["--model", "tiny", "--system-prompt", "Hi."]))
