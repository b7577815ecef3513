"""Checkpoints of a run: save, restore on resume, and recover after a NaN.

A checkpoint holds the weights, the optimiser's and the sampler's state, the position in the plan
(phase, stage, iteration) and how many metrics lines were written by then, so the same command
continues exactly where the last checkpoint left off. After a non-finite loss the last good
checkpoint is restored and the phase goes on with lower learning rates (``train.on_nonfinite``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from typing import Any

import torch

from ..checkpoint import check_finite, config_to_dict, load_tensors, optimizer_to_flat, save_tensors
from ..config import Plan
from ..data import PatchSampler
from ..distributed import Dist
from ..errors import CheckpointError, NonFiniteError, TrainingDiverged
from ..model import MCAN, build_model
from .rundir import MetricsLog, Position, RunPaths, first_difference
from .seeding import seeded

log = logging.getLogger(__name__)

Resume = dict[str, Any]  # {"tensors": ..., "meta": ...} of the checkpoint a phase continues from


class _Discard:
    def write(self, _text: str) -> None: ...


@dataclasses.dataclass
class Checkpointer:
    """The checkpoint of one run directory, for one plan, on every rank (rank 0 writes)."""

    paths: RunPaths
    plan: Plan
    dist: Dist

    def load(self, model: MCAN) -> tuple[Position, Resume | None, int]:
        """Restore weights from the last checkpoint; returns the position, the checkpoint's
        tensors and meta for the optimiser/sampler, and the metrics line count to keep."""
        if not self.paths.checkpoint.exists():
            return Position(), None, 0
        tensors, meta = load_tensors(self.paths.checkpoint)
        want = config_to_dict(self.plan.model)
        if meta.get("model", want) != want:
            diff = first_difference(meta["model"], want)
            raise CheckpointError(
                f"{self.paths.checkpoint}: written for another model, differing at "
                f"model.{diff}; pass a new --out for this plan"
            )
        try:
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as exc:  # shapes or names do not fit this plan's model
            raise CheckpointError(
                f"{self.paths.checkpoint}: does not fit this plan's model "
                f"({str(exc).splitlines()[0][:200]}); pass a new --out"
            ) from None
        pos = Position(**meta["position"])
        log.info(
            "resuming %s at phase %s, stage %d, iteration %d",
            self.paths.root,
            self.plan.phases[pos.phase].name if pos.phase < len(self.plan.phases) else "end",
            pos.stage,
            pos.iter,
        )
        return pos, {"tensors": tensors, "meta": meta}, meta["metrics_lines"]

    def save(
        self,
        model: MCAN,
        pos: Position,
        metrics: MetricsLog,
        optimizer: torch.optim.Optimizer | None = None,
        sampler: PatchSampler | None = None,
        lr_scale: float = 1.0,
    ) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        meta: dict[str, Any] = {
            "position": dataclasses.asdict(pos),
            "metrics_lines": metrics.count,
            "model": config_to_dict(self.plan.model),
            "lr_scale": lr_scale,
        }
        if optimizer is not None:
            opt_tensors, meta["optim"] = optimizer_to_flat(optimizer)
            tensors.update(opt_tensors)
        if sampler is not None:
            tensors["rng.sampler"] = sampler.get_state()
        check_finite(tensors, self.paths.checkpoint)  # every rank: they must all take the NaN path
        if self.dist.is_main:
            save_tensors(self.paths.checkpoint, tensors, meta)
        self.dist.barrier()  # a rank that reads it next (a NaN restart) finds it written

    def recover(
        self, model: MCAN, pi: int, exc: NonFiniteError, attempt: int, lr_scale: float
    ) -> tuple[Position, Resume | None, MetricsLog, float]:
        """After a NaN/inf: stop with the reason, or restore the last good checkpoint and go on
        with lower learning rates (train.on_nonfinite)."""
        tc, phase = self.plan.train, self.plan.phases[pi]
        if tc.on_nonfinite == "stop" or attempt >= tc.nonfinite_retries:
            why = (
                "train.on_nonfinite = 'stop'"
                if tc.on_nonfinite == "stop"
                else f"{tc.nonfinite_retries} retries with lower learning rates did not help"
            )
            raise TrainingDiverged(
                f"phase {phase.name}: {exc}; stopped ({why}). The last good checkpoint "
                f"{self.paths.checkpoint} is kept: lower this phase's learning rates in the plan"
                + (" or set train.on_nonfinite = 'retry'" if tc.on_nonfinite == "stop" else "")
                + ", then run the same command to resume from it"
            ) from None
        if self.paths.checkpoint.exists():
            pos, resume, keep = self.load(model)
        else:  # diverged before the first checkpoint: start the run's model afresh
            with seeded(self.plan.train.seed):
                model.load_state_dict(build_model(self.plan.model).state_dict())
            pos, resume, keep = Position(), None, 0
        if pos.phase != pi:
            raise TrainingDiverged(f"phase {phase.name}: {exc}; the last checkpoint is from another phase")
        metrics = MetricsLog(self.paths.metrics, keep, enabled=self.dist.is_main)
        lr_scale *= tc.nonfinite_lr_factor
        self._event(phase.name, str(exc), pos, lr_scale)
        log.warning(
            "phase %s: %s; restarting from the last good checkpoint (stage %d, iteration %d) "
            "with learning rates x%g (retry %d of %d)",
            phase.name,
            exc,
            pos.stage,
            pos.iter,
            lr_scale,
            attempt + 1,
            tc.nonfinite_retries,
        )
        return pos, resume, metrics, lr_scale

    def _event(self, phase: str, detail: str, pos: Position, lr_scale: float) -> None:
        """One line of ``events.jsonl`` (rank 0): what went non-finite and where the run restarts."""
        with self.paths.events.open("a") if self.dist.is_main else contextlib.nullcontext(_Discard()) as f:
            record = {
                "event": "nonfinite",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "phase": phase,
                "detail": detail,
                "restart": dataclasses.asdict(pos),
                "lr_scale": lr_scale,
            }
            f.write(json.dumps(record) + "\n")
