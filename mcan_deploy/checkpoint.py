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
from .errors import CheckpointError, ConfigError, NonFiniteError
from .io import atomic_write_bytes
from .model import MCAN, build_model

FORMAT = "mcan-deploy/1"


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """``NonFiniteError`` if a floating tensor holds NaN or inf (the file is then not written)."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"{path}: not written, {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]})")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write tensors with JSON-encoded metadata to a safetensors file."""
    from safetensors.torch import save

    check_finite(tensors, path)  # a NaN checkpoint would poison every resume; the previous file stays
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
                f"{path}: not an mcan-deploy file (format {meta_raw.get('format')!r}, expected {FORMAT!r})"
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


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length
    that fits the file, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = Path(path).stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def looks_like_pickle(path: str | Path) -> bool:
    """torch.save's zip archive, a protocol 2-5 pickle stream, or the legacy tar format."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return (
        head.startswith(b"PK\x03\x04")
        or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")
        or head[257:262] == b"ustar"
    )


def infer_config(state: dict[str, torch.Tensor], source: str) -> ModelConfig:
    """The ``ModelConfig`` that a state dict of ``MCAN`` fits, from its keys and shapes."""
    import re

    blocks = {int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or "blocks.0.head.weight" not in state:
        raise CheckpointError(
            f"{source}: not an MCAN state dict (no blocks.0.head.weight); "
            "only mcan-deploy MCAN weights can be converted"
        )
    rcabs = {int(m[1]) for k in state if (m := re.match(r"blocks\.0\.body\.(\d+)\.conv1\.weight$", k))}
    head = state["blocks.0.head.weight"]
    down = state.get("blocks.0.body.0.ca.down.weight")
    return ModelConfig(
        n_blocks=max(blocks) + 1,
        n_resblocks=len(rcabs),
        n_feats=head.shape[0],
        n_colors=head.shape[1],
        reduction=head.shape[0] // down.shape[0] if down is not None else 4,
    )


def _load_pickle(path: Path) -> MCAN:
    """A pickle-based file, loaded with torch's restricted unpickler (weights_only: tensors and
    plain containers only, no code); the caller asked for it with --trust-pickle."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True) ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    for key in ("state_dict", "model", "params"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    model = build_model(infer_config(state, str(path)))
    _load_state(model, state, path)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", trust_pickle: bool = False) -> MCAN:
    """Rebuild N from a model file written by ``save_model``.

    Pickle-based files (.pt/.pth) can run code when loaded and are refused, unless
    ``trust_pickle``: then their tensors are read with ``torch.load(weights_only=True)``."""
    if Path(path).is_file() and not is_safetensors(path):
        if trust_pickle:
            return _load_pickle(Path(path)).to(device).eval()
        if looks_like_pickle(path):
            raise CheckpointError(
                f"{path}: a pickle-based PyTorch file, refused (loading pickles can run code). Re-save "
                "it as safetensors, or pass --trust-pickle to read only its tensors (torch.load with "
                "weights_only=True)"
            )
        raise CheckpointError(
            f"{path}: not a safetensors model file (corrupt, truncated or another format; "
            "a PyTorch .pt/.pth loads only with --trust-pickle)"
        )
    tensors, meta = load_tensors(path)
    if "model" not in meta:
        raise CheckpointError(f"{path}: holds no model config; is it an mcan-deploy model file?")
    if "position" in meta:  # a training checkpoint: N's weights are under "model.", beside the optimiser's
        tensors = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if "block" in meta:
        raise CheckpointError(
            f"{path}: one trained block (N_{meta['block']}), not a whole model; give the run's model.safetensors"
        )
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
        raise CheckpointError(f"{path}: weights do not fit the model ({' '.join(first[:2])[:300]})") from None


def optimizer_to_flat(
    opt: torch.optim.Optimizer, prefix: str = "optim."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
    # a learning rate held as a tensor (CUDA graphs read it on the device) is stored as a number
    groups = [{k: float(v) if torch.is_tensor(v) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


# how an optimiser computes, not its state: the resuming optimiser keeps its own (a run resumes
# with another train.optimizer_impl or cuda_graphs setting)
_IMPLEMENTATION_KEYS = ("foreach", "fused", "capturable", "differentiable")


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "optim."
) -> None:
    """Restore what ``optimizer_to_flat`` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith(prefix):
            idx, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = val
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    groups = [
        {**saved, **{k: now[k] for k in _IMPLEMENTATION_KEYS if k in now}}
        for saved, now in zip(meta["param_groups"], opt.param_groups)
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})
    # saved contiguous; fused and foreach optimisers pair a parameter's elements with its
    # state's by memory order, so each state tensor takes its parameter's layout (channels_last)
    for group in opt.param_groups:
        for p in group["params"]:
            for key, val in opt.state.get(p, {}).items():
                if torch.is_tensor(val) and val.shape == p.shape and val.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=val.dtype).copy_(val)
