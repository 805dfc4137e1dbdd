"""Per-task counters and the printed summary table of `coin augment` and `coin pairs`.

A `Counts` holds one Counter per task under flat keys ("records_in", "kept",
"dropped.identical", ...). Shards' counts add up (`merge`), so the merged summary equals the
single-process one. `table()` renders a fixed-width table with one row per task and a total row.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

DROP_PREFIX = "dropped."


class Counts:
    def __init__(self, per_task: Mapping[str, Mapping[str, int]] | None = None):
        self.per_task: dict[str, Counter] = {t: Counter(c) for t, c in (per_task or {}).items()}

    def add(self, task: str, key: str, n: int = 1) -> None:
        self.per_task.setdefault(task, Counter())[key] += n

    def merge(self, other: "Counts") -> "Counts":
        for task, counter in other.per_task.items():
            self.per_task.setdefault(task, Counter()).update(counter)
        return self

    def totals(self) -> Counter:
        total: Counter = Counter()
        for counter in self.per_task.values():
            total.update(counter)
        return total

    def to_dict(self) -> dict:
        return {
            "totals": dict(sorted(self.totals().items())),
            "per_task": {t: dict(sorted(c.items())) for t, c in sorted(self.per_task.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "Counts":
        return cls(data.get("per_task", {}))

    def table(self, columns: Iterable[tuple[str, str]] | None = None) -> str:
        """Fixed-width text: a row per task and a total row. `columns` is [(key, header)];
        by default every key seen, dropped-by-filter keys last."""
        totals = self.totals()
        if columns is None:
            keys = sorted(k for k in totals if not k.startswith(DROP_PREFIX))
            keys += sorted(k for k in totals if k.startswith(DROP_PREFIX))
            columns = [(k, k) for k in keys]
        columns = list(columns)
        rows = [[t] + [str(c.get(k, 0)) for k, _ in columns] for t, c in sorted(self.per_task.items())]
        rows.append(["TOTAL"] + [str(totals.get(k, 0)) for k, _ in columns])
        header = ["task"] + [h for _, h in columns]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

        def fmt(row):
            return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows[:-1]]
        lines += ["  ".join("-" * w for w in widths), fmt(rows[-1])]
        return "\n".join(lines)
