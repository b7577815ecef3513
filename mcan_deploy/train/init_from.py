"""Start a phase from trained weights: ``init = "from:PATH"`` in a plan, ``--init-from PATH``.

A model file (or a training checkpoint) gives a ``train_joint`` phase all of N and a
``train_block`` phase its own block N_i; a block file gives a ``train_block`` phase that block.
Shapes must match the plan's model; a mismatch names the field and both values. Files are read as
safetensors only (a pickle is refused, as everywhere), so a hostile file cannot run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import config_to_dict, load_tensors
from ..config import ModelConfig, PhaseConfig
from ..errors import CheckpointError
from ..model import MCAN

PREFIX = "from:"
# what makes two models' blocks interchangeable (n_blocks only matters for all of N; clamp and
# rcab_impl are how a model runs, not its weights)
BLOCK_SHAPE = ("kind", "n_resblocks", "n_feats", "reduction", "n_colors")


def source_of(phase: PhaseConfig) -> Path | None:
    """The file a phase starts from, or None."""
    return Path(phase.init[len(PREFIX) :]) if phase.init.startswith(PREFIX) else None


@dataclass(frozen=True)
class InitSource:
    """A file a phase starts from, as recorded in run.json and the report."""

    phase: str
    path: str
    sha256: str


def check_sources(phases: list[PhaseConfig], model: ModelConfig) -> list[InitSource]:
    """Every ``from:`` file of the plan read and checked before training starts, so that a missing,
    hostile or mismatched file stops the run at once with one line."""
    from ..io import file_sha256

    out = []
    for phase in phases:
        path = source_of(phase)
        if path is None:
            continue
        _weights_for(phase, model, path)
        out.append(InitSource(phase.name, str(path), file_sha256(path)))
    return out


def _weights_for(phase: PhaseConfig, model: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """The state dict the phase starts from: all of N, or one block's."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file (phase '{phase.name}', init = 'from:{path}')")
    tensors, meta = load_tensors(path)  # safetensors only: corrupt or pickled files are one-line errors
    if "model" not in meta:
        raise CheckpointError(f"{path}: holds no model config; give a model.safetensors or a block from mcan-train")
    if "position" in meta:  # a training checkpoint: N's weights beside the optimiser's
        tensors = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    have = dict(meta["model"])
    want = config_to_dict(model)
    fields = BLOCK_SHAPE + (("n_blocks",) if phase.kind == "train_joint" else ())
    for f in fields:
        if have.get(f) != want.get(f):
            raise CheckpointError(
                f"{path}: model.{f} is {have.get(f)!r} in the file and {want.get(f)!r} in the plan; "
                f"phase '{phase.name}' can start only from a model of the same shape"
            )
    if "block" in meta:
        if phase.kind != "train_block":
            raise CheckpointError(
                f"{path}: one block (N_{meta['block']}); phase '{phase.name}' trains all of N "
                "and needs a whole model file"
            )
        return tensors
    if phase.kind == "train_block":
        if phase.block > int(have.get("n_blocks", 0)):
            raise CheckpointError(
                f"{path}: holds {have.get('n_blocks')} blocks; phase '{phase.name}' trains block {phase.block}"
            )
        prefix = f"blocks.{phase.block - 1}."
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


def load_into(model: MCAN, phase: PhaseConfig) -> None:
    """Load the phase's ``from:`` weights into ``model`` (the trained block, or all of N)."""
    path = source_of(phase)
    assert path is not None
    state = _weights_for(phase, model.config, path)
    target = model.blocks[phase.block - 1] if phase.kind == "train_block" else model
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit phase '{phase.name}' (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
