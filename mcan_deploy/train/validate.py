"""Validation of a run: a forward function's scores on the validation pairs (``Validator``).

Crops of one size run in batches of at most ``data.val_batch_pixels`` pixels; the periodic
validations run in the training precision, the phase-end score of the saved float32 model in
float32; metrics are computed in float32. With several data folders each one's PSNR is reported
on its own line too; validation-only folders (``data.val_dirs``) are left out of the overall scores.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Plan
from ..data import PairedImages
from ..metrics import psnr, ssim
from .step import StepOptions

log = logging.getLogger(__name__)

__all__ = ["Validator", "val_batches"]


def val_batches(images: Sequence[torch.Tensor], max_pixels: int) -> list[list[int]]:
    """Indices of ``images`` in runs of one shape, each run at most ``max_pixels`` pixels (a
    larger image alone), in the original order within each shape."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(images):
        by_shape.setdefault(tuple(t.shape), []).append(i)
    out: list[list[int]] = []
    for shape, idx in by_shape.items():
        per = max(1, max_pixels // (shape[-1] * shape[-2]))
        out += [idx[k : k + per] for k in range(0, len(idx), per)]
    return out


@dataclass
class Validator:
    """Scores on the validation pairs for one run: ``folders`` are the data folders (training
    folders first, ``trained_on`` of them), ``main`` whether this process reports (rank 0)."""

    plan: Plan
    folders: list[Path]
    trained_on: int
    step_options: StepOptions
    main: bool = True

    @torch.no_grad()
    def __call__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], val: PairedImages, precision: str = "fp32"
    ) -> dict[str, float]:
        """Scores of ``forward`` on ``val``, and how long it took (``val_seconds``)."""
        t0 = time.perf_counter()
        sums = dict(loss=0.0, psnr=0.0, psnr_y=0.0, ssim=0.0, ssim_y=0.0)
        if not self.main:  # only rank 0 reports validation
            return {k: float("nan") for k in sums} | {"val_seconds": 0.0}
        shave = self.plan.data.shave
        per_folder = [0.0] * len(self.folders)
        opts = dataclasses.replace(self.step_options, precision="bf16" if precision == "bf16" else "fp32")
        n = 0
        for idx in val_batches(val.inputs, self.plan.data.val_batch_pixels):
            with opts.autocast():
                outs = forward(opts.layout(torch.stack([val.inputs[i] for i in idx]))).float().clamp(0, 1)
            for out, i in zip(outs, idx):
                out, y, g = out[None], val.targets[i][None], val.groups[i]
                score = psnr(out, y, shave)
                per_folder[g] += score
                if g >= self.trained_on:  # a validation-only folder (data.val_dirs): its own line only
                    continue
                n += 1
                sums["loss"] += float((out - y).abs().mean())
                sums["psnr"] += score
                sums["psnr_y"] += psnr(out, y, shave, y=True)
                sums["ssim"] += ssim(out, y, shave)
                sums["ssim_y"] += ssim(out, y, shave, y=True)
        scores = {k: v / n for k, v in sums.items()}
        if len(self.folders) > 1:  # each camera's test pairs on their own: psnr_data1, psnr_data2, ...
            counts = [val.groups.count(k) for k in range(len(self.folders))]
            for k, (total, count) in enumerate(zip(per_folder, counts)):
                scores[f"psnr_data{k + 1}"] = total / count if count else float("nan")
                log.info("  %s: %.3f dB on %d test pairs", self.folders[k], scores[f"psnr_data{k + 1}"], count)
        scores["val_seconds"] = time.perf_counter() - t0
        return scores
