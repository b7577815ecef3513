"""The 3x3 convolution of ``conv3x3`` with its input and weights brought in by the tensor
memory accelerator (TMA, sm_90 and later), for the 16-bit channels_last maps of the fused path.

``conv3x3``'s own kernel gathers each tap's input tile with pointer loads: addresses and masks
in registers, and the padding's zeros by masks. Here each tap's tile is one rectangular box of
the (B, H, W, C) map, a run of ``BLOCK_M`` pixels of one row: the TMA copies it into shared
memory, zero-filling whatever lies outside the map (the convolution's padding, and the image's
edges for an output region), and the tensor cores read both operands from there. Compiled for
sm_90, the loop is nine asynchronous TMA copies feeding asynchronous wgmma products, with no
pass through registers (``benchmarks/compile_check.py`` reports it). Whether that is faster
than the pointer kernel is measured on the GPU, where ``FusedBlocks.choose`` times both.

Same arguments, same epilogue, same results as ``conv3x3``'s kernel; ``conv3x3`` launches this
one for a ``Config`` with ``tma`` when ``tma_ready`` holds, and its own kernel otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .conv_epilogue import dot, store_tile

__all__ = ["descriptors", "tma_ready"]

MAX_BOX = 256  # pixels (and channels) in one TMA box side


def _bhw_strides(x: torch.Tensor) -> list[int]:
    """x's batch, row and pixel strides, a dimension of size 1 given its channels_last stride:
    it never steps, and torch may report any stride for it (a 1x1 map's are often 1)."""
    b, c, h, w = x.shape
    packed = (h * w * c, w * c, c)
    return [s if n > 1 else p for n, s, p in zip((b, h, w), (x.stride(0), x.stride(2), x.stride(3)), packed)]


def tma_ready(x: torch.Tensor, weight: torch.Tensor, block_m: int, block_k: int) -> bool:
    """Whether a TMA descriptor can describe ``x`` (B, C, H, W) and the packed ``weight``: a
    16-bit dtype, channels innermost (channels_last, or one channel), every other stride and the
    base 16-byte aligned, a box of at most 256 pixels."""
    if x.element_size() != 2 or weight.element_size() != 2 or block_m > MAX_BOX or block_k > MAX_BOX:
        return False
    if x.shape[1] > 1 and x.stride(1) != 1:
        return False
    aligned = all((s * 2) % 16 == 0 for s in _bhw_strides(x))
    return aligned and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0


def descriptors(
    x: torch.Tensor, weight: torch.Tensor, block_m: int, block_k: int
) -> tuple[TensorDescriptor, TensorDescriptor]:
    """The input as a (B, H, W, C) map in boxes of (1, 1, block_m, block_k), and the packed
    (taps, K, N) weights as (taps x K, N) in boxes of (block_k, N)."""
    b, c, h, w = x.shape
    xd = TensorDescriptor(x, [b, h, w, c], [*_bhw_strides(x), 1], [1, 1, block_m, block_k])
    wf = weight.reshape(-1, weight.shape[2])
    return xd, TensorDescriptor.from_tensor(wf, [block_k, weight.shape[2]])


@triton.jit
def conv3x3_tma_kernel(
    XD,
    WD,
    BIAS,
    RES,
    OUT,
    PART,
    FLAG,
    SCALE,
    HO,
    WO,
    OY,
    OX,
    COUT,
    TILES_W,
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
    DOT: tl.constexpr,
    I64: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """OUT[b, n, p, q] = epilogue(BIAS[n] + sum X[b, k, p+OY+dy, q+OX+dx] W[tap, k, n]) for one
    run of BLOCK_M pixels of output row p; X outside the map is zero (the TMA's fill)."""
    pid_m = tl.program_id(0)  # (row, run) on axis 0: CUDA caps grid axes 1 and 2 at 65535
    pid_b = tl.program_id(1)
    row = pid_m // TILES_W
    q0 = (pid_m % TILES_W) * BLOCK_M
    q = q0 + tl.arange(0, BLOCK_M)
    p = tl.full([BLOCK_M], 0, tl.int32) + row
    mmask = q < WO
    n = tl.arange(0, BLOCK_N)
    if I64:  # maps with offsets beyond int32 within one image
        p = p.to(tl.int64)
        q = q.to(tl.int64)
        n = n.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for tap in range(9):  # Triton pipelines the copies
        for kc in tl.static_range(K_CHUNKS):
            a = XD.load([pid_b, row + OY - 1 + tap // 3, q0 + OX - 1 + tap % 3, kc * BLOCK_K])
            w = WD.load([(tap * K_CHUNKS + kc) * BLOCK_K, 0])
            acc = dot(acc, a.reshape(BLOCK_M, BLOCK_K), w, DOT)
    store_tile(acc, p, q, mmask, n, pid_b, pid_m, BIAS, RES, OUT, PART, FLAG, SCALE, COUT,
               sr_b, sr_c, sr_h, sr_w, so_b, so_c, so_h, so_w,
               RELU, HAS_SCALE, HAS_RES, CLAMP, SUMS, CHECK, LIMIT, BLOCK_N)  # fmt: skip
