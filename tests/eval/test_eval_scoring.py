"""Scoring: batched label likelihoods equal a direct per-example computation from the model's
logits; batched left-padded generation equals one-at-a-time generation; parsing; vocabulary checks."""
import pytest
import torch

from coin.data_tools.prompt import PromptFormat, encode
from coin.eval.scoring import (
    LabelWordError, argmax_label, check_label_words, generate_texts, label_scores, parse_prediction,
)
from coin.eval.tasks import default_instructions, get_task, render_prompt

from eval_fixtures import make_rows, word_level_model


def _prompts(task, n):
    spec = get_task(task)
    instructions = default_instructions(spec)
    return [render_prompt(spec, instructions[i % 6], r) for i, r in enumerate(make_rows(task, n))]


def _direct_logprob(model, tok, fmt, prompt, word):
    """log P(word | prompt) summed over its tokens, from full logits of one unpadded sequence,
    tokenised here without data_tools.prompt (BOS + rendered prompt, the word as continuation)."""
    rendered = fmt.render(prompt)
    prompt_ids = [tok.bos_token_id] + tok(rendered, add_special_tokens=False)["input_ids"]
    full = [tok.bos_token_id] + tok(rendered + word, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids  # the template ends in a newline: no merge at the boundary
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    logp = logits.log_softmax(-1)
    return sum(logp[t - 1, full[t]].item() for t in range(len(prompt_ids), len(full))), len(full) - len(prompt_ids)


@pytest.mark.parametrize("task", ["sst2", "mnli_matched", "wnli"])
def test_batched_scores_equal_direct_log_probabilities(tiny, task):
    """Both paths (the shared prompt cache, and one full sequence per label) at several batch sizes."""
    model, tok = tiny
    fmt = PromptFormat()
    spec = get_task(task)
    prompts = _prompts(task, 5)
    batched = label_scores(model, tok, fmt, prompts, spec.label_words, batch_size=4)
    single = label_scores(model, tok, fmt, prompts, spec.label_words, batch_size=1)
    normed = label_scores(model, tok, fmt, prompts, spec.label_words, batch_size=3, length_normalize=True)
    plain = label_scores(model, tok, fmt, prompts, spec.label_words, batch_size=4, shared_prefix=False)
    lengths = set()
    for i, p in enumerate(prompts):
        for k, w in enumerate(spec.label_words):
            direct, n_tokens = _direct_logprob(model, tok, fmt, p, w)
            assert batched[i][k] == pytest.approx(direct, abs=2e-4)
            assert single[i][k] == pytest.approx(direct, abs=2e-4)
            assert plain[i][k] == pytest.approx(direct, abs=2e-4)  # one full sequence per label, no cache
            assert normed[i][k] == pytest.approx(direct / n_tokens, abs=2e-4)
            lengths.add(n_tokens)
    assert max(lengths) >= 2  # multi-token label words: the sum covers each of their tokens


def test_scores_follow_the_prompt_format_and_truncation(tiny):
    model, tok = tiny
    fmt = PromptFormat(template="Q: {prompt}\nA:", add_bos=False)
    prompt = _prompts("cola", 1)[0]
    (scores,) = label_scores(model, tok, fmt, [prompt], ["acceptable"])
    ids, plen = encode(tok, fmt, prompt, "acceptable", 512)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    assert scores[0] == pytest.approx(sum(logp[t - 1, ids[t]].item() for t in range(plen, len(ids))), abs=2e-4)
    # a long prompt is cut in its body; the label is still scored after the response marker
    long_prompt = prompt + " and so on" * 200
    (cut,) = label_scores(model, tok, fmt, [long_prompt], ["acceptable"], max_length=40)
    ids, plen = encode(tok, fmt, long_prompt, "acceptable", 40)
    assert len(ids) == 40
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    assert cut[0] == pytest.approx(sum(logp[t - 1, ids[t]].item() for t in range(plen, len(ids))), abs=2e-4)


def test_argmax_breaks_ties_to_the_lower_label():
    assert argmax_label([-1.0, -0.5, -0.5]) == 1
    assert argmax_label([-2.0, -3.0]) == 0


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tok = tiny
    fmt = PromptFormat()
    prompts = _prompts("qqp", 4) + _prompts("sst2", 2)  # different lengths: real left padding
    batched = generate_texts(model, tok, fmt, prompts, max_new_tokens=7, batch_size=6)
    alone = generate_texts(model, tok, fmt, prompts, max_new_tokens=7, batch_size=1)
    assert batched == alone
    # and one of them by hand: greedy argmax over full logits, 7 steps
    ids = encode(tok, fmt, prompts[0], "", 505)[0]
    with torch.no_grad():
        for _ in range(7):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert tok.decode(ids[-7:], skip_special_tokens=True) == alone[0]


SENTIMENT = ["negative", "positive"]
ENTAIL = ["entailment", "not_entailment"]
GRAMMAR = ["unacceptable", "acceptable"]
NLI3 = ["entailment", "neutral", "contradiction"]


@pytest.mark.parametrize("text,words,mode,expected", [
    ("positive", SENTIMENT, "strict", 1),
    ("  'Negative'.", SENTIMENT, "strict", 0),
    ("The answer is positive", SENTIMENT, "strict", -1),  # PromptBench: must start with the label
    ("The answer is positive", SENTIMENT, "robust", 1),
    ("Answer: Not entailment.", ENTAIL, "robust", 1),
    ("not_entailment", ENTAIL, "strict", 1),
    ("entailment, not not_entailment", ENTAIL, "robust", 0),  # the earliest label named
    ("unacceptable", GRAMMAR, "robust", 0),  # never read as "acceptable"
    ("acceptable", GRAMMAR, "robust", 1),
    ("no idea", SENTIMENT, "robust", -1),
    ("</s>neutral<pad>", NLI3, "strict", 1),
])
def test_parse_prediction(text, words, mode, expected):
    assert parse_prediction(text, words, mode) == expected


def test_label_word_missing_from_the_vocabulary(tmp_path, tiny):
    from coin.training.config import ModelConfig
    from coin.training.model import load_model, load_tokenizer

    path = word_level_model(str(tmp_path / "wl"), ["Answer", ":", "###", "Response", "negative", "good"])
    mcfg = ModelConfig(name_or_path=path)
    tok, model = load_tokenizer(mcfg), load_model(mcfg)
    fmt = PromptFormat()
    with pytest.raises(LabelWordError, match=r"task 'sst2': label word 'positive' tokenises to the unknown token"):
        check_label_words(tok, get_task("sst2"), fmt, model.config.vocab_size, "wl")
    ok = get_task("sst2").with_label_words(["negative", "good"])
    assert set(check_label_words(tok, ok, fmt, model.config.vocab_size)) == {"negative", "good"}
    # a tokenizer larger than the model's embedding: ids beyond the vocabulary
    _, big_tok = tiny
    with pytest.raises(LabelWordError, match="beyond the model's vocabulary of 10"):
        check_label_words(big_tok, get_task("sst2"), fmt, 10)
