"""Upscale image files with a trained model: which files (``jobs``), one file in and out
(``files``), the ordered bounded pipeline (``pipeline``) and the batch that runs it with its
error policy and statistics (``batch``)."""

from .batch import BatchStats, default_prefetch, read_first, upscale_file, upscale_jobs
from .files import Prepared, fetch_result, prepare, resize, write_result
from .jobs import Job, plan_jobs

__all__ = [
    "BatchStats",
    "Job",
    "Prepared",
    "default_prefetch",
    "fetch_result",
    "plan_jobs",
    "prepare",
    "read_first",
    "resize",
    "upscale_file",
    "upscale_jobs",
    "write_result",
]
