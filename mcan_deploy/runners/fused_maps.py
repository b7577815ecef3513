"""Block ``i`` of one image with exact whole-image channel statistics over full-size maps on the
device, in parts that each fit a memory budget (the exact layer plan, ``plan="layers"``). Two
full-size maps (the running features and one RCAB's conv1 output) replace the whole image's four:

- ``block_on_regions`` (the Triton convolution): core by core, each convolution computes an
  output region of the full map around it, so no window is gathered; an RCAB's conv1 fills the
  second map, whose sums and outer rows and columns give the gate (``conv_sums``), then its
  conv2 adds the gated residual into the features in place: nothing is computed twice but a
  one-pixel ring of the finish's head and body;
- ``block_on_bands`` (cuDNN's convolution, which has no output regions): full-width row bands,
  each a contiguous slice of a channels_last map; conv1 reads two rows more each side and its
  edge rows are dropped (zero padding there is not the image's), so a band of r rows costs
  r + 4 rows of conv1 and r + 2 of conv2.

Both sum the channel statistics over every part before the gate, so the result equals the
whole image's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from .conv_sums import conv3x3_sums
from .fused_weights import BlockWeights, ConvWeights, RCABWeights
from .map_passes import channel_sums_in_pieces, scale_add_in_pieces

if TYPE_CHECKING:
    from ..kernels.conv3x3 import Config

__all__ = ["Core", "FusedConvs", "band_rows", "block_on_bands", "block_on_regions"]

Core = tuple[int, int, int, int]  # (y0, y1, x0, x1): a tile's kept pixels


class FusedConvs(Protocol):
    """What the parts take from ``fused.FusedBlocks``: the weights, the chosen convolution and
    its launch, one convolution with its epilogue, the overflow flag where one is due."""

    blocks: list[BlockWeights]
    dtype: torch.dtype
    device: torch.device
    conv: str
    config: Config | None

    def conv3x3(
        self,
        x: torch.Tensor,
        cw: ConvWeights,
        *,
        residual: torch.Tensor | None = None,
        clamp: bool = False,
        origin: tuple[int, int] = (0, 0),
        size: tuple[int, int] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def due_flag(self) -> torch.Tensor | None: ...


MIN_BAND_ROWS = 8  # thinner bands would spend more on the four halo rows than on the band


def block_on_regions(
    fb: FusedConvs, i: int, x: torch.Tensor, cores: list[Core], tick: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Block ``i`` on one image (1, 3, H, W) core by core (``cores``: (y0, y1, x0, x1) that cover
    the image), Triton convolutions over output regions of the full-size maps."""
    bw = fb.blocks[i]
    hmap = fb.conv3x3(x, bw.head)
    side = max(y1 - y0 for y0, y1, _, _ in cores) + 2, max(x1 - x0 for _, _, x0, x1 in cores) + 2
    cl = hmap.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    buf = torch.empty(1, hmap.shape[1], *side, dtype=fb.dtype, device=fb.device, memory_format=fmt)
    if tick:
        tick(len(cores))
    tmap = torch.empty_like(hmap)
    for rc in bw.rcabs:
        _rcab_on_regions(fb, hmap, tmap, rc, cores)
        if tick:
            tick(len(cores))
    del tmap
    out = torch.empty_like(x)
    for core in cores:
        y0, y1, x0, x1 = core
        ry0, ry1, rx0, rx1 = _ring(core, x.shape[2], x.shape[3])
        ring, ring_size = (ry0, rx0), (ry1 - ry0, rx1 - rx0)
        f = fb.conv3x3(x, bw.head, origin=ring, size=ring_size, out=buf[:, :, : ry1 - ry0, : rx1 - rx0])
        g = fb.conv3x3(hmap, bw.body, residual=f, origin=ring, size=ring_size, out=f)
        fb.conv3x3(
            g,
            bw.tail,
            residual=x[:, :, y0:y1, x0:x1],
            clamp=bw.clamp,
            origin=(y0 - ry0, x0 - rx0),
            size=(y1 - y0, x1 - x0),
            out=out[:, :, y0:y1, x0:x1],
        )
    if tick:
        tick(len(cores))
    return out


def _rcab_on_regions(
    fb: FusedConvs, hmap: torch.Tensor, tmap: torch.Tensor, rc: RCABWeights, cores: list[Core]
) -> None:
    """One RCAB in place on the full-size features ``hmap``: conv1 over each core into ``tmap``
    with its channel sums; the gate from the sums over every core and tmap's outer rows and
    columns (``conv_sums``: conv2's statistics before conv2 runs); then conv2 over each core,
    its bias, the gate and the residual added into ``hmap`` where it reads it."""
    from ..kernels.conv3x3 import conv3x3
    from ..kernels.rcab import gate

    total = torch.zeros(1, hmap.shape[1], dtype=torch.float64, device=fb.device)
    flag, cfg = fb.due_flag(), fb.config
    for y0, y1, x0, x1 in cores:
        part, size = tmap[:, :, y0:y1, x0:x1], (y1 - y0, x1 - x0)
        _, sums = conv3x3(
            hmap,
            rc.conv1.packed,
            relu=True,
            sums=True,
            flag=flag,
            origin=(y0, x0),
            size=size,
            out=part,
            config=cfg,
        )
        assert sums is not None
        total += sums
    s = gate(conv3x3_sums(tmap, total, rc.conv2.weight, rc.conv2.bias), hmap.shape[2] * hmap.shape[3], *rc.attention)
    for y0, y1, x0, x1 in cores:
        part, size = hmap[:, :, y0:y1, x0:x1], (y1 - y0, x1 - x0)
        conv3x3(
            tmap,
            rc.conv2.packed,
            scale=s,
            residual=part,
            flag=flag,
            origin=(y0, x0),
            size=size,
            out=part,
            config=cfg,
        )


