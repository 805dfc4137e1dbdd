"""The `templates` backend: re-render each instance through the other instruction templates of
its task (a FLAN-PATTERNS-style templates file), keeping only templates that give the same output.

For a record whose unit is a template (see units.py), every other template of the task that
renders the instance's fields to the same output is a candidate, in an order shuffled per record
from (seed, record id). Records without a template unit get no candidates (counted as
`no_candidates`).
"""
from __future__ import annotations

import random

from ..filters import Candidate
from ..templates import TemplateSet
from ..units import TEMPLATE, Unit
from . import stable_seed


class TemplatesBackend:
    name = "templates"

    def __init__(self, templates: TemplateSet, seed: int = 0):
        if templates is None:
            raise ValueError("the templates backend needs a templates file (--templates)")
        self.templates = templates
        self.seed = seed

    def settings(self) -> dict:
        return {"backend": self.name, "seed": self.seed}

    def propose(self, units: list[Unit], chunk_index: int) -> list[list[Candidate]]:
        out = []
        for unit in units:
            rec = unit.record
            if unit.kind != TEMPLATE or rec["task"] not in self.templates:
                out.append([])
                continue
            index = unit.template_id if unit.from_file else None
            alts = self.templates.alternatives(rec["task"], index, unit.fields or {}, rec["output"], rec["instruction"])
            random.Random(stable_seed(self.seed, rec["id"])).shuffle(alts)
            items = self.templates.get(rec["task"])
            out.append([Candidate(items[j][0], text, f"template:{j}") for j, text in alts])
        return out
