"""Every attack: label words and placeholders survive, the same seed gives the same output, and
each attack changes exactly what it claims (checked on the text, independently of its edit log)."""
import re
from collections import Counter

import pytest

from coin.eval.instructions import InstructionSet, generate_instruction_set, load_instruction_file
from coin.eval.perturb import (
    HOMOGLYPHS, STRESS_SUFFIXES, PerturbationError, apply_edits, perturb, protected_spans,
)
from coin.eval.tasks import ATTACKS, GLUE_TASKS, default_instructions, get_task, semantic_pool

# (task, instruction): the built-in ones, a PromptBench prompt with {content} and capitalised label
# words, and a FLAN-style template whose input and options lines hold placeholders.
CASES = [(t, text) for t in GLUE_TASKS for text in default_instructions(get_task(t))[:3]] + [
    ("cola", "Review the sentence below and identify whether its grammar is 'Acceptable' or 'Unacceptable':\n"
             "Question:{content}\nAnswer:"),
    ("mnli_matched", "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis, "
                     "or does it contradict it, or is the relation neutral?\n{options_}"),
    ("qqp", 'Are the following two questions equivalent or not? Answer me with "equivalent" or "not_equivalent".'),
]
WORD_RE = re.compile(r"\S+")


def _labels(text, words):
    """How often each label word occurs (case-insensitive, whole words)."""
    return Counter(w for w in words for _ in range(len([s for s in protected_spans(text, [w])
                                                        if "{" not in text[s[0]:s[1]] and "\n" not in text[s[0]:s[1]]
                                                        and text[s[0]:s[1]].lower().replace("-", "_").replace(" ", "_")
                                                        == w.lower()])))


def _placeholders(text):
    return Counter(re.findall(r"\{[^{}]*\}", text))


def _core(token):
    return token.strip("'\".,:;!?()[]")


def _changed_tokens(a, b):
    ta, tb = WORD_RE.findall(a), WORD_RE.findall(b)
    assert len(ta) == len(tb), (a, b)
    return [(x, y) for x, y in zip(ta, tb) if x != y]


def _levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def perturbed(wordnet):
    out = {}
    for task, text in CASES:
        spec = get_task(task)
        for attack in ATTACKS:
            out[task, text, attack] = perturb(text, attack, spec.label_words, seed=7, index=1, wordnet=wordnet,
                                              pool=semantic_pool(spec))
    return out


@pytest.mark.parametrize("attack", ATTACKS)
def test_labels_and_placeholders_survive_and_seed_reproduces(attack, perturbed, wordnet):
    for task, text in CASES:
        spec = get_task(task)
        p = perturbed[task, text, attack]
        assert p.text != text, (attack, text)
        assert apply_edits(text, p.edits) == p.text
        assert _placeholders(p.text) == _placeholders(text)
        before, after = _labels(text, spec.label_words), _labels(p.text, spec.label_words)
        if attack == "semantic":  # rewritten: every label word named before is named after
            assert set(before) <= set(after), (text, p.text)
        else:
            assert before == after, (attack, text, p.text)
            for m in re.finditer(r"'[^']*'|\"[^\"]*\"", text):  # quoted label words untouched, case included
                if _core(m.group(0)).lower() in spec.label_words:
                    assert m.group(0) in p.text
        again = perturb(text, attack, spec.label_words, seed=7, index=1, wordnet=wordnet, pool=semantic_pool(spec))
        assert again == p
    others = [perturb(t, attack, get_task(task).label_words, seed=8, index=1, wordnet=wordnet,
                      pool=semantic_pool(get_task(task))).text for task, t in CASES]
    assert others != [perturbed[task, t, attack].text for task, t in CASES]  # the seed matters


@pytest.mark.parametrize("attack", ["textbugger", "deepwordbug"])
def test_character_attacks_edit_characters_inside_words(attack, perturbed):
    for task, text in CASES:
        p = perturbed[task, text, attack]
        changed = _changed_tokens(text, p.text)
        assert changed
        for old, new in changed:
            a, b = _core(old), _core(new)
            assert old.replace(a, b, 1) == new  # punctuation around the word kept
            assert a.isalpha() and a.lower() not in get_task(task).label_words
            assert 1 <= _levenshtein(a, b) <= 2 and b
            if attack == "textbugger":  # delete, swap of neighbours, or a look-alike character
                assert len(b) in (len(a) - 1, len(a))
                if len(b) == len(a) and sorted(a) != sorted(b):
                    (i,) = [k for k in range(len(a)) if a[k] != b[k]]
                    assert HOMOGLYPHS[a[i]] == b[i]
            else:
                assert abs(len(a) - len(b)) <= 1 and all(c.isascii() for c in b)


@pytest.mark.parametrize("attack", ["textfooler", "bertattack"])
def test_word_attacks_replace_whole_words(attack, perturbed, wordnet):
    for task, text in CASES:
        p = perturbed[task, text, attack]
        changed = _changed_tokens(text, p.text)
        assert changed
        for old, new in changed:
            a, b = _core(old), _core(new)
            assert old.replace(a, b, 1) == new
            assert b.isalpha() and a.lower() != b.lower() and wordnet.base_forms(b), (a, b)
            if attack == "textfooler":  # a synonym: the two share a WordNet synset
                syn_a = {ss for ss in wordnet.synsets(a, max_senses=2)}
                syn_b = {ss for ss in wordnet.synsets(b)}
                assert syn_a & syn_b, (a, b)