def _ring(core: Core, h: int, w: int) -> Core:
    """A core grown by one pixel each side, inside the (h, w) image."""
    y0, y1, x0, x1 = core
    return max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)


def band_rows(cores: list[Core], width: int) -> int:
    """Rows per band: as many pixels as the largest core (what the plan's memory budget holds for
    one part), at least ``MIN_BAND_ROWS``."""
    most = max((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in cores)
    return max(MIN_BAND_ROWS, math.ceil(most / max(width, 1)))


def block_on_bands(
    fb: FusedConvs, i: int, x: torch.Tensor, cores: list[Core], tick: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Block ``i`` on one image (1, 3, H, W) in full-width row bands of as many pixels as one of
    ``cores``, cuDNN's convolutions (bfloat16 and float32: float16's bounds run on whole maps
    only). ``tick`` gets the cores' count per step, as ``block_on_regions`` gives it."""
    bw = fb.blocks[i]
    h = x.shape[2]
    rows = band_rows(cores, x.shape[3])
    bands = [(y0, min(y0 + rows, h)) for y0 in range(0, h, rows)]
    hmap = fb.conv3x3(x, bw.head)
    if tick:
        tick(len(cores))
    for rc in bw.rcabs:
        _rcab_on_bands(fb, hmap, rc, bands)
        if tick:
            tick(len(cores))
    out = torch.empty_like(x)
    for y0, y1 in bands:
        g0, g1 = max(y0 - 1, 0), min(y1 + 1, h)  # the tail's input rows
        f = _conv_rows(fb, x, bw.head, g0, g1)  # the long skip, recomputed for these rows
        g = _conv_rows(fb, hmap, bw.body, g0, g1, residual=f)
        _conv_rows(fb, g, bw.tail, y0 - g0, y1 - g0, residual=x[:, :, y0:y1], clamp=bw.clamp, out=out[:, :, y0:y1])
    if tick:
        tick(len(cores))
    return out


def _rcab_on_bands(fb: FusedConvs, hmap: torch.Tensor, rc: RCABWeights, bands: list[tuple[int, int]]) -> None:
    """One RCAB in place on the full-size features ``hmap``, band by band: conv1 over the band
    and one row each side, conv2 (without its bias) over the band, its channel sums; then the
    gate from every band's sums, and the residual. The bands' conv2 outputs together are the
    residual map."""
    from ..kernels.rcab import gate

    h = hmap.shape[2]
    total = torch.zeros(1, hmap.shape[1], dtype=torch.float64, device=fb.device)
    residuals = []
    for y0, y1 in bands:
        t0, t1 = max(y0 - 1, 0), min(y1 + 1, h)
        t = _conv_rows(fb, hmap, rc.conv1, t0, t1, relu=True)
        r = F.conv2d(t, rc.conv2.weight, None, padding=1)[:, :, y0 - t0 : y1 - t0]  # its edge rows dropped
        del t
        total += channel_sums_in_pieces(r)[0]
        residuals.append(r)
    hw = h * hmap.shape[3]
    s = gate(total + rc.conv2.bias * hw, hw, *rc.attention)  # conv2's bias as a constant, as on whole maps
    k = rc.conv2.bias * s
    for (y0, y1), r in zip(bands, residuals):
        band = hmap[:, :, y0:y1]
        scale_add_in_pieces(r, s, band, k, band)


def _conv_rows(
    fb: FusedConvs,
    src: torch.Tensor,
    cw: ConvWeights,
    r0: int,
    r1: int,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    clamp: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows [r0, r1) of the convolution of the full-height map ``src`` with its epilogue: cuDNN
    on rows [r0 - 1, r1 + 1) of ``src`` (a contiguous slice), the two edge rows, whose zero
    padding is not the image's, dropped; at the image's own edges the padding is the image's."""
    from ..kernels.epilogue import bias_act

    a, b = max(r0 - 1, 0), min(r1 + 1, src.shape[2])
    part = src[:, :, a:b]
    if fb.conv == "cudnn-fused" and relu and residual is None and not clamp and out is None:
        y = torch.ops.aten.cudnn_convolution_relu(part, cw.weight, cw.bias_c, [1, 1], [1, 1], [1, 1], 1)
        return y[:, :, r0 - a : r1 - a]
    y = F.conv2d(part, cw.weight, None, padding=1)[:, :, r0 - a : r1 - a]
    return bias_act(y, cw.bias, relu=relu, residual=residual, clamp=clamp, out=out if out is not None else y)
