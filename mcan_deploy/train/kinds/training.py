"""What the training kinds share: a phase that trains a module (one block, or all of N) stage by
stage through ``loop.run_stage``, checkpointing as it goes, restarting from the last good
checkpoint after a NaN, and ending with the saved float32 model's validation line.

A kind says which module trains, on which pairs, and how it starts (``TrainingKind``'s three
methods); everything else is here, the same for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from ...checkpoint import optimizer_from_flat, save_block
from ...config import PhaseConfig
from ...data import PairedImages, PatchSampler
from ...errors import NonFiniteError, TrainingInterrupted
from ...model import MCAN
from ..callbacks import stage_callbacks
from ..checkpointer import Resume
from ..init_from import load_into
from ..loop import run_stage
from ..rundir import Position
from ..seeding import seeded
from ..step import make_optimizer
from .base import PhaseContext, PhaseData, Start
from .phase_run import Forward, PhaseRun, Sample

log = logging.getLogger(__name__)


class TrainingKind:
    """A phase kind that trains a module of N; see the module docstring."""

    def module(self, model: MCAN, phase: PhaseConfig) -> torch.nn.Module:
        raise NotImplementedError

    def what(self, phase: PhaseConfig) -> str:
        raise NotImplementedError

    def inputs(self, data: PhaseData) -> tuple[PairedImages, PairedImages]:
        """The (train, val) pairs this kind trains on."""
        return data.train, data.val

    def init(self, ctx: PhaseContext, model: MCAN, pi: int, phase: PhaseConfig) -> None:
        """Initialise what the phase trains, on a fresh start of the phase."""
        raise NotImplementedError

    def run(self, ctx: PhaseContext, model: MCAN, pi: int, data: PhaseData, start: Start) -> PhaseData:
        """The phase, restarted from the last good checkpoint after a NaN (``train.on_nonfinite``)."""
        train, val = self.inputs(data)
        pos, resume = start.pos, start.resume
        lr_scale = resume["meta"].get("lr_scale", 1.0) if resume else 1.0
        for attempt in range(ctx.plan.train.nonfinite_retries + 1):
            try:
                self.train_once(ctx, model, pi, pos, resume, train, val, lr_scale)
                break
            except NonFiniteError as exc:
                pos, resume, ctx.metrics, lr_scale = ctx.checkpoints.recover(model, pi, exc, attempt, lr_scale)
        return data

    def train_once(
        self,
        ctx: PhaseContext,
        model: MCAN,
        pi: int,
        pos: Position,
        resume: Resume | None,
        train: PairedImages,
        val: PairedImages,
        lr_scale: float,
    ) -> None:
        phase = ctx.plan.phases[pi]
        t_phase = time.perf_counter()
        if pos.stage == 0 and pos.iter == 0:
            self.init(ctx, model, pi, phase)
        data = ctx.plan.data
        sampler = PatchSampler(
            train,
            data.patch_size,
            data.batch_size,
            data.augment,
            seed=ctx.plan.train.seed * 1000 + pi,
            mix=data.mix or None,
        )
        run = PhaseRun(ctx, model, self.module(model, phase), pi, phase, self.what(phase), sampler, val, lr_scale)
        run.train_forward, run.sample, run.no_sync = _ddp(run)
        for si in range(pos.stage, len(phase.stages)):
            _train_stage(run, si, pos.iter if si == pos.stage else 0, resume)
            resume = None
        finish_phase(run, t_phase)


def initialise(
    ctx: PhaseContext, model: MCAN, pi: int, phase: PhaseConfig, fresh: Callable[[torch.Generator], None]
) -> None:
    """A phase's start: ``keep`` the weights, load them ``from:`` a file, or ``fresh(generator)``
    with the phase's own seed (the same on a fresh run and a resumed one)."""
    if phase.init == "keep":
        return
    if phase.init.startswith("from:"):
        load_into(model, phase)
        log.info("phase %s: starts from %s", phase.name, phase.init.removeprefix("from:"))
        return
    with seeded(ctx.plan.train.seed * 1000 + pi) as gen:
        fresh(gen)
    log.info("phase %s: %s initialisation", phase.name, phase.init)


