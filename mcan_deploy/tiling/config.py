"""How an image is cut and run: ``TileConfig`` (tile side, statistics mode, plan, memory budget)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import MCANError

CAStats = Literal["global", "tile"]
PlanName = Literal["auto", "whole", "layers", "layers-host", "block", "all"]
PLANS: tuple[str, ...] = ("auto", "whole", "layers", "layers-host", "block", "all")
EXACT_PLANS: tuple[str, ...] = ("whole", "layers", "layers-host")  # equal the whole-image result
TILE_PLANS: tuple[str, ...] = ("block", "all")  # tile statistics: each window pools its own


@dataclass(frozen=True)
class TileConfig:
    """How to cut an image. ``tile`` is the side of the kept core of each window."""

    tile: int = 256  # core side; the window adds a receptive-field margin on each side
    batch: int = 1  # windows per call (on a CPU, one window at a time measured fastest)
    ca_stats: CAStats = "global"
    # whole: one call per block on the whole image; layers: global statistics layer by layer over
    # tiles, full-size maps on the runner's device; layers-host: the same with the maps in host
    # memory; block / all: tile statistics block by block or all blocks per window; auto: the
    # fastest exact plan that fits max_memory (tiling.planner), or the measured tile plan
    plan: PlanName = "auto"
    max_memory: int | None = None  # bytes on the runner's device (None: tiling.memory's default share)

    def __post_init__(self) -> None:
        if self.tile < 1 or self.batch < 1:
            raise MCANError(f"tile = {self.tile} and batch = {self.batch} must be >= 1")
        if self.plan not in PLANS:
            raise MCANError(f"plan = {self.plan!r}: choose one of {', '.join(PLANS)}")
        if self.ca_stats not in ("global", "tile"):
            raise MCANError(f"ca_stats = {self.ca_stats!r}: choose 'global' or 'tile'")
        if self.max_memory is not None and self.max_memory <= 0:
            raise MCANError(f"max_memory = {self.max_memory}: give a number of bytes > 0")


def default_tile(ca_stats: CAStats, device: torch.device, margin: int = 35) -> int:
    """Tile side that measured well. Global mode's layer passes have 1-2 px margins, so small
    cache-friendly tiles win on a CPU (256). Tile mode carries the block's receptive-field
    margin, so the core grows with it (16 x margin, at least 256: 560 for the paper's 35 px) to
    keep the overlap down. GPUs take twice the side."""
    side = 256 if ca_stats == "global" else max(256, 16 * margin)
    return side * (2 if device.type == "cuda" else 1)
