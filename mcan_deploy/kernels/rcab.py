"""Fused channel-attention tail of the residual channel-attention block (RCAB), in Triton.

An RCAB computes r = conv2(relu(conv1(x))) and then y = x + r * s, where the per-image,
per-channel gate is s = sigmoid(W_U relu(W_D mean_hw(r) + b_D) + b_U). Eager PyTorch makes five
passes over the 64-channel map for the tail (pool, multiply, add, and their backward); here it
is two:

- forward: ``channel_sums`` (``kernels.channel_stats``) reads r once (sums per image and
  channel, float32), ``gate`` runs the 64->16->64 MLP and sigmoid once per image (a (B, C)
  problem), ``scale_add`` reads x and r once and writes y;
- backward: ``channel_sums`` of dy * r (the gate's gradient), ``gate_backward`` once per image
  (gradients of W_D, b_D, W_U, b_U and of the means), and ``scale_add`` writes
  dr = dy * s + dmean / (H W); dx is dy itself.

No intermediate feature map is materialised. The three passes are separately callable, so the
tiling engine can sum channel statistics over all tiles of an image before it applies the gate
(exact ``global`` statistics). Every kernel takes explicit strides: NCHW, channels_last and
cropped views run without copies. float32, float16 and bfloat16 inputs; all arithmetic in float32.

The oracle is ``mcan_deploy.kernels.reference``. Import this module only where Triton is
installed; ``mcan_deploy.kernels.fused_available`` says whether it can run on a device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import launch
from .channel_stats import channel_sums
from .channel_stats import partial_sums as _partial_sums
from .launch import MAX_OFFSET, check_map, max_offset
from .launch import flat as _flat
from .launch import on_device as _on

__all__ = [
    "MAX_OFFSET",
    "FusedChannelAttention",
    "channel_sums",
    "fused_channel_attention",
    "gate",
    "gate_backward",
    "max_offset",
    "scale_add",
]


@triton.jit
def _sum_partials(PART, pid_b, G, C, c, cmask, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr):
    g = tl.arange(0, BLOCK_G)
    acc = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        gg = g0 + g
        acc += tl.load(
            PART + (pid_b * G + gg[:, None]) * C + c[None, :], mask=(gg < G)[:, None] & cmask[None, :], other=0.0
        )
    return tl.sum(acc, axis=0)


@triton.jit
def _gate_kernel(
    PART,
    WD,
    BD,
    WU,
    BU,
    MEAN,
    Z,
    S,
    G,
    C,
    R,
    inv_hw,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Per image b: mean = sum(PART[b]) * inv_hw; z = relu(W_D mean + b_D); s = sigmoid(W_U z + b_U)."""
    pid_b = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    k = tl.arange(0, BLOCK_R)
    kmask = k < R
    mean = _sum_partials(PART, pid_b, G, C, c, cmask, BLOCK_C, BLOCK_G) * inv_hw
    wd = tl.load(WD + k[:, None] * C + c[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    v = tl.sum(wd * mean[None, :], axis=1) + tl.load(BD + k, mask=kmask, other=0.0).to(tl.float32)
    z = tl.maximum(v, 0.0)
    wu = tl.load(WU + c[:, None] * R + k[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    u = tl.sum(wu * z[None, :], axis=1) + tl.load(BU + c, mask=cmask, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-u))
    tl.store(MEAN + pid_b * C + c, mean, mask=cmask)
    tl.store(Z + pid_b * R + k, z, mask=kmask)
    tl.store(S + pid_b * C + c, s, mask=cmask)


@triton.jit
def _gate_backward_kernel(
    PART,
    MEAN,
    Z,
    S,
    WD,
    WU,
    DK,
    DWD,
    DBD,
    DWU,
    DBU,
    G,
    C,
    R,
    inv_hw,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Per image b, from ds = sum(PART[b]) (= sum_hw dy * r): the MLP's weight and bias gradients
    of this image, and DK[b] = dmean / (H W), the per-channel term of dr."""
    pid_b = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    k = tl.arange(0, BLOCK_R)
    kmask = k < R
    m_ck = cmask[:, None] & kmask[None, :]
    m_kc = kmask[:, None] & cmask[None, :]
    ds = _sum_partials(PART, pid_b, G, C, c, cmask, BLOCK_C, BLOCK_G)
    s = tl.load(S + pid_b * C + c, mask=cmask, other=0.0)
    z = tl.load(Z + pid_b * R + k, mask=kmask, other=0.0)
    mean = tl.load(MEAN + pid_b * C + c, mask=cmask, other=0.0)
    du = ds * s * (1.0 - s)
    tl.store(DWU + pid_b * C * R + c[:, None] * R + k[None, :], du[:, None] * z[None, :], mask=m_ck)
    tl.store(DBU + pid_b * C + c, du, mask=cmask)
    wu = tl.load(WU + c[:, None] * R + k[None, :], mask=m_ck, other=0.0).to(tl.float32)
    dz = tl.sum(wu * du[:, None], axis=0)
    dv = tl.where(z > 0.0, dz, 0.0)
    tl.store(DWD + pid_b * R * C + k[:, None] * C + c[None, :], dv[:, None] * mean[None, :], mask=m_kc)
    tl.store(DBD + pid_b * R + k, dv, mask=kmask)
    wd = tl.load(WD + k[:, None] * C + c[None, :], mask=m_kc, other=0.0).to(tl.float32)
    dmean = tl.sum(wd * dv[:, None], axis=0)
    tl.store(DK + pid_b * C + c, dmean * inv_hw, mask=cmask)


@triton.jit
def _scale_add_kernel(
    R_,
    S,
    X,
    K,
    OUT,
    C,
    H,
    W,
    sr_b,
    sr_c,
    sr_h,
    sr_w,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    so_b,
    so_c,
    so_h,
    so_w,
    HAS_X: tl.constexpr,
    HAS_K: tl.constexpr,
    FLAT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """OUT[b, c, p] = R[b, c, p] * S[b, c] (+ X[b, c, p]) (+ K[b, c]); FLAT as in the sums."""
    pid_p = tl.program_id(0)  # pixel blocks on axis 0: CUDA caps grid axes 1 and 2 at 65535
    pid_b = tl.program_id(1)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    if FLAT:
        pr = p * sr_w
        px = p * sx_w
        po = p * so_w
    else:
        pr = (p // W) * sr_h + (p % W) * sr_w
        px = (p // W) * sx_h + (p % W) * sx_w
        po = (p // W) * so_h + (p % W) * so_w
    mask = cmask[:, None] & (p < H * W)[None, :]
    bb = pid_b.to(tl.int64)
    s = tl.load(S + pid_b * C + c, mask=cmask, other=0.0)
    r = tl.load(R_ + bb * sr_b + c[:, None] * sr_c + pr[None, :], mask=mask, other=0.0).to(tl.float32)
    y = r * s[:, None]
    if HAS_X:
        y += tl.load(X + bb * sx_b + c[:, None] * sx_c + px[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_K:
        y += tl.load(K + pid_b * C + c, mask=cmask, other=0.0)[:, None]
    tl.store(OUT + bb * so_b + c[:, None] * so_c + po[None, :], y.to(OUT.dtype.element_ty), mask=mask)


# ---- launchers ------------------------------------------------------------------------------


def _check(t: torch.Tensor, name: str) -> None:
    check_map(t, name, MAX_OFFSET)  # this module's limit, which tests lower


def _launch_gate(
    part: torch.Tensor, inv_hw: float, wd: torch.Tensor, bd: torch.Tensor, wu: torch.Tensor, bu: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, groups, c = part.shape
    r = wd.shape[0]
    if wd.numel() != r * c or wu.numel() != c * r or bd.numel() != r or bu.numel() != c:
        raise ValueError(f"attention weights do not fit {c} channels: W_D {tuple(wd.shape)}, W_U {tuple(wu.shape)}")
    dev = part.device
    mean = torch.empty(n, c, device=dev, dtype=torch.float32)
    z = torch.empty(n, r, device=dev, dtype=torch.float32)
    s = torch.empty(n, c, device=dev, dtype=torch.float32)
    if n:
        with _on(part):
            _gate_kernel[(n,)](
                part,
                wd.contiguous(),
                bd.contiguous(),
                wu.contiguous(),
                bu.contiguous(),
                mean,
                z,
                s,
                groups,
                c,
                r,
                inv_hw,
                BLOCK_C=triton.next_power_of_2(c),
                BLOCK_R=triton.next_power_of_2(r),
                BLOCK_G=min(64, triton.next_power_of_2(groups)),
            )
    return mean, z, s


def gate(
    sums: torch.Tensor, count: float, wd: torch.Tensor, bd: torch.Tensor, wu: torch.Tensor, bu: torch.Tensor
) -> torch.Tensor:
    """(B, C) float32 gate s from channel sums (B, C) over ``count`` pixels: the MLP step.

    For callers that gather the sums themselves, e.g. over every tile of an image (the tiling
    engine's runners use their own ``ca_scale`` for this (C,)-sized step). Weights are the 1x1
    convolutions' tensors: W_D (C/r, C, 1, 1), b_D, W_U (C, C/r, 1, 1), b_U."""
    if not count > 0:
        raise ValueError(f"gate: pixel count {count} must be > 0")
    part = sums.to(torch.float32).reshape(sums.shape[0], 1, -1).contiguous()
    return _launch_gate(part, 1.0 / count, wd, bd, wu, bu)[2]


def scale_add(
    r: torch.Tensor,
    s: torch.Tensor,
    x: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """r * s[:, :, None, None] (+ x) (+ k[:, :, None, None]) in one pass: the apply pass.

    ``s`` and ``k`` are (B, C) float32. ``out`` may be ``x`` (in place). The result has the
    memory format of ``r`` and the dtype of ``x`` (or of ``r`` without ``x``)."""
    _check(r, "r")
    n, c, h, w = r.shape
    if x is not None:
        _check(x, "x")
        if x.shape != r.shape:
            raise ValueError(f"shapes differ: x {tuple(x.shape)}, r {tuple(r.shape)}")
    if out is None:
        dtype = x.dtype if x is not None else r.dtype
        out = torch.empty_like(r, dtype=dtype)
    if s.shape != (n, c):
        raise ValueError(f"gate shape {tuple(s.shape)} does not match (B, C) = {(n, c)}")
    if n == 0 or h * w == 0:
        return out
    block_c, block_p, warps = launch.map_blocks(c, h * w, r.device)
    s = s.to(torch.float32).contiguous()
    k = k.to(torch.float32).contiguous() if k is not None else s
    xx = x if x is not None else r
    with _on(r):
        _scale_add_kernel[(triton.cdiv(h * w, block_p), n)](
            r,
            s,
            xx,
            k,
            out,
            c,
            h,
            w,
            *r.stride(),
            *xx.stride(),
            *out.stride(),
            HAS_X=x is not None,
            HAS_K=k is not s,
            FLAT=_flat(r, xx, out),
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=warps,
        )
    return out


def gate_backward(
    part: torch.Tensor,
    hw: int,
    mean: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    wd: torch.Tensor,
    wu: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """From partial sums of dy * r: (dk, dW_D, db_D, dW_U, db_U), the weight gradients summed
    over the batch and dk = dmean / (H W), (B, C) float32."""
    n, groups, c = part.shape
    r = wd.shape[0]
    dev = part.device
    dk = torch.empty(n, c, device=dev, dtype=torch.float32)
    dwd = torch.empty(n, r, c, device=dev, dtype=torch.float32)
    dbd = torch.empty(n, r, device=dev, dtype=torch.float32)
    dwu = torch.empty(n, c, r, device=dev, dtype=torch.float32)
    dbu = torch.empty(n, c, device=dev, dtype=torch.float32)
    if n:
        with _on(part):
            _gate_backward_kernel[(n,)](
                part,
                mean,
                z,
                s,
                wd.contiguous(),
                wu.contiguous(),
                dk,
                dwd,
                dbd,
                dwu,
                dbu,
                groups,
                c,
                r,
                1.0 / max(hw, 1),
                BLOCK_C=triton.next_power_of_2(c),
                BLOCK_R=triton.next_power_of_2(r),
                BLOCK_G=min(64, triton.next_power_of_2(groups)),
            )
    return dk, dwd.sum(0), dbd.sum(0), dwu.sum(0), dbu.sum(0)


class FusedChannelAttention(torch.autograd.Function):
    """y = x + r * sigmoid(W_U relu(W_D mean_hw(r) + b_D) + b_U), with gradients for x, r and
    the four attention parameters."""

    @staticmethod
    def forward(ctx, x, r, wd, bd, wu, bu):
        if x.shape != r.shape:
            raise ValueError(f"shapes differ: x {tuple(x.shape)}, r {tuple(r.shape)}")
        hw = r.shape[2] * r.shape[3]
        mean, z, s = _launch_gate(_partial_sums(r), 1.0 / max(hw, 1), wd, bd, wu, bu)
        y = scale_add(r, s, x=x, out=torch.empty_like(r, dtype=torch.promote_types(x.dtype, r.dtype)))
        ctx.save_for_backward(r, mean, z, s, wd, wu)
        ctx.hw = hw
        ctx.dtypes = (x.dtype, wd.dtype, bd.dtype, wu.dtype, bu.dtype)
        return y

    @staticmethod
    @once_differentiable  # no double backward: create_graph=True raises instead of dropping terms
    def backward(ctx, dy):
        r, mean, z, s, wd, wu = ctx.saved_tensors
        x_dt, wd_dt, bd_dt, wu_dt, bu_dt = ctx.dtypes
        dk, dwd, dbd, dwu, dbu = gate_backward(_partial_sums(dy, r), ctx.hw, mean, z, s, wd, wu)
        dr = scale_add(dy, s, k=dk, out=torch.empty_like(r)) if ctx.needs_input_grad[1] else None
        dx = dy.to(x_dt) if ctx.needs_input_grad[0] else None
        return (dx, dr, dwd.reshape(wd.shape).to(wd_dt), dbd.to(bd_dt), dwu.reshape(wu.shape).to(wu_dt), dbu.to(bu_dt))


def fused_channel_attention(
    x: torch.Tensor, r: torch.Tensor, wd: torch.Tensor, bd: torch.Tensor, wu: torch.Tensor, bu: torch.Tensor
) -> torch.Tensor:
    """The RCAB tail y = x + CA(r), fused; differentiable in every argument."""
    return FusedChannelAttention.apply(x, r, wd, bd, wu, bu)
