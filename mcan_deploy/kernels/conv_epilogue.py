"""What both 3x3 convolution kernels share (``conv3x3``'s pointer loads, ``conv3x3_tma``'s tensor
memory accelerator loads): the product of one input tile with one weight tile, and the epilogue
that turns a tile's float32 sums into the stored output (bias, ReLU, residual, clamp, channel
sums, overflow flag). Triton inlines these helpers: the compiled kernels are as if written whole.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(acc, a, w, DOT: tl.constexpr):
    """acc + a @ w: the dtype's own tensor-core product (DOT 0), IEEE float32 (1: float32 where
    TF32 is off, and the CPU), or float32 operands (2: bfloat16 in the interpreter, which has no
    bfloat16 product)."""
    if DOT == 2:
        return acc + tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    if DOT == 1:
        return acc + tl.dot(a, w, input_precision="ieee")
    return acc + tl.dot(a, w)


@triton.jit
def beyond(v, mask, LIMIT: tl.constexpr):
    """1 where any masked value of v is NaN or beyond LIMIT in magnitude, else 0."""
    return tl.max(tl.max(tl.where(mask & ((tl.abs(v) > LIMIT) | (v != v)), 1, 0), axis=1), axis=0)


@triton.jit
def store_tile(
    acc,
    p,
    q,
    mmask,
    n,
    pid_b,
    pid_m,
    BIAS,
    RES,
    OUT,
    PART,
    FLAG,
    SCALE,
    COUT,
    sr_b,
    sr_c,
    sr_h,
    sr_w,
    so_b,
    so_c,
    so_h,
    so_w,
    RELU: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_RES: tl.constexpr,
    CLAMP: tl.constexpr,
    SUMS: tl.constexpr,
    CHECK: tl.constexpr,
    LIMIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """OUT[b, n, p, q] = epilogue(acc + BIAS[n]) for the tile's pixels (p, q) where ``mmask``:
    ReLU, times SCALE[b, n], plus RES, clamped, in that order; with SUMS the tile's channel
    sums of what it stores, one row of PART per program."""
    v = acc + tl.load(BIAS + n)[None, :]
    omask = mmask[:, None] & (n < COUT)[None, :]
    bad = 0
    if CHECK:  # before the ReLU, which would hide an overflow to -inf
        bad = beyond(v, omask, LIMIT)
    if RELU:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    if HAS_SCALE:  # channel attention's gate, known before the convolution (runners/conv_sums.py)
        v = v * tl.load(SCALE + pid_b * BLOCK_N + n)[None, :]
    if HAS_RES:
        r_off = pid_b.to(tl.int64) * sr_b + p[:, None] * sr_h + q[:, None] * sr_w + n[None, :] * sr_c
        v += tl.load(RES + r_off, mask=omask, other=0.0).to(tl.float32)
    if CLAMP:
        v = tl.minimum(tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL)
    y = v.to(OUT.dtype.element_ty)
    if CHECK:
        bad = tl.maximum(bad, beyond(y.to(tl.float32), omask, LIMIT))
        if bad > 0:
            tl.store(FLAG, 1)
    if SUMS:  # of the stored values, as a pool of the stored map would take them
        part = tl.sum(tl.where(omask, y.to(tl.float32), 0.0), axis=0)
        tl.store(PART + (pid_b * tl.num_programs(0) + pid_m) * BLOCK_N + n, part)
    o_off = pid_b.to(tl.int64) * so_b + p[:, None] * so_h + q[:, None] * so_w + n[None, :] * so_c
    tl.store(OUT + o_off, y, mask=omask)
