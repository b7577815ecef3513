"""Eager PyTorch runners: ``TorchRunner`` and ``TritonRunner`` (the fused Triton RCAB tail)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MCANError
from ..model import MCAN, MCANBlock, receptive_field
from . import base
from .base import DTYPES, resolve_device


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

    def supports(self, start: int, stop: int) -> bool:
        return 0 <= start < stop <= self.n_blocks

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
        return rcab.residual(self._in(h)).float().to(h.device)

    @torch.inference_mode()
    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor:
        """Per-channel gate (C,) of RCAB k from the channel means (C,) of its residual."""
        ca = self._block(block).body[k].ca
        m = mean.to(self.device, self.dtype).reshape(1, -1, 1, 1)
        return ca.scale(m).float().reshape(-1).to(mean.device)

    @torch.inference_mode()
    def finish(self, block: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x and its last RCAB's output h."""
        return self._block(block).finish(self._in(x), self._in(h)).float().to(x.device)

    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        return base.channel_sums(r)

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        base.gate_add(h, r, gate)


@dataclass
class TritonRunner(TorchRunner):
    """PyTorch with the fused Triton RCAB tail: whole windows run the model with
    ``rcab_impl="triton"`` (per-window statistics fused), and the exact ``global`` mode sums each
    RCAB's channel statistics over all tiles with the reduction kernel and applies the gate with
    the apply kernel. Where Triton cannot run on a tensor's device the torch path runs (logged once).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..kernels import fused_available
        from ..model import set_rcab_impl

        set_rcab_impl(self.model, "triton")
        self.fused = fused_available(self.device)

    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        from ..kernels import fused_available

        if not fused_available(r.device):
            return super().channel_sums(r)
        from ..kernels.rcab import channel_sums

        return channel_sums(r).double()

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        from ..kernels import fused_available

        if not fused_available(h.device):
            return super().gate_add(h, r, gate)
        from ..kernels import rcab
        from ..kernels.rcab import max_offset, scale_add

        g = gate.float().reshape(1, -1)
        # the kernels index within an image in int32: huge maps go in pieces of channels x rows
        kc, kr = h.shape[0], h.shape[1]

        def span(t: torch.Tensor) -> int:
            return max_offset(t[None, :kc, :kr])

        while max(span(h), span(r)) > rcab.MAX_OFFSET and (kc > 1 or kr > 1):
            t = h if span(h) >= span(r) else r
            if kr == 1 or (kc > 1 and (kc - 1) * t.stride(0) >= (kr - 1) * t.stride(1)):
                kc = (kc + 1) // 2
            else:
                kr = (kr + 1) // 2
        for c in range(0, h.shape[0], kc):
            for y in range(0, h.shape[1], kr):
                hs, rs = h[None, c : c + kc, y : y + kr], r[None, c : c + kc, y : y + kr]
                scale_add(rs, g[:, c : c + kc], x=hs, out=hs)
