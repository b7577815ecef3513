"""Image quality metrics: PSNR and SSIM on RGB or on luma Y (ITU-R BT.601), with border shave.

Inputs are float tensors in [0, 1] of shape (C, H, W) or (B, C, H, W); batched inputs give the
mean of the per-image values. Values are clamped to [0, 1] first, as an image file would be.
"""

from __future__ import annotations

import math

import torch


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in [0, 1], scaled to [0, 1] (the 16..235 studio range, as MATLAB's
    ``rgb2ycbcr`` and the SR literature compute it)."""
    r, g, b = img[..., 0:1, :, :], img[..., 1:2, :, :], img[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _prepare(a: torch.Tensor, b: torch.Tensor, shave: int, y: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"metric inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.detach().double().clamp(0, 1)
    b = b.detach().double().clamp(0, 1)
    if a.dim() == 3:
        a, b = a[None], b[None]
    if y:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if shave:
        a = a[..., shave:-shave, shave:-shave]
        b = b[..., shave:-shave, shave:-shave]
    return a, b


def psnr(a: torch.Tensor, b: torch.Tensor, shave: int = 0, y: bool = False) -> float:
    """Peak signal-to-noise ratio in dB for peak 1.0 (inf for identical images)."""
    a, b = _prepare(a, b, shave, y)
    mse = (a - b).pow(2).flatten(1).mean(1)
    vals = [math.inf if m == 0 else -10.0 * math.log10(m) for m in mse.tolist()]
    return sum(vals) / len(vals)


def _gaussian_1d(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _window_mean(maps: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """The separable window over the last two dims at its valid positions: a row pass, then a
    column pass, each a sum of shifted slices accumulated in place (float64 ``conv2d`` on a CPU
    has no fast kernel: this is about 10x faster on validation crops)."""
    k, h, w = len(taps), maps.shape[-2], maps.shape[-1]
    rows = maps[..., :, : w - k + 1] * taps[0]
    for i in range(1, k):
        rows.add_(maps[..., :, i : w - k + 1 + i], alpha=taps[i])
    out = rows[..., : h - k + 1, :] * taps[0]
    for i in range(1, k):
        out.add_(rows[..., i : h - k + 1 + i, :], alpha=taps[i])
    return out


def ssim(a: torch.Tensor, b: torch.Tensor, shave: int = 0, y: bool = False) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, data range 1, averaged over the valid window positions and the channels.

    The Gaussian window is separable, so it is applied as an 11-tap row and an 11-tap column
    filter (22 multiply-adds a pixel instead of 121); the result equals the 2-D window's to
    float64 rounding."""
    a, b = _prepare(a, b, shave, y)
    # the five maps the window averages, stacked: one filter pass for all
    f = _window_mean(torch.stack([a, b, a * a, b * b, a * b], dim=1), _gaussian_1d().tolist())
    mu_a, mu_b, e_aa, e_bb, e_ab = f.unbind(1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.flatten(1).mean(1).mean())
