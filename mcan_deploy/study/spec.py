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
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

Kind = Literal["compare", "phases", "patch", "inverse"]
_KEYS = {"name", "kind", "title", "report", "claim", "seeds", "baseline"}


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
    unknown = set(data) - {"experiment", "plans", "report_values"}
    if unknown:
        raise ConfigError(f"{path}: unknown tables {sorted(unknown)}; known: experiment, plans, report_values")
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
    for scale, table in plans.items():
        if out.kind == "compare" and out.baseline not in table:
            raise ConfigError(
                f"{path}: experiment.baseline = {out.baseline!r} is not a label of [plans.{scale}] ({sorted(table)})"
            )
        if out.kind in ("phases", "inverse") and "phased" not in table:
            raise ConfigError(f"{path}: a {out.kind} experiment needs a 'phased' plan in [plans.{scale}]")
    return out
