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
    normed = label_scores(model, tok, fmt, prompts, spec.label_words, batch_size=3, score="mean")
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


def _uniform(tiny):
    """The tiny model with a zero output head: every next-token distribution is uniform."""
    import copy

    model, tok = tiny
    flat = copy.deepcopy(model)
    with torch.no_grad():
        flat.get_output_embeddings().weight.zero_()
    return flat, tok


def test_a_uniform_model_prefers_no_label_whatever_its_length(tiny):
    """Under a uniform next-token distribution every token costs log V: the sum prefers the label of
    fewer tokens; the per-token mean and the calibrated score (what `coin eval` ranks by default)
    give every label the same score."""
    from coin.eval.scoring import content_free_priors

    model, tok = _uniform(tiny)
    fmt = PromptFormat()
    spec = get_task("cola")  # "unacceptable" and "acceptable": different token counts after the marker
    counts = [len(encode(tok, fmt, "x", w, 512)[0]) - encode(tok, fmt, "x", w, 512)[1] for w in spec.label_words]
    assert counts[0] != counts[1], counts
    prompts = _prompts("cola", 3)
    total = label_scores(model, tok, fmt, prompts, spec.label_words)
    mean = label_scores(model, tok, fmt, prompts, spec.label_words, score="mean")
    log_v = torch.log(torch.tensor(float(model.config.vocab_size))).item()
    shorter = counts.index(min(counts))
    for row, row_mean in zip(total, mean):
        assert row == pytest.approx([-n * log_v for n in counts], abs=1e-4)
        assert argmax_label(row) == shorter  # the length decides the sum
        assert row_mean[0] == pytest.approx(row_mean[1], abs=1e-5)
    priors = content_free_priors(model, tok, fmt, spec, default_instructions(spec)[:3])
    for row, prior in zip(total, priors):
        calibrated = [v - p for v, p in zip(row, prior)]
        assert calibrated[0] == pytest.approx(calibrated[1], abs=1e-5)


def test_calibration_divides_out_the_instructions_prior(tiny):
    """content_free_priors against a direct computation: the mean over the content-free inputs of
    the softmax of the summed label log-likelihoods, each scored as one unpadded sequence."""
    from coin.eval.scoring import CONTENT_FREE, content_free_priors

    model, tok = tiny
    fmt = PromptFormat()
    spec = get_task("rte")
    texts = default_instructions(spec)[:2]
    priors = content_free_priors(model, tok, fmt, spec, texts, batch_size=2)
    for text, prior in zip(texts, priors):
        probs = torch.zeros(spec.num_labels, dtype=torch.float64)
        for cf in CONTENT_FREE:
            prompt = render_prompt(spec, text, {c: cf for c in spec.columns})
            direct = torch.tensor([_direct_logprob(model, tok, fmt, prompt, w)[0] for w in spec.label_words],
                                  dtype=torch.float64)
            probs += direct.softmax(0) / len(CONTENT_FREE)
        assert prior == pytest.approx(probs.log().tolist(), abs=1e-4)


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
    ("not acceptable", GRAMMAR, "strict", -1),  # PromptBench's rule, kept as it is
])
def test_parse_prediction(text, words, mode, expected):
    assert parse_prediction(text, words, mode) == expected


EQUIV = ["not_equivalent", "equivalent"]
WNLI = ["not_entailment", "entailment"]

# Realistic answers of instruction-tuned models (7 greedy tokens, PromptBench's protocol, or a bit
# longer), with the label a reader would take from them; None: no label can be read.
ANSWERS = [
    (GRAMMAR, "acceptable", "acceptable"),
    (GRAMMAR, "Unacceptable.", "unacceptable"),
    (GRAMMAR, "not acceptable", "unacceptable"),
    (GRAMMAR, "Not acceptable", "unacceptable"),
    (GRAMMAR, "The sentence is not acceptable.", "unacceptable"),
    (GRAMMAR, "The sentence isn't grammatically acceptable", "unacceptable"),
    (GRAMMAR, "It is not really acceptable", "unacceptable"),
    (GRAMMAR, "The sentence isn\u2019t acceptable", "unacceptable"),
    (GRAMMAR, "not unacceptable", "acceptable"),
    (GRAMMAR, "No, the sentence is acceptable.", "acceptable"),
    (GRAMMAR, "Acceptable? No.", "acceptable"),
    (GRAMMAR, "Not sure, but acceptable", "acceptable"),
    (GRAMMAR, "I don't know", None),
    (ENTAIL, "not entailment", "not_entailment"),
    (ENTAIL, "Not_entailment", "not_entailment"),
    (ENTAIL, "not-entailment.", "not_entailment"),
    (ENTAIL, "No entailment", "not_entailment"),
    (ENTAIL, "Answer: entailment", "entailment"),
    (ENTAIL, "There is no entailment here", "not_entailment"),
    (ENTAIL, "entailment, not not_entailment", "entailment"),
    (WNLI, "not entailment", "not_entailment"),
    (WNLI, "entailment", "entailment"),
    (EQUIV, "not equivalent", "not_equivalent"),
    (EQUIV, "The questions are not equivalent.", "not_equivalent"),
    (EQUIV, "Equivalent", "equivalent"),
    (EQUIV, "They are equivalent", "equivalent"),
    (EQUIV, "not_equivalent", "not_equivalent"),
    (SENTIMENT, "Positive", "positive"),
    (SENTIMENT, "The sentiment is negative.", "negative"),
    (SENTIMENT, "not positive", "negative"),
    (SENTIMENT, "The review is not negative, it is positive", "positive"),
    (SENTIMENT, "neither positive nor negative", None),
    (SENTIMENT, "neutral", None),
    (NLI3, "contradiction", "contradiction"),
    (NLI3, "Neutral.", "neutral"),
    (NLI3, "There is no contradiction; it is neutral.", "neutral"),
    (NLI3, "not neutral", None),  # three labels: "not neutral" names none of them
    (NLI3, "I would say entailment, not contradiction", "entailment"),
    (NLI3, "not entailment", None),
]


@pytest.mark.parametrize("words,text,expected", ANSWERS)
def test_parse_realistic_answers(words, text, expected):
    got = parse_prediction(text, words, "robust")
    assert (words[got] if got >= 0 else None) == expected


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
