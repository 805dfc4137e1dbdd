"""Loaders: every task in every local format (HF JSONL/Parquet, GLUE TSV), the fixed seeded
subset, the `--data` layout, and clear errors for bad or empty data."""
import os

import pytest

from coin.eval.loaders import DataError, candidate_paths, load_task_data, save_examples, select_subset
from coin.eval.tasks import GLUE_TASKS, get_task

from eval_fixtures import make_rows, write_glue_tsv, write_jsonl, write_parquet

FORMATS = {
    "jsonl": lambda task, root, rows: write_jsonl(os.path.join(root, task, f"{get_task(task).split}.jsonl"), rows),
    "parquet": lambda task, root, rows: write_parquet(os.path.join(root, task, f"{get_task(task).split}.parquet"), rows),
    "tsv": lambda task, root, rows: write_glue_tsv(
        task, os.path.join(root, get_task(task).glue_dirs[0], get_task(task).tsv_file), rows),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("task", GLUE_TASKS)
def test_every_task_loads_from_every_format(tmp_path, task, fmt):
    spec = get_task(task)
    rows = make_rows(task, 7)
    path = FORMATS[fmt](task, str(tmp_path), rows)
    data = load_task_data(spec, str(tmp_path), n_examples=0)
    assert data.source == path and data.total == 7
    assert [e["label"] for e in data.examples] == [r["label"] for r in rows]
    for e, r in zip(data.examples, rows):
        assert {c: e[c] for c in spec.columns} == {c: r[c] for c in spec.columns}


def test_shared_layout_and_mnli_joins_matched_and_mismatched(glue_dir):
    root, rows = glue_dir
    for task in GLUE_TASKS:
        data = load_task_data(get_task(task), root, n_examples=0)
        assert data.labels == [r["label"] for r in rows[task]], task
    both = load_task_data(get_task("mnli"), root, n_examples=0)
    assert both.total == 20 and len(set(both.ids)) == 20
    assert both.labels == [r["label"] for r in rows["mnli_matched"] + rows["mnli_mismatched"]]


def test_subset_is_fixed_seeded_and_sorted(glue_dir):
    root, _ = glue_dir
    spec = get_task("sst2")
    a = load_task_data(spec, root, n_examples=4, seed=1)
    b = load_task_data(spec, root, n_examples=4, seed=1)
    assert a.ids == b.ids and a.examples == b.examples and len(a) == 4
    assert [int(i) for i in a.ids] == sorted(int(i) for i in a.ids)
    assert select_subset(1000, 300, 1) == select_subset(1000, 300, 1)
    assert select_subset(1000, 300, 1) != select_subset(1000, 300, 2)
    assert select_subset(5, 300, 1) == list(range(5))


def test_save_examples_round_trip(tmp_path):
    spec = get_task("wnli")
    path = save_examples(spec, [{"sentence1": "a", "sentence2": "b", "label": "entailment"},
                                {"sentence1": "c", "sentence2": "d", "label": 0}], str(tmp_path))
    assert path.endswith(os.path.join("wnli", "validation.jsonl"))
    assert load_task_data(spec, str(tmp_path)).labels == [1, 0]


def test_bad_data_is_a_clear_error(tmp_path):
    spec = get_task("sst2")
    root = str(tmp_path)
    with pytest.raises(DataError, match="no file for task 'sst2'.*sst2/validation.jsonl.*SST-2/dev.tsv"):
        load_task_data(spec, root)
    with pytest.raises(DataError, match="does not exist"):
        load_task_data(spec, os.path.join(root, "nope"))
    path = write_jsonl(os.path.join(root, "sst2", "validation.jsonl"), [])
    with pytest.raises(DataError, match="validation.jsonl: no labelled examples for task 'sst2' \\(an empty dataset\\)"):
        load_task_data(spec, root)
    write_jsonl(path, [{"sentence": "fine", "label": 1}, {"text": "no sentence", "label": 0}])
    with pytest.raises(DataError, match="validation.jsonl: line 2: missing column 'sentence'"):
        load_task_data(spec, root)
    write_jsonl(path, [{"sentence": "fine", "label": 7}])
    with pytest.raises(DataError, match="line 1: label 7: expected an id in 0..1"):
        load_task_data(spec, root)
    write_jsonl(path, [{"sentence": "unlabelled test split", "label": -1}])
    with pytest.raises(DataError, match="empty dataset"):
        load_task_data(spec, root)
    tsv = os.path.join(root, "MRPC", "dev.tsv")
    os.makedirs(os.path.dirname(tsv))
    with open(tsv, "w") as f:
        f.write("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t2\n")
    with pytest.raises(DataError, match="dev.tsv: line 2: expected at least 5 tab-separated fields"):
        load_task_data(get_task("mrpc"), root)
    assert os.path.join(root, "SST-2", "dev.tsv") in candidate_paths(spec, root)


def test_saved_combined_mnli_reads_back(tmp_path):
    """save_examples writes the combined `mnli` task as one file; load_task_data reads that file."""
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": w}
            for i, w in enumerate(["entailment", "neutral", "contradiction"])]
    save_examples(get_task("mnli"), rows, str(tmp_path))
    data = load_task_data(get_task("mnli"), str(tmp_path), n_examples=0)
    assert data.labels == [0, 1, 2] and data.total == 3


