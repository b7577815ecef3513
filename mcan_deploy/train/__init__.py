"""Phased training: the phase runner (``phases``), one training loop (``loop``), the report."""

from .phases import RunResult, TrainingInterrupted, train

__all__ = ["RunResult", "TrainingInterrupted", "train"]
