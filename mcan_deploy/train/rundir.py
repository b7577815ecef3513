"""The run directory of ``mcan-train --out DIR`` (ARCHITECTURE.md, "Contracts"): where each file
lives, ``run.json``, the metrics log, the position in the plan, and the check that keeps a run
directory to one plan.

``plan.toml`` (the resolved plan), ``run.json`` (data folder, device, versions), ``metrics.jsonl``,
``events.jsonl``, ``checkpoints/last.safetensors``, ``blocks/N<i>.safetensors``,
``generated/<phase>.safetensors``, ``model.safetensors``, ``report.md``, ``curves.png``,
``strip.png``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Plan, dump_plan, load_plan, plan_to_dict
from ..distributed import Dist
from ..errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["MetricsLog", "Position", "RunDirectory", "RunPaths", "RunResult", "first_difference", "read_metrics"]


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.toml"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"  # append-only: never cut on resume

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.safetensors"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def strip(self) -> Path:
        return self.root / "strip.png"

    def block(self, i: int) -> Path:
        return self.root / "blocks" / f"N{i}.safetensors"

    def generated(self, phase: str) -> Path:
        return self.root / "generated" / f"{phase}.safetensors"


@dataclass
class RunResult:
    """What a finished (or already finished) run produced."""

    paths: RunPaths
    already_finished: bool
    phases: list[dict[str, Any]]  # one summary line per phase, as in metrics.jsonl
    identity: dict[str, Any]  # validation metrics of LR against HR


@dataclass
class Position:
    """Where in the plan a run stands: the next iteration to run is ``iter`` of stage ``stage``
    of phase ``phase`` (all 0-based); ``phase == len(phases)`` means finished."""

    phase: int = 0
    stage: int = 0
    iter: int = 0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl`` (none where the file does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class MetricsLog:
    """Append-only JSON-lines log that can be cut back to a checkpoint's line count. Only the
    main process writes (``enabled``); the others keep the same count for their checkpoints."""

    def __init__(self, path: Path, keep_lines: int, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        lines = path.read_text().splitlines() if path.exists() else []
        if enabled and len(lines) > keep_lines:  # lines written after the checkpoint are replayed on resume
            path.write_text("".join(line + "\n" for line in lines[:keep_lines]))
        self.count = min(len(lines), keep_lines)

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.count += 1

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def first_difference(a: Any, b: Any, key: str = "") -> str | None:
    """Where two plans (as nested dicts and lists) first differ, as ``key (a in the run, b now)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{key}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{key} ({a!r} in the run, {b!r} now)"


def what_trains(plan: Plan) -> dict[str, Any]:
    """The plan without what may change when a run resumes: how RCABs run (torch or Triton) and
    how many chunks a batch is computed in, the learning rates (the remedy after a NaN stop) and
    the NaN policy itself."""
    data = plan_to_dict(plan)
    data.get("model", {}).pop("rcab_impl", None)
    for key in ("on_nonfinite", "nonfinite_retries", "nonfinite_lr_factor"):
        data.get("train", {}).pop(key, None)
    data.get("data", {}).pop("micro_batches", None)  # how a batch is computed, not what it is
    data.get("data", {}).pop("val_batch_pixels", None)
    for key in ("precision", "channels_last", "optimizer_impl", "cuda_graphs"):  # how each step runs
        data.get("train", {}).pop(key, None)
    for phase in data.get("phases", []):
        for stage in phase.get("stages", []):
            stage.pop("lr", None)
    return data


@dataclass
class RunDirectory:
    """One run directory for one plan and one data record (``run.json``'s "data")."""

    paths: RunPaths
    plan: Plan
    data_record: str | list[str]

    def prepare(self, dist: Dist, info: dict[str, Any]) -> None:
        """Check (every rank, before anyone writes) and create (rank 0, with ``info`` as
        ``run.json``) the run directory; a resumed run with an allowed change of the plan
        (learning rates, NaN policy) records the plan it goes on with."""
        from ..io import atomic_write_bytes, remove_stale_temp_files

        dist.barrier()
        changed = self.check()
        dist.barrier()
        if dist.is_main and not self.paths.plan.exists():
            self.paths.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.paths.run_info, json.dumps(info, indent=2).encode())
            atomic_write_bytes(self.paths.plan, dump_plan(self.plan).encode())
        elif dist.is_main:
            remove_stale_temp_files(self.paths.root)  # left by a process killed mid-write
            if changed:  # learning rates or the NaN policy: the run records the plan it goes on with
                log.warning("%s: resuming with a changed plan (first change: %s)", self.paths.plan, changed)
                atomic_write_bytes(self.paths.plan, dump_plan(self.plan).encode())
        dist.barrier()

    def check(self) -> str | None:
        """Refuse a run directory this plan cannot use; returns the first allowed change of the
        plan (learning rates, NaN policy) against the run's, if any."""
        p = self.paths
        if p.plan.exists():
            old = load_plan(p.plan)
            # how the RCABs run (torch or Triton) may change between sessions; the plan may not
            diff = first_difference(what_trains(old), what_trains(self.plan))
            if diff:
                raise CheckpointError(
                    f"{p.plan}: this run was started with another plan, differing at {diff}; "
                    "rerun with the same plan to resume, or pass a new --out"
                )
            info = json.loads(p.run_info.read_text()) if p.run_info.exists() else {}
            if info.get("data") not in (None, self.data_record):
                raise CheckpointError(
                    f"{p.run_info}: this run trains on {info['data']}, not {self.data_record}; "
                    "pass the same --data to resume, or a new --out"
                )
            return first_difference(plan_to_dict(old), plan_to_dict(self.plan))
        if p.root.exists() and any(p.root.iterdir()):
            raise CheckpointError(
                f"{p.root}: folder exists and is not a run directory (no plan.toml); pass an empty or new --out"
            )
        return None
