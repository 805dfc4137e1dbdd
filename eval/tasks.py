"""Task specifications: what an evaluation task's examples look like and how they are answered.

A `TaskSpec` says, for one classification task,

* where its examples come from (the Hugging Face `glue` config and split, and the GLUE TSV file
  with its columns), which columns make the input and how they are shown to the model
  (`format_input`: `Sentence 1: ... Sentence 2: ...`, the PromptBench/CoIN input formats of
  ../shared/docs/METHOD.md), and
* its label words, indexed by label id (`label_words[i]` is the answer for label `i`).

The nine GLUE tasks of the paper are built in (`GLUE_TASKS`, what `--tasks all` means), and
`mnli` (matched + mismatched together, the reference harness's and the demo data's name). Adding a task is one call,
`register_task(TaskSpec(...))`, or a JSON file of spec dicts given to `coin eval --task-file`
(`load_task_file`); see docs/eval.md.

Instructions reference the input through placeholders: `{content}` (the formatted input), a
column name such as `{sentence1}` or a FLAN alias such as `{premise}` (the raw column), and
`{options_}` (FLAN's option list built from the label words). An instruction without any input
placeholder gets the formatted input appended on a new line (`render_prompt`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from coin.data_tools.schema import INPUT_SEPARATOR
from coin.errors import CoinError, read_json


class TaskError(CoinError):
    """An unknown task, a malformed task spec or an instruction that does not fit its task."""


# The seven attack types of PromptBench and the perturbation level each belongs to.
LEVELS: tuple[str, ...] = ("clean", "character", "word", "sentence", "semantic")
ATTACK_LEVEL: dict[str, str] = {
    "clean": "clean",
    "textbugger": "character",
    "deepwordbug": "character",
    "textfooler": "word",
    "bertattack": "word",
    "checklist": "sentence",
    "stresstest": "sentence",
    "semantic": "semantic",
}
ATTACKS: tuple[str, ...] = tuple(a for a in ATTACK_LEVEL if a != "clean")

PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CONTENT = "content"
OPTIONS = "options_"


@dataclass(frozen=True)
class TaskSpec:
    """One classification task.

    name           the task's name (`sst2`, `mnli_matched`, ...)
    columns        input columns, in display order (HF `glue` column names)
    display        how each column is introduced in the formatted input (`Sentence 1`)
    label_words    the answer word of each label id, `label_words[id]`
    glue_config    the Hugging Face `glue` config (`mnli` for both MNLI tasks); "" if none
    split          the split to evaluate (`validation`, `validation_matched`, ...); `a+b` concatenates
    tsv_file       the GLUE TSV file name (`dev.tsv`, `dev_matched.tsv`; `a+b` as split); "" if none
    tsv_header     whether the TSV has a header row
    tsv_columns    input column -> TSV column (a header name, or an index when no header)
    tsv_label      the TSV label column (name or index); values are ids or label words
    glue_dirs      directory names the GLUE download script uses (`SST-2`), for --data
    promptbench    the dataset name in PromptBench's prompt files (`mnli` for both MNLI tasks)
    aliases        extra placeholder names for columns (FLAN's `{premise}` for RTE's sentence1)
    """

    name: str
    columns: tuple[str, ...]
    display: tuple[str, ...]
    label_words: tuple[str, ...]
    glue_config: str = ""
    split: str = "validation"
    tsv_file: str = ""
    tsv_header: bool = True
    tsv_columns: Mapping[str, Any] = field(default_factory=dict)
    tsv_label: Any = "label"
    glue_dirs: tuple[str, ...] = ()
    promptbench: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise TaskError(f"task spec: name {self.name!r}: expected letters, digits, '_', '.', '-'")
        if not self.columns:
            raise TaskError(f"task spec '{self.name}': columns: expected at least one input column")
        if len(self.display) != len(self.columns):
            raise TaskError(f"task spec '{self.name}': display: expected {len(self.columns)} names, one per column")
        if len(self.label_words) < 2:
            raise TaskError(f"task spec '{self.name}': label_words: expected at least two label words")
        words = [w.strip().lower() for w in self.label_words]
        if any(not w for w in words) or len(set(words)) != len(words):
            raise TaskError(f"task spec '{self.name}': label_words {list(self.label_words)}: expected distinct non-empty words")
        for col in self.columns:
            if not PLACEHOLDER_RE.fullmatch("{" + col + "}"):
                raise TaskError(f"task spec '{self.name}': column {col!r}: expected an identifier")

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def format_input(self, example: Mapping[str, Any]) -> str:
        """The input as the model sees it: `Display 1: value Display 2: value` (METHOD.md)."""
        return " ".join(f"{d}: {_clean_field(example[c])}" for c, d in zip(self.columns, self.display))

    def options_text(self) -> str:
        """FLAN's `{options_}` rendering of the label words."""
        return "OPTIONS:\n" + "\n".join(f"- {w}" for w in self.label_words)

    def placeholder_names(self) -> set[str]:
        return {CONTENT, OPTIONS, *self.columns, *self.aliases}

    def with_label_words(self, words: Sequence[str]) -> "TaskSpec":
        if len(words) != self.num_labels:
            raise TaskError(
                f"--label-words {self.name}: expected {self.num_labels} words (one per label id), got {len(words)}"
            )
        return dataclasses.replace(self, label_words=tuple(words))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tsv_columns"] = dict(self.tsv_columns)
        d["aliases"] = dict(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "task spec") -> "TaskSpec":
        if not isinstance(d, Mapping):
            raise TaskError(f"{where}: expected an object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TaskError(f"{where}: unknown key(s) {unknown} (expected some of {sorted(names)})")
        for key in ("name", "columns", "display", "label_words"):
            if key not in d:
                raise TaskError(f"{where}: missing key '{key}'")
        kw = dict(d)
        for key in ("columns", "display", "label_words", "glue_dirs"):
            if key in kw:
                if not isinstance(kw[key], (list, tuple)) or not all(isinstance(x, str) for x in kw[key]):
                    raise TaskError(f"{where}: {key}: expected a list of strings")
                kw[key] = tuple(kw[key])
        for key in ("tsv_columns", "aliases"):
            if key in kw and not isinstance(kw[key], Mapping):
                raise TaskError(f"{where}: {key}: expected an object")
        return cls(**kw)


def _clean_field(value: Any) -> str:
    return " ".join(str(value).split())


def _glue(name, columns, display, labels, *, config=None, split="validation", tsv="dev.tsv", header=True,
          tsv_columns=None, tsv_label="label", dirs=(), promptbench=None, aliases=None) -> TaskSpec:
    return TaskSpec(
        name=name, columns=tuple(columns), display=tuple(display), label_words=tuple(labels),
        glue_config=config or name, split=split, tsv_file=tsv, tsv_header=header,
        tsv_columns=tsv_columns or {c: c for c in columns}, tsv_label=tsv_label, glue_dirs=tuple(dirs),
        promptbench=promptbench or name, aliases=aliases or {},
    )


# Label ids follow the HF `glue` dataset; label words follow METHOD.md (PromptBench's LABEL_SET).
_BUILTIN = [
    _glue("sst2", ["sentence"], ["Sentence"], ["negative", "positive"], dirs=("SST-2",)),
    # CoLA's dev.tsv has no header: source, label, original label, sentence.
    _glue("cola", ["sentence"], ["Sentence"], ["unacceptable", "acceptable"], header=False,
          tsv_columns={"sentence": 3}, tsv_label=1, dirs=("CoLA",)),
    _glue("qqp", ["question1", "question2"], ["Question 1", "Question 2"], ["not_equivalent", "equivalent"],
          tsv_label="is_duplicate", dirs=("QQP",)),
    _glue("mrpc", ["sentence1", "sentence2"], ["Sentence 1", "Sentence 2"], ["not_equivalent", "equivalent"],
          tsv_columns={"sentence1": "#1 String", "sentence2": "#2 String"}, tsv_label="Quality", dirs=("MRPC",)),
    _glue("mnli_matched", ["premise", "hypothesis"], ["Premise", "Hypothesis"],
          ["entailment", "neutral", "contradiction"], config="mnli", split="validation_matched",
          tsv="dev_matched.tsv", tsv_columns={"premise": "sentence1", "hypothesis": "sentence2"},
          tsv_label="gold_label", dirs=("MNLI",), promptbench="mnli"),
    _glue("mnli_mismatched", ["premise", "hypothesis"], ["Premise", "Hypothesis"],
          ["entailment", "neutral", "contradiction"], config="mnli", split="validation_mismatched",
          tsv="dev_mismatched.tsv", tsv_columns={"premise": "sentence1", "hypothesis": "sentence2"},
          tsv_label="gold_label", dirs=("MNLI",), promptbench="mnli"),
    _glue("qnli", ["question", "sentence"], ["Question", "Context"], ["entailment", "not_entailment"], dirs=("QNLI",)),
    _glue("rte", ["sentence1", "sentence2"], ["Sentence 1", "Sentence 2"], ["entailment", "not_entailment"],
          dirs=("RTE",), aliases={"premise": "sentence1", "hypothesis": "sentence2"}),
    # WNLI: label 1 is entailment (HF glue and METHOD.md).
    _glue("wnli", ["sentence1", "sentence2"], ["Sentence 1", "Sentence 2"], ["not_entailment", "entailment"],
          dirs=("WNLI",)),
]

GLUE_TASKS: tuple[str, ...] = tuple(t.name for t in _BUILTIN)
# `mnli`: both validation sets together (the reference harness's "mnli"; the demo data's task name).
_BUILTIN.append(_glue("mnli", ["premise", "hypothesis"], ["Premise", "Hypothesis"],
                      ["entailment", "neutral", "contradiction"], split="validation_matched+validation_mismatched",
                      tsv="dev_matched.tsv+dev_mismatched.tsv",
                      tsv_columns={"premise": "sentence1", "hypothesis": "sentence2"}, tsv_label="gold_label",
                      dirs=("MNLI",)))
TASKS: dict[str, TaskSpec] = {t.name: t for t in _BUILTIN}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry (`replace=True` to override an existing one)."""
    if spec.name in TASKS and not replace and TASKS[spec.name] != spec:
        raise TaskError(f"task '{spec.name}' is already registered (pass replace=True to override it)")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        near = [t for t in TASKS if norm_key(t) == norm_key(name)]
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise TaskError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))}){hint}") from None


# ----------------------------------------------------------------------------- names in users' files


def norm_key(name: str) -> str:
    """A task or attack name as users spell it, reduced for matching: `SST-2`, `sst_2` -> `sst2`."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# GLUE leaderboard short forms of the two MNLI sets.
_SHORT = {"mnli_matched": ("mnli-m",), "mnli_mismatched": ("mnli-mm",)}


def key_rank(key: str, spec: TaskSpec) -> int | None:
    """How well a key of a user's file names task `spec`: 0 the exact name, 1 another spelling of
    it (`SST-2`, `sst_2`, `MNLI-m`), 2 its family (`mnli` for mnli_matched and mnli_mismatched: the
    GLUE config, the PromptBench dataset, the GLUE folder); None: another task."""
    if key == spec.name:
        return 0
    k = norm_key(key)
    if k in {norm_key(spec.name), *map(norm_key, _SHORT.get(spec.name, ()))}:
        return 1
    if k in {norm_key(n) for n in (spec.glue_config, spec.promptbench, *spec.glue_dirs) if n}:
        return 2
    return None


def match_task_keys(keys: Sequence[str], specs: Mapping[str, TaskSpec], where: str) -> tuple[dict[str, str], list[str]]:
    """({task: the key of `keys` that serves it}, [keys that name no registered task]).

    Per task the best-ranked key wins (`key_rank`): an exact name before another spelling before
    the family, so a file with `mnli` serves both MNLI sets and one with `mnli_matched` too uses
    that for the matched set. Two keys of the same rank for one task are an error naming both."""
    served: dict[str, str] = {}
    for name, spec in specs.items():
        ranked = sorted((r, k) for k in keys if (r := key_rank(k, spec)) is not None)
        if not ranked:
            continue
        if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:
            raise TaskError(f"{where}: keys '{ranked[0][1]}' and '{ranked[1][1]}' both name task '{name}'")
        served[name] = ranked[0][1]
    unknown = [k for k in keys if all(key_rank(k, s) is None for s in TASKS.values())]
    return served, unknown


def parse_tasks(text: str) -> list[TaskSpec]:
    """`sst2,cola` or `all` (the nine GLUE tasks) -> specs; unknown names raise TaskError."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise TaskError("--tasks: expected a comma-separated list of task names or 'all'")
    if names == ["all"]:
        names = list(GLUE_TASKS)
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return [get_task(n) for n in seen]


def load_task_file(path: str) -> list[TaskSpec]:
    """Register the task specs of a JSON file: a list of spec objects (or one object)."""
    data = read_json(path, TaskError, what="--task-file:")
    items = data if isinstance(data, list) else [data]
    return [register_task(TaskSpec.from_dict(d, f"{path}: task spec #{i}"), replace=True) for i, d in enumerate(items)]


def label_word_overrides(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`--label-words sst2=bad,good` -> {"sst2": ("bad", "good")}."""
    from coin.cli import assignments

    pairs = assignments(items, "--label-words", "TASK=word0,word1,...", error=TaskError)
    return {task: tuple(w.strip() for w in words.split(",")) for task, words in pairs.items()}


# ----------------------------------------------------------------------------- prompts


def placeholders(text: str) -> list[str]:
    return PLACEHOLDER_RE.findall(text)


def check_instruction(spec: TaskSpec, text: str, where: str) -> None:
    """Raise TaskError when `text` is not a usable instruction for `spec`."""
    if not isinstance(text, str) or not text.strip():
        raise TaskError(f"{where}: expected a non-empty instruction string, got {text!r}")
    unknown = sorted(set(placeholders(text)) - spec.placeholder_names())
    if unknown:
        raise TaskError(
            f"{where}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} for task '{spec.name}' "
            f"(expected some of {', '.join('{' + p + '}' for p in sorted(spec.placeholder_names()))})"
        )


def render_prompt(spec: TaskSpec, instruction: str, example: Mapping[str, Any]) -> str:
    """The instruction with its input: the `prompt` given to data_tools.prompt.PromptFormat.

    Placeholders are filled (`{content}`, columns, aliases, `{options_}`); without any input
    placeholder the formatted input follows the instruction after a blank line, as training joins
    a record's instruction and input (data_tools.schema.INPUT_SEPARATOR: no train/eval mismatch).
    """
    names = set(placeholders(instruction))
    inputs = {CONTENT, *spec.columns, *spec.aliases}
    out = instruction
    if CONTENT in names:
        out = out.replace("{content}", spec.format_input(example))
    for col in spec.columns:
        if col in names:
            out = out.replace("{" + col + "}", _clean_field(example[col]))
    for alias, col in spec.aliases.items():
        if alias in names:
            out = out.replace("{" + alias + "}", _clean_field(example[col]))
    if OPTIONS in names:
        out = out.replace("{options_}", spec.options_text())
    if not names & inputs:
        out = out.rstrip() + INPUT_SEPARATOR + spec.format_input(example)
    return out


# ----------------------------------------------------------------------------- built-in instructions

# Six clean instructions per task family, <0>, <1>, <2> standing for the label words: worded for
# this project (not PromptBench's pools, not FLAN's templates), so that they are unseen in training.
_FAMILY = {
    "sst2": "sentiment", "cola": "grammar", "qqp": "paraphrase", "mrpc": "paraphrase",
    "mnli_matched": "nli3", "mnli_mismatched": "nli3", "mnli": "nli3", "qnli": "qnli", "rte": "nli2", "wnli": "nli2",
}

_CLEAN = {
    "sentiment": [
        "Decide whether the sentiment of the following sentence is '<1>' or '<0>'.",
        "Read the sentence and label the feeling it expresses as '<1>' or '<0>'.",
        "Is the opinion in this sentence '<1>' or '<0>'? Answer with one word.",
        "As a sentiment classifier, tag the following sentence as '<1>' or '<0>'.",
        "Judge the attitude of the writer of this sentence and reply '<1>' or '<0>'.",
        "Classify the emotional tone of the given text: '<1>' or '<0>'.",
    ],
    "grammar": [
        "Decide whether the following sentence is grammatically '<1>' or '<0>'.",
        "Check the grammar of this sentence and answer '<1>' or '<0>'.",
        "Would a linguist call the sentence below '<1>' or '<0>'? Answer with one word.",
        "As a grammar checker, label the following sentence as '<1>' or '<0>'.",
        "Judge whether this sentence is well formed English and reply '<1>' or '<0>'.",
        "Classify the linguistic acceptability of the given sentence: '<1>' or '<0>'.",
    ],
    "paraphrase": [
        "Decide whether the two texts below mean the same thing and answer '<1>' or '<0>'.",
        "Do these two texts express the same meaning? Reply with '<1>' or '<0>'.",
        "Compare the meaning of the following pair and label it '<1>' or '<0>'.",
        "As a paraphrase detector, classify the pair below as '<1>' or '<0>'.",
        "Judge whether the second text restates the first and reply '<1>' or '<0>'.",
        "Tell whether the given texts are paraphrases of each other: '<1>' or '<0>'.",
    ],
    "nli3": [
        "Decide whether the premise supports the hypothesis and answer '<0>', '<1>' or '<2>'.",
        "Read the premise and the hypothesis, then reply with '<0>', '<1>' or '<2>'.",
        "What is the relation between the two statements below: '<0>', '<1>' or '<2>'?",
        "As an inference classifier, label the pair as '<0>', '<1>' or '<2>'.",
        "Judge whether the hypothesis follows from the premise and answer '<0>', '<1>' or '<2>'.",
        "Classify the logical relation of the given sentences as '<0>', '<1>' or '<2>'.",
    ],
    "qnli": [
        "Decide whether the context answers the question and reply '<0>' or '<1>'.",
        "Does the context contain the answer to the question? Answer '<0>' or '<1>'.",
        "Read the question and the context, then label the pair '<0>' or '<1>'.",
        "As a question answering judge, classify the pair below as '<0>' or '<1>'.",
        "Judge whether the context sentence resolves the question and reply '<0>' or '<1>'.",
        "Tell whether the given context entails an answer to the question: '<0>' or '<1>'.",
    ],
    "nli2": [
        "Decide whether the first sentence implies the second and answer '<entailment>' or '<not_entailment>'.",
        "Does the second sentence follow from the first? Reply with '<entailment>' or '<not_entailment>'.",
        "Read the two sentences and label their relation '<entailment>' or '<not_entailment>'.",
        "As an entailment classifier, tag the pair below as '<entailment>' or '<not_entailment>'.",
        "Judge whether the first sentence supports the second and reply '<entailment>' or '<not_entailment>'.",
        "Classify the relation of the given sentences as '<entailment>' or '<not_entailment>'.",
    ],
    "generic": [
        "Read the input and answer with one of: <labels>.",
        "Classify the following input. Reply with one of <labels>.",
        "Choose the right label for the input below: <labels>.",
        "As a classifier, label the input with one of <labels>.",
        "Decide which of <labels> fits the following input.",
        "Answer with a single word from <labels> for the input below.",
    ],
}

# Paraphrases in the style of PromptBench's back-translations, for the template-based semantic
# attack: the same request, worded differently. Eight per family so six instructions get distinct ones.
_SEMANTIC = {
    "sentiment": [
        "Please determine if the feeling of this sentence is '<1>' or '<0>'.",
        "Tell me whether the statement below sounds '<1>' or '<0>'.",
        "Identify the mood of the sentence and respond '<1>' or '<0>'.",
        "Evaluate the following sentence and say if it is '<1>' or '<0>'.",
        "Please sort the sentence into '<1>' or '<0>' according to its sentiment.",
        "Find out whether the text conveys a '<1>' or a '<0>' impression.",
        "Analyse the sentiment here and give '<1>' or '<0>' as your answer.",
        "Indicate if the sentence below is '<1>' or '<0>' in tone.",
    ],
    "grammar": [
        "Please determine if this sentence is '<1>' or '<0>' in grammar.",
        "Tell me whether the sentence below is '<1>' or '<0>' grammatically.",
        "Evaluate the grammatical correctness of the sentence and respond '<1>' or '<0>'.",
        "Please sort the sentence into '<1>' or '<0>' according to its grammar.",
        "Find out whether the sentence follows the rules of grammar: '<1>' or '<0>'.",
        "Analyse the structure of the sentence and give '<1>' or '<0>' as your answer.",
        "Indicate if the following sentence is '<1>' or '<0>' as English.",
        "Review the grammar of the sentence and mark it '<1>' or '<0>'.",
    ],
    "paraphrase": [
        "Please determine if the two sentences have the same meaning: '<1>' or '<0>'.",
        "Tell me whether the pair below is '<1>' or '<0>' in meaning.",
        "Evaluate whether the texts say the same thing and respond '<1>' or '<0>'.",
        "Please sort the pair into '<1>' or '<0>' according to their meaning.",
        "Find out whether both sentences convey one idea: '<1>' or '<0>'.",
        "Analyse the two texts and give '<1>' or '<0>' as your answer.",
        "Indicate if the following sentences are '<1>' or '<0>'.",
        "Review the meaning of both texts and mark them '<1>' or '<0>'.",
    ],
    "nli3": [
        "Please determine the relationship of the sentences: '<0>', '<1>' or '<2>'.",
        "Tell me whether the pair below shows '<0>', '<1>' or '<2>'.",
        "Evaluate how the hypothesis relates to the premise and respond '<0>', '<1>' or '<2>'.",
        "Please sort the pair into '<0>', '<1>' or '<2>' according to their relation.",
        "Find out whether the premise leads to the hypothesis: '<0>', '<1>' or '<2>'.",
        "Analyse the two statements and give '<0>', '<1>' or '<2>' as your answer.",
        "Indicate if the following sentences are '<0>', '<1>' or '<2>'.",
        "Review the connection between the statements and mark it '<0>', '<1>' or '<2>'.",
    ],
    "qnli": [
        "Please determine if the context answers the question: '<0>' or '<1>'.",
        "Tell me whether the context below settles the question, '<0>' or '<1>'.",
        "Evaluate whether the answer can be found in the context and respond '<0>' or '<1>'.",
        "Please sort the pair into '<0>' or '<1>' according to whether the question is answered.",
        "Find out whether the sentence gives the answer to the question: '<0>' or '<1>'.",
        "Analyse the question and the context and give '<0>' or '<1>' as your answer.",
        "Indicate if the following context answers the question, '<0>' or '<1>'.",
        "Review the context against the question and mark it '<0>' or '<1>'.",
    ],
    "nli2": [
        "Please determine if the sentences show '<entailment>' or '<not_entailment>'.",
        "Tell me whether the pair below is '<entailment>' or '<not_entailment>'.",
        "Evaluate whether the second sentence follows and respond '<entailment>' or '<not_entailment>'.",
        "Please sort the pair into '<entailment>' or '<not_entailment>' according to their relation.",
        "Find out whether the first sentence leads to the second: '<entailment>' or '<not_entailment>'.",
        "Analyse the two sentences and give '<entailment>' or '<not_entailment>' as your answer.",
        "Indicate if the following sentences are '<entailment>' or '<not_entailment>'.",
        "Review the connection between the sentences and mark it '<entailment>' or '<not_entailment>'.",
    ],
    "generic": [
        "Please give the label of the input, one of <labels>.",
        "Tell me which of <labels> describes the following input.",
        "Evaluate the input and respond with one of <labels>.",
        "Please sort the input into one of <labels>.",
        "Find out which label fits the input best: <labels>.",
        "Analyse the input below and give one of <labels> as your answer.",
        "Indicate the right category for the input: <labels>.",
        "Review the input and mark it with one of <labels>.",
    ],
}


def _fill(template: str, spec: TaskSpec) -> str:
    words = spec.label_words
    out = template.replace("<labels>", ", ".join(f"'{w}'" for w in words))
    # nli2 templates name the words by meaning, so that WNLI (entailment = id 1) reads naturally.
    by_meaning = {w.lower(): w for w in words}
    for key in ("not_entailment", "entailment"):
        if f"<{key}>" in out:
            out = out.replace(f"<{key}>", by_meaning.get(key, words[0 if key == "entailment" else 1]))
    for i, w in enumerate(words):
        out = out.replace(f"<{i}>", w)
    return out


def _family(spec: TaskSpec) -> str:
    fam = _FAMILY.get(spec.name, "generic")
    if fam == "nli2" and {w.lower() for w in spec.label_words} != {"entailment", "not_entailment"}:
        return "generic"
    needed = 3 if fam == "nli3" else 2
    if fam != "nli2" and fam != "generic" and spec.num_labels != needed:
        return "generic"
    return fam


def default_instructions(spec: TaskSpec) -> list[str]:
    """The six built-in clean instructions of a task, with the spec's label words."""
    return [_fill(t, spec) for t in _CLEAN[_family(spec)]]


def semantic_pool(spec: TaskSpec) -> list[str]:
    """Paraphrased task instructions for the template-based semantic attack."""
    return [_fill(t, spec) for t in _SEMANTIC[_family(spec)]]
