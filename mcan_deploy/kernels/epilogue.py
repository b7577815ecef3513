"""A convolution's epilogue as one pass, in Triton: for a convolution run without its bias
(cuDNN is faster so, as inductor also found), out = clamp(act(y + bias) + residual) in one read
and one write, with the float16 overflow check of ``conv3x3`` folded in.

Eager PyTorch adds a channels_last convolution's bias in a broadcast pass of its own (2.0 ms on a
12 MP map on an H200, more than the convolution's 1.7 ms), then the ReLU, then the residual: three
passes where this is one. Strided (B, C, H, W) views of any layout; arithmetic in float32; int64
offsets where a map needs them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv3x3 import dtype_limit
from .launch import MAX_OFFSET, max_offset, on_device

__all__ = ["bias_act"]


@triton.jit
def _bias_act_kernel(
    Y,
    BIAS,
    RES,
    OUT,
    FLAG,
    C,
    H,
    W,
    sy_b,
    sy_c,
    sy_h,
    sy_w,
    sr_b,
    sr_c,
    sr_h,
    sr_w,
    so_b,
    so_c,
    so_h,
    so_w,
    RELU: tl.constexpr,
    HAS_RES: tl.constexpr,
    CLAMP: tl.constexpr,
    CHECK: tl.constexpr,
    LIMIT: tl.constexpr,
    I64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)  # pixel blocks on axis 0: CUDA caps grid axes 1 and 2 at 65535
    pid_b = tl.program_id(1)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    if I64:  # maps with offsets beyond int32 within one image
        pix = pix.to(tl.int64)
        c = c.to(tl.int64)
    ph = pix // W
    pw = pix % W
    mask = cmask[:, None] & (pix < H * W)[None, :]
    bb = pid_b.to(tl.int64)
    v = tl.load(Y + bb * sy_b + c[:, None] * sy_c + (ph * sy_h + pw * sy_w)[None, :], mask=mask, other=0.0)
    v = v.to(tl.float32) + tl.load(BIAS + c, mask=cmask, other=0.0)[:, None]
    bad = 0
    if CHECK:
        bad = tl.max(tl.max(tl.where(mask & ((tl.abs(v) > LIMIT) | (v != v)), 1, 0), axis=1), axis=0)
    if RELU:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    if HAS_RES:
        r_off = bb * sr_b + c[:, None] * sr_c + (ph * sr_h + pw * sr_w)[None, :]
        v += tl.load(RES + r_off, mask=mask, other=0.0).to(tl.float32)
    if CLAMP:
        v = tl.minimum(tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL)
    y = v.to(OUT.dtype.element_ty)
    if CHECK:
        yf = y.to(tl.float32)
        bad = tl.maximum(
            bad, tl.max(tl.max(tl.where(mask & ((tl.abs(yf) > LIMIT) | (yf != yf)), 1, 0), axis=1), axis=0)
        )
        if bad > 0:
            tl.store(FLAG, 1)
    tl.store(OUT + bb * so_b + c[:, None] * so_c + (ph * so_h + pw * so_w)[None, :], y, mask=mask)


def bias_act(
    y: torch.Tensor,
    bias: torch.Tensor,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    clamp: bool = False,
    flag: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """clamp(act(y + bias[None, :, None, None]) + residual) in one pass; ``out`` may be ``y``
    (in place), default a new tensor like ``y``. ``flag`` as in ``conv3x3``."""
    for t, name in ((y, "y"), (residual, "residual"), (out, "out")):
        if t is None:
            continue
        if t.dim() != 4 or t.shape != y.shape:
            raise ValueError(f"bias_act: {name} has shape {tuple(t.shape)}, expected {tuple(y.shape)}")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"bias_act: {name} dtype {t.dtype} is not float32, float16 or bfloat16")
    b, c, h, w = y.shape
    if bias.numel() != c:
        raise ValueError(f"bias_act: {bias.numel()} biases for {c} channels")
    out = torch.empty_like(y) if out is None else out
    if b == 0 or h * w == 0:
        return out
    block_c = triton.next_power_of_2(c)
    block_p = max(16, (4096 if y.is_cuda else 16384) // block_c)
    res = residual if residual is not None else y
    with on_device(y):
        _bias_act_kernel[(triton.cdiv(h * w, block_p), b)](
            y,
            bias.to(torch.float32).contiguous(),
            res,
            out,
            flag if flag is not None else bias,
            c,
            h,
            w,
            *y.stride(),
            *res.stride(),
            *out.stride(),
            RELU=relu,
            HAS_RES=residual is not None,
            CLAMP=clamp,
            CHECK=flag is not None,
            LIMIT=dtype_limit(out.dtype),
            I64=max(max_offset(y), max_offset(res), max_offset(out)) > MAX_OFFSET,
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=4,
        )
    return out
