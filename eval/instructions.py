"""Instruction sets: per task, clean instructions and their perturbed variants.

An `Instruction` is one (task, attack, index, text): `index` is the clean instruction it derives
from (variant i of an attack perturbs clean instruction i; for imported semantic prompts, which
PromptBench does not pair with the clean ones, it is only a position).

The file format (what `coin eval` writes as instructions.json, and what a user may give):

    {
      "format": "coin-instructions/1",
      "source": "generated(seed=42)",                 (optional)
      "tasks": {
        "sst2": {
          "clean":      ["Decide whether ...", "..."],
          "textbugger": ["Decide whther ...",  "..."],   item i perturbs clean[i]; null = missing
          ...
        }
      }
    }

Also accepted: the same without the "format"/"tasks" wrapper (task -> attack -> list); the
transposed layout attack -> task -> list (the CoIN paper's released evaluation instructions and
PromptBench's config dicts), detected when every top-level key is an attack name and none of the
second-level keys is (`layout="attack-task"` / `--instruction-layout` chooses explicitly); a
clean-only file, task -> [instructions] (the input of the generator, `generated:FILE`, e.g.
PromptBench's task_oriented_prompts.json), or task -> [[input_template, output_template], ...]
(flan_v2_patterns.json's format, e.g. the demo data's heldout_templates.json: the input templates
are the clean instructions). Task keys are matched as users spell them (`SST-2`, `sst_2`; `mnli`
serves mnli_matched and mnli_mismatched: `tasks.match_task_keys`); keys that name no known task
are listed in a warning. Attack keys too (`bert_attack`, `TextFooler`).

Three sources (`resolve_instructions`): `generated` (the built-in clean instructions, perturbed
by eval.perturb), `generated:FILE.json` (your clean instructions, perturbed), `promptbench:PATH`
(eval.promptbench) and `FILE.json` (used as given). Every problem is an `InstructionFileError`
naming the file, the line (where one can be found) and the entry.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from coin.errors import CoinError, warn

from .tasks import (
    ATTACK_LEVEL, ATTACKS, TASKS, TaskSpec, check_instruction, default_instructions, match_task_keys, norm_key,
    semantic_pool,
)

FORMAT = "coin-instructions/1"
ORDER = ("clean",) + ATTACKS
LAYOUTS = ("auto", "task-attack", "attack-task")
WORD_ATTACKS = ("textfooler", "bertattack")  # the attacks that need WordNet
_ATTACK_KEYS = {norm_key(a): a for a in ATTACK_LEVEL}
# PromptBench's semantic_prompts.json is task -> language -> prompts: a hint when a file looks like it
_LANGUAGES = {"chinese", "french", "arabic", "spanish", "japanese", "korean"}


class InstructionFileError(CoinError):
    """An instruction file in a wrong format, or an instruction set that does not fit the tasks."""


@dataclass(frozen=True)
class Instruction:
    task: str
    attack: str
    index: int
    text: str

    @property
    def level(self) -> str:
        return ATTACK_LEVEL[self.attack]

    @property
    def key(self) -> str:
        return f"{self.attack}/{self.index}"


class InstructionSet:
    """task -> instructions, ordered clean first, then the attacks in `ATTACKS` order, by index."""

    def __init__(self, instructions: Iterable[Instruction], source: str = "",
                 skipped: Mapping[str, str] | None = None):
        self.source = source
        self.skipped = dict(skipped or {})  # attack -> why it is not in the set (e.g. no WordNet)
        self._by_task: dict[str, list[Instruction]] = {}
        for ins in instructions:
            self._by_task.setdefault(ins.task, []).append(ins)
        for task, items in self._by_task.items():
            items.sort(key=lambda i: (ORDER.index(i.attack), i.index))
            keys = [i.key for i in items]
            if len(set(keys)) != len(keys):
                raise InstructionFileError(f"{source or 'instruction set'}: task '{task}' has duplicate instructions")

    @property
    def tasks(self) -> list[str]:
        return list(self._by_task)

    def for_task(self, task: str) -> list[Instruction]:
        return list(self._by_task.get(task, []))

    def __iter__(self):
        for items in self._by_task.values():
            yield from items

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_task.values())

    def attacks(self, task: str) -> list[str]:
        return [a for a in ORDER if any(i.attack == a for i in self._by_task.get(task, []))]

    def select(self, attacks: Sequence[str] | None = None, n_instructions: int | None = None,
               tasks: Sequence[str] | None = None) -> "InstructionSet":
        """A subset: only these attacks (clean always kept), indices < n_instructions, these tasks."""
        keep = set(attacks) | {"clean"} if attacks is not None else None
        out = [
            i for i in self
            if (keep is None or i.attack in keep)
            and (not n_instructions or i.index < n_instructions)
            and (tasks is None or i.task in tasks)
        ]
        return InstructionSet(out, self.source, self.skipped)

    def for_specs(self, specs: Mapping[str, TaskSpec], where: str | None = None) -> "InstructionSet":
        """The set with its task keys matched to the tasks of `specs` (`tasks.match_task_keys`: `SST-2`
        serves sst2, `mnli` both MNLI sets); keys that name no known task are listed in one warning."""
        where = where or self.source or "instruction set"
        served, unknown = match_task_keys(self.tasks, specs, where)
        if unknown:
            warn("coin eval", f"{where}: ignoring key(s) that name no task: {', '.join(unknown)}")
        out = [Instruction(task, i.attack, i.index, i.text) for task, key in served.items()
               for i in self._by_task[key]]
        return InstructionSet(out, self.source, self.skipped)

    def to_json(self) -> dict:
        tasks: dict[str, dict[str, list]] = {}
        for task, items in self._by_task.items():
            per: dict[str, list] = {}
            for ins in items:
                lst = per.setdefault(ins.attack, [])
                lst.extend([None] * (ins.index + 1 - len(lst)))
                lst[ins.index] = ins.text
            tasks[task] = per
        return {"format": FORMAT, "source": self.source, "tasks": tasks}

    def save(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1, ensure_ascii=False)
            f.write("\n")
        return path

    def validate(self, specs: Mapping[str, TaskSpec], where: str | None = None) -> None:
        """Every evaluated task has instructions, clean ones among them; placeholders fit the task."""
        where = where or self.source or "instruction set"
        for name, spec in specs.items():
            items = self._by_task.get(name)
            if not items:
                raise InstructionFileError(
                    f"{where}: no instructions for task '{name}' (it has: {', '.join(self.tasks) or 'none'})"
                )
            if not any(i.attack == "clean" for i in items):
                raise InstructionFileError(f"{where}: task '{name}' has no clean instructions")
            for ins in items:
                check_instruction(spec, ins.text, f"{where}: tasks.{name}.{ins.attack}[{ins.index}]")


# ----------------------------------------------------------------------------- reading files


def _line_of(raw: str, *keys: str) -> int | None:
    """The line where the quoted keys occur in sequence (a best effort: JSON has no positions)."""
    at = 0
    for k in keys:
        j = raw.find(json.dumps(k), at)
        if j < 0:
            return None
        at = j + 1
    return raw.count("\n", 0, at) + 1


def _err(path: str, raw: str, keys: Sequence[str], msg: str) -> InstructionFileError:
    line = _line_of(raw, *keys) if keys else None
    return InstructionFileError(f"{path}: {'line ' + str(line) + ': ' if line else ''}{msg}")


def read_json(path: str) -> tuple[Any, str]:
    if not os.path.isfile(path):
        raise InstructionFileError(f"instruction file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as e:
        raise InstructionFileError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _tasks_mapping(data: Any, path: str, raw: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise InstructionFileError(
            f"{path}: line 1: expected a JSON object of tasks (task -> [instructions], task -> attack -> "
            f"[instructions] or attack -> task -> [instructions]), got {type(data).__name__}"
        )
    if "tasks" in data or "format" in data:
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise _err(path, raw, ["format"], f"format {fmt!r}: expected {FORMAT!r}")
        if not isinstance(data.get("tasks"), dict):
            raise _err(path, raw, ["tasks"], "'tasks': expected an object task -> attack -> [instructions]")
        return data["tasks"]
    return data


def detect_layout(tasks: Mapping[str, Any], path: str) -> str:
    """`attack-task` when every top-level key is an attack name and every value an object none of
    whose keys is one; `task-attack` when no top-level key is an attack name; else an error."""
    top = [k for k in tasks if norm_key(k) in _ATTACK_KEYS]
    if not top:
        return "task-attack"
    inner = [k for v in tasks.values() if isinstance(v, dict) for k in v]
    if len(top) == len(tasks) and all(isinstance(v, dict) for v in tasks.values()) and inner and not any(
            norm_key(k) in _ATTACK_KEYS for k in inner):
        return "attack-task"
    raise InstructionFileError(
        f"{path}: cannot tell the layout: top-level keys {list(tasks)} mix attack names ({', '.join(top)}) with "
        f"others; expected task -> attack -> [instructions] or attack -> task -> [instructions] "
        f"(choose with --instruction-layout task-attack|attack-task)"
    )


def load_instruction_file(path: str, layout: str = "auto") -> InstructionSet:
    """An instruction set from JSON in any accepted shape (module docstring), its task keys as the
    file spells them (`InstructionSet.for_specs` matches them to tasks). `layout`: auto,
    task-attack (ours) or attack-task (the CoIN paper's and PromptBench's)."""
    if layout not in LAYOUTS:
        raise InstructionFileError(f"--instruction-layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    data, raw = read_json(path)
    tasks = _tasks_mapping(data, path, raw)
    chosen = detect_layout(tasks, path) if layout == "auto" else layout
    entries: list[tuple[str, str, Any, list[str]]] = []  # (task, attack key, texts, JSON keys to find it)
    if chosen == "attack-task":
        for attack, per in tasks.items():
            if not isinstance(per, dict):
                raise _err(path, raw, [attack], f"{attack}: expected an object task -> [instructions] (layout attack-task)")
            entries += [(task, attack, texts, [attack, task]) for task, texts in per.items()]
    else:
        for task, per in tasks.items():
            if isinstance(per, list):
                if per and all(isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x) for x in per):
                    per = [x[0] for x in per]  # flan_v2_patterns format: [input_template, output_template]
                per = {"clean": per}
            if not isinstance(per, dict):
                raise _err(path, raw, [task], f"tasks.{task}: expected a list of instructions or an object attack -> list")
            entries += [(task, attack, texts, [task, attack]) for attack, texts in per.items()]
    out: list[Instruction] = []
    for task, attack_key, texts, keys in entries:
        where = f"tasks.{task}.{attack_key}"
        attack = _ATTACK_KEYS.get(norm_key(attack_key))
        if attack is None:
            hint = ""
            if chosen == "task-attack" and norm_key(attack_key) in {norm_key(t) for t in TASKS}:
                hint = " (the file looks transposed, attack -> task -> list: pass --instruction-layout attack-task)"
            elif norm_key(attack_key) in _LANGUAGES:
                hint = (" (this looks like PromptBench's semantic_prompts.json, task -> language -> prompts: "
                        "use --instructions promptbench:DIR, which pairs them with the clean prompts)")
            raise _err(path, raw, keys, f"tasks.{task}: unknown attack '{attack_key}' "
                                        f"(expected clean or one of {', '.join(ATTACKS)}){hint}")
        if not isinstance(texts, list):
            raise _err(path, raw, keys, f"{where}: expected a list of strings")
        for i, text in enumerate(texts):
            if text is None:
                continue
            if not isinstance(text, str) or not text.strip():
                raise _err(path, raw, keys, f"{where}[{i}]: expected a non-empty string, got {text!r}")
            out.append(Instruction(task, attack, i, text))
    if not out:
        raise InstructionFileError(f"{path}: no instructions in the file")
    return InstructionSet(out, source=f"file:{path}")


def clean_only(iset: InstructionSet) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ins in iset:
        if ins.attack == "clean":
            out.setdefault(ins.task, []).append(ins.text)
    return out


# ----------------------------------------------------------------------------- generation


def generate_instruction_set(clean: Mapping[str, Sequence[str]], specs: Mapping[str, TaskSpec], *,
                             attacks: Sequence[str] = ATTACKS, seed: int = 42, rate: float = 0.25,
                             wordnet=None, lm_scorer: Callable | None = None,
                             paraphraser: Callable[[str], str] | None = None, progress: bool = False,
                             source: str | None = None) -> InstructionSet:
    """Clean instructions (task -> [text]) and every attack of `attacks` applied to each, seeded."""
    from .perturb import perturb_all

    for task in clean:
        if task not in specs:
            raise InstructionFileError(f"instruction set: no task spec for '{task}'")
    for task, texts in clean.items():
        for i, t in enumerate(texts):
            check_instruction(specs[task], t, f"{source or 'clean instructions'}: {task}[{i}]")
    table = perturb_all(
        clean, {t: specs[t].label_words for t in clean}, {t: semantic_pool(specs[t]) for t in clean},
        attacks=attacks, seed=seed, rate=rate, wordnet=wordnet, lm_scorer=lm_scorer, paraphraser=paraphraser,
        progress=progress,
    )
    for task, texts in clean.items():  # with no attack at all (`--attacks clean`) the clean set alone
        table.setdefault(task, {}).setdefault("clean", list(texts))
    out = [Instruction(task, attack, i, text) for task, per in table.items() for attack, texts in per.items()
           for i, text in enumerate(texts) if text is not None]
    return InstructionSet(out, source=source or f"generated(seed={seed})")


def resolve_instructions(spec: str, specs: Mapping[str, TaskSpec], *, attacks: Sequence[str] = ATTACKS,
                         n_instructions: int | None = 6, seed: int = 42, victim: str = "t5_zeroshot",
                         lm_scorer: Callable | None = None, progress: bool = False,
                         layout: str = "auto") -> InstructionSet:
    """The instruction set named by `--instructions` for the tasks `specs`, validated.

    generated            the built-in six clean instructions per task, perturbed (seeded)
    generated:FILE.json  clean instructions from FILE (task -> [text]), perturbed (seeded)
    promptbench:PATH     PromptBench's files (a directory with adv_prompts/ or one .md file)
    FILE.json            a complete set, used as given (either layout, `layout`)

    Without WordNet (not installed, or COIN_NO_WORDNET) the generated sets leave out the
    word-level attacks, say so once, and record it in `InstructionSet.skipped`.
    """
    if spec == "generated" or spec.startswith("generated:"):
        gen_attacks = [a for a in attacks if a != "clean"]
        skipped: dict[str, str] = {}
        wordnet = None
        if any(a in WORD_ATTACKS for a in gen_attacks):
            from .wordnet import WordNet, WordNetMissing

            try:
                wordnet = WordNet.load()
            except WordNetMissing as e:
                skipped = {a: "needs WordNet" for a in gen_attacks if a in WORD_ATTACKS}
                gen_attacks = [a for a in gen_attacks if a not in WORD_ATTACKS]
                warn("coin eval", f"{e}; skipping {', '.join(skipped)} (every other attack runs)")
        if spec == "generated":
            clean = {name: default_instructions(s) for name, s in specs.items()}
            source = f"generated(builtin, seed={seed})"
        else:
            path = spec.split(":", 1)[1]
            given = load_instruction_file(path, layout)
            clean = clean_only(given.for_specs(specs, where=path))
            missing = [t for t in specs if t not in clean]
            if missing:
                raise InstructionFileError(f"{path}: no clean instructions for task(s) {', '.join(missing)} "
                                           f"(the file has: {', '.join(given.tasks)})")
            clean = {t: clean[t] for t in specs}
            source = f"generated({path}, seed={seed})"
        if n_instructions:
            clean = {t: v[:n_instructions] for t, v in clean.items()}
        iset = generate_instruction_set(clean, specs, attacks=gen_attacks, seed=seed, wordnet=wordnet,
                                        lm_scorer=lm_scorer, progress=progress, source=source)
        iset.skipped = skipped
    elif spec.startswith("promptbench:"):
        from .promptbench import promptbench_instruction_set

        iset = promptbench_instruction_set(spec.split(":", 1)[1], specs, victim=victim, n_instructions=n_instructions)
    else:
        iset = load_instruction_file(spec, layout).for_specs(specs, where=spec)
    iset = iset.select(attacks=[a for a in attacks], n_instructions=n_instructions, tasks=list(specs))
    iset.validate(specs, where=iset.source)
    return iset


def check_requested_attacks(iset: InstructionSet, text: str) -> None:
    """`--attacks` named explicitly (not `all`): every named attack, or at least one attack of a named
    level, must be in the set for every task; else an error naming it and the attacks present.
    Attacks the set records as skipped (no WordNet) were announced already and are exempt."""
    items = [t.strip() for t in re.split(r"[,\s]+", text or "") if t.strip()]
    if not items or items == ["all"]:
        return
    for item in items:
        names = parse_attacks(item)
        if not names or all(n in iset.skipped for n in names):
            continue
        for task in iset.tasks:
            present = iset.attacks(task)
            if not any(n in present for n in names):
                raise InstructionFileError(
                    f"--attacks {item}: {iset.source} has no {item} instructions for task '{task}' "
                    f"(it has: {', '.join(present)})"
                )


def parse_attacks(text: str) -> list[str]:
    """`all` or a comma-separated list of attack names or levels (character, word, ...)."""
    items = [t.strip() for t in re.split(r"[,\s]+", text or "") if t.strip()]
    if not items or items == ["all"]:
        return list(ATTACKS)
    out: list[str] = []
    for item in items:
        if item in ATTACK_LEVEL:
            names = [item] if item != "clean" else []
        elif item in set(ATTACK_LEVEL.values()):
            names = [a for a, lvl in ATTACK_LEVEL.items() if lvl == item and a != "clean"]
        else:
            raise InstructionFileError(
                f"--attacks: unknown attack or level '{item}' (attacks: {', '.join(ATTACKS)}; "
                f"levels: character, word, sentence, semantic; or 'all')"
            )
        out += [n for n in names if n not in out]
    return out
