"""What one stage's loop reports to (``loop.LoopCallbacks``): a metrics line every
``train.log_every`` iterations, a validation every ``train.val_every`` and a checkpoint every
``train.checkpoint_every``, with the stop request and the cross-process mean of the loss."""

from __future__ import annotations

import torch

from ..config import StageConfig
from .kinds.phase_run import PhaseRun
from .loop import LoopCallbacks
from .rundir import Position


def stage_callbacks(run: PhaseRun, si: int, stage: StageConfig, optimizer: torch.optim.Optimizer) -> LoopCallbacks:
    """The callbacks of stage ``si`` of a running phase, bound to that stage's values."""
    ctx, cfg = run.ctx, run.ctx.plan
    forward = run.forward(stage.clamp)  # validation: the module itself, on rank 0
    offset = ctx.stage_offsets[(run.pi, si)]
    base = dict(phase=run.phase.name, stage=stage.name, block=run.what)

    def on_log(it: int, loss: float, lr: float, sec: float, data_share: float) -> None:
        ctx.metrics.write(
            kind="train",
            **base,
            iter=it,
            step=offset + it,
            loss=loss,
            lr=lr,
            sec_per_iter=sec,
            data_share=data_share,
            precision=ctx.step_options.precision,
            cuda_graphs=ctx.step_options.cuda_graphs,
            cuda_graphs_why=ctx.step_options.graphs_why,
            **({"packed": ctx.packed} if ctx.packed > 1 else {}),  # sec_per_iter is the shared rate
        )

    def on_iter_end(it: int) -> None:
        if cfg.train.val_every and it % cfg.train.val_every == 0 and it < stage.total_iters:
            run.module.eval()
            ctx.metrics.write(
                kind="val",
                **base,
                iter=it,
                step=offset + it,
                lr=stage.lr_at(it - 1) * run.lr_scale,
                **ctx.validate(forward, run.val, ctx.step_options.precision),
            )
            run.module.train()
        if cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0 and it < stage.total_iters:
            ctx.checkpoints.save(run.model, Position(run.pi, si, it), ctx.metrics, optimizer, run.sampler, run.lr_scale)

    return LoopCallbacks(on_log, on_iter_end, ctx.should_stop, ctx.dist.mean)
