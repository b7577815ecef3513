"""Model files and resumable training state, all as safetensors (loading never unpickles).

A model file holds N's weights with its ``ModelConfig`` in the safetensors metadata, so a file
alone is enough to rebuild the network. A training checkpoint holds the weights, the optimiser's
tensors, the sampler's random state, and the position in the plan as JSON metadata.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, NonFiniteError, ConfigError
from .io import atomic_write_bytes
from .model import MCAN, build_model

FORMAT = "mcan-deploy/1"


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write tensors with JSON-encoded metadata to a safetensors file."""
    from safetensors.torch import save

    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a NaN checkpoint would poison every resume; the previous file stays
        raise NonFiniteError(f"{path}: not written, {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]})")
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata={"format": FORMAT, "meta": json.dumps(meta)}))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by ``save_tensors``; ``CheckpointError`` naming the file otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta_raw = header.get("__metadata__", {})
        if meta_raw.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: not an mcan-deploy file (format {meta_raw.get('format')!r}, "
                f"expected {FORMAT!r})"
            )
        return tensors, json.loads(meta_raw["meta"])
    except (SafetensorError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The model's shape for a file's metadata; ``rcab_impl`` is how it runs, not what it is,
    so it is left out (a model trained with the Triton tail loads anywhere)."""
    data = dataclasses.asdict(cfg)
    data.pop("rcab_impl")
    return data


def config_from_dict(data: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig(**data)
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{source}: model config in the file is invalid ({exc})") from None


def save_model(path: str | Path, model: MCAN, **extra: Any) -> None:
    """Write N's weights and config to a safetensors model file, atomically."""
    save_tensors(path, model.state_dict(), {"model": config_to_dict(model.config), **extra})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> MCAN:
    """Rebuild N from a model file written by ``save_model``."""
    tensors, meta = load_tensors(path)
    if "model" not in meta:
        raise CheckpointError(f"{path}: holds no model config; is it a training checkpoint?")
    model = build_model(config_from_dict(meta["model"], str(path)))
    _load_state(model, tensors, path)
    return model.to(device).eval()


def save_block(path: str | Path, block: nn.Module, cfg: ModelConfig, index: int) -> None:
    """Write one trained block N_i (1-based ``index``) with the config it belongs to."""
    save_tensors(path, block.state_dict(), {"model": config_to_dict(cfg), "block": index})


def _load_state(module: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not fit the model ({' '.join(first[:2])[:300]})"
        ) from None


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"{prefix}{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any], prefix: str = "optim.") -> None:
    """Restore what ``optimizer_to_flat`` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith(prefix):
            idx, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[key] = val
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
