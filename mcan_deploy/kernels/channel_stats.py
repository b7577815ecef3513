"""Channel statistics of a feature map in one read, in Triton: per-channel sums (the pool of
channel attention, or of a product of two maps for its gradient) and, optionally, each channel's
largest magnitude (what float16's guard on the cuDNN path bounds the next convolutions with).

A grid of G programs per image each sums a strided set of pixel blocks into one row of partials
(B, G, C), which a reduction adds up: no atomics on C addresses. Strided (B, C, H, W) views of any
layout; arithmetic in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .launch import check_map, flat, on_device

__all__ = ["channel_sums", "channel_sums_max", "n_groups", "partial_sums"]


@triton.jit
def _channel_sums_kernel(
    A,
    B,
    PART,
    PMAX,
    C,
    H,
    W,
    G,
    sa_b,
    sa_c,
    sa_h,
    sa_w,
    sb_b,
    sb_c,
    sb_h,
    sb_w,
    HAS_B: tl.constexpr,
    MAXES: tl.constexpr,
    FLAT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """PART[b, g, c] = sum over pixels p = g, g + G, ... (in blocks) of A[b, c, p] (* B[b, c, p]);
    with MAXES, PMAX[b, g, c] = the largest |A[b, c, p]| over the same pixels.

    FLAT: H and W flatten to one axis of stride s_w (NCHW, channels_last; not cropped views),
    which keeps the pixel axis provably contiguous for NCHW and the loads vectorised."""
    pid_b = tl.program_id(0)
    pid_g = tl.program_id(1)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    a_base = A + pid_b.to(tl.int64) * sa_b
    b_base = B + pid_b.to(tl.int64) * sb_b
    hw = H * W
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    big = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for start in range(pid_g * BLOCK_P, hw, G * BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        if FLAT:
            pa = p * sa_w
            pb = p * sb_w
        else:
            pa = (p // W) * sa_h + (p % W) * sa_w
            pb = (p // W) * sb_h + (p % W) * sb_w
        mask = cmask[:, None] & (p < hw)[None, :]
        a = tl.load(a_base + c[:, None] * sa_c + pa[None, :], mask=mask, other=0.0).to(tl.float32)
        if MAXES:
            big = tl.maximum(big, tl.abs(a), propagate_nan=tl.PropagateNan.ALL)
        if HAS_B:
            b = tl.load(b_base + c[:, None] * sb_c + pb[None, :], mask=mask, other=0.0).to(tl.float32)
            a = a * b
        acc += a
    tl.store(PART + (pid_b * G + pid_g) * C + c, tl.sum(acc, axis=1), mask=cmask)
    if MAXES:
        tl.store(PMAX + (pid_b * G + pid_g) * C + c, tl.max(big, axis=1), mask=cmask)


def n_groups(batch: int, hw: int, block_p: int, device: torch.device) -> int:
    """Programs per image for the reduction: enough to fill the GPU, no more than pixel blocks."""
    if device.type == "cuda":
        target = 8 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2
    return max(1, min(triton.cdiv(hw, block_p), triton.cdiv(target, max(batch, 1))))


def partial_sums(a: torch.Tensor, b: torch.Tensor | None = None, maxes: torch.Tensor | None = None) -> torch.Tensor:
    """(B, G, C) float32 partial channel sums of a (or of a * b); G programs per image. With
    ``maxes`` (B, C) float32, also each channel's largest |a|, written there."""
    check_map(a, "a")
    n, c, h, w = a.shape
    block_c, block_p, warps = launch.map_blocks(c, h * w, a.device)
    groups = n_groups(n, h * w, block_p, a.device)
    part = torch.empty(n, groups, c, device=a.device, dtype=torch.float32)
    pmax = torch.empty(n, groups if maxes is not None else 0, c, device=a.device, dtype=torch.float32)
    if n == 0:
        return part
    if h * w == 0:
        if maxes is not None:
            maxes.zero_()
        return part.zero_()
    bb = a if b is None else b
    if b is not None:
        check_map(b, "b")
        if b.shape != a.shape:
            raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    with on_device(a):
        _channel_sums_kernel[(n, groups)](
            a,
            bb,
            part,
            pmax if maxes is not None else part,
            c,
            h,
            w,
            groups,
            *a.stride(),
            *bb.stride(),
            HAS_B=b is not None,
            MAXES=maxes is not None,
            FLAT=flat(a, bb),
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=warps,
        )
    if maxes is not None:
        torch.amax(pmax, dim=1, out=maxes)
    return part


def channel_sums(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) float32 sums over H and W of ``a`` (or of ``a * b``): the reduction pass."""
    return partial_sums(a, b).sum(1)


def channel_sums_max(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) float32 sums over H and W of ``a`` and each channel's largest |a|, in one read: the
    reduction pass of channel attention where float16's guard also needs the map's extent."""
    maxes = torch.empty(a.shape[0], a.shape[1], device=a.device, dtype=torch.float32)
    return partial_sums(a, maxes=maxes).sum(1), maxes
