"""`data.prompt_format: chat`, token-exact, on the tiny LLaMA tokenizer carrying the real Llama 3
Instruct and Qwen2 Instruct (ChatML) chat templates and their special tokens (set offline here).

The expected tokens come from tokenising conversations written out by hand from the templates'
documented layout, not from apply_chat_template: label masks (loss on the assistant's content and
end-of-turn marker only), `last` pooling at the final token, `prompt_last` at the end of the
generation prompt, truncation inside the user's content only, and the token cache key."""
import json

import pytest

from coin.data_tools.prompt import PromptFormat, encode
from coin.errors import CoinError
from coin.training.batch import IGNORE_INDEX, collate
from coin.training.pooling import last_token_index

# The chat templates as the Meta-Llama-3-8B-Instruct and Qwen2-7B-Instruct tokenizers ship them.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
USER = "Classify the sentiment of this review.\n\nThe movie was great, the actors even better."
PARA = "What feeling does this review express?\n\nThe movie was great, the actors even better."
ANSWER = "positive"


def llama3_text(user: str, answer: str | None, system: str | None = None) -> tuple[str, str]:
    """(generation prompt, assistant turn) as Llama 3 Instruct writes them."""
    prompt = "<|begin_of_text|>"
    if system is not None:
        prompt += f"<|start_header_id|>system<|end_header_id|>\n\n{system.strip()}<|eot_id|>"
    prompt += f"<|start_header_id|>user<|end_header_id|>\n\n{user.strip()}<|eot_id|>"
    prompt += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return prompt, "" if answer is None else f"{answer.strip()}<|eot_id|>"


def qwen2_text(user: str, answer: str | None, system: str | None = None) -> tuple[str, str]:
    """(generation prompt, assistant turn) in ChatML, with Qwen2's default system turn."""
    system = "You are a helpful assistant." if system is None else system
    prompt = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return prompt, "" if answer is None else f"{answer}<|im_end|>"


STYLES = {"llama3": (LLAMA3_TEMPLATE, llama3_text, "<|eot_id|>"), "qwen2": (QWEN2_TEMPLATE, qwen2_text, "<|im_end|>")}


def chat_tokenizer(tiny_model_dir, style: str):
    """The tiny tokenizer with a real chat template and its special tokens."""
    from coin.training.config import ModelConfig
    from coin.training.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))
    if style == "llama3":
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    else:
        tok.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = STYLES[style][0]
    return tok


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir) -> dict:
    return {style: chat_tokenizer(tiny_model_dir, style) for style in STYLES}


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("system", [None, "You answer with one word."])
@pytest.mark.parametrize("style", sorted(STYLES))
def test_labels_and_pooling_positions_are_token_exact(tokenizers, style, system):
    tok = tokenizers[style]
    _, text, marker = STYLES[style]
    fmt = PromptFormat(chat=True, system_prompt=system)
    rows, want = [], []
    for user in (USER, PARA):
        prompt_text, answer_text = text(user, ANSWER, system)
        prompt_ids, full_ids = _ids(tok, prompt_text), _ids(tok, prompt_text + answer_text)
        assert full_ids[:len(prompt_ids)] == prompt_ids  # the hand-built prompt is a token prefix
        ids, prompt_len = encode(tok, fmt, user, ANSWER, 256)
        assert (ids, prompt_len) == (full_ids, len(prompt_ids))
        want.append((full_ids, len(prompt_ids)))
        rows.append((ids, prompt_len))
    batch = collate([{"id": "a", "input_ids": rows[0][0], "prompt_len": rows[0][1], "para_input_ids": rows[1][0],
                      "para_prompt_len": rows[1][1]}], tok.pad_token_id)
    last = last_token_index(batch["attention_mask"])
    for r, (full_ids, prompt_len) in enumerate(want):
        labels = batch["labels"][r].tolist()
        n = len(full_ids)
        assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
        assert labels[prompt_len:n] == full_ids[prompt_len:]  # the assistant's content and end-of-turn marker
        assert all(x == IGNORE_INDEX for x in labels[n:])
        assert int(last[r]) == n - 1 and tok.convert_ids_to_tokens(full_ids[n - 1]) == marker
        # prompt_last: the last token of the generation prompt (the assistant header's newline)
        assert int(batch["prompt_last"][r]) == prompt_len - 1
        assert tok.convert_ids_to_tokens(full_ids[prompt_len - 1]) == "<0x0A>"


