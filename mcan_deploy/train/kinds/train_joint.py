"""``kind = "train_joint"``: fine-tune all of N = N_3(N_2(N_1(x))) on LR (report sec. 4, phase 4),
keeping the trained blocks (``init = "keep"``) or starting every block afresh (the single
back-propagation baseline)."""

from __future__ import annotations

from typing import cast

import torch

from ...config import InitScheme, PhaseConfig
from ...data import PairedImages
from ...model import MCAN, init_block
from .base import PhaseContext, PhaseData
from .training import TrainingKind, initialise


class TrainJoint(TrainingKind):
    def module(self, model: MCAN, phase: PhaseConfig) -> torch.nn.Module:
        return model

    def what(self, phase: PhaseConfig) -> str:
        return "N"

    def inputs(self, data: PhaseData) -> tuple[PairedImages, PairedImages]:
        return data.train_raw, data.val_raw  # N runs on LR, whatever the generate phases made

    def init(self, ctx: PhaseContext, model: MCAN, pi: int, phase: PhaseConfig) -> None:
        def fresh(gen: torch.Generator) -> None:
            for block in model.blocks:
                init_block(block, cast(InitScheme, phase.init), gen)

        initialise(ctx, model, pi, phase, fresh)
