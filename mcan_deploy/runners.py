"""Back-ends behind one call shape, so that tiling never depends on what computes a tile.

A ``Runner`` runs blocks N_start..N_stop-1 of a model on a batch of same-size image windows and
returns float32 images. ``TorchRunner`` (eager PyTorch) also exposes the layer-level steps of a
block that the exact ``global`` channel-attention mode of the tiler needs; ONNX Runtime and the
Triton path plug in here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .errors import MCANError
from .model import MCAN, MCANBlock, receptive_field

log = logging.getLogger(__name__)

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


@runtime_checkable
class LayerRunner(Runner, Protocol):
    """A runner that can also run a block's layers one by one (exact global statistics)."""

    def n_rcabs(self, block: int) -> int: ...
    def head(self, block: int, x: torch.Tensor) -> torch.Tensor: ...
    def rcab_residual(self, block: int, k: int, h: torch.Tensor) -> torch.Tensor: ...
    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor: ...
    def finish(self, block: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor: ...


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA where present; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MCANError(f"--device {device}: no CUDA device is visible; use --device cpu")
    return torch.device(device)


@dataclass
class TorchRunner:
    """Eager PyTorch. On CUDA it runs float16/bfloat16 in channels_last; on CPU float32."""

    model: MCAN
    device: torch.device
    dtype: torch.dtype = torch.float32
    n_blocks: int = field(init=False)
    block_radii: list[int] = field(init=False)
    has_channel_attention: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.device.type == "cpu" and self.dtype != torch.float32:
            raise MCANError(f"dtype {self.dtype} runs on CUDA only; use float32 on the CPU")
        self.channels_last = self.device.type == "cuda"
        self.model = self.model.to(self.device, self.dtype).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.n_blocks = len(self.model.blocks)
        self.block_radii = [receptive_field(b) // 2 for b in self.model.blocks]
        self.has_channel_attention = all(isinstance(b, MCANBlock) for b in self.model.blocks)

    @classmethod
    def create(cls, model: MCAN, device: str = "auto", dtype: str = "float32") -> TorchRunner:
        if dtype not in DTYPES:
            raise MCANError(f"--dtype {dtype}: choose one of {sorted(DTYPES)}")
        return cls(model, resolve_device(device), DTYPES[dtype])

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        out = self._in(x)
        for block in self.model.blocks[start:stop]:
            out = block(out)
        return out.float().to(x.device)

    # ---- layer-level steps of one MCANBlock (global statistics) ----------------------------
    def _block(self, i: int) -> MCANBlock:
        return self.model.blocks[i]

    def n_rcabs(self, block: int) -> int:
        return len(self._block(block).body)

    @torch.inference_mode()
    def head(self, block: int, x: torch.Tensor) -> torch.Tensor:
        return self._block(block).head(self._in(x)).float().to(x.device)

    @torch.inference_mode()
    def rcab_residual(self, block: int, k: int, h: torch.Tensor) -> torch.Tensor:
        """r = conv2(relu(conv1(h))) of RCAB k: what its channel attention pools and scales."""
        rcab = self._block(block).body[k]
        return rcab.conv2(torch.relu(rcab.conv1(self._in(h)))).float().to(h.device)

    @torch.inference_mode()
    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor:
        """Per-channel gate (C,) of RCAB k from the channel means (C,) of its residual."""
        ca = self._block(block).body[k].ca
        m = mean.to(self.device, self.dtype).reshape(1, -1, 1, 1)
        return ca.scale(m).float().reshape(-1).to(mean.device)

    @torch.inference_mode()
    def finish(self, block: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x and its last RCAB's output h."""
        b = self._block(block)
        xi = self._in(x)
        feat = b.head(xi) + b.body_conv(self._in(h))
        out = xi + b.tail(feat)
        return (out.clamp(0, 1) if b.clamp else out).float().to(x.device)
