"""docs/training.md documents every run setting, every metric and every exit status."""
import dataclasses
import pathlib
import typing

from coin.training.config import RunConfig
from coin.training.monitor import EVAL_SCALARS, PERF_SCALARS, TRAIN_SCALARS
from coin.training.trainer import NONFINITE_EXIT_CODE, PREEMPTED_EXIT_CODE, STEP_METRICS

DOC = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()


def _keys(cls, prefix=""):
    """Every setting; an optional section (model.lora, null by default) and each of its keys."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _keys(tp, f"{prefix}{f.name}.")
            continue
        yield f"{prefix}{f.name}"
        for section in (a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)):
            yield from _keys(section, f"{prefix}{f.name}.")


def test_every_setting_has_a_row():
    missing = [k for k in _keys(RunConfig) if f"| `{k}` |" not in DOC]
    assert not missing, missing


def test_every_metric_and_status_is_named():
    names = [f"`{k}`" for k in STEP_METRICS + ("lr", "grad_norm", "consumed_samples")]
    names += [f"`train/{k}`" for k in TRAIN_SCALARS] + [f"`perf/{k}`" for k in PERF_SCALARS]
    names += [f"`eval/{k}`" for k in EVAL_SCALARS]
    missing = [n for n in names if n not in DOC]
    assert not missing, missing
    assert f"| {PREEMPTED_EXIT_CODE} |" in DOC and f"| {NONFINITE_EXIT_CODE} |" in DOC
