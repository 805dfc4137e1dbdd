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
unless the response alone does not fit (then its tail goes). When even the template's own tokens
(BOS and marker; chat: the turns around the user's content) do not fit, the sequence is their first
`max_length` tokens. A sequence is never longer than `max_length`.

`encode_truncated` says, besides, what truncation took (`Truncation`): the token cache leaves out
a record whose instruction would be cut to fewer than `data.min_prompt_tokens` (default
`MIN_PROMPT_TOKENS`) body tokens, since with long responses the prompt body is cut away and an
original and its paraphrase become the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

from coin.errors import CoinError

DEFAULT_TEMPLATE = "{prompt}\n\n### Response:\n"
MIN_PROMPT_TOKENS = 8  # data.min_prompt_tokens: the prompt-body tokens a truncated sequence must keep


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


@dataclass(frozen=True)
class Truncation:
    """What truncation to `max_length` took from one sequence."""

    body_cut: int = 0  # prompt-body tokens removed
    body_left: int = 0  # prompt-body tokens kept (counted only when some were cut)
    response_cut: int = 0  # response tokens removed from its end
    overlong: bool = False  # the template's own tokens exceed max_length: cut to its first max_length

    def cuts_instruction(self, min_prompt_tokens: int) -> bool:
        """Whether the instruction was cut to fewer than `min_prompt_tokens` body tokens (or the
        template itself did not fit)."""
        return self.overlong or (self.body_cut > 0 and self.body_left < min_prompt_tokens)


def encode(tokenizer, fmt: PromptFormat, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response and the number of prompt tokens, truncated to `max_length`.

    The prompt is tokenised alone and the response as the continuation of the full text, so the
    prompt tokens are exactly what a model sees at inference time (what evaluation scores after).
    """
    ids, prompt_len, _ = encode_truncated(tokenizer, fmt, prompt, response, max_length)
    return ids, prompt_len


def encode_truncated(tokenizer, fmt: PromptFormat, prompt: str, response: str,
                     max_length: int) -> tuple[list[int], int, Truncation]:
    """`encode`, and what truncation took (`Truncation`)."""
    if fmt.chat:
        return encode_chat(tokenizer, fmt, prompt, response, max_length)
    rendered = fmt.render(prompt)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(rendered + response, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids):]
    else:  # the boundary merged into one token: tokenise the response on its own
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    head = 0
    if fmt.add_bos and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
        head = 1
    if fmt.add_eos and tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids + response_ids, len(prompt_ids), Truncation()
    tail = min(_marker_len(tokenizer, fmt), len(prompt_ids) - head)
    return _truncate(list(prompt_ids), list(response_ids), head, tail, max_length)


def _truncate(prompt_ids: list[int], response_ids: list[int], head: int, tail: int,
              max_length: int) -> tuple[list[int], int, Truncation]:
    """Cut the prompt body (between the `head` and `tail` template tokens of `prompt_ids`) from its
    end, then the response from its end, then, when the template alone does not fit, everything
    past `max_length`: never more than `max_length` tokens."""
    overflow = len(prompt_ids) + len(response_ids) - max_length
    body = max(len(prompt_ids) - head - tail, 0)
    body_cut = min(overflow, body)
    if body_cut:
        prompt_ids = prompt_ids[: head + body - body_cut] + prompt_ids[head + body:]
    overflow -= body_cut
    response_cut = min(max(overflow, 0), len(response_ids))
    response_ids = response_ids[: len(response_ids) - response_cut]
    overflow -= response_cut
    overlong = overflow > 0
    ids = (prompt_ids + response_ids)[:max_length]
    return ids, min(len(prompt_ids), max_length), Truncation(body_cut, body - body_cut, response_cut, overlong)


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


def encode_chat(tokenizer, fmt: PromptFormat, prompt: str, response: str,
                max_length: int) -> tuple[list[int], int, Truncation]:
    """`encode_truncated` in the chat format: (ids, prompt_len, truncation) with prompt_len the
    generation prompt's tokens.

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
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids + response_ids, len(prompt_ids), Truncation()
    head = _common_prefix(prompt_ids, layout.before_user_ids)
    tail = min(_common_prefix(prompt_ids[::-1], layout.after_user_ids[::-1]), len(prompt_ids) - head)
    return _truncate(prompt_ids, response_ids, head, tail, max_length)
