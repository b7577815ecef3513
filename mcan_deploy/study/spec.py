"""An experiment of the study: which claim of the report, tested by which plans, with which seeds.

```toml
[experiment]
name = "budget"               # results go to OUT/budget/
kind = "compare"              # compare | phases | patch | inverse
title = "..."
report = "sec. 4, fig. 7"     # where the claim is in the report
claim = "..."                 # the claim, in words
seeds = [0, 1, 2]
baseline = "single"           # compare: the label the others are measured against

[report_values]               # the report's own numbers (dB), shown beside ours
phased = 32.22

[plans.cpu]                   # label = plan file, relative to this file
phased = "cpu/mcan_phased.toml"
[plans.full]
phased = "../paper.toml"
```

A ``transfer`` experiment trains each label on named dataset folders (``mcan-study --data
NAME=DIR``), may start a label from another label's model of the same seed, and scores every
final model on each named folder's test pairs:

```toml
[experiment]
kind = "transfer"
evaluate = ["iphone", "nikon"]        # the folders whose test pairs every model is scored on
contrasts = ["finetune - scratch"]    # differences worth a Welch test, in every folder
eval_max_size = 1500                  # test images centre-cropped to at most this side

[conditions.nikon]
train_on = ["nikon"]
[conditions.finetune]
train_on = ["iphone"]
start_from = "nikon"                  # that label's model of the same seed (--init-from)
```
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

Kind = Literal["compare", "phases", "patch", "inverse", "transfer"]
_KEYS = {"name", "kind", "title", "report", "claim", "seeds", "baseline", "evaluate", "contrasts", "eval_max_size"}
_CONDITION_KEYS = {"train_on", "start_from"}


@dataclass(frozen=True)
class Condition:
    """What one label of a transfer experiment trains on, and whose model it starts from."""

    train_on: list[str]  # names of --data folders, trained on together (mixed by the plan's data.mix)
    start_from: str = ""  # another label: its model of the same seed is this run's --init-from


@dataclass(frozen=True)
class Experiment:
    """One experiment: its claim, its plans per scale and its seeds."""

    name: str
    kind: Kind
    title: str
    report: str
    claim: str
    seeds: list[int]
    plans: dict[str, dict[str, Path]]  # scale -> label -> plan file
    report_values: dict[str, float] = field(default_factory=dict)
    baseline: str = ""
    source: Path = Path("<experiment>")
    # transfer experiments only
    conditions: dict[str, Condition] = field(default_factory=dict)
    evaluate: list[str] = field(default_factory=list)
    contrasts: list[tuple[str, str]] = field(default_factory=list)
    eval_max_size: int = 1500

    def folder_names(self) -> list[str]:
        """The named --data folders a transfer experiment needs, in first-use order."""
        names = [n for c in self.conditions.values() for n in c.train_on] + self.evaluate
        return list(dict.fromkeys(names))

    def plan_paths(self, scale: str) -> dict[str, Path]:
        """The plans of one scale, by label; an unknown scale is a ``ConfigError``."""
        if scale not in self.plans:
            raise ConfigError(f"{self.source}: no [plans.{scale}]; this experiment has scales {sorted(self.plans)}")
        return self.plans[scale]


def _need(table: dict[str, Any], key: str, tp: type, source: Path, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{source}: [{where}] needs '{key}'")
    value = table[key]
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{source}: {where}.{key} = {value!r} should be of type {tp.__name__}")
    return value


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every error names the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the experiment ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - {"experiment", "plans", "report_values", "conditions"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown tables {sorted(unknown)}; known: experiment, plans, report_values, conditions"
        )
    exp = _need(data, "experiment", dict, path, "")
    bad = set(exp) - _KEYS
    if bad:
        raise ConfigError(f"{path}: unknown keys {sorted(bad)} in [experiment]; known keys: {sorted(_KEYS)}")
    kind = _need(exp, "kind", str, path, "experiment")
    if kind not in typing.get_args(Kind):
        raise ConfigError(f"{path}: experiment.kind = {kind!r} is not one of {list(typing.get_args(Kind))}")
    seeds = _need(exp, "seeds", list, path, "experiment")
    if (
        not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{path}: experiment.seeds = {seeds!r} must be distinct integers >= 0")
    plans: dict[str, dict[str, Path]] = {}
    for scale, table in _need(data, "plans", dict, path, "").items():
        if not isinstance(table, dict) or not table:
            raise ConfigError(f'{path}: [plans.{scale}] must be a table of label = "plan.toml"')
        plans[scale] = {}
        for label, rel in table.items():
            if not isinstance(rel, str):
                raise ConfigError(f"{path}: plans.{scale}.{label} = {rel!r} should be a plan path")
            plan = (path.parent / rel).resolve()
            if not plan.is_file():
                raise ConfigError(f"{path}: plans.{scale}.{label} = {rel!r}: no such plan ({plan})")
            plans[scale][label] = plan
    values = data.get("report_values", {})
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
        raise ConfigError(f"{path}: [report_values] must map names to numbers (dB)")
    out = Experiment(
        name=_need(exp, "name", str, path, "experiment"),
        kind=kind,
        title=_need(exp, "title", str, path, "experiment"),
        report=_need(exp, "report", str, path, "experiment"),
        claim=_need(exp, "claim", str, path, "experiment"),
        seeds=seeds,
        plans=plans,
        report_values={k: float(v) for k, v in values.items()},
        baseline=exp.get("baseline", ""),
        source=path,
    )
    if out.kind == "transfer":
        out = _with_transfer(out, exp, data.get("conditions", {}), path)
    elif "conditions" in data or set(exp) & {"evaluate", "contrasts", "eval_max_size"}:
        raise ConfigError(f"{path}: [conditions], evaluate, contrasts and eval_max_size are for kind = 'transfer'")
    for scale, table in plans.items():
        if out.kind == "compare" and out.baseline not in table:
            raise ConfigError(
                f"{path}: experiment.baseline = {out.baseline!r} is not a label of [plans.{scale}] ({sorted(table)})"
            )
        if out.kind in ("phases", "inverse") and "phased" not in table:
            raise ConfigError(f"{path}: a {out.kind} experiment needs a 'phased' plan in [plans.{scale}]")
    return out


def _names(value: Any, source: Path, where: str) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v for v in value)
        or len(set(value)) != len(value)
    ):
        raise ConfigError(f'{source}: {where} = {value!r} should be a list of distinct folder names, e.g. ["nikon"]')
    return value


def _with_transfer(out: Experiment, exp: dict[str, Any], table: Any, path: Path) -> Experiment:
    """A transfer experiment's conditions, evaluation folders and contrasts, checked against its labels."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [conditions] must hold one [conditions.LABEL] table per plan label")
    conditions: dict[str, Condition] = {}
    for label, cond in table.items():
        if not isinstance(cond, dict) or set(cond) - _CONDITION_KEYS:
            raise ConfigError(f"{path}: [conditions.{label}] takes only {sorted(_CONDITION_KEYS)}")
        start = cond.get("start_from", "")
        if start and start not in conditions:
            raise ConfigError(
                f"{path}: conditions.{label}.start_from = {start!r} must name a label listed before it "
                f"({sorted(conditions)})"
            )
        conditions[label] = Condition(_names(cond.get("train_on"), path, f"conditions.{label}.train_on"), start)
    for scale, plans in out.plans.items():
        if list(plans) != list(conditions):  # runs train in this order: a fine-tune after its source
            raise ConfigError(
                f"{path}: [plans.{scale}] labels {list(plans)} and [conditions] labels {list(conditions)} "
                "must be the same, in the same order"
            )
    contrasts = []
    if not isinstance(exp.get("contrasts", []), list):
        raise ConfigError(f'{path}: experiment.contrasts should be a list of "LABEL - LABEL" strings')
    for text in exp.get("contrasts", []):
        a, sep, b = str(text).partition(" - ")
        if not sep or a not in conditions or b not in conditions:
            raise ConfigError(
                f'{path}: experiment.contrasts entry {text!r} should be "LABEL - LABEL" with labels of {sorted(conditions)}'
            )
        contrasts.append((a, b))
    size = exp.get("eval_max_size", 1500)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"{path}: experiment.eval_max_size = {size!r} must be an integer >= 1")
    return dataclasses.replace(
        out,
        conditions=conditions,
        evaluate=_names(exp.get("evaluate"), path, "experiment.evaluate"),
        contrasts=contrasts,
        eval_max_size=size,
    )
