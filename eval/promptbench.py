"""Importing PromptBench's published prompts (the formats of ../shared/docs/OFFLINE.md).

* `adv_prompts/<victim>_<shot>.md`: per dataset (`# sst2`), the clean prompts (`## 10 prompts`,
  lines `Acc: 78.00%, prompt: ...`), one block per attack (`## textbugger`, ...) of records

      Original prompt: <text>
      Attacked prompt: b"<a Python bytes literal, UTF-8>"
      Original acc: x%, attacked acc: y%, dropped acc: z%

  and `## translation` (`Language: chinese, acc: 75.90%, prompt: ...`).
* `task_oriented_prompts.json`, `role_oriented_prompts.json`: task -> [clean prompts].
* `semantic_prompts.json`: task -> language -> [English back-translations].

`parse_adv_markdown` reads one .md file completely (every dataset, not only GLUE). The published
files carry a few stray lines (a lone `O`, an `Acc: ..., prompt:` line inside an attack block);
and a record whose `Original prompt:` line is missing); these are skipped and listed in
`AdvFile.irregular`, as is the splitting of record lines joined on one line (with `strict=True` they are errors). Anything else out of grammar (an unknown
section, a malformed accuracy line, an attacked prompt that is not a bytes literal, text before
the first `#` heading, a file without any section) is a `PromptFileError` naming file and line.

`promptbench_instruction_set` turns one victim's file into an instruction set: the clean
instructions of a dataset are the attack blocks' original prompts (PromptBench attacked the
top-3 task-oriented and top-3 role-oriented prompts: six, as the paper's "six instructions"),
each attack's variant i is the attacked form of clean prompt i, and the semantic variants are the
first back-translation of each language (six languages), from semantic_prompts.json when it is
next to adv_prompts/, else from the file's `## translation` block.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from coin.errors import read_json

from .instructions import Instruction, InstructionFileError, InstructionSet
from .tasks import ATTACKS, TaskSpec

PB_ATTACKS = ("bertattack", "checklist", "deepwordbug", "stresstest", "textbugger", "textfooler")
VICTIMS = tuple(f"{m}_{s}" for m in ("chatgpt", "t5", "ul2", "vicuna") for s in ("zeroshot", "fewshot"))


class PromptFileError(InstructionFileError):
    """A PromptBench prompt file out of grammar; the message names the file and line."""


@dataclass(frozen=True)
class AdvRecord:
    attack: str
    original: str
    attacked: str
    original_acc: float
    attacked_acc: float
    line: int


@dataclass
class AdvDataset:
    name: str
    prompts: list[tuple[float, str, int]] = field(default_factory=list)  # (acc, prompt, line)
    attacks: dict[str, list[AdvRecord]] = field(default_factory=dict)
    translations: list[tuple[str, float, str, int]] = field(default_factory=list)  # (language, acc, prompt, line)

    def clean_prompts(self) -> list[str]:
        """The attacked originals (PromptBench's chosen six), those attacked by the most attack
        blocks first, ties in order of first appearance."""
        first: list[str] = []
        blocks: dict[str, int] = {}
        for records in self.attacks.values():
            for o in dict.fromkeys(r.original for r in records):
                if o not in blocks:
                    first.append(o)
                blocks[o] = blocks.get(o, 0) + 1
        return sorted(first, key=lambda o: (-blocks[o], first.index(o)))


@dataclass
class AdvFile:
    path: str
    datasets: dict[str, AdvDataset]
    irregular: list[tuple[int, str]] = field(default_factory=list)  # (line, what was skipped or repaired)


_ACC_RE = re.compile(r"^Acc: (-?[\d.]+)%, prompt: (.*)$")
_LANG_RE = re.compile(r"^Language: ([^,]+), acc: (-?[\d.]+)%, prompt: (.*)$")
_ORIG_ACC_RE = re.compile(r"Original acc: (-?[\d.]+)%, attacked acc: (-?[\d.]+)%, dropped acc: (-?[\d.]+)%")
# Where one line holds several record lines ("Original prompt: ... Attacked prompt: b"..." Original
# acc: ...", or "...dropped acc: 1.88%Original prompt: ..."), it is split before each marker.
_JOINED_RE = re.compile(r"(?:\s+|(?<=%))(?=Original prompt: |Attacked prompt: b['\"]|Original acc: )")


def _decode_bytes_literal(text: str, where: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, bytes):
        raise PromptFileError(f"{where}: 'Attacked prompt:' expected a Python bytes literal b\"...\", got {text[:60]!r}")
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PromptFileError(f"{where}: the attacked prompt is not valid UTF-8") from None


def parse_adv_markdown(path: str, strict: bool = False) -> AdvFile:
    """Every dataset, prompt, attack record and translation of one adv_prompts .md file."""
    if not os.path.isfile(path):
        raise PromptFileError(f"PromptBench file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    datasets: dict[str, AdvDataset] = {}
    irregular: list[tuple[int, str]] = []
    ds: AdvDataset | None = None
    section: str | None = None
    pending: dict | None = None  # a record being read: original, attacked, line

    def stray(lineno: int, text: str, expected: str) -> None:
        if strict:
            raise PromptFileError(f"{path}: line {lineno}: unexpected {text[:60]!r} ({expected})")
        irregular.append((lineno, f"skipped stray line {text[:60]!r}"))

    def close_pending(lineno: int) -> None:
        """A record cut short (no original, attacked or accuracy line) is skipped, or an error."""
        nonlocal pending
        if pending is not None:
            msg = (f"incomplete record (line {pending['line']}; expected 'Original prompt:', 'Attacked prompt:' "
                   f"and 'Original acc: ...' lines before line {lineno})")
            if strict:
                raise PromptFileError(f"{path}: line {pending['line']}: {msg}")
            irregular.append((pending["line"], f"skipped {msg}"))
            pending = None

    queue = [(lineno, line.rstrip("\r")) for lineno, line in enumerate(lines, 1)]
    queue.reverse()
    while queue:
        lineno, text = queue.pop()
        if not text.strip():
            continue
        where = f"{path}: line {lineno}"
        if text.startswith("# "):
            close_pending(lineno)
            name = text[2:].strip()
            ds = datasets.setdefault(name, AdvDataset(name))
            section = None
            continue
        if text.startswith("## "):
            close_pending(lineno)
            if ds is None:
                raise PromptFileError(f"{where}: section {text!r} before any '# <dataset>' heading")
            section = text[3:].strip()
            if section not in ("10 prompts", "translation") and section not in PB_ATTACKS:
                raise PromptFileError(
                    f"{where}: unknown section {section!r} (expected '10 prompts', 'translation' or one of {', '.join(PB_ATTACKS)})"
                )
            if section in PB_ATTACKS:
                ds.attacks.setdefault(section, [])
            continue
        if ds is None or section is None:
            if ds is None and not datasets:
                raise PromptFileError(f"{where}: expected a '# <dataset>' heading first, got {text[:60]!r}")
            stray(lineno, text, "outside any '## ' section")
            continue
        if section == "10 prompts":
            m = _ACC_RE.match(text)
            if m:
                ds.prompts.append((float(m.group(1)), m.group(2).strip(), lineno))
            elif text.startswith("Acc:"):
                raise PromptFileError(f"{where}: expected 'Acc: <x>%, prompt: <text>', got {text[:60]!r}")
            else:
                stray(lineno, text, "expected 'Acc: <x>%, prompt: <text>'")
        elif section == "translation":
            m = _LANG_RE.match(text)
            if m:
                ds.translations.append((m.group(1).strip(), float(m.group(2)), m.group(3).strip(), lineno))
            elif text.startswith("Language:"):
                raise PromptFileError(f"{where}: expected 'Language: <lang>, acc: <x>%, prompt: <text>', got {text[:60]!r}")
            else:
                stray(lineno, text, "expected 'Language: <lang>, acc: <x>%, prompt: <text>'")
        else:  # an attack block
            parts = [p for p in _JOINED_RE.split(text) if p.strip()]
            if len(parts) > 1:
                if strict:
                    raise PromptFileError(f"{where}: {len(parts)} record lines joined on one line")
                irregular.append((lineno, f"split {len(parts)} record lines joined on one line"))
                queue.extend(reversed([(lineno, p) for p in parts]))
                continue
            if text.startswith("Original prompt:"):
                close_pending(lineno)
                pending = {"original": text[len("Original prompt:"):].strip(), "line": lineno}
            elif text.startswith("Attacked prompt:"):
                attacked = _decode_bytes_literal(text[len("Attacked prompt:"):].strip(), where)
                if pending is None or "attacked" in pending:
                    close_pending(lineno)
                    pending = {"original": None, "line": lineno}
                pending["attacked"] = attacked
            elif text.startswith("Original acc:"):
                m = _ORIG_ACC_RE.fullmatch(text.strip())
                if not m:
                    raise PromptFileError(
                        f"{where}: expected 'Original acc: x%, attacked acc: y%, dropped acc: z%', got {text[:60]!r}"
                    )
                if pending is None or "attacked" not in pending or pending["original"] is None:
                    if pending is None:
                        pending = {"original": None, "line": lineno}
                    close_pending(lineno)
                    continue
                ds.attacks[section].append(AdvRecord(section, pending["original"], pending["attacked"],
                                                     float(m.group(1)), float(m.group(2)), pending["line"]))
                pending = None
            else:
                stray(lineno, text, "expected 'Original prompt:', 'Attacked prompt:' or 'Original acc:'")
    close_pending(len(lines))
    datasets = {k: v for k, v in datasets.items() if v.prompts or v.attacks or v.translations}
    if not datasets:
        raise PromptFileError(f"{path}: no PromptBench sections found (expected '# <dataset>' then '## <section>' blocks)")
    return AdvFile(path, datasets, irregular)


def _read_json_object(path: str) -> dict:
    data = read_json(path, PromptFileError, what="prompt file")
    if not isinstance(data, dict):
        raise PromptFileError(f"{path}: line 1: expected a JSON object task -> prompts")
    return data


def load_prompt_pool(path: str) -> dict[str, list[str]]:
    """task_oriented_prompts.json / role_oriented_prompts.json: task -> [clean prompts]."""
    data = _read_json_object(path)
    for task, prompts in data.items():
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise PromptFileError(f"{path}: task '{task}': expected a list of non-empty strings")
    return data


def load_semantic_prompts(path: str) -> dict[str, dict[str, list[str]]]:
    """semantic_prompts.json: task -> language -> [back-translated prompts]."""
    data = _read_json_object(path)
    for task, langs in data.items():
        if not isinstance(langs, dict):
            raise PromptFileError(f"{path}: task '{task}': expected an object language -> [prompts]")
        for lang, prompts in langs.items():
            if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise PromptFileError(f"{path}: task '{task}', language '{lang}': expected a list of non-empty strings")
    return data


def _locate(path: str, victim: str) -> tuple[str, str | None]:
    """(the adv .md file, semantic_prompts.json or None) for a directory or a file path."""
    if os.path.isdir(path):
        for cand in (os.path.join(path, "adv_prompts", f"{victim}.md"), os.path.join(path, f"{victim}.md")):
            if os.path.isfile(cand):
                md = cand
                break
        else:
            raise PromptFileError(
                f"promptbench:{path}: no adv_prompts/{victim}.md there (victims: {', '.join(VICTIMS)}; "
                f"choose with --promptbench-victim)"
            )
    elif os.path.isfile(path):
        md = path
    else:
        raise PromptFileError(f"promptbench:{path}: no such file or directory")
    md_dir = os.path.dirname(os.path.abspath(md))
    for cand in (os.path.join(md_dir, "semantic_prompts.json"), os.path.join(os.path.dirname(md_dir), "semantic_prompts.json")):
        if os.path.isfile(cand):
            return md, cand
    return md, None


def promptbench_instruction_set(path: str, specs: Mapping[str, TaskSpec], *, victim: str = "t5_zeroshot",
                                n_instructions: int | None = 6) -> InstructionSet:
    """Instructions of one victim's adversarial prompt file for the tasks in `specs`."""
    md, semantic_path = _locate(path, victim)
    adv = parse_adv_markdown(md)
    semantic = load_semantic_prompts(semantic_path) if semantic_path else None
    out: list[Instruction] = []
    for name, spec in specs.items():
        pb = spec.promptbench or name
        ds = adv.datasets.get(pb)
        if ds is None:
            raise PromptFileError(f"{md}: no '# {pb}' section for task '{name}' (has: {', '.join(adv.datasets)})")
        clean = ds.clean_prompts() or [p for _, p, _ in ds.prompts]
        if n_instructions:
            clean = clean[:n_instructions]
        out += [Instruction(name, "clean", i, t) for i, t in enumerate(clean)]
        for attack in ATTACKS:
            if attack == "semantic":
                continue
            seen: set[int] = set()
            for r in ds.attacks.get(attack, []):
                if r.original in clean:
                    i = clean.index(r.original)
                    if i not in seen:
                        seen.add(i)
                        out.append(Instruction(name, attack, i, r.attacked))
        if semantic is not None and pb in semantic:
            per_lang = [prompts[0] for prompts in semantic[pb].values() if prompts]
        else:
            per_lang, langs = [], set()
            for lang, _, prompt, _ in ds.translations:
                if lang not in langs:
                    langs.add(lang)
                    per_lang.append(prompt)
        if n_instructions:
            per_lang = per_lang[:n_instructions]
        out += [Instruction(name, "semantic", i, t) for i, t in enumerate(per_lang)]
    source = f"promptbench:{md}" + (f" + {semantic_path}" if semantic_path else "")
    return InstructionSet(out, source=source)
