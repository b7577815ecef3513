"""What a plan costs: back-propagations per parameter (the report's budget), FLOPs and time.

The report makes phased training and single back-propagation equal by counting, for every
parameter, how many back-propagations it takes part in. That ignores that a block phase step
runs one block where a joint step runs all of N, and that the generate phases run every block over
the whole training set; FLOPs and wall time say what the budget costs in compute.
FLOPs are those of convolutions and matrix products as ``torch.utils.flop_counter`` counts them
(a multiply-add is 2), measured on one training step of the module a phase trains.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, Plan
from ..data import find_pairs, split_dirs
from ..imagesize import declared_size
from ..model import build_model


def backprops_per_block(plan: Plan) -> list[int]:
    """For each block, the iterations that update its parameters: its own block phases plus every
    joint phase."""
    counts = [0] * plan.model.n_blocks
    for phase in plan.phases:
        if phase.kind == "train_block":
            counts[phase.block - 1] += phase.total_iters
        elif phase.kind == "train_joint":
            counts = [c + phase.total_iters for c in counts]
    return counts


@functools.lru_cache(maxsize=32)
def step_flops(model: ModelConfig, whole: bool, batch: int, patch: int) -> int:
    """FLOPs of one training step (forward and backward) of one block, or of all of N (``whole``),
    on a batch of ``batch`` patches of ``patch`` x ``patch``."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model(model)
    module = net if whole else net.blocks[0]
    x = torch.rand(batch, model.n_colors, patch, patch)
    with FlopCounterMode(display=False) as counter:
        module(x, clamp=False).abs().mean().backward()
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=32)
def block_forward_flops_per_pixel(model: ModelConfig) -> float:
    """Forward FLOPs of one block per image pixel (convolutions keep the size, so this is exact up
    to the channel-attention MLP, which is per image and negligible)."""
    from torch.utils.flop_counter import FlopCounterMode

    side = 32
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        build_model(model).blocks[0](torch.rand(1, model.n_colors, side, side))
    return counter.get_total_flops() / side**2


@functools.lru_cache(maxsize=8)
def dataset_pixels(data_root: Path, val_max_size: int) -> tuple[int, int]:
    """Pixels of the training images and of the (centre-cropped) validation images, from the HR
    files' headers (cached: every plan of a study asks for the same folder)."""
    train_dir, test_dir = split_dirs(data_root)
    totals = []
    for folder, crop in ((train_dir, None), (test_dir, val_max_size)):
        total = 0
        for pair in find_pairs(folder):
            size = declared_size(pair.hr.read_bytes())
            w, h = (int(v) for v in size[1].split("x")) if size else (0, 0)
            total += (min(w, crop) * min(h, crop)) if crop else w * h
        totals.append(total)
    return totals[0], totals[1]


def plan_budget(plan: Plan, train_pixels: int, val_pixels: int) -> dict[str, Any]:
    """The budget of a plan: iterations, back-propagations per parameter, and FLOPs of training
    and of the generate phases (validation not counted)."""
    d = plan.data
    train_flops = 0
    gen_flops = 0.0
    for phase in plan.phases:
        if phase.kind == "generate":
            gen_flops += block_forward_flops_per_pixel(plan.model) * (train_pixels + val_pixels)
        else:
            train_flops += phase.total_iters * step_flops(
                plan.model, phase.kind == "train_joint", d.batch_size, d.patch_size
            )
    per_block = backprops_per_block(plan)
    return {
        "iterations": sum(p.total_iters for p in plan.phases),
        "backprops_per_block": per_block,
        "train_flops": train_flops,
        "generate_flops": gen_flops,
        "total_flops": train_flops + gen_flops,
    }
