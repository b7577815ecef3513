"""Windows of equal shape over an image axis, and one local function applied window by window.

Every window has the same shape (edge windows are shifted inward, never zero-padded), so a
window's border is either the image's border, where the convolutions' own zero padding is
right, or at least ``margin`` pixels away from every output pixel it keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import TileConfig


@dataclass(frozen=True)
class Span:
    """One window along one axis: the window [start, start+size) and its kept core [lo, hi)."""

    start: int
    size: int
    lo: int
    hi: int


def spans(length: int, tile: int, margin: int) -> list[Span]:
    """Cut an axis into balanced cores of at most ``tile`` (ceil(length / tile) of them, equal
    but for the last) with windows of core + 2*margin, all the same size, shifted inside the
    image at its ends (one window if the axis is shorter than that)."""
    n = -(-length // tile)
    core = -(-length // n)
    win = min(core + 2 * margin, length)
    out = []
    for lo in range(0, length, core):
        hi = min(lo + core, length)
        start = min(max(lo - margin, 0), length - win)
        out.append(Span(start, win, lo, hi))
    return out


def cores(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The kept cores (y0, y1, x0, x1) of ``spans`` over an (h, w) image: they cover it once."""
    return [(sy.lo, sy.hi, sx.lo, sx.hi) for sy in spans(h, tile, 0) for sx in spans(w, tile, 0)]


def window_count(h: int, w: int, tile: int, margin: int) -> int:
    return len(spans(h, tile, margin)) * len(spans(w, tile, margin))


def window_pixels(h: int, w: int, tile: int, margin: int) -> int:
    """Pixels of all windows together (cores plus their overlapping margins)."""
    return sum(sy.size for sy in spans(h, tile, margin)) * sum(sx.size for sx in spans(w, tile, margin))


def window_side_pixels(h: int, w: int, tile: int, margin: int) -> int:
    """Pixels of one window."""
    return spans(h, tile, margin)[0].size * spans(w, tile, margin)[0].size


def _gather(source: torch.Tensor, group: list[tuple[Span, Span]], channels_last: bool) -> torch.Tensor:
    """The windows of ``group`` from a (C, H, W) map as one batch (B, C, h, w)."""
    views = [source[:, sy.start : sy.start + sy.size, sx.start : sx.start + sx.size] for sy, sx in group]
    if not channels_last:
        return torch.stack(views)
    batch = torch.empty(
        len(views), *views[0].shape, dtype=source.dtype, device=source.device, memory_format=torch.channels_last
    )
    for b, v in enumerate(views):
        batch[b].copy_(v)
    return batch


def map_pass(
    sources: Sequence[torch.Tensor],
    fn: Callable[..., torch.Tensor],
    margin: int,
    cfg: TileConfig,
    out_channels: int,
    out_device: torch.device,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    out_dtype: torch.dtype = torch.float32,
    pin: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply a local function to full-size maps (C_i, H, W) window by window.

    ``fn`` takes one batch of windows per source and returns (B, out_channels, h, w). The result
    map is ``out_dtype`` on ``out_device`` (page-locked with ``pin``, for host maps of a GPU run).
    With ``channels_last`` the map is stored channels-last (strides (1, W*C, C)) and window
    batches are gathered channels-last, the layout a GPU runner computes in: one copy per window
    each way instead of a gather and a relayout.
    With ``reduce`` (per-channel sums of a (1, C, h, w) view, e.g. ``runner.channel_sums``) the
    sum over all cores is returned too, accumulated in float64 on the runner's side of the copy.
    """
    _, h, w = sources[0].shape
    if channels_last:
        out = torch.empty(
            1, out_channels, h, w, device=out_device, dtype=out_dtype, pin_memory=pin, memory_format=torch.channels_last
        )[0]
    else:
        out = torch.empty(out_channels, h, w, device=out_device, dtype=out_dtype, pin_memory=pin)
    total = torch.zeros(out_channels, dtype=torch.float64, device=out_device) if reduce else None
    cells = [(sy, sx) for sy in spans(h, cfg.tile, margin) for sx in spans(w, cfg.tile, margin)]
    for i in range(0, len(cells), cfg.batch):
        group = cells[i : i + cfg.batch]
        batches = [_gather(s, group, channels_last) for s in sources]
        res = fn(*batches)
        for b, (sy, sx) in enumerate(group):
            core = res[b, :, sy.lo - sy.start : sy.hi - sy.start, sx.lo - sx.start : sx.hi - sx.start]
            out[:, sy.lo : sy.hi, sx.lo : sx.hi].copy_(core)  # one copy: dtype, layout and device
            if reduce is not None and total is not None:  # on the runner's device, before the copy
                total += reduce(core[None])[0].to(out_device, torch.float64)
        if progress:
            progress(len(group))
    return out, total