def test_bertattack_takes_the_language_models_favourite(tiny, wordnet):
    from coin.eval.scoring import causal_lm_scorer

    model, tok = tiny
    scorer = causal_lm_scorer(model, tok)
    text = "Check the grammar of this sentence and answer 'acceptable' or 'unacceptable'."
    p = perturb(text, "bertattack", ["unacceptable", "acceptable"], seed=3, wordnet=wordnet, rate=0.01)
    lm = perturb(text, "bertattack", ["unacceptable", "acceptable"], seed=3, wordnet=wordnet, rate=0.01,
                 lm_scorer=scorer)
    (edit,) = lm.edits
    assert [e.start for e in p.edits] == [edit.start]  # same word chosen; only the substitute differs
    from coin.eval.perturb import _substitutes

    cands = _substitutes(edit.old, wordnet, lambda w, pos: wordnet.neighbours(w, 2, pos), ["acceptable"])[:12]
    variants = [text[:edit.start] + c + text[edit.end:] for c in cands]
    scores = scorer(variants)
    assert edit.new == cands[max(range(len(cands)), key=lambda i: (scores[i], -i))]


def test_sentence_attacks_append_what_they_claim(perturbed):
    for task, text in CASES:
        c = perturbed[task, text, "checklist"]
        (edit,) = c.edits
        assert re.fullmatch(r" [A-Za-z0-9]{10}", edit.new)
        assert c.text.replace(edit.new, "", 1) == text
        s = perturbed[task, text, "stresstest"]
        (edit,) = s.edits
        assert edit.new in STRESS_SUFFIXES and s.text.replace(edit.new, "", 1) == text
        for p in (c, s):  # at the end of a line without placeholders, before its final punctuation
            at = p.edits[0].start
            line_start, line_end = text.rfind("\n", 0, at) + 1, (text + "\n").find("\n", at)
            assert "{" not in text[line_start:line_end]
            assert re.fullmatch(r"[\s.:?!;,]*", text[at:line_end])
    # PromptBench's placement: before the trailing colon
    c = perturbed[CASES[-3][0], CASES[-3][1], "checklist"]
    assert re.search(r"'Unacceptable' [A-Za-z0-9]{10}:\n", c.text)


def test_semantic_replaces_the_instruction_sentence(perturbed):
    for task, text in CASES:
        p = perturbed[task, text, "semantic"]
        old_lines, new_lines = text.split("\n"), p.text.split("\n")
        assert len(old_lines) == len(new_lines)
        diff = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
        assert len(diff) == 1 and "{" not in diff[0][0]
        assert diff[0][1].strip() in semantic_pool(get_task(task))
    spec = get_task("sst2")
    clean = default_instructions(spec)
    outs = {perturb(t, "semantic", spec.label_words, seed=1, index=i, pool=semantic_pool(spec)).text
            for i, t in enumerate(clean)}
    assert len(outs) == 6  # distinct paraphrases for the six instructions
    para = perturb(clean[0], "semantic", spec.label_words, paraphraser=lambda s: "Say 'positive' or 'negative', please.")
    assert para.text == "Say 'positive' or 'negative', please."
    # a paraphrase that loses a label word is not used
    fallback = perturb(clean[0], "semantic", spec.label_words, paraphraser=lambda s: "Rate it.", pool=semantic_pool(spec))
    assert fallback.text in semantic_pool(spec)


def test_nothing_to_perturb_and_unknown_attack_are_errors():
    with pytest.raises(PerturbationError, match="textbugger: no word"):
        perturb("'positive' or 'negative'?", "textbugger", ["negative", "positive"])
    with pytest.raises(PerturbationError, match="unknown attack 'typo'"):
        perturb("Classify it.", "typo", ["a", "b"])
    # in a generated set, such a variant is left out with a warning; the rest is kept
    with pytest.warns(UserWarning, match="sst2 instruction 0: textbugger: no word"):
        iset = generate_instruction_set({"sst2": ["{content}", "Is this sentence positive or negative?"]},
                                        {"sst2": get_task("sst2")}, attacks=["textbugger"])
    assert [i.key for i in iset] == ["clean/0", "clean/1", "textbugger/1"]


def test_generated_set_is_complete_reproducible_and_round_trips(tmp_path, wordnet):
    specs = {t: get_task(t) for t in ("sst2", "rte")}
    clean = {t: default_instructions(s) for t, s in specs.items()}
    a = generate_instruction_set(clean, specs, seed=5, wordnet=wordnet)
    b = generate_instruction_set(clean, specs, seed=5, wordnet=wordnet)
    assert [i.text for i in a] == [i.text for i in b]
    for t in specs:
        counts = Counter(i.attack for i in a.for_task(t))
        assert counts == Counter({"clean": 6, **{x: 6 for x in ATTACKS}})
    path = a.save(str(tmp_path / "instructions.json"))
    again = load_instruction_file(path)
    assert [(i.task, i.attack, i.index, i.text) for i in again] == [(i.task, i.attack, i.index, i.text) for i in a]
    assert isinstance(again, InstructionSet)