@pytest.mark.parametrize("style", sorted(STYLES))
def test_an_empty_response_is_the_generation_prompt(tokenizers, style):
    tok = tokenizers[style]
    prompt_text, _ = STYLES[style][1](USER, None)
    ids, prompt_len = encode(tok, PromptFormat(chat=True), USER, "", 256)
    assert ids == _ids(tok, prompt_text) and prompt_len == len(ids)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_truncation_cuts_the_user_content_only(tokenizers, style):
    tok = tokenizers[style]
    _, text, _ = STYLES[style]
    long_user = USER + " More words of the review." * 40
    prompt_text, answer_text = text(long_user, ANSWER)
    before, after = prompt_text.split(long_user.strip())  # the template's text around the content
    full = _ids(tok, prompt_text + answer_text)
    answer_ids = full[len(_ids(tok, prompt_text)):]
    ids, prompt_len = encode(tok, PromptFormat(chat=True), long_user, ANSWER, 64)
    assert len(ids) == 64 and ids[prompt_len:] == answer_ids
    head, tail = _ids(tok, before), _ids(tok, after)
    assert ids[:len(head)] == head and ids[prompt_len - len(tail):prompt_len] == tail
    kept = ids[len(head):prompt_len - len(tail)]
    assert kept and kept == full[len(head):len(head) + len(kept)]  # the start of the user's content


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_system_turn_longer_than_max_length_never_exceeds_it(tokenizers, style):
    """The template's own tokens around the user's content exceed max_length: the sequence is cut
    to max_length (flagged overlong, so the token cache leaves the record out), never longer."""
    from coin.data_tools.prompt import encode_truncated

    tok = tokenizers[style]
    fmt = PromptFormat(chat=True, system_prompt="Answer in one word. " * 20)
    for answer in ("", ANSWER, "very " * 30 + ANSWER):
        ids, prompt_len, cut = encode_truncated(tok, fmt, USER, answer, 32)
        assert len(ids) == 32 and prompt_len == 32 and cut.overlong
        prompt_text, _ = STYLES[style][1](USER, None, fmt.system_prompt)
        before_user = prompt_text.split(USER.strip())[0]
        assert ids == _ids(tok, before_user)[:32]  # the start of the system turn


def test_a_tokenizer_without_chat_template_is_a_clear_error(tiny_model_dir):
    from coin.training.config import ModelConfig
    from coin.training.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))
    with pytest.raises(CoinError) as info:
        encode(tok, PromptFormat(chat=True), USER, ANSWER, 256)
    msg = str(info.value)
    assert "\n" not in msg and tiny_model_dir in msg and "has no chat template" in msg


def test_token_cache_key_follows_the_chat_template_and_system_prompt(tiny_model_dir, tmp_path):
    from coin.data_tools.token_cache import build_token_cache, cache_key

    records = tmp_path / "pairs.jsonl"
    records.write_text(json.dumps({"id": "r0", "task": "t", "instruction": USER, "output": ANSWER,
                                   "paraphrases": [PARA], "group": "g0"}) + "\n")
    tok = chat_tokenizer(tiny_model_dir, "qwen2")
    keys = {cache_key(str(records), tok, PromptFormat(), 64)[0],
            cache_key(str(records), tok, PromptFormat(chat=True), 64)[0],
            cache_key(str(records), tok, PromptFormat(chat=True, system_prompt="Be brief."), 64)[0]}
    tok.chat_template = QWEN2_TEMPLATE.replace("You are a helpful assistant.", "You are Qwen.")
    keys.add(cache_key(str(records), tok, PromptFormat(chat=True), 64)[0])
    assert len(keys) == 4
    ds = build_token_cache(str(records), tok, PromptFormat(chat=True), 64, str(tmp_path / "cache"), show_progress=False)
    ids, prompt_len = encode(tok, PromptFormat(chat=True), USER, ANSWER, 64)
    assert ds[0]["input_ids"] == ids and ds[0]["prompt_len"] == prompt_len


def test_the_run_config_selects_the_chat_format():
    from coin.training.config import DataConfig

    fmt = PromptFormat.from_data_config(DataConfig(prompt_format="chat", system_prompt="Be brief."))
    assert fmt.chat and fmt.system_prompt == "Be brief."
    assert not PromptFormat.from_data_config(DataConfig()).chat
