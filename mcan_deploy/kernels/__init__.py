"""Fused Triton kernels. Importing this package does not import Triton; ``rcab`` does.

``fused_available(device)`` says whether the fused path can run on a device here: Triton is
installed and the tensors are on CUDA, or Triton's interpreter is on (``TRITON_INTERPRET=1`` set
before the first import of ``mcan_deploy.kernels.rcab``), which runs the kernels on CPU tensors.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

__all__ = ["fused_available", "interpreter_on"]


def interpreter_on() -> bool:
    """Whether Triton's CPU interpreter is requested (the CI path for the kernels)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _why_not(device_type: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'mcan-deploy[gpu]')"
    if device_type == "cuda" and torch.cuda.is_available():
        return None
    if device_type == "cpu" and interpreter_on():
        return None
    return f"Triton cannot run on {device_type} tensors here (no CUDA device and TRITON_INTERPRET is not 1)"


@functools.cache
def _log_fallback(device_type: str, reason: str) -> None:
    # cached: the fallback is logged once per device type and process, not once per RCAB call
    log.warning("rcab_impl=triton: %s; the torch path runs instead", reason)


def fused_available(device: torch.device, warn: bool = True) -> bool:
    """True where the Triton RCAB kernels can run on tensors on ``device``; otherwise logs the
    reason once (with ``warn``) and returns False, so callers take the torch path."""
    reason = _why_not(device.type)
    if reason is not None and warn:
        _log_fallback(device.type, reason)
    return reason is None