def _ddp(run: PhaseRun) -> tuple[Callable[[bool], Forward], Sample, Callable[[], Any] | None]:
    """The forward that trains, how a batch is drawn, and the gradient-sync switch: under
    torchrun (DDP) each rank trains on its slice of the same global batch."""
    ctx = run.ctx
    if not ctx.dist.enabled:
        return run.forward, run.sampler.sample, None
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(run.module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = run.sampler.sample()
        return x.tensor_split(ctx.dist.world)[ctx.dist.rank], y.tensor_split(ctx.dist.world)[ctx.dist.rank]

    return (lambda clamp: lambda x: ddp(x, clamp=clamp)), sample, ddp.no_sync


def _train_stage(run: PhaseRun, si: int, start: int, resume: Resume | None) -> None:
    """Stage ``si`` of the phase from iteration ``start``; a stop request writes a checkpoint
    and raises ``TrainingInterrupted``."""
    ctx, phase = run.ctx, run.phase
    stage = phase.stages[si]
    opts = ctx.step_options
    assert run.train_forward is not None and run.sample is not None
    optimizer = make_optimizer(run.module.parameters(), stage, opts.optimizer_impl, capturable=opts.cuda_graphs)
    if resume is not None:  # resuming inside this phase: continue the same draws
        if "rng.sampler" in resume["tensors"]:
            run.sampler.set_state(resume["tensors"]["rng.sampler"])
        if start > 0:
            optimizer_from_flat(optimizer, resume["tensors"], resume["meta"]["optim"])
    callbacks = stage_callbacks(run, si, stage, optimizer)
    run.module.train()
    t0 = time.perf_counter()
    reached = run_stage(
        run.train_forward(stage.clamp),
        optimizer,
        run.sample,
        stage,
        start,
        ctx.plan.train.log_every,
        callbacks,
        progress=f"{ctx.label}{phase.name} {stage.name}" if ctx.progress else None,
        lr_scale=run.lr_scale,
        micro_batches=ctx.plan.data.micro_batches,
        no_sync=run.no_sync,
        options=opts,
    )
    if reached < stage.total_iters:
        ctx.checkpoints.save(
            run.model, Position(run.pi, si, reached), ctx.metrics, optimizer, run.sampler, run.lr_scale
        )
        raise TrainingInterrupted(
            f"stopped at phase {phase.name}, stage {stage.name}, iteration {reached}; "
            f"checkpoint written to {ctx.paths.checkpoint}; run the same command to resume"
        )
    log.info(
        "phase %s stage %s: %d iterations in %.1f s",
        phase.name,
        stage.name,
        stage.total_iters - start,
        time.perf_counter() - t0,
    )
    ctx.checkpoints.save(
        run.model, Position(run.pi, si + 1, 0), ctx.metrics, sampler=run.sampler, lr_scale=run.lr_scale
    )


def finish_phase(run: PhaseRun, t_phase: float) -> None:
    """The saved float32 model's validation, the block file (a block phase), the phase line."""
    ctx, phase = run.ctx, run.phase
    run.module.eval()
    scores = ctx.validate(run.forward(phase.stages[-1].clamp), run.val)
    if phase.kind == "train_block" and ctx.dist.is_main:
        save_block(ctx.paths.block(phase.block), run.module, ctx.plan.model, phase.block)
    ctx.metrics.write(
        kind="phase",
        phase=phase.name,
        stage=phase.stages[-1].name,
        block=run.what,
        iter=phase.stages[-1].total_iters,
        step=ctx.stage_offsets[(run.pi, len(phase.stages))],
        lr=phase.stages[-1].lr[-1],
        seconds=time.perf_counter() - t_phase,
        **scores,
    )
    log.info(
        "phase %s (%s): validation PSNR %.3f dB (Y %.3f dB)", phase.name, run.what, scores["psnr"], scores["psnr_y"]
    )
