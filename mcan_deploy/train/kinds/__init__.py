"""The kinds of phase a plan is made of, one file each, behind ``base.PhaseKind``:
``train_block`` (one block N_i, Adadelta then Adam), ``train_joint`` (all of N, phase 4) and
``generate`` (LR_i = N_i+(LR_(i-1)), the next block's input)."""

from __future__ import annotations

from .base import PhaseContext, PhaseData, PhaseKind, Start
from .generate import Generate
from .train_block import TrainBlock
from .train_joint import TrainJoint

KINDS: dict[str, PhaseKind] = {"train_block": TrainBlock(), "train_joint": TrainJoint(), "generate": Generate()}

__all__ = ["KINDS", "PhaseContext", "PhaseData", "PhaseKind", "Start"]
