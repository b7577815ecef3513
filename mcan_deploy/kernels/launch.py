"""What every kernel's launcher needs: int32 offset limits, the device to launch on, whether a
map's pixels flatten to one axis. Importing this module does not import Triton."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["MAX_OFFSET", "flat", "max_offset", "on_device"]

MAX_OFFSET = 2**31 - 1  # in-image offsets are int32; the batch offset is int64


def max_offset(t: torch.Tensor) -> int:
    """Largest element offset within one image (B = 1) of a strided (B, C, H, W) view."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]) if size)


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU, not on the current one (cuda:1 tensors with cuda:0 current)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def flat(*ts: torch.Tensor) -> bool:
    """Whether H and W of every tensor flatten to one pixel axis with stride s_w."""
    return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in ts)
