"""Instruction templates in the format of FLAN v2's PATTERNS (../shared/data/flan/flan_v2_patterns.json).

A templates file is one JSON object: task name -> list of [input_template, output_template]. A
template holds `{name}` placeholders filled from an instance's fields (FLAN's keywords), e.g.

    {"rte": [["{premise}\\n\\nCan we conclude that \\"{hypothesis}\\"?\\n\\n{options_}", "{answer}"], ...]}

`{options_}` is the answer options as FLAN writes them (`options_text`): "OPTIONS:\\n- a\\n- b".
Placeholders are replaced textually (no str.format), so braces inside field values are safe.

`TemplateSet.match` inverts a template: it recovers the fields of an already rendered instruction
(needed when records carry only the rendered text); `alternatives` lists the other templates of
the same task that render the same instance to the same output (the paraphrases of the
`templates` backend). Templates that swap roles (e.g. "Write a {answer} review" -> {sentence})
never qualify: their output differs.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from coin.errors import CoinError, read_json

PLACEHOLDER = re.compile(r"\{(\w+)\}")
OPTIONS_HEADER = "OPTIONS:"


class TemplateError(CoinError):
    """A bad templates file: names the file, task, template index and what was expected."""


def placeholders(template: str) -> list[str]:
    """Placeholder names in order of appearance (repeats included)."""
    return PLACEHOLDER.findall(template)


def render(template: str, fields: Mapping[str, str]) -> str:
    """Fill every `{name}`; a placeholder without a field raises KeyError(name)."""
    return PLACEHOLDER.sub(lambda m: fields[m.group(1)], template)


def skeleton(text: str, fields: Mapping[str, str]) -> str:
    """A rendered text with field values put back as placeholders (longest values first)."""
    for name, value in sorted(fields.items(), key=lambda kv: -len(kv[1])):
        if value and len(value) > 1:
            text = text.replace(value, "{" + name + "}")
    return text


def options_text(options: list[str]) -> str:
    """FLAN's rendering of answer options: `OPTIONS:\\n- a\\n- b`."""
    return OPTIONS_HEADER + "".join(f"\n- {o}" for o in options)


def parse_options(text: str) -> list[str]:
    """The options listed after an `OPTIONS:` line (`- a` lines); [] when there is none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().upper().startswith(OPTIONS_HEADER):
            out = []
            for item in lines[i + 1:]:
                if not item.startswith("- "):
                    break
                out.append(item[2:].strip())
            return out
    return []


def _matcher(template: str) -> re.Pattern:
    parts, seen, pos = [], set(), 0
    for m in PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        name = m.group(1)
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        seen.add(name)
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.DOTALL)


class TemplateSet:
    """Templates of several tasks, loaded from a FLAN-PATTERNS-style JSON file."""

    def __init__(self, patterns: Mapping[str, list], source: str = "<templates>"):
        self.source = source
        self.patterns: dict[str, list[tuple[str, str]]] = {}
        if not isinstance(patterns, Mapping):
            raise TemplateError(f"{source}: expected a JSON object of task -> [[input_template, output_template], ...]")
        for task, items in patterns.items():
            if not isinstance(items, list) or not items:
                raise TemplateError(f"{source}: task '{task}': expected a non-empty list of "
                                    f"[input_template, output_template] pairs")
            pairs = []
            for i, pair in enumerate(items):
                if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                        or not all(isinstance(t, str) for t in pair)):
                    raise TemplateError(f"{source}: task '{task}' template {i}: expected "
                                        f"[input_template, output_template] (two strings), got {pair!r:.80}")
                pairs.append((pair[0], pair[1]))
            self.patterns[str(task)] = pairs
        self._matchers: dict[tuple[str, int, int], re.Pattern] = {}

    @classmethod
    def load(cls, path: str) -> "TemplateSet":
        return cls(read_json(path, TemplateError, what="templates file"), source=path)

    def __contains__(self, task: str) -> bool:
        return task in self.patterns

    def tasks(self) -> list[str]:
        return list(self.patterns)

    def get(self, task: str) -> list[tuple[str, str]]:
        return self.patterns.get(task, [])

    def matcher(self, task: str, index: int, side: int = 0) -> re.Pattern:
        """The regex inverting template `index` of `task` (side 0: input template, 1: output)."""
        key = (task, index, side)
        if key not in self._matchers:
            self._matchers[key] = _matcher(self.patterns[task][index][side])
        return self._matchers[key]

    @staticmethod
    def _answer_fields(output_template: str, fields: dict, output: str) -> dict | None:
        """Fields plus the output's own placeholder when the output template is just one."""
        names = placeholders(output_template)
        missing = [n for n in names if n not in fields]
        if not missing:
            return fields
        if len(names) == 1 and output_template.strip() == "{" + names[0] + "}":
            return {**fields, names[0]: output}
        return None

    def complete_fields(self, task: str, index: int, fields: Mapping[str, str], output: str) -> dict | None:
        """`fields` completed with the answer placeholder; None when template `index` cannot
        render this instance to exactly `output`."""
        inp, out = self.patterns[task][index]
        full = self._answer_fields(out, dict(fields), output)
        if full is None or any(n not in full for n in placeholders(inp)):
            return None
        try:
            return full if render(out, full) == output else None
        except KeyError:
            return None

    def match(self, task: str, instruction: str, output: str, hint: int | None = None) -> tuple[int, dict] | None:
        """(template index, fields) such that the template renders `instruction` and `output`.

        Fields come from inverting both sides (so generation templates, whose input lacks some of
        the instance, are inverted too). Tries template `hint` first, then every template of the
        task in order; None if none fits.
        """
        items = self.get(task)
        order = list(range(len(items)))
        if hint is not None and 0 <= hint < len(items):
            order.remove(hint)
            order.insert(0, hint)
        for j in order:
            m_in = self.matcher(task, j, 0).fullmatch(instruction)
            if m_in is None:
                continue
            m_out = self.matcher(task, j, 1).fullmatch(output)
            if m_out is None:
                continue
            fields = m_in.groupdict()
            if any(fields.get(k, v) != v for k, v in m_out.groupdict().items()):
                continue  # the two sides disagree on a shared field
            fields.update(m_out.groupdict())
            fields = self.complete_fields(task, j, fields, output)
            if fields is not None:
                return j, fields
        return None

    def alternatives(self, task: str, index: int | None, fields: Mapping[str, str], output: str,
                     instruction: str) -> list[tuple[int, str]]:
        """Other templates of `task` rendering the same instance to the same `output`:
        [(template index, rendered instruction)], excluding `index` and renders equal to `instruction`."""
        out = []
        for j, (inp, _) in enumerate(self.get(task)):
            if j == index:
                continue
            full = self.complete_fields(task, j, fields, output)
            if full is None:
                continue
            text = render(inp, full)
            if text != instruction:
                out.append((j, text))
        return out


def template_index(template_id) -> int | None:
    """A record's template_id as an index into its task's list (ints and digit strings)."""
    if isinstance(template_id, bool):
        return None
    if isinstance(template_id, int):
        return template_id
    if isinstance(template_id, str) and template_id.strip().isdigit():
        return int(template_id)
    return None
