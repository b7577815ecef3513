"""Phased training: the phase runner (``phases``) over the run directory (``rundir``), the
checkpoints (``checkpointer``), validation (``validate``), one unit per phase kind (``kinds``),
one training loop (``loop``) and step (``step``), and the report."""

from ..errors import TrainingInterrupted
from .phases import train
from .rundir import RunResult

__all__ = ["RunResult", "TrainingInterrupted", "train"]
