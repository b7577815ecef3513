"""Typed exceptions of mcan-deploy.

Library code raises these with one-line messages that name the file, the value and the fix;
only ``mcan_deploy.cli`` turns them into exit codes.
"""

from __future__ import annotations


class MCANError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MCANError):
    """A phase plan or model configuration is invalid (unknown key, bad value, wrong type)."""


class ImageReadError(MCANError):
    """An image file is missing, unreadable or of an unsupported kind."""


class DataError(MCANError):
    """A dataset folder is empty, mis-paired, or a pair's sizes do not fit an integer scale."""


class CheckpointError(MCANError):
    """A model file, checkpoint or run directory is missing, corrupt or does not match."""


class NonFiniteError(MCANError):
    """A loss or a tensor about to be saved is NaN or infinite (training diverged)."""


class TrainingDiverged(MCANError):
    """Training hit non-finite values and the plan says stop (or its retries are used up)."""


class TrainingInterrupted(MCANError):
    """Training stopped on request (Ctrl-C, SIGTERM) after writing a checkpoint."""


class StudyError(MCANError):
    """A study's run directory is missing or unfinished, or its runs cannot be compared."""


class OpenVINOError(MCANError):
    """An OpenVINO conversion, file, int8 export or run failed."""
