"""What every kernel's launcher needs: int32 offset limits, the device to launch on, whether a
map's pixels flatten to one axis. Importing this module does not import Triton."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["MAX_OFFSET", "check_map", "flat", "map_blocks", "max_offset", "on_device"]

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


def map_blocks(c: int, hw: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps): all channels of a pixel block in one program. The
    interpreter pays per program and per loop step, so it takes wide pixel blocks (up to 2^18
    elements), no wider than the map's ``hw`` pixels (its lanes cost time too)."""
    block_c = 1 << max(c - 1, 0).bit_length()
    if device.type == "cuda":
        return block_c, max(16, 4096 // block_c), 4
    return block_c, max(16, min(2**18 // block_c, 1 << max(hw - 1, 0).bit_length())), 4


def check_map(t: torch.Tensor, name: str, limit: int = MAX_OFFSET) -> None:
    """Refuse a map the kernels cannot take: not (B, C, H, W), not a float dtype, or offsets
    within one image beyond ``limit`` (int32's)."""
    if t.dim() != 4:
        raise ValueError(f"{name}: expected (B, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: dtype {t.dtype} is not float32, float16 or bfloat16")
    if max_offset(t) > limit:
        raise ValueError(
            f"{name}: offsets within one image of shape {tuple(t.shape)} exceed int32; "
            "split it (rows) or tile the image"
        )