# ----------------------------------------------------------------------------- files as users have them


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _q(text):  # a CSV field as csv.writer quotes it
    return '"' + text.replace('"', '""') + '"'


SST2 = [("A fine, moving film.", 1), ("Dull and \"far\" too long.", 0), ("I loved every minute", 1)]
COLA = [("The cat sat on the mat.", 1), ("Mat the on sat cat the.", 0), ("She reads books.", 1)]


@pytest.mark.parametrize("folder,name,lines,want", [
    # headerless two-column TSVs in either column order, in the folder spellings found in the wild
    ("SST2", "dev.tsv", [f"{y}\t{x}" for x, y in SST2], "label = column 0, sentence = column 1"),
    ("sst-2", "validation.tsv", [f"{x}\t{y}" for x, y in SST2], "sentence = column 0, label = column 1"),
    ("Sst_2", "Dev.TSV", [f"{x}\t{['negative', 'positive'][y]}" for x, y in SST2], "label = column 1"),
    # CSVs: quoted fields, a header of other names (skipped, recorded), or the HF column names
    ("sst2", "dev.csv", ["review,stars"] + [f"{_q(x)},{y}" for x, y in SST2], "header skipped"),
    ("sst2", "validation.csv", ["label,sentence"] + [f"{y},{_q(x)}" for x, y in SST2], ""),  # GLUE's names
])
def test_sst2_files_as_users_have_them(tmp_path, folder, name, lines, want):
    _write(os.path.join(tmp_path, folder, name), lines)
    data = load_task_data(get_task("sst2"), str(tmp_path), n_examples=0)
    assert [(e["sentence"], e["label"]) for e in data.examples] == [(" ".join(x.split()), y) for x, y in SST2]
    assert data.source.startswith(os.path.join(str(tmp_path), folder, name)) and want in data.source


def test_headerless_cola_and_pair_tasks(tmp_path):
    _write(os.path.join(tmp_path, "CoLA", "dev.tsv"), [f"{x}\t{y}" for x, y in COLA])  # not GLUE's 4 columns
    assert [(e["sentence"], e["label"]) for e in load_task_data(get_task("cola"), str(tmp_path)).examples] == COLA
    rows = [("A man sleeps.", "Nobody sleeps.", "not_entailment"), ("It rains.", "It is wet.", "entailment")]
    _write(os.path.join(tmp_path, "RTE", "dev.tsv"), [f"{lab}\t{a}\t{b}" for a, b, lab in rows])
    data = load_task_data(get_task("rte"), str(tmp_path))  # label detected; the inputs in file order
    assert [(e["sentence1"], e["sentence2"], e["label"]) for e in data.examples] == [
        ("A man sleeps.", "Nobody sleeps.", 1), ("It rains.", "It is wet.", 0)]


def test_column_mapping_from_the_command_line(tmp_path):
    from coin.eval.loaders import column_mappings

    spec = get_task("sst2")
    # both columns hold only 0/1: the label column cannot be told, the error shows what was found
    path = _write(os.path.join(tmp_path, "sst2", "dev.tsv"), ["0\t1", "1\t1", "1\t0"])
    with pytest.raises(DataError, match=r"dev.tsv: cannot tell the columns for task 'sst2' \(it needs sentence and a "
                                        r"label column.*found 2 tab-separated columns, columns 0, 1 all holding only "
                                        r"labels; first lines: '0\\t1' \| '1\\t1'; name them with --columns "
                                        r"sst2=label:0,sentence:1"):
        load_task_data(spec, str(tmp_path))
    (mapping,) = column_mappings(["sst2=sentence:0,label:1"]).values()
    data = load_task_data(spec, str(tmp_path), columns=mapping)
    assert [(e["sentence"], e["label"]) for e in data.examples] == [("0", 1), ("1", 1), ("1", 0)]
    assert "--columns: sentence = column 0, label = column 1" in data.source
    os.remove(path)
    write_jsonl(os.path.join(tmp_path, "sst2", "validation.jsonl"), [{"text": "good", "polarity": "positive"}])
    data = load_task_data(spec, str(tmp_path), columns={"sentence": "text", "label": "polarity"})
    assert data.examples[0]["sentence"] == "good" and data.labels == [1]
    with pytest.raises(DataError, match="--columns sst2: expected exactly the fields sentence, label; missing: label"):
        load_task_data(spec, str(tmp_path), columns={"sentence": "text"})
    with pytest.raises(DataError, match=r"--columns label:stars: no key 'stars' \(keys: text, polarity\)"):
        load_task_data(spec, str(tmp_path), columns={"sentence": "text", "label": "stars"})
    with pytest.raises(DataError, match="--columns: expected TASK=FIELD:COLUMN"):
        column_mappings(["sst2"])


def test_a_file_of_another_shape_shows_what_it_holds(tmp_path):
    _write(os.path.join(tmp_path, "SST-2", "dev.tsv"), ["id\tsentence\tscore", "1\tGood.\t0.9", "2\tBad.\t0.1"])
    with pytest.raises(DataError, match=r"found 3 tab-separated columns, no column holding only labels; first lines: "
                                        r"'id\\tsentence\\tscore' \| '1\\tGood.\\t0.9'"):
        load_task_data(get_task("sst2"), str(tmp_path))
