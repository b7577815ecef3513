"""3x3 convolutions for inference with their epilogue inside, in Triton (implicit GEMM).

On a GPU a 3x3 convolution of the 64-channel map is the work; everything around it (the bias,
the ReLU, the residual add, the channel means of channel attention) is a pass over a 1.5 GB map
(12 MP) when it runs on its own, and eager PyTorch runs each as its own pass. Here one kernel
reads the input once per tap (from cache after the first), multiplies on the tensor cores and
applies, before its single write:

- the bias, then optionally ReLU (``relu``), a residual map (``residual``: the long skip and the
  block's "+ input"), the clamp of N_i+ (``clamp``);
- per-program partial channel sums of what it stores (``sums``: the pool of channel attention),
  one row of (B, programs, C) per program, summed afterwards by a reduction, not by atomics;
- a non-finite check (``flag``): one int32 set to 1 when any value is beyond the output dtype's
  range before the ReLU or after the epilogue, which is how float16 is guarded without a pass of
  its own (a ReLU would turn an overflow to -inf into a silently wrong zero).

A call computes an output *region* of the input's coordinates (``origin``, ``size``): pixels
outside the input tensor are zeros, as the convolution's padding is. The exact tiled plan uses
this to run over tiles of full-size maps without gathering windows: the input is a view of the
whole map, so the only zeros read are the image's own borders.

The weights are packed once (``pack``): (9, K, N) taps x input x output channels, zero-padded
to the kernel's block sizes, so the inner loop loads them without masks. Inputs and outputs are
read and written through their strides (NCHW, channels_last, cropped views), offsets within one
image in int32, or int64 where a map needs it. Inference only: no gradients.

The oracle is ``mcan_deploy.kernels.reference.conv3x3_epilogue`` (float64). Import this module only
where Triton is installed; ``mcan_deploy.kernels.fused_available`` says where it can run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .conv3x3_tma import conv3x3_tma_kernel, descriptors, tma_ready
from .conv_epilogue import dot, store_tile
from .launch import MAX_OFFSET, max_offset, on_device

__all__ = ["Config", "PackedConv", "conv3x3", "default_config", "dtype_limit", "gpu_configs", "pack"]


@triton.jit
def _pixels(pid_m, HO, WO, BLOCK_M: tl.constexpr, ROWS: tl.constexpr):
    """(p, q, mask) of a program's output pixels: a run of BLOCK_M in raster order (ROWS 1), or a
    ROWS x (BLOCK_M // ROWS) tile, whose taps share more input lines (through L1: CACHE ".ca")."""
    if ROWS == 1:
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        return m // WO, m % WO, m < HO * WO
    TW: tl.constexpr = BLOCK_M // ROWS
    tiles_w = tl.cdiv(WO, TW)
    i = tl.arange(0, BLOCK_M)
    p = (pid_m // tiles_w) * ROWS + i // TW
    q = (pid_m % tiles_w) * TW + i % TW
    return p, q, (p < HO) & (q < WO)


@triton.jit
def _im2col_product(
    acc, x_base, iy0, ix0, mmask, kk, w_tile, CIN, HX, WX, sx_c, sx_h, sx_w, DOT: tl.constexpr, CACHE: tl.constexpr
):
    """acc + the nine taps as one product: the input gathered as (pixels, tap x CIN + c)."""
    tap = kk // CIN
    iy = iy0[:, None] + (tap // 3)[None, :]
    ix = ix0[:, None] + (tap % 3)[None, :]
    valid = mmask[:, None] & (kk < 9 * CIN)[None, :] & (iy >= 0) & (iy < HX) & (ix >= 0) & (ix < WX)
    a_off = iy * sx_h + ix * sx_w + (kk % CIN)[None, :] * sx_c
    a = tl.load(x_base + a_off, mask=valid, other=0.0, cache_modifier=CACHE)
    return dot(acc, a, tl.load(w_tile), DOT)


@triton.jit
def _tap_products(
    acc,
    x_base,
    iy0,
    ix0,
    mmask,
    kk,
    w_tile,
    CIN,
    HX,
    WX,
    sx_c,
    sx_h,
    sx_w,
    DOT: tl.constexpr,
    CACHE: tl.constexpr,
    I64: tl.constexpr,
    K_CHUNKS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """acc + one product per tap and chunk of input channels: one loop over the nine taps
    (Triton pipelines its loads), the channel chunks unrolled inside."""
    # what does not change from tap to tap, once (the compiler would hoist it; Triton's
    # interpreter, which runs the CPU tests, pays for each tensor operation)
    pix0 = iy0 * sx_h + ix0 * sx_w
    for tap in range(9):
        iy = iy0 + tap // 3
        ix = ix0 + tap % 3
        valid = mmask & (iy >= 0) & (iy < HX) & (ix >= 0) & (ix < WX)
        if I64:  # products in int64 (a row's stride times 2 may not fit int32)
            x_tap = x_base + (iy * sx_h + ix * sx_w)[:, None]
        else:
            x_tap = x_base + (pix0 + ((tap // 3) * sx_h + (tap % 3) * sx_w))[:, None]
        for kc in tl.static_range(K_CHUNKS):
            k = kc * BLOCK_K + kk
            a_mask = valid[:, None] & (k < CIN)[None, :]
            a = tl.load(x_tap + k[None, :] * sx_c, mask=a_mask, other=0.0, cache_modifier=CACHE)
            w = tl.load(w_tile + (tap * K_CHUNKS + kc) * (BLOCK_K * BLOCK_N))
            acc = dot(acc, a, w, DOT)
    return acc


@triton.jit
def _conv3x3_kernel(
    X,
    WP,
    BIAS,
    RES,
    OUT,
    PART,
    FLAG,
    SCALE,
    HX,
    WX,
    HO,
    WO,
    OY,
    OX,
    CIN,
    COUT,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
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
    IM2COL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROWS: tl.constexpr,
    CACHE: tl.constexpr,
):
    """OUT[b, n, p, q] = epilogue(BIAS[n] + sum X[b, k, p+OY+dy, q+OX+dx] WP[tap, k, n]), region
    (p, q) in [0, HO) x [0, WO); X outside [0, HX) x [0, WX) is zero."""
    pid_m = tl.program_id(0)  # pixel blocks on axis 0: CUDA caps grid axes 1 and 2 at 65535
    pid_b = tl.program_id(1)
    p, q, mmask = _pixels(pid_m, HO, WO, BLOCK_M, ROWS)
    n = tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    if I64:  # maps with offsets beyond int32 within one image (above ~33 MP at 64 channels)
        p = p.to(tl.int64)
        q = q.to(tl.int64)
        n = n.to(tl.int64)
        kk = kk.to(tl.int64)
    x_base = X + pid_b.to(tl.int64) * sx_b
    iy0 = p + (OY - 1)  # the top-left tap's input pixel
    ix0 = q + (OX - 1)
    w_tile = WP + kk[:, None] * BLOCK_N + n[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if IM2COL:  # few input channels (the head's 3): all nine taps as one product, K = 9 x CIN
        acc = _im2col_product(acc, x_base, iy0, ix0, mmask, kk, w_tile, CIN, HX, WX, sx_c, sx_h, sx_w, DOT, CACHE)
    else:
        acc = _tap_products(acc, x_base, iy0, ix0, mmask, kk, w_tile, CIN, HX, WX, sx_c, sx_h, sx_w,
                            DOT, CACHE, I64, K_CHUNKS, BLOCK_K, BLOCK_N)  # fmt: skip
    store_tile(acc, p, q, mmask, n, pid_b, pid_m, BIAS, RES, OUT, PART, FLAG, SCALE, COUT,
               sr_b, sr_c, sr_h, sr_w, so_b, so_c, so_h, so_w,
               RELU, HAS_SCALE, HAS_RES, CLAMP, SUMS, CHECK, LIMIT, BLOCK_N)  # fmt: skip


@dataclass(frozen=True)
class Config:
    """Launch parameters of the kernel: pixels per program, warps, software-pipelining stages;
    ``rows``: the program's pixels as that many rows of ``block_m // rows`` (1: a raster run);
    ``cache``: the input loads' cache modifier ("": the compiler's choice, which for its
    asynchronous copies skips L1; ".ca": through L1, where the nine taps of a tile overlap);
    ``tma``: runs of ``block_m`` pixels of one row copied by the TMA (``conv3x3_tma``) where
    the map allows it (16-bit, channels_last), this kernel elsewhere."""

    block_m: int = 128
    num_warps: int = 4
    num_stages: int = 3
    rows: int = 1
    cache: str = ""
    tma: bool = False

    def __post_init__(self) -> None:
        if self.rows < 1 or self.block_m % self.rows or self.cache not in ("", ".ca", ".cg"):
            raise ValueError(f"conv3x3 launch {self}: rows must divide block_m; cache '', '.ca' or '.cg'")
        if self.tma and (self.rows != 1 or self.cache or self.block_m > 256):
            raise ValueError(f"conv3x3 launch {self}: a TMA launch takes one row of at most 256 pixels")

    def describe(self) -> str:
        tile = f" r{self.rows}" if self.rows != 1 else ""
        cache = " l1" if self.cache == ".ca" else ""
        return f"m{self.block_m} w{self.num_warps} s{self.num_stages}{tile}{cache}{' tma' if self.tma else ''}"


# What a GPU chooses among for the 64-channel convolutions (``FusedBlocks.choose`` times each
# and keeps those whose result agrees with cuDNN's: Triton has miscompiled conv loops at 8 warps,
# triton-lang/triton#1254). All compile for sm_90 without spills (benchmarks/compile_check.py).
# The fastest three of benchmarks/conv_sweep.py's twenty on an H200 (12 MP bf16, 2.40-2.44 ms;
# 256-pixel programs and 4 stages were the slowest, 2.7-2.9 ms; cuDNN 1.76 ms), and two TMA
# launches, not yet timed on a GPU, in place of the sweep's 4th and 5th (2.47, 2.51 ms).
GPU_CONFIGS = (
    Config(128, 4, 3, rows=4),
    Config(128, 8, 3, cache=".ca"),
    Config(128, 4, 3, cache=".ca"),
    Config(128, 4, 3, tma=True),
    Config(256, 8, 3, tma=True),
)


def gpu_configs(dtype: torch.dtype) -> tuple[Config, ...]:
    """The launches a GPU times for a dtype: float32 maps take no TMA launch (its boxes are for
    16-bit maps) nor 256-pixel tiles (240 KB of shared memory at 3 stages, more than sm_90's
    227 KB)."""
    if dtype != torch.float32:
        return GPU_CONFIGS
    return tuple(c for c in GPU_CONFIGS if not c.tma and c.block_m <= 128)


def default_config(device: torch.device) -> Config:
    """One configuration per device kind: the interpreter pays per program, so it takes wide
    pixel blocks (up to 4096, no wider than the region: 2.4x faster than 1024 on a 48x48 map);
    a GPU starts from 128 pixels, 4 warps, 3 stages until it has measured."""
    return Config() if device.type == "cuda" else Config(block_m=4096, num_warps=4, num_stages=1)


def dtype_limit(dtype: torch.dtype) -> float:
    """The largest finite magnitude of ``dtype``: beyond it a value is an overflow."""
    return float(torch.finfo(dtype).max)


@dataclass(frozen=True)
class PackedConv:
    """A 3x3 convolution's weights as the kernel reads them: (9, K, N) taps x input x output
    channels in the compute dtype, zero-padded to powers of two (at least 16, what a tensor-core
    product takes), and the bias (N,) in float32. With ``im2col`` (at most 3 input channels,
    the head's) (1, K, N): row tap x C_in + c, so that the nine taps are one K <= 32 product
    instead of nine K = 16 products of which 13/16 multiply padding."""

    weight: torch.Tensor
    bias: torch.Tensor
    cin: int
    cout: int
    block_k: int
    im2col: bool = False

    @property
    def k_chunks(self) -> int:
        return self.weight.shape[1] // self.block_k

    @property
    def block_n(self) -> int:
        return self.weight.shape[2]


def pack(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> PackedConv:
    """Pack an ``nn.Conv2d``'s (C_out, C_in, 3, 3) weight and its bias for ``conv3x3``."""
    cout, cin, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"conv3x3: weight of shape {tuple(weight.shape)} is not a 3x3 convolution")
    n = max(16, triton.next_power_of_2(cout))
    taps = weight.detach().permute(2, 3, 1, 0).reshape(9, cin, cout).to(device, dtype)  # (tap, k, n)
    b = torch.zeros(n, dtype=torch.float32, device=device)
    if bias is not None:
        b[:cout] = bias.detach().to(device, torch.float32)
    if 9 * cin <= 32:  # the taps folded into K
        block_k = max(16, triton.next_power_of_2(9 * cin))
        wp = torch.zeros(1, block_k, n, dtype=dtype, device=device)
        wp[0, : 9 * cin, :cout] = taps.reshape(9 * cin, cout)
        return PackedConv(wp, b, cin, cout, block_k, im2col=True)
    block_k = min(64, max(16, triton.next_power_of_2(cin)))
    k = triton.cdiv(cin, block_k) * block_k
    wp = torch.zeros(9, k, n, dtype=dtype, device=device)
    wp[:, :cin, :cout] = taps
    return PackedConv(wp, b, cin, cout, block_k)


def _dot_mode(x: torch.Tensor) -> int:
    """0: the dtype's own tensor-core product; 1: IEEE float32 (float32 where TF32 is off, as
    for cuDNN's convolutions, and always on the CPU); 2: float32 operands (bfloat16 in the
    interpreter, which has no bfloat16 product)."""
    if x.dtype == torch.bfloat16 and not x.is_cuda:
        return 2
    return int(x.dtype == torch.float32 and not (x.is_cuda and torch.backends.cudnn.allow_tf32))


def _check(t: torch.Tensor, name: str) -> None:
    if t.dim() != 4:
        raise ValueError(f"conv3x3: {name} must be (B, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"conv3x3: {name} dtype {t.dtype} is not float32, float16 or bfloat16")


def conv3x3(
    x: torch.Tensor,
    conv: PackedConv,
    *,
    relu: bool = False,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    clamp: bool = False,
    sums: bool = False,
    flag: torch.Tensor | None = None,
    origin: tuple[int, int] = (0, 0),
    size: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
    config: Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolution of ``x`` (B, C_in, H, W) over the output region at ``origin`` (in x's
    pixel coordinates) of ``size`` (default: all of x), with its epilogue; returns
    ``(out, sums)``: out (B, C_out, h, w) in x's dtype and memory format unless ``out`` is given,
    and with ``sums`` the (B, C_out) float32 channel sums of out (else None).

    ``scale`` (B, C_out) multiplies each image's output channels after the ReLU (channel
    attention's gate); ``residual`` is added after that (same shape as out); ``flag`` (an int32
    tensor of one element) is set to 1 where a value is out of the output dtype's range."""
    _check(x, "x")
    if x.shape[1] != conv.cin:
        raise ValueError(f"conv3x3: x has {x.shape[1]} channels, the weights take {conv.cin}")
    b, _, hx, wx = x.shape
    ho, wo = size if size is not None else (hx, wx)
    if not (0 <= origin[0] and 0 <= origin[1] and origin[0] + ho <= hx and origin[1] + wo <= wx):
        raise ValueError(f"conv3x3: region {ho}x{wo} at {origin} does not lie in the {hx}x{wx} input")
    if out is None:
        cl = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
        fmt = torch.channels_last if cl else torch.contiguous_format  # allocated so: no copy pass
        out = torch.empty(b, conv.cout, ho, wo, dtype=x.dtype, device=x.device, memory_format=fmt)
    _check(out, "out")
    if tuple(out.shape) != (b, conv.cout, ho, wo):
        raise ValueError(f"conv3x3: out has shape {tuple(out.shape)}, expected {(b, conv.cout, ho, wo)}")
    res = residual if residual is not None else out
    if residual is not None:
        _check(residual, "residual")
        if residual.shape != out.shape:
            raise ValueError(f"conv3x3: residual shape {tuple(residual.shape)} differs from out {tuple(out.shape)}")
    if scale is not None and tuple(scale.shape) != (b, conv.cout):
        raise ValueError(f"conv3x3: scale has shape {tuple(scale.shape)}, expected {(b, conv.cout)}")
    if flag is None:
        check = False
        flag_t = conv.bias
    else:
        check, flag_t = True, flag
    cfg = config or default_config(x.device)
    tma = cfg.tma and not conv.im2col and tma_ready(x, conv.weight, cfg.block_m, conv.block_k)
    block_m, rows = cfg.block_m, cfg.rows
    if x.device.type != "cuda" and rows == 1:  # the interpreter: no wider than the region
        block_m = min(block_m, max(16, triton.next_power_of_2(wo if tma else ho * wo)))  # (its lanes cost time)
    if tma:
        programs = ho * triton.cdiv(wo, block_m)
    elif rows == 1:
        programs = triton.cdiv(ho * wo, block_m)
    else:
        programs = triton.cdiv(ho, rows) * triton.cdiv(wo, block_m // rows)
    part = torch.empty(b, programs if sums else 0, conv.block_n, dtype=torch.float32, device=x.device)
    if b == 0 or ho * wo == 0:
        return out, (torch.zeros(b, conv.cout, device=x.device) if sums else None)
    scale_t = conv.bias
    if scale is not None:  # float32, padded to the kernel's channel block (64 channels: as it is)
        scale_t = scale.float().contiguous()
        if conv.block_n > conv.cout:
            scale_t = torch.nn.functional.pad(scale_t, (0, conv.block_n - conv.cout))
    common = dict(
        RELU=relu,
        HAS_SCALE=scale is not None,
        HAS_RES=residual is not None,
        CLAMP=clamp,
        SUMS=sums,
        CHECK=check,
        LIMIT=dtype_limit(out.dtype),
        DOT=_dot_mode(x),
        I64=max(max_offset(x), max_offset(res), max_offset(out)) > MAX_OFFSET,
        K_CHUNKS=conv.k_chunks,
        BLOCK_M=block_m,
        BLOCK_N=conv.block_n,
        BLOCK_K=conv.block_k,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    stores = (conv.bias, res, out, part if sums else conv.bias, flag_t, scale_t)
    with on_device(x):
        if tma:
            xd, wd = descriptors(x, conv.weight, block_m, conv.block_k)
            conv3x3_tma_kernel[(programs, b)](
                xd, wd, *stores, ho, wo, *origin, conv.cout, triton.cdiv(wo, block_m),
                *res.stride(), *out.stride(), **common,
            )  # fmt: skip
        else:
            _conv3x3_kernel[(programs, b)](
                x, conv.weight, *stores, hx, wx, ho, wo, *origin, conv.cin, conv.cout,
                *x.stride(), *res.stride(), *out.stride(), IM2COL=conv.im2col, ROWS=rows, CACHE=cfg.cache, **common,
            )  # fmt: skip
    return out, (part.sum(1)[:, : conv.cout] if sums else None)
