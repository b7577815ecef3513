"""Full-size images through a runner: windows, the memory model, the planner and the engine.

``upscale_tensor`` is the entry point; ``planner.choose`` says which plan it will take and why.
"""

from .config import EXACT_PLANS, PLANS, TILE_PLANS, CAStats, PlanName, TileConfig, default_tile
from .engine import TileReport, planned_windows, upscale_tensor
from .memory import Budget, Footprint, available_memory, budget_for, footprint, free_device_memory
from .planner import Choice, choose, choose_tile_plan
from .windows import Span, map_pass, spans, window_count

__all__ = [
    "EXACT_PLANS",
    "PLANS",
    "TILE_PLANS",
    "Budget",
    "CAStats",
    "Choice",
    "Footprint",
    "PlanName",
    "Span",
    "TileConfig",
    "TileReport",
    "available_memory",
    "budget_for",
    "choose",
    "choose_tile_plan",
    "default_tile",
    "footprint",
    "free_device_memory",
    "map_pass",
    "planned_windows",
    "spans",
    "upscale_tensor",
    "window_count",
]
