"""One training phase while it runs (``PhaseRun``): what the stage loop, its callbacks and the
phase's end share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...config import PhaseConfig
from ...data import PairedImages, PatchSampler
from ...model import MCAN
from .base import PhaseContext

Forward = Callable[[torch.Tensor], torch.Tensor]
Sample = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PhaseRun:
    """One training phase while it runs: what trains, on what, and how its forward clamps;
    ``train_forward``, ``sample`` and ``no_sync`` are the DDP-wrapped ones under torchrun."""

    ctx: PhaseContext
    model: MCAN
    module: torch.nn.Module
    pi: int
    phase: PhaseConfig
    what: str
    sampler: PatchSampler
    val: PairedImages
    lr_scale: float
    train_forward: Callable[[bool], Forward] | None = None
    sample: Sample | None = None
    no_sync: Callable[[], Any] | None = None

    def forward(self, clamp: bool) -> Forward:
        """The module itself (validation, on rank 0), clamped or not."""
        module = self.module
        return lambda x: module(x, clamp=clamp)
