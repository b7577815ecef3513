"""``kind = "generate"``: LR_i = N_i+(LR_(i-1)) over the training and validation inputs, the
next block's training data (report sec. 4.2), cached in ``generated/`` for resuming. Batched
by size, in float32: a lower precision would change what the next block trains on."""

from __future__ import annotations

import logging
import time

import torch

from ...checkpoint import check_finite, save_tensors
from ...config import PhaseConfig
from ...model import MCAN
from ..validate import val_batches
from .base import PhaseContext, PhaseData, Start

log = logging.getLogger(__name__)


class Generate:
    def what(self, phase: PhaseConfig) -> str:
        return f"N{phase.block}"

    @torch.no_grad()
    def run(self, ctx: PhaseContext, model: MCAN, pi: int, data: PhaseData, start: Start) -> PhaseData:
        from tqdm.auto import tqdm

        phase = ctx.plan.phases[pi]
        block = model.blocks[phase.block - 1].eval()
        d = ctx.dist
        t_phase = time.perf_counter()

        def run(xs: list[torch.Tensor], split: str) -> list[torch.Tensor]:
            # float32 (LR_i is the next block's data), images of one size in batches of at most
            # data.val_batch_pixels; batch b is made by rank b % world, then each image is
            # broadcast from it to every rank
            out = [torch.empty_like(x) for x in xs]
            owner = [0] * len(xs)
            with tqdm(
                total=len(xs),
                desc=f"{ctx.label}{phase.name} {split}",
                unit="img",
                leave=False,
                disable=not ctx.progress,
            ) as bar:
                for b, idx in enumerate(val_batches(xs, ctx.plan.data.val_batch_pixels)):
                    for i in idx:
                        owner[i] = b % d.world
                    if b % d.world == d.rank:
                        for i, y in zip(idx, block(torch.stack([xs[i] for i in idx]), clamp=True)):
                            out[i] = y.contiguous()
                    bar.update(len(idx))
            return [d.broadcast_(t, owner[i]) for i, t in enumerate(out)]

        train, val = (
            data.train.with_inputs(run(data.train.inputs, "train")),
            data.val.with_inputs(run(data.val.inputs, "val")),
        )
        tensors = {f"train.{i}": t for i, t in enumerate(train.inputs)}
        tensors.update({f"val.{i}": t for i, t in enumerate(val.inputs)})
        check_finite(tensors, ctx.paths.generated(phase.name))
        if d.is_main:
            save_tensors(ctx.paths.generated(phase.name), tensors, {"phase": phase.name})
        seconds = time.perf_counter() - t_phase  # the generation itself, without its validation
        scores = ctx.validate(lambda x: x, val)
        ctx.metrics.write(
            kind="phase",
            phase=phase.name,
            stage="generate",
            block=self.what(phase),
            iter=0,
            step=ctx.stage_offsets[(pi, 0)],
            lr=0.0,
            seconds=seconds,
            **scores,
        )
        log.info(
            "phase %s: generated LR_%d from N%d+ (validation PSNR %.3f dB)",
            phase.name,
            phase.block,
            phase.block,
            scores["psnr"],
        )
        return PhaseData(data.train_raw, data.val_raw, train, val)
