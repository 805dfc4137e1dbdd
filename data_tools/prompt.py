"""The prompt format shared by training data, the token cache and evaluation.

A training or evaluation sequence is, in the `plain` format (the reference's),

    [BOS] template.format(prompt=<instruction with its input>) <response> [EOS]

with the reference's template "{prompt}\\n\\n### Response:\\n", BOS added and no EOS; in the
`chat` format (`data.prompt_format: chat`), the tokenizer's own chat template (apply_chat_template)
renders an optional system turn, the prompt as the user turn and the response as the assistant
turn:

    <generation prompt: [system turn] user turn, assistant header> <response> <end-of-turn marker>

(the marker is what the template writes after the assistant's content, trailing whitespace
removed: `<|eot_id|>` for Llama 3, `<|im_end|>` for ChatML/Qwen2; BOS and EOS are the
template's business, `add_bos`/`add_eos` are not used). In both, the loss (and, at evaluation, the
label likelihood) covers the response tokens only: `prompt_len` tokens of prompt come first, so
`prompt_last` pooling reads the end of the generation prompt and `last` the final token.

Truncation keeps the response: when the sequence is longer than `max_length`, tokens are removed
from the end of the prompt *body* (the instruction and input), never from the template's response
marker (chat: nothing of the template around the user's content) and never from the response,
unless the response alone does not fit (then its tail goes).
"""
from __future__ import annotations

from dataclasses import dataclass

from coin.errors import CoinError

