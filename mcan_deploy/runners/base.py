"""What every back-end offers the tiler: the ``Runner`` protocol, the layer-level
``LayerRunner`` protocol of the exact ``global`` statistics mode, and the torch helpers that
every layer runner shares (channel sums and the in-place gate on full-size maps)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..errors import MCANError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@runtime_checkable
class Runner(Protocol):
    """What the tiler needs of a back-end."""

    device: torch.device
    n_blocks: int
    block_radii: list[int]  # receptive-field radius of each block, from the model's layers
    has_channel_attention: bool  # False: the model is local, tiling is exact in any mode

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks [start, stop) on a batch (B, 3, h, w); returns float32 on ``x``'s device."""
        ...

    def supports(self, start: int, stop: int) -> bool:
        """Whether ``run_blocks`` can run exactly this range of blocks."""
        ...


@runtime_checkable
class LayerRunner(Runner, Protocol):
    """A runner that can also run a block's layers one by one (exact global statistics)."""

    def n_rcabs(self, block: int) -> int: ...
    def head(self, block: int, x: torch.Tensor) -> torch.Tensor: ...
    def rcab_residual(self, block: int, k: int, h: torch.Tensor) -> torch.Tensor: ...
    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor: ...
    def finish(self, block: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor: ...
    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        """(B, C) sums over H and W of a (possibly cropped, strided) view (B, C, h, w)."""
        ...

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        """h += r * gate[:, None, None] in place on full-size maps (C, H, W); r may be consumed."""
        ...


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA where present; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MCANError(f"--device {device}: no CUDA device is visible; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise MCANError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA devices that support it (as fast as float16 and it cannot
    overflow), float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise MCANError(f"--dtype {dtype}: choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def safe_dtype(device: torch.device) -> torch.dtype:
    """What a float16 block that overflowed is redone in: bfloat16 (float32's range) on CUDA
    devices that have it, else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def channel_sums(r: torch.Tensor) -> torch.Tensor:
    """(B, C) float64 sums over H and W of a (possibly cropped, strided) view (B, C, h, w)."""
    return r.sum((2, 3), dtype=torch.float64)


def gate_add(h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
    """h += r * gate[:, None, None] in place on full-size maps (C, H, W); consumes r."""
    h.add_(r.mul_(gate.reshape(-1, 1, 1)))
