"""The prompt format shared by training data, the token cache and evaluation.

A training or evaluation sequence is

    [BOS] template.format(prompt=<instruction with its input>) <response> [EOS]

with the reference's template "{prompt}\\n\\n### Response:\\n", BOS added and no EOS. The loss
(and, at evaluation, the label likelihood) covers the response tokens only: `prompt_len` tokens of
prompt come first.

Truncation keeps the response: when the sequence is longer than `max_length`, tokens are removed
from the end of the prompt *body* (the instruction and input), never from the template's response
marker and never from the response, unless the response alone does not fit (then its tail goes).
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TEMPLATE = "{prompt}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptFormat:
    template: str = DEFAULT_TEMPLATE
    add_bos: bool = True
    add_eos: bool = False

    @classmethod
    def from_data_config(cls, data_cfg) -> "PromptFormat":
        return cls(template=data_cfg.prompt_template, add_bos=data_cfg.add_bos, add_eos=data_cfg.add_eos)

    def render(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def key(self) -> str:
        """A stable description, part of the token cache key."""
        return repr((self.template, self.add_bos, self.add_eos))


def encode(tokenizer, fmt: PromptFormat, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response and the number of prompt tokens, truncated to `max_length`.

    The prompt is tokenised alone and the response as the continuation of the full text, so the
    prompt tokens are exactly what a model sees at inference time (what evaluation scores after).
    """
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