DEFAULT_TEMPLATE = "{prompt}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptFormat:
    template: str = DEFAULT_TEMPLATE
    add_bos: bool = True
    add_eos: bool = False
    chat: bool = False  # the tokenizer's chat template instead of `template` (see the module doc)
    system_prompt: str | None = None  # chat: the system turn (None: whatever the template does without one)

    @classmethod
    def from_data_config(cls, data_cfg) -> "PromptFormat":
        return cls(template=data_cfg.prompt_template, add_bos=data_cfg.add_bos, add_eos=data_cfg.add_eos,
                   chat=data_cfg.prompt_format == "chat", system_prompt=data_cfg.system_prompt)

    def render(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def key(self) -> str:
        """A stable description, part of the token cache key (the chat template itself is added
        by the cache, from the tokenizer)."""
        if self.chat:
            return repr(("chat", self.system_prompt))
        return repr((self.template, self.add_bos, self.add_eos))


def encode(tokenizer, fmt: PromptFormat, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response and the number of prompt tokens, truncated to `max_length`.

    The prompt is tokenised alone and the response as the continuation of the full text, so the
    prompt tokens are exactly what a model sees at inference time (what evaluation scores after).
    """
    if fmt.chat:
        return encode_chat(tokenizer, fmt, prompt, response, max_length)
    rendered = fmt.render(prompt)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(rendered + response, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids):]
    else:  # the boundary merged into one token: tokenise the response on its own
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if fmt.add_bos and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    if fmt.add_eos and tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]

    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        marker = _marker_len(tokenizer, fmt)
        head = 1 if fmt.add_bos else 0
        body = len(prompt_ids) - marker - head  # removable prompt tokens
        cut = min(overflow, max(body, 0))
        if cut:
            keep_body = body - cut
            prompt_ids = prompt_ids[: head + keep_body] + prompt_ids[len(prompt_ids) - marker:]
        overflow -= cut
        if overflow > 0:
            response_ids = response_ids[: len(response_ids) - overflow]
    return prompt_ids + response_ids, len(prompt_ids)


_MARKER_CACHE: dict[tuple, int] = {}


def _marker_len(tokenizer, fmt: PromptFormat) -> int:
    """Tokens at the end of a rendered prompt that belong to the template after `{prompt}`."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), fmt.template)
    if key not in _MARKER_CACHE:
        tail = fmt.template.split("{prompt}", 1)[1]
        probe = "x x x"
        with_tail = tokenizer(probe + tail, add_special_tokens=False)["input_ids"]
        bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
        common = 0
        while common < min(len(bare), len(with_tail)) and bare[common] == with_tail[common]:
            common += 1
        _MARKER_CACHE[key] = len(with_tail) - common
    return _MARKER_CACHE[key]


# ----------------------------------------------------------------------------- chat templates

# Stands for a turn's content while the template's own text around it is located: private-use
# characters, which no template trims or rewrites.
_SENTINEL = "\ue000coin\ue001"


@dataclass(frozen=True)
class _ChatLayout:
    before_user: str  # generation prompt text before the user's content (system turn, user header)
    after_user: str  # generation prompt text after it (end of the user turn, assistant header)
    after_answer: str  # what the template writes after the assistant's content
    before_user_ids: tuple[int, ...]
    after_user_ids: tuple[int, ...]


_LAYOUT_CACHE: dict[tuple, _ChatLayout] = {}


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def chat_template(tokenizer) -> str:
    """The tokenizer's chat template; a CoinError naming the tokenizer when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise CoinError(
            f"data.prompt_format: chat: the tokenizer '{_name(tokenizer)}' has no chat template (no chat_template "
            f"in its tokenizer_config.json, no chat_template.jinja); use data.prompt_format: plain, or a tokenizer "
            f"that has one"
        )
    return template if isinstance(template, str) else repr(sorted(template.items()))


def _messages(fmt: PromptFormat, user: str, assistant: str | None = None) -> list[dict]:
    turns = [] if fmt.system_prompt is None else [{"role": "system", "content": fmt.system_prompt}]
    turns.append({"role": "user", "content": user})
    if assistant is not None:
        turns.append({"role": "assistant", "content": assistant})
    return turns


def _render(tokenizer, fmt: PromptFormat, user: str, assistant: str | None = None) -> str:
    return tokenizer.apply_chat_template(_messages(fmt, user, assistant), tokenize=False,
                                         add_generation_prompt=assistant is None)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chat_layout(tokenizer, fmt: PromptFormat) -> _ChatLayout:
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), chat_template(tokenizer), fmt.system_prompt)
    if key not in _LAYOUT_CACHE:
        prompt = _render(tokenizer, fmt, _SENTINEL)
        full = _render(tokenizer, fmt, _SENTINEL, _SENTINEL)
        answer = full[len(prompt):]
        if prompt.count(_SENTINEL) != 1 or not full.startswith(prompt) or not answer.startswith(_SENTINEL):
            raise CoinError(f"data.prompt_format: chat: the chat template of '{_name(tokenizer)}' does not render a "
                            f"conversation as its generation prompt followed by the assistant's content")
        before, after = prompt.split(_SENTINEL)
        _LAYOUT_CACHE[key] = _ChatLayout(before, after, answer[len(_SENTINEL):], tuple(_ids(tokenizer, before)),
                                         tuple(_ids(tokenizer, after)))
    return _LAYOUT_CACHE[key]


def _common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_chat(tokenizer, fmt: PromptFormat, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """`encode` in the chat format: (ids, prompt_len) with prompt_len the generation prompt's tokens.

    The response tokens are the assistant's content and the end-of-turn marker. An empty response
    gives the generation prompt alone (what a model is given to generate from).
    """
    layout = _chat_layout(tokenizer, fmt)
    rendered = _render(tokenizer, fmt, prompt)
    prompt_ids = _ids(tokenizer, rendered)
    response_ids: list[int] = []
    if response:
        full = _render(tokenizer, fmt, prompt, response)
        answer = full[len(rendered):]
        if not full.startswith(rendered) or not answer.endswith(layout.after_answer):
            raise CoinError(f"data.prompt_format: chat: the chat template of '{_name(tokenizer)}' renders "
                            f"this record's assistant turn differently from its layout ({answer[:40]!r}...)")
        answer = answer[: len(answer) - len(layout.after_answer)] + layout.after_answer.rstrip()
        full_ids = _ids(tokenizer, rendered + answer)
        if full_ids[: len(prompt_ids)] == prompt_ids:
            response_ids = full_ids[len(prompt_ids):]
        else:  # the boundary merged into one token: tokenise the answer on its own
            response_ids = _ids(tokenizer, answer)

    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        head = _common_prefix(prompt_ids, layout.before_user_ids)
        tail = _common_prefix(prompt_ids[::-1], layout.after_user_ids[::-1])
        body = len(prompt_ids) - head - tail  # the user's content: the removable tokens
        cut = min(overflow, max(body, 0))
        if cut:
            prompt_ids = prompt_ids[: head + body - cut] + prompt_ids[len(prompt_ids) - tail:]
        overflow -= cut
        if overflow > 0:
            response_ids = response_ids[: len(response_ids) - overflow]
    return prompt_ids + response_ids, len(prompt_ids)
