"""Paraphrase filters: each reason on hand-made candidates, the similarity filter with
all-MiniLM-L6-v2 offline, and the counting invariants."""
import pytest

from coin.data_tools.filters import Candidate, FilterConfig, filter_candidates, normalize
from coin.data_tools.templates import options_text, render
from coin.data_tools.units import INSTRUCTION, TEMPLATE, WHOLE, make_unit

TEMPLATE_TEXT = "Is the sentiment of this sentence positive or negative?\n\nSentence: {sentence}\n{options_}"
FIELDS = {"sentence": "A fine film.", "options_": options_text(["negative", "positive"]), "answer": "positive"}


def _record(**extra):
    rec = {"id": "r1", "task": "sst2", "instruction": render(TEMPLATE_TEXT, FIELDS), "input": "", "output": "positive",
           "fields": dict(FIELDS)}
    rec.update(extra)
    return rec


def _cand(core):
    return Candidate(core, render(core, FIELDS) if "{" in core else core)


def test_units():
    unit = make_unit(_record())
    assert unit.kind == TEMPLATE and unit.text == TEMPLATE_TEXT  # from the record's own fields
    assert set(unit.protected) == {"positive", "negative"}  # label words in the unit, outside placeholders
    bare = make_unit({"id": "b", "task": "t", "instruction": "Classify it as positive or negative.", "input": "x",
                      "output": "positive"}, protect=["Classify"])
    assert bare.kind == INSTRUCTION and set(bare.protected) == {"positive", "Classify"}
    labelled = make_unit(bare.record, protect=["negative", "neutral"])  # the task's label words
    assert set(labelled.protected) == {"positive", "negative"}
    merged = {"id": "c", "task": "t", "instruction": "Sentence: x\nPositive?", "input": "", "output": "yes"}
    assert make_unit(merged) is None
    assert make_unit(merged, allow_input_edits=True).kind == WHOLE


def test_each_cheap_filter_and_surplus():
    rec = _record(paraphrases=[render("Existing paraphrase: positive or negative?\n\nSentence: {sentence}\n{options_}",
                                      FIELDS)])
    unit = make_unit(rec)
    cands = [
        _cand("   "),                                                                           # empty
        Candidate(TEMPLATE_TEXT, rec["instruction"]),                                           # identical
        _cand(TEMPLATE_TEXT.replace("Is the", "is  THE").replace("?", " ?!")),                  # near_identical
        _cand("Positive or negative?\n{sentence}\n{options_}"),                                 # length_ratio
        _cand("Is this sentence's tone positive or negative?\n\n{options_}"),                   # lost placeholder
        _cand("Is the sentiment of this sentence good or bad overall?\n\nSentence: {sentence}\n"),  # lost options
        Candidate("Is the mood of this {unknown} positive or negative?", None),                   # unknown field
        _cand("Existing paraphrase: positive or negative?\n\nSentence: {sentence}\n{options_}"),  # duplicate
        _cand("Would you call the sentiment of this sentence positive or negative?\n\nSentence: {sentence}\n{options_}"),
        _cand("Would you call the sentiment of this sentence positive or negative?\n\nSentence: {sentence}\n{options_}"),
        _cand("Is the feeling of the sentence below positive or negative?\n\nSentence: {sentence}\n{options_}"),
    ]
    cfg = FilterConfig(min_length_ratio=0.6, num_paraphrases=1)
    (out,) = filter_candidates([(unit, cands)], cfg, None)
    assert out.kept == [cands[8].text]
    assert dict(out.reasons) == {"empty": 1, "identical": 1, "near_identical": 1, "length_ratio": 1,
                                 "lost_protected": 3, "duplicate": 2, "surplus": 1}
    assert sum(out.reasons.values()) + len(out.kept) == len(cands)
    (out,) = filter_candidates([(unit, cands)], FilterConfig(num_paraphrases=5, disabled=frozenset(
        {"identical", "near_identical", "length_ratio", "lost_protected", "duplicate"})), None)
    assert out.reasons == {"empty": 1, "lost_protected": 1, "surplus": 4}  # blank, unrenderable: never kept
    assert len(out.kept) == 5
    assert normalize("  Is it, OK?!") == "is it ok"


def test_similarity_filter(similarity):
    rec = {"id": "s", "task": "sst2", "instruction": "Is the sentiment of the following sentence positive or negative?",
           "input": "Sentence: a warm film.", "output": "positive"}
    unit = make_unit(rec)
    cands = [Candidate(t, t) for t in (
        "Is the feeling of the following sentence positive or negative?",        # a paraphrase: kept
        "What is the capital city of France? Answer positive or negative.",     # unrelated: too low
        "Is the sentiment of the following sentence positive or negative ?!",   # near-identical (normalised)
        "Is the sentiment of the following sentences positive or negative?",    # too similar: above high
    )]
    scores = similarity.cosine_pairs([(c.core, unit.text) for c in cands])
    assert scores[1] < 0.5 < 0.7 < scores[0] < 0.92 < scores[3]
    cfg = FilterConfig(similarity_low=0.6, similarity_high=0.92, num_paraphrases=3)
    (out,) = filter_candidates([(unit, cands)], cfg, similarity)
    assert out.kept == [cands[0].text]
    assert dict(out.reasons) == {"similarity_low": 1, "near_identical": 1, "similarity_high": 1}
    off = FilterConfig(num_paraphrases=3, disabled=frozenset({"similarity_low", "similarity_high"}))
    (out,) = filter_candidates([(unit, cands)], off, similarity)
    assert len(out.kept) == 3


def test_placeholders_of_bare_instructions_are_protected():
    rec = {"id": "p", "task": "t", "instruction": "Classify the text {content} by topic.", "input": "x", "output": "sport"}
    unit = make_unit(rec)
    cands = [Candidate(t, t) for t in ("Sort the text {content} by subject.", "Sort the text by subject.")]
    (out,) = filter_candidates([(unit, cands)], FilterConfig(num_paraphrases=2), None)
    assert out.kept == [cands[0].text] and out.reasons == {"lost_protected": 1}


@pytest.mark.parametrize("ratio, kept", [((0.5, 2.0), True), ((0.9, 1.1), False)])
def test_length_ratio_bounds(ratio, kept):
    rec = {"id": "l", "task": "t", "instruction": "one two three four", "input": "in", "output": "o"}
    unit = make_unit(rec)
    (out,) = filter_candidates([(unit, [Candidate("one two three", "one two three")])],
                               FilterConfig(*ratio), None)
    assert bool(out.kept) is kept
