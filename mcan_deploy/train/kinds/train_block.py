"""``kind = "train_block"``: train one block N_i (report sec. 4.1-4.2) on the inputs the last
generate phase made (LR for N_1), starting orthogonal, inherited from N_(i-1), or from a file."""

from __future__ import annotations

from typing import cast

import torch

from ...config import InitScheme, PhaseConfig
from ...model import MCAN, inherit_block, init_block
from .base import PhaseContext
from .training import TrainingKind, initialise


class TrainBlock(TrainingKind):
    def module(self, model: MCAN, phase: PhaseConfig) -> torch.nn.Module:
        return model.blocks[phase.block - 1]

    def what(self, phase: PhaseConfig) -> str:
        return f"N{phase.block}"

    def init(self, ctx: PhaseContext, model: MCAN, pi: int, phase: PhaseConfig) -> None:
        def fresh(gen: torch.Generator) -> None:
            if phase.init == "inherit":
                inherit_block(model.blocks[phase.block - 1], model.blocks[phase.block - 2])
            else:
                init_block(model.blocks[phase.block - 1], cast(InitScheme, phase.init), gen)

        initialise(ctx, model, pi, phase, fresh)
