"""Which plan runs an image: the fastest exact plan that fits the memory budget, or, when tile
statistics were asked for, the cheaper of block-by-block and all-blocks-per-window.

Exact plans, fastest first where the runner is faster on whole images (a GPU, OpenVINO):
``whole`` (one call per block), ``layers`` (global statistics over tiles, full-size maps on the
runner's device, in its compute dtype), ``layers-host`` (the same with the maps in host memory, a
GPU's fallback). On a CPU with PyTorch, small tiles measured faster than whole images, so the
layer plan comes first there. Tile statistics are an approximation and run only when asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..errors import MCANError
from ..runners import LayerRunner, Runner
from .config import EXACT_PLANS, TileConfig
from .memory import Budget, Footprint, budget_for, footprint
from .windows import spans, window_count, window_pixels

log = logging.getLogger(__name__)

LABELS = {
    "whole": "whole-image",
    "layers": "layer-by-layer",
    "layers-host": "layer-by-layer, maps in host memory",
    "block": "block-by-block",
    "all": "all-blocks",
}


@dataclass(frozen=True)
class Choice:
    """A plan for one image, why it was taken and what it should need."""

    plan: str  # whole, layers, layers-host, block or all
    why: str
    need: Footprint

    @property
    def label(self) -> str:
        return LABELS[self.plan]


def exact_candidates(runner: Runner) -> list[str]:
    """The exact plans ``runner`` can run, fastest first."""
    plans = ["whole"] if getattr(runner, "prefers_whole", False) else []
    if isinstance(runner, LayerRunner):
        plans.append("layers")
        if runner.device.type != "cpu":
            plans.append("layers-host")
    return plans


def choose(
    runner: Runner,
    h: int,
    w: int,
    cfg: TileConfig,
    budget: Budget | None = None,
    exclude: tuple[str, ...] = (),
    image: torch.Tensor | None = None,
) -> Choice:
    """The plan for an (h, w) image; ``exclude`` drops plans that ran out of memory already;
    ``image`` is what the tile-statistics chooser times when its estimate is close."""
    if cfg.ca_stats == "tile" and runner.has_channel_attention and cfg.plan in ("layers", "layers-host"):
        raise MCANError(f"--plan {cfg.plan} runs global statistics; with --ca-stats tile use auto, block, all or whole")
    if cfg.ca_stats == "global" and runner.has_channel_attention and cfg.plan in ("block", "all"):
        raise MCANError(
            f"--plan {cfg.plan} is a tile-statistics plan; with global statistics use auto, "
            "whole, layers or layers-host (or --ca-stats tile)"
        )
    if cfg.plan in EXACT_PLANS:
        if cfg.plan != "whole" and not isinstance(runner, LayerRunner):
            raise MCANError(
                f"--plan {cfg.plan}: {type(runner).__name__} cannot run layer by layer; use --plan whole or auto"
            )
        plan: str = "layers" if cfg.plan == "layers-host" and runner.device.type == "cpu" else cfg.plan
        return Choice(plan, "chosen by the caller", footprint(runner, plan, h, w, cfg))
    if not runner.has_channel_attention:
        return _tile_plan(runner, h, w, cfg, "exact: the model has no channel attention", image)
    if cfg.ca_stats == "tile":
        return _tile_plan(runner, h, w, cfg, "tile statistics, as asked", image)
    candidates = [p for p in exact_candidates(runner) if p not in exclude]
    if not candidates:
        raise MCANError(f"{type(runner).__name__} cannot run global statistics; use --ca-stats tile")
    budget = budget or budget_for(runner.device, cfg.max_memory)
    skipped: list[str] = []
    for plan in candidates:
        need = footprint(runner, plan, h, w, cfg)
        if budget.fits(need):
            why = f"{budget.describe(need)}" + "".join(f"; {s}" for s in skipped)
            return Choice(plan, why, need)
        skipped.append(f"{LABELS[plan]} would need {budget.describe(need)}")
    need = footprint(runner, candidates[-1], h, w, cfg)
    raise MCANError(
        f"{w}x{h}: exact global statistics need {budget.describe(need)} at the least; raise "
        "--max-memory (GB) or use --ca-stats tile, whose memory stays flat (approximate)"
    )


def _measure(runner: Runner, x: torch.Tensor, cfg: TileConfig, margin: int, start: int, stop: int) -> float:
    """Seconds for one window batch of the given plan, after one untimed call (which takes the
    cuDNN setup and kernel compiles that would otherwise bias the first plan timed)."""
    sy, sx = spans(x.shape[1], cfg.tile, margin)[0], spans(x.shape[2], cfg.tile, margin)[0]
    window = x[:, sy.start : sy.start + sy.size, sx.start : sx.start + sx.size][None]
    runner.run_blocks(window, start, stop)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    t0 = time.perf_counter()
    runner.run_blocks(window, start, stop)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return time.perf_counter() - t0


def _tile_plan(runner: Runner, h: int, w: int, cfg: TileConfig, mode: str, x: torch.Tensor | None = None) -> Choice:
    # without the image, zeros (pages the OS maps only when touched) for the timing that may follow
    plan, why = choose_tile_plan(runner, x if x is not None else torch.zeros(3, h, w), cfg)
    margin = sum(runner.block_radii) if plan == "all" else max(runner.block_radii)
    return Choice(plan, f"{mode}; {why}", footprint(runner, plan, h, w, cfg, margin))


def choose_tile_plan(runner: Runner, x: torch.Tensor, cfg: TileConfig) -> tuple[str, str]:
    """Block by block (each block's own margin) or all blocks per window (summed margins).

    The cost estimate is the pixels each plan pushes through a block; when the two are within
    25% of each other (small images, where per-call overhead matters) one window of each plan is
    timed and the measured cost decides."""
    _, h, w = x.shape
    n = runner.n_blocks
    total_margin = sum(runner.block_radii)
    if cfg.plan in ("block", "all"):
        return cfg.plan, "chosen by the caller"
    if not runner.supports(0, n):
        return "block", "the runner has single blocks only"
    if not all(runner.supports(i, i + 1) for i in range(n)):
        return "all", "the runner has all blocks in one piece only"
    if n == 1 or window_count(h, w, cfg.tile, total_margin) == 1:
        return "all", "one window covers the image" if n > 1 else "one block"
    px_all = n * window_pixels(h, w, cfg.tile, total_margin)
    px_block = sum(window_pixels(h, w, cfg.tile, m) for m in runner.block_radii)
    if px_block * 1.25 < px_all:
        return "block", f"estimated cost: block-by-block {px_block / 1e6:.1f} Mpx, all-blocks {px_all / 1e6:.1f} Mpx"
    t_all = window_count(h, w, cfg.tile, total_margin) * _measure(runner, x, cfg, total_margin, 0, n)
    t_block = sum(
        window_count(h, w, cfg.tile, m) * _measure(runner, x, cfg, m, i, i + 1)
        for i, m in enumerate(runner.block_radii)
    )
    plan = "block" if t_block <= t_all else "all"
    return plan, f"measured cost: block-by-block {t_block:.2f} s, all-blocks {t_all:.2f} s"
