"""The pairs a run trains and validates on: every data folder's train and test pairs, and the
inputs a resumed run starts from (the last generate phase's, read back from ``generated/``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_tensors
from ..config import Plan
from ..data import PairedImages, load_images, split_dirs
from ..errors import DataError
from .rundir import RunPaths


def load_pairs(
    plan: Plan, data_roots: list[Path], val_roots: list[Path], device: torch.device, progress: bool
) -> tuple[PairedImages, PairedImages]:
    """Every folder's train and test pairs, joined; ``groups`` says which folder each came from.
    Every split is checked before an error is raised: one report for all of them."""
    limit = plan.data.max_pixels
    trains: list[PairedImages] = []
    vals: list[PairedImages] = []
    problems: list[str] = []
    for root in data_roots:
        train_dir, test_dir = split_dirs(root)
        for folder, max_size, into in ((train_dir, None, trains), (test_dir, plan.data.val_max_size, vals)):
            try:
                into.append(load_images(folder, max_size=max_size, progress=progress, max_pixels=limit))
            except DataError as exc:
                problems.append(str(exc))
    for root in val_roots:  # validated on, not trained on
        try:
            vals.append(load_images(split_dirs(root)[1], plan.data.val_max_size, progress, limit))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("\n".join(problems))
    return PairedImages.join(trains).to(device), PairedImages.join(vals).to(device)


def inputs_before(
    plan: Plan, paths: RunPaths, pi: int, train: PairedImages, val: PairedImages, device: torch.device
) -> tuple[PairedImages, PairedImages]:
    """The input sets that phase ``pi`` starts from: the output of the last generate phase
    before it (cached in ``generated/``), or LR."""
    generated = [p for p in plan.phases[:pi] if p.kind == "generate"]
    if not generated:
        return train, val
    tensors, _ = load_tensors(paths.generated(generated[-1].name))

    def pick(split: str, n: int) -> list[torch.Tensor]:
        return [tensors[f"{split}.{i}"].to(device) for i in range(n)]

    return train.with_inputs(pick("train", len(train))), val.with_inputs(pick("val", len(val)))
