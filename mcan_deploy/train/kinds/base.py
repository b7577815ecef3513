"""What a phase kind is given and what it gives back: one small interface (``PhaseKind``), so
that a new kind of phase is one new file in this package and one line in its registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ...config import PhaseConfig, Plan
from ...data import PairedImages
from ...distributed import Dist
from ...model import MCAN
from ..checkpointer import Checkpointer, Resume
from ..rundir import MetricsLog, Position, RunPaths
from ..step import StepOptions
from ..validate import Validator


@dataclass
class PhaseContext:
    """What every phase works with: the run's plan and run directory, where it computes, how it
    validates and checkpoints, and the metrics log (replaced when a NaN restores a checkpoint)."""

    plan: Plan
    paths: RunPaths
    device: torch.device
    dist: Dist
    progress: bool
    step_options: StepOptions
    validate: Validator
    checkpoints: Checkpointer
    metrics: MetricsLog
    stage_offsets: dict[tuple[int, int], int]  # global step at which each (phase, stage) starts
    should_stop: Callable[[], bool]
    label: str = ""  # prefixes progress bars: a packed run's name and a space, else nothing
    packed: int = 1  # runs sharing the device with this one, itself included: its step times are shared


@dataclass
class PhaseData:
    """The pairs a phase may train on: LR (``*_raw``) and the inputs as the last generate phase left them."""

    train_raw: PairedImages
    val_raw: PairedImages
    train: PairedImages
    val: PairedImages


@dataclass
class Start:
    """Where a phase starts: its position (a resumed run may start mid-stage) and the checkpoint
    it continues from, if any."""

    pos: Position
    resume: Resume | None = None


class PhaseKind(Protocol):
    """One kind of phase of a plan (``kind = "..."`` in the TOML)."""

    def what(self, phase: PhaseConfig) -> str:
        """What the phase works on, for logs and metrics: ``N2`` for block 2, ``N`` for all."""
        ...

    def run(self, ctx: PhaseContext, model: MCAN, pi: int, data: PhaseData, start: Start) -> PhaseData:
        """Run phase ``pi`` of ``ctx.plan`` on ``model``; returns the pairs the next phase sees."""
        ...
