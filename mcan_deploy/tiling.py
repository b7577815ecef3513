"""Tiled inference on full-size images, with margins from the receptive field.

Every window has the same shape (edge windows are shifted inward, never zero-padded), so a
window's border is either the image's border, where the convolutions' own zero padding is
right, or at least one receptive-field radius away from every output pixel it keeps. Channel
attention is the one non-local part:

- ``global`` statistics (exact): each block is run layer by layer over the whole image; each
  RCAB's channel means are summed over all tiles before its gate is applied. Full-image 64-channel
  feature maps are kept (on the GPU when they fit, else in host memory), so memory grows with the
  image, but the result equals the whole-image result to float rounding.
- ``tile`` statistics (approximate, what other tools do): each window pools its own statistics.
  Memory stays flat as the image grows; the difference from the whole-image result is measured.

Nothing is kept between calls: the engine is a set of functions over their arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .errors import MCANError
from .runners import LayerRunner, Runner

log = logging.getLogger(__name__)

CAStats = Literal["global", "tile"]
PlanName = Literal["auto", "block", "all", "whole", "layers"]


@dataclass(frozen=True)
class TileConfig:
    """How to cut an image. ``tile`` is the side of the kept core of each window."""

    tile: int = 256  # core side; the window adds a receptive-field margin on each side
    batch: int = 1  # windows per call (on a CPU, one window at a time measured fastest)
    ca_stats: CAStats = "global"
    # whole: one call per block on the whole image (exact in any mode); layers: global statistics
    # layer by layer; block / all: tile statistics block by block or all blocks per window;
    # auto: whole where the runner asks for it and it fits max_memory, else layers or measured
    plan: PlanName = "auto"
    max_memory: int | None = None  # bytes the whole-image plan may take (None: half the available RAM)

    def __post_init__(self) -> None:
        if self.tile < 1 or self.batch < 1:
            raise MCANError(f"tile = {self.tile} and batch = {self.batch} must be >= 1")
        if self.plan not in ("auto", "block", "all", "whole", "layers"):
            raise MCANError(f"plan = {self.plan!r}: choose auto, whole, layers, block or all")
        if self.ca_stats not in ("global", "tile"):
            raise MCANError(f"ca_stats = {self.ca_stats!r}: choose 'global' or 'tile'")


def default_tile(ca_stats: CAStats, device: torch.device, margin: int = 35) -> int:
    """Tile side that measured well. Global mode's layer passes have 1-2 px margins, so small
    cache-friendly tiles win on a CPU (256). Tile mode carries the block's receptive-field
    margin, so the core grows with it (16 x margin, at least 256: 560 for the paper's 35 px) to
    keep the overlap down. GPUs take twice the side."""
    side = 256 if ca_stats == "global" else max(256, 16 * margin)
    return side * (2 if device.type == "cuda" else 1)


@dataclass
class TileReport:
    """What ran, for logs and for the user: mode, plan, sizes and time."""

    ca_stats: str
    plan: str
    tile: int
    margins: list[int]
    windows: int = 0
    seconds: float = 0.0
    oom_retries: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.plan == "whole-image":
            s = f"{self.ca_stats} statistics, whole-image plan (one call per block), {self.seconds:.2f} s"
        else:
            s = (f"{self.ca_stats} statistics, {self.plan} plan, tile {self.tile}, margins "
                 f"{self.margins} px, {self.windows} windows, {self.seconds:.2f} s")
        s += f", {self.oom_retries} out-of-memory retries" if self.oom_retries else ""
        return s + "".join(f"; {note}" for note in self.notes)


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


def map_pass(
    sources: Sequence[torch.Tensor],
    fn: Callable[..., torch.Tensor],
    margin: int,
    cfg: TileConfig,
    out_channels: int,
    out_device: torch.device,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply a local function to full-size maps (C_i, H, W) window by window.

    ``fn`` takes one batch of windows per source and returns (B, out_channels, h, w). With
    ``reduce`` (per-channel sums of a (1, C, h, w) view, e.g. ``runner.channel_sums``) the sum
    over all cores is returned too, accumulated in float64.
    """
    _, h, w = sources[0].shape
    out = torch.empty(out_channels, h, w, device=out_device)
    total = torch.zeros(out_channels, dtype=torch.float64, device=out_device) if reduce else None
    cells = [(sy, sx) for sy in spans(h, cfg.tile, margin) for sx in spans(w, cfg.tile, margin)]
    for i in range(0, len(cells), cfg.batch):
        group = cells[i : i + cfg.batch]
        batches = [torch.stack([s[:, sy.start : sy.start + sy.size, sx.start : sx.start + sx.size]
                                for sy, sx in group]) for s in sources]
        res = fn(*batches)
        for b, (sy, sx) in enumerate(group):
            core = res[b, :, sy.lo - sy.start : sy.hi - sy.start, sx.lo - sx.start : sx.hi - sx.start]
            out[:, sy.lo : sy.hi, sx.lo : sx.hi] = core.to(out_device)
            if reduce is not None:  # on the runner's device, before the copy
                total += reduce(core[None])[0].to(out_device, torch.float64)
        if progress:
            progress(len(group))
    return out, total


def window_count(h: int, w: int, tile: int, margin: int) -> int:
    return len(spans(h, tile, margin)) * len(spans(w, tile, margin))


def _map_device(runner: Runner, n_bytes: int) -> torch.device:
    """Keep full-size feature maps on the GPU when they take under half its free memory."""
    if runner.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(runner.device)
        if n_bytes < free // 2:
            return runner.device
    return torch.device("cpu")


def _global_block(runner: LayerRunner, i: int, x: torch.Tensor, cfg: TileConfig,
                  tick: Callable[[int], None] | None) -> torch.Tensor:
    """One MCAN block with exact whole-image channel statistics, layer by layer."""
    c, h, w = x.shape
    probe = runner.head(i, x[None, :, :1, :1])
    feats = probe.shape[1]
    dev = _map_device(runner, 2 * feats * h * w * 4)
    hmap, _ = map_pass([x.to(dev)], lambda t: runner.head(i, t), 1, cfg, feats, dev, progress=tick)
    for k in range(runner.n_rcabs(i)):
        r, total = map_pass([hmap], lambda t: runner.rcab_residual(i, k, t), 2, cfg, feats, dev,
                            reduce=runner.channel_sums, progress=tick)
        gate = runner.ca_scale(i, k, (total / (h * w)).float())
        runner.gate_add(hmap, r, gate.to(dev))
        del r
    out, _ = map_pass([x.to(dev), hmap], lambda a, b: runner.finish(i, a, b), 2, cfg, c, dev,
                      progress=tick)
    return out.to(x.device)


def available_memory() -> int:
    """Bytes of RAM available to a new allocation (Linux MemAvailable; else physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def whole_image_plan(runner: Runner, h: int, w: int, cfg: TileConfig) -> str | None:
    """Why the whole image runs in one call per block, or None. Runners that run whole images
    much faster than windows (OpenVINO's whole-graph kernels keep features in their own layout)
    say so with ``whole_image_bytes(h, w)``, their peak for one image; it must fit the budget."""
    estimate = getattr(runner, "whole_image_bytes", None)
    if cfg.plan == "whole":
        return "chosen by the caller"
    if cfg.plan != "auto" or cfg.ca_stats != "global" or estimate is None:
        return None
    need = estimate(h, w)
    budget = cfg.max_memory if cfg.max_memory is not None else available_memory() // 2
    if need > budget:
        log.info("whole-image plan skipped: about %.1f GB needed, budget %.1f GB; running layer by layer",
                 need / 1e9, budget / 1e9)
        return None
    return f"about {need / 1e9:.2f} GB of a {budget / 1e9:.1f} GB budget"


def _measure(runner: Runner, x: torch.Tensor, cfg: TileConfig, margin: int, start: int, stop: int) -> float:
    """Seconds for one window batch of the given plan (the plan chooser's measured cost)."""
    sy, sx = spans(x.shape[1], cfg.tile, margin)[0], spans(x.shape[2], cfg.tile, margin)[0]
    window = x[:, sy.start : sy.start + sy.size, sx.start : sx.start + sx.size][None]
    t0 = time.perf_counter()
    runner.run_blocks(window, start, stop)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return time.perf_counter() - t0


def _window_pixels(h: int, w: int, tile: int, margin: int) -> int:
    return sum(sy.size for sy in spans(h, tile, margin)) * sum(sx.size for sx in spans(w, tile, margin))


def choose_plan(runner: Runner, x: torch.Tensor, cfg: TileConfig) -> tuple[str, str]:
    """Block by block (each block's own margin) or all blocks per window (summed margins).

    The cost estimate is the pixels each plan pushes through a block; when the two are within
    25% of each other (small images, where per-call overhead matters) one window of each plan is
    timed and the measured cost decides."""
    _, h, w = x.shape
    n = runner.n_blocks
    total_margin = sum(runner.block_radii)
    if cfg.plan == "layers":
        raise MCANError("--plan layers runs global statistics; with --ca-stats tile use auto, block, all or whole")
    if cfg.plan != "auto":
        return cfg.plan, "chosen by the caller"
    if not runner.supports(0, n):
        return "block", "the runner has single blocks only"
    if not all(runner.supports(i, i + 1) for i in range(n)):
        return "all", "the runner has all blocks in one piece only"
    if n == 1 or window_count(h, w, cfg.tile, total_margin) == 1:
        return "all", "one window covers the image" if n > 1 else "one block"
    px_all = n * _window_pixels(h, w, cfg.tile, total_margin)
    px_block = sum(_window_pixels(h, w, cfg.tile, m) for m in runner.block_radii)
    if px_block * 1.25 < px_all:
        return "block", f"estimated cost: block-by-block {px_block / 1e6:.1f} Mpx, all-blocks {px_all / 1e6:.1f} Mpx"
    t_all = window_count(h, w, cfg.tile, total_margin) * _measure(runner, x, cfg, total_margin, 0, n)
    t_block = sum(window_count(h, w, cfg.tile, m) * _measure(runner, x, cfg, m, i, i + 1)
                  for i, m in enumerate(runner.block_radii))
    plan = "block" if t_block <= t_all else "all"
    return plan, f"measured cost: block-by-block {t_block:.2f} s, all-blocks {t_all:.2f} s"


def upscale_tensor(runner: Runner, image: torch.Tensor, cfg: TileConfig = TileConfig(),
                   progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, TileReport]:
    """Run the whole network on ``image`` (3, H, W) float32 in [0, 1], tiled; returns the output
    (3, H, W) float32 on the image's device and a report of what ran. On CUDA out of memory the
    tile side is halved and the image retried."""
    tile, retries = cfg.tile, 0
    while True:
        try:
            t0 = time.perf_counter()
            out, report = _upscale_once(runner, image, dataclasses.replace(cfg, tile=tile), progress)
            report.seconds = time.perf_counter() - t0
            report.oom_retries = retries
            return out, report
        except RuntimeError as exc:
            if not isinstance(exc, torch.OutOfMemoryError):
                if "can't allocate memory" in str(exc) or "DefaultCPUAllocator" in str(exc):
                    raise MCANError(f"out of host memory for a {image.shape[-1]}x{image.shape[-2]} image "
                                    "with global statistics; use --ca-stats tile") from None
                raise
            if tile <= 16:
                raise MCANError(f"out of memory even with {tile}x{tile} tiles; use --device cpu "
                                "or a smaller --batch") from None
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("out of memory with %dx%d tiles; retrying with %dx%d", tile, tile, tile // 2, tile // 2)
            tile //= 2
            retries += 1


def _upscale_once(runner: Runner, image: torch.Tensor, cfg: TileConfig,
                  progress: Callable[[int], None] | None) -> tuple[torch.Tensor, TileReport]:
    if image.dim() != 3 or image.shape[0] != 3:
        raise MCANError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
    _, h, w = image.shape
    exact_local = not runner.has_channel_attention
    why_whole = whole_image_plan(runner, h, w, cfg)
    if why_whole:  # one window holds the image: channel statistics are the whole image's
        report = TileReport("global", "whole-image", max(h, w), [0], windows=1, notes=[why_whole])
        out = runner.run_blocks(image[None], 0, runner.n_blocks)[0].to(image.device)
        if progress:
            progress(1)
        return out, report
    if cfg.ca_stats == "global" and not exact_local:
        if cfg.plan in ("block", "all"):
            raise MCANError(f"--plan {cfg.plan} is a tile-statistics plan; with global statistics use auto, "
                            "whole or layers (or --ca-stats tile)")
        if not isinstance(runner, LayerRunner):
            raise MCANError(f"{type(runner).__name__} cannot run global statistics; use --ca-stats tile")
        report = TileReport("global", "layer-by-layer", cfg.tile, [1, 2])
        x = image
        for i in range(runner.n_blocks):
            report.windows += window_count(h, w, cfg.tile, 1) + window_count(h, w, cfg.tile, 2) * (runner.n_rcabs(i) + 1)
            x = _global_block(runner, i, x, cfg, progress)
        return x, report
    plan, why = choose_plan(runner, image, cfg)
    mode = "exact (local model)" if exact_local else "tile"
    if plan == "all":
        margin = sum(runner.block_radii)
        report = TileReport(mode, "all-blocks", cfg.tile, [margin], notes=[why])
        report.windows = window_count(h, w, cfg.tile, margin)
        out, _ = map_pass([image], lambda t: runner.run_blocks(t, 0, runner.n_blocks), margin, cfg, 3,
                          image.device, progress=progress)
        return out, report
    report = TileReport(mode, "block-by-block", cfg.tile, list(runner.block_radii), notes=[why])
    x = image
    for i, margin in enumerate(runner.block_radii):
        report.windows += window_count(h, w, cfg.tile, margin)
        x, _ = map_pass([x], lambda t, i=i: runner.run_blocks(t, i, i + 1), margin, cfg, 3, image.device,
                        progress=progress)
    return x, report


def planned_windows(runner: Runner, h: int, w: int, cfg: TileConfig) -> int:
    """An upper bound on the windows ``upscale_tensor`` runs, for progress bars."""
    if cfg.ca_stats == "global" and runner.has_channel_attention and isinstance(runner, LayerRunner):
        return sum(window_count(h, w, cfg.tile, 1) + window_count(h, w, cfg.tile, 2) * (runner.n_rcabs(i) + 1)
                   for i in range(runner.n_blocks))
    return max(sum(window_count(h, w, cfg.tile, m) for m in runner.block_radii),
               window_count(h, w, cfg.tile, sum(runner.block_radii)))
