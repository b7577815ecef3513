"""The passes over a whole feature map around the convolutions (channel statistics; the gate and
the residual), cut into row pieces where a map's offsets within one image would pass int32, as
the kernels index them."""

from __future__ import annotations

import torch

__all__ = ["channel_sums_in_pieces", "pieces", "scale_add_in_pieces"]


def pieces(t: torch.Tensor) -> int:
    """Rows per piece so that a (1, C, rows, W) slice of ``t`` keeps offsets within int32."""
    from ..kernels.rcab import MAX_OFFSET, max_offset

    rows = t.shape[2]
    while rows > 1 and max_offset(t[:, :, :rows]) > MAX_OFFSET:
        rows = (rows + 1) // 2
    return max(rows, 1)


def channel_sums_in_pieces(y: torch.Tensor, maxes: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, C) float64 channel sums of a map of any size (the kernel in int32 pieces), and with
    ``maxes`` each channel's largest |y| (float32), read in the same pass."""
    from ..kernels.channel_stats import channel_sums, channel_sums_max

    rows = pieces(y)
    total = torch.zeros(y.shape[0], y.shape[1], dtype=torch.float64, device=y.device)
    big = torch.zeros(y.shape[0], y.shape[1], dtype=torch.float32, device=y.device) if maxes else None
    for y0 in range(0, y.shape[2], rows):
        piece = y[:, :, y0 : y0 + rows]
        if big is None:
            total += channel_sums(piece).double()
        else:
            sums, most = channel_sums_max(piece)
            total += sums.double()
            torch.maximum(big, most, out=big)
    return total, big


def scale_add_in_pieces(
    r: torch.Tensor, s: torch.Tensor, x: torch.Tensor, k: torch.Tensor | None, out: torch.Tensor
) -> None:
    """out = x + r * s (+ k): the gate and the residual in one pass, in int32 pieces if needed."""
    from ..kernels.rcab import scale_add

    rows = pieces(max((r, x, out), key=lambda t: t.stride(2)))
    for y0 in range(0, r.shape[2], rows):
        sl = slice(y0, y0 + rows)
        scale_add(r[:, :, sl], s, x=x[:, :, sl], k=k, out=out[:, :, sl])
