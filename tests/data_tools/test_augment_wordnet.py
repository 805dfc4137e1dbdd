"""The wordnet backend offline (Debian's /usr/share/wordnet through NLTK): setup and its error,
what may and may not be replaced, determinism, and `coin augment --backend wordnet` end to end."""
import json
import os

import pytest

from coin.cli import main as coin
from coin.data_tools.backends.wordnet import WordNetBackend, check_wordnet, ensure_wordnet
from coin.data_tools.templates import options_text, placeholders, render
from coin.data_tools.units import make_unit
from coin.errors import CoinError
from data_helpers import read_jsonl

TEMPLATE = "Determine whether the sentence below expresses a positive or a negative sentiment.\n\nSentence: {sentence}\n{options_}"
FIELDS = {"sentence": "The acting is clumsy and predictable.", "options_": options_text(["negative", "positive"]),
          "answer": "negative"}


def _unit(i=0, template=TEMPLATE):
    rec = {"id": f"w{i}", "task": "sst2", "instruction": render(template, FIELDS), "input": "", "output": "negative",
           "fields": dict(FIELDS)}
    return make_unit(rec, protect=["positive", "negative"])


def test_setup_copies_the_debian_database_for_nltk(wordnet, tmp_path):
    assert wordnet.get_version() == "3.0"
    assert {l.name() for s in wordnet.synsets("choose", "v") for l in s.lemmas()} >= {"select", "pick_out"}
    assert ensure_wordnet() is wordnet  # cached per process
    with pytest.raises(CoinError, match="install the Debian packages wordnet-base wordnet-sense-index"):
        check_wordnet(str(tmp_path))
    with pytest.raises(CoinError, match="wordnet-base"):
        WordNetBackend(wordnet_dir=str(tmp_path / "missing"))


def test_replaces_only_instruction_words(wordnet):
    backend = WordNetBackend(num_candidates=6, rate=0.5, seed=1)
    unit = _unit()
    (cands,) = backend.propose([unit], chunk_index=0)
    assert len(cands) == 6
    changed = set()
    for cand in cands:
        assert placeholders(cand.core) == placeholders(TEMPLATE)  # placeholders untouched
        assert cand.core.endswith("\n\nSentence: {sentence}\n{options_}")  # input label and layout untouched
        assert "positive" in cand.core and "negative" in cand.core  # label words protected
        assert cand.text == render(cand.core, FIELDS) and FIELDS["sentence"] in cand.text
        changed |= set(cand.core.split()) - set(TEMPLATE.split())
    assert changed  # something was replaced
    assert not changed & {"Sentence:", "{sentence}", "OPTIONS:"}
    assert set(backend.synonyms("determine", "verb")) == {"find", "ascertain"}
    assert backend.synonyms("check", "verb") != backend.synonyms("check")  # imperative, not the bank cheque
    assert backend.synonyms("expresses") == ()  # inflected: replacing it would lose the inflection


def test_deterministic_per_record_and_seed(wordnet):
    a = WordNetBackend(num_candidates=4, seed=7).propose([_unit(1), _unit(2)], 0)
    b = WordNetBackend(num_candidates=4, seed=7).propose([_unit(2)], 5)  # another chunk, other neighbours
    assert [c.core for c in a[1]] == [c.core for c in b[0]]
    c = WordNetBackend(num_candidates=4, seed=8).propose([_unit(1)], 0)
    assert [x.core for x in a[0]] != [x.core for x in c[0]]


def test_capitalisation_is_kept(wordnet):
    backend = WordNetBackend(num_candidates=8, rate=1.0, seed=0)
    (cands,) = backend.propose([_unit(template="Decide whether this sentence is positive or negative.\n{sentence}\n{options_}")], 0)
    assert all(c.core[0].isupper() for c in cands)


def test_wordnet_augment_end_to_end(wordnet, similarity, demo_dir, tmp_path):
    argv = ["augment", os.path.join(demo_dir, "train.jsonl"), "--backend", "wordnet", "--templates",
            os.path.join(demo_dir, "templates.json"), "--chunk-size", "32", "--no-progress", "--seed", "3",
            "--num-candidates", "2"]
    assert coin(argv + ["--out-dir", str(tmp_path / "s"), "--output", str(tmp_path / "w.jsonl")]) == 0
    out = read_jsonl(tmp_path / "w.jsonl")
    summary = json.loads((tmp_path / "w.summary.json").read_text())
    t = summary["counts"]["totals"]
    assert len(out) == t["records_out"] >= 48 and t["records_in"] == 96
    assert t["candidates"] == t["kept"] + t.get("surplus", 0) + sum(v for k, v in t.items() if k.startswith("dropped."))
    for rec in out:
        (p,) = rec["paraphrases"]
        assert p != rec["instruction"]
        for name, value in rec["fields"].items():
            if name != "answer":
                assert value in p
    # sharded == one process, for this backend too (without the similarity filter, to stay quick)
    fast = argv + ["--similarity-model", "none"]
    assert coin(fast + ["--out-dir", str(tmp_path / "one"), "--output", str(tmp_path / "w1.jsonl")]) == 0
    for i in range(2):
        assert coin(fast + ["--out-dir", str(tmp_path / "two"), "--shard", f"{i}/2"]) == 0
    assert coin(["augment", "--merge", str(tmp_path / "two"), "--output", str(tmp_path / "w2.jsonl")]) == 0
    assert (tmp_path / "w2.jsonl").read_bytes() == (tmp_path / "w1.jsonl").read_bytes()
    assert len(read_jsonl(tmp_path / "w1.jsonl")) >= len(out)
