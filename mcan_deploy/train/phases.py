"""The phase runner: a plan's phases in order, resumably, into one run directory.

``PhaseRunner.run`` reads as the plan's outline: prepare the run directory (``rundir``), build
N and restore the last checkpoint (``checkpointer``), load the pairs (``inputs``), log the
identity baseline, run each phase through its kind (``kinds``: train a block, generate the next
block's inputs, train all of N), checkpoint after each, and write the model and the report.
Running the same command again continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..checkpoint import save_model
from ..config import Plan
from ..data import PairedImages, split_dirs
from ..distributed import Dist
from ..errors import CheckpointError, MCANError, TrainingInterrupted
from ..model import MCAN, build_model
from ..runners.base import resolve_device
from .checkpointer import Checkpointer, Resume
from .init_from import check_sources
from .inputs import inputs_before, load_pairs
from .kinds import KINDS, PhaseContext, PhaseData, Start
from .rundir import MetricsLog, Position, RunDirectory, RunPaths, RunResult
from .seeding import rank_seed, seeded
from .step import StepOptions
from .validate import Validator

log = logging.getLogger(__name__)

__all__ = ["PhaseRunner", "RunPaths", "RunResult", "TrainingInterrupted", "train"]


class PhaseRunner:
    """Runs one plan into one run directory. Holds no state beyond that run."""

    def __init__(
        self,
        plan: Plan,
        data_root: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        device: str = "auto",
        progress: bool = True,
        should_stop: Callable[[], bool] = lambda: False,
        dist: Dist | None = None,
        label: str = "",
        packed: int = 1,
    ) -> None:
        self.plan = plan
        self.label = label  # a packed run's name: its progress bars say which run they are
        self.packed = packed  # runs trained together with this one, itself included (train/packed.py)
        roots = [data_root] if isinstance(data_root, (str, Path)) else list(data_root)
        if not roots:
            raise MCANError("no data folder given: pass --data (one or more) or set data.dirs in the plan")
        self.data_roots = [Path(r).resolve() for r in roots]
        self.val_roots = [Path(d).resolve() for d in plan.data.val_dirs]  # validated on, not trained on
        self.folders = self.data_roots + self.val_roots
        # run.json's "data": one folder as before, several as a list
        record: str | list[str] = str(self.data_roots[0]) if len(roots) == 1 else [str(r) for r in self.data_roots]
        self.paths = RunPaths(Path(out_dir))
        self.rundir = RunDirectory(self.paths, plan, record)
        self.device = resolve_device(device)
        self.dist = dist or Dist()
        self.progress = progress and self.dist.is_main
        # under torchrun a stop request (SIGTERM reaches every rank, not at the same iteration)
        # stops all ranks at the same iteration
        self.should_stop = (lambda: self.dist.any(should_stop())) if self.dist.enabled else should_stop
        unset = [p.name for p in plan.phases if p.init == "from:"]
        if unset:
            raise MCANError(
                f"phase(s) {', '.join(unset)} start from a trained model file: pass mcan-train --init-from PATH"
            )
        self.init_sources = check_sources(plan.phases, plan.model)  # read and checked before any training
        self.step_options, why = StepOptions.for_run(
            plan.train, self.device, plan.data.micro_batches, self.dist.enabled
        )
        log.info(
            "training steps: %s (precision: %s; CUDA graphs: %s)",
            self.step_options.describe(),
            why,
            self.step_options.graphs_why,
        )
        if plan.data.batch_size % (self.dist.world * plan.data.micro_batches):
            raise MCANError(
                f"data.batch_size = {plan.data.batch_size} does not split over {self.dist.world} "
                f"processes x data.micro_batches = {plan.data.micro_batches}; use a batch size "
                "divisible by --nproc_per_node x nodes x micro_batches"
            )
        self.checkpoints = Checkpointer(self.paths, plan, self.dist)
        self.validate = Validator(plan, self.folders, len(self.data_roots), self.step_options, self.dist.is_main)

    def stage_offsets(self) -> dict[tuple[int, int], int]:
        """Global step at which each (phase, stage) starts: the x axis of the curves."""
        offsets, step = {}, 0
        for pi, phase in enumerate(self.plan.phases):
            for si, stage in enumerate(phase.stages):
                offsets[(pi, si)] = step
                step += stage.total_iters
            offsets[(pi, len(phase.stages))] = step
        return offsets

    def run_info(self) -> dict[str, Any]:
        """``run.json``: data, device, versions, start time and the seeds of every process."""
        seed = self.plan.train.seed
        return {
            "data": self.rundir.data_record,
            "val_data": [str(r) for r in self.val_roots],
            "device": str(self.device),
            "torch": torch.__version__,
            "mcan_deploy": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # every rank draws the same global batch from the shared sampler seed and trains on
            # its own slice of it; the per-rank seeds serve any other randomness of a process
            "world_size": self.dist.world,
            "sampler_seed": seed,
            "rank_seeds": [rank_seed(seed, r) for r in range(self.dist.world)],
            "init_from": [dataclasses.asdict(src) for src in self.init_sources],
        }

    # ----- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        from .report import write_report

        model, pos, resume, keep_lines = self._start()
        metrics = MetricsLog(self.paths.metrics, keep_lines, enabled=self.dist.is_main)
        if pos.phase >= len(self.plan.phases) and self.paths.model.exists():
            if self.dist.is_main and not self.paths.report.exists():
                write_report(self.paths, self.plan, model.to(self.device), None)
            log.info("run %s already finished; nothing to do", self.paths.root)
            return self._result(metrics, already_finished=True)
        model.to(self.device)
        if self.step_options.channels_last:  # values unchanged; files are written contiguous
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        train_raw, val_raw = self._load(pos, keep_lines)
        if not metrics.count:
            identity = self.validate(lambda x: x, val_raw)
            metrics.write(kind="identity", phase="LR", stage="", iter=0, step=0, lr=0.0, **identity)
        if resume is None and pos == Position():  # a first checkpoint: what a NaN in phase 1 restores
            self.checkpoints.save(model, pos, metrics)
        ctx = self._context(metrics)
        data = PhaseData(
            train_raw, val_raw, *inputs_before(self.plan, self.paths, pos.phase, train_raw, val_raw, self.device)
        )
        t_run = time.perf_counter()
        for pi in range(pos.phase, len(self.plan.phases)):
            phase = self.plan.phases[pi]
            log.info("phase %s: %s %s", phase.name, phase.kind, KINDS[phase.kind].what(phase))
            data = KINDS[phase.kind].run(ctx, model, pi, data, Start(pos, resume))
            resume, pos = None, Position(pi + 1)
            self.checkpoints.save(model, pos, ctx.metrics)
        model.eval()
        if self.dist.is_main:
            save_model(self.paths.model, model, plan=[p.name for p in self.plan.phases])
            write_report(self.paths, self.plan, model, val_raw)
        self.dist.barrier()
        log.info("run finished in %.1f s: %s", time.perf_counter() - t_run, self.paths.root)
        return self._result(ctx.metrics, already_finished=False)

    def _start(self) -> tuple[MCAN, Position, Resume | None, int]:
        """The run directory checked and made, N built, the last checkpoint restored (and the
        metrics line count it was taken at)."""
        for root in self.folders:
            split_dirs(root)  # a wrong --data or val_dirs fails before the run directory is made
        try:
            self.rundir.prepare(self.dist, self.run_info())
        except OSError as exc:
            raise CheckpointError(
                f"{self.paths.root}: cannot use as the run directory "
                f"({exc.strerror or exc}); pass a writable folder to --out"
            ) from None
        with seeded(self.plan.train.seed):
            model = build_model(self.plan.model)
        torch.manual_seed(rank_seed(self.plan.train.seed, self.dist.rank))
        pos, resume, keep_lines = self.checkpoints.load(model)
        return model, pos, resume, keep_lines

    def _load(self, pos: Position, keep_lines: int) -> tuple[PairedImages, PairedImages]:
        """The pairs on the device, the same on every rank (or an error before any collective)."""
        train_raw, val_raw = load_pairs(self.plan, self.data_roots, self.val_roots, self.device, self.progress)
        # ranks that read different checkpoints or data would call collectives out of step
        self.dist.check_same("the checkpoint position", (pos, keep_lines))
        self.dist.check_same(
            "the training data", [(n, tuple(t.shape)) for d in (train_raw, val_raw) for n, t in zip(d.names, d.targets)]
        )
        return train_raw, val_raw

    def _context(self, metrics: MetricsLog) -> PhaseContext:
        return PhaseContext(
            self.plan,
            self.paths,
            self.device,
            self.dist,
            self.progress,
            self.step_options,
            self.validate,
            self.checkpoints,
            metrics,
            self.stage_offsets(),
            self.should_stop,
            f"{self.label} " if self.label else "",
            self.packed,
        )

    def _result(self, metrics: MetricsLog, already_finished: bool) -> RunResult:
        records = metrics.records()
        identity = next((r for r in records if r["kind"] == "identity"), {})
        return RunResult(self.paths, already_finished, [r for r in records if r["kind"] == "phase"], identity)


def train(
    plan: Plan,
    data_root: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    dist: Dist | None = None,
) -> RunResult:
    """Run ``plan`` on the pairs under ``data_root`` (``train/`` and ``test/``; several folders are
    trained on together, mixed by ``data.mix``) into ``out_dir``,
    resuming from its checkpoint if the folder holds an unfinished run of the same plan."""
    return PhaseRunner(plan, data_root, out_dir, device, progress, should_stop, dist).run()
