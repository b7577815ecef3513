"""PyTorch runners: ``TorchRunner`` (eager) and ``TritonRunner`` (the fused inference RCAB)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch

from ..errors import MCANError
from ..model import MCAN, RCAB, MCANBlock, receptive_field
from . import base
from .base import resolve_device, resolve_dtype, safe_dtype
from .overflow import FlagGuard, OverflowGuard

if TYPE_CHECKING:
    from .fused import Core, FusedBlocks


@dataclass
class TorchRunner:
    """Eager PyTorch in the given compute dtype. On CUDA it runs channels_last; on a CPU float16
    and bfloat16 run too (slowly where the CPU lacks them; float32 is the CPU default)."""

    model: MCAN
    device: torch.device
    dtype: torch.dtype = torch.float32
    n_blocks: int = field(init=False)
    block_radii: list[int] = field(init=False)
    has_channel_attention: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise MCANError(f"dtype {self.dtype}: choose float32, float16 or bfloat16")
        self.channels_last = self.device.type == "cuda"
        # float16 can overflow: keep the float32 weights for the safe-dtype twin that redoes a block
        self._float_state = (
            {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in self.model.state_dict().items()}
            if self.dtype == torch.float16
            else None
        )
        self._twin: TorchRunner | None = None
        self.model = self.model.to(self.device, self.dtype).eval()
        if self.channels_last:
            # nn.Module.to takes memory_format (documented); torch's overloads for it leave it out
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.n_blocks = len(self.model.blocks)
        self.block_radii = [receptive_field(b) // 2 for b in self.model.blocks]
        self.has_channel_attention = all(isinstance(b, MCANBlock) for b in self.model.blocks)
        convs = [m for m in self.model.blocks[0].modules() if isinstance(m, torch.nn.Conv2d)]
        self.n_feats = max(c.out_channels for c in convs)  # the widest feature map of a block
        self.map_dtype = self.dtype  # full-size maps of the layer plans stay in the compute dtype
        # a GPU runs a block on the whole image fastest; on a CPU small tiles measured faster
        self.prefers_whole = self.device.type == "cuda"

    @classmethod
    def create(cls, model: MCAN, device: str = "auto", dtype: str = "auto") -> TorchRunner:
        dev = resolve_device(device)
        return cls(model, dev, resolve_dtype(dtype, dev))

    def overflow_guard(self) -> OverflowGuard:
        """A context that notes any non-finite layer output of this thread's calls."""
        return OverflowGuard(self.model)

    def safe_twin(self) -> TorchRunner:
        """The same model in the safe dtype (bfloat16 where the device has it, else float32),
        built from the float32 weights on first use, for blocks that overflowed float16."""
        if self._twin is None:
            model = copy.deepcopy(self.model).float()
            if self._float_state is not None:
                model.load_state_dict(self._float_state)
            self._twin = type(self)(model, self.device, safe_dtype(self.device))
        return self._twin

    def supports(self, start: int, stop: int) -> bool:
        return 0 <= start < stop <= self.n_blocks

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device in the compute dtype and layout, in one copy (none if it is so)."""
        fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.preserve_format
        return x.to(self.device, self.dtype, non_blocking=True, memory_format=fmt)

    @torch.inference_mode()
    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        out = self._in(x)
        for block in self.model.blocks[start:stop]:
            out = block(out)
        return out.float().to(x.device)

    # ---- layer-level steps of one MCANBlock (global statistics) ----------------------------
    def _block(self, i: int) -> MCANBlock:
        return cast(MCANBlock, self.model.blocks[i])  # nn.ModuleList items are typed nn.Module

    def _rcab(self, block: int, k: int) -> RCAB:
        return cast(RCAB, self._block(block).body[k])  # nn.Sequential items are typed nn.Module

    def n_rcabs(self, block: int) -> int:
        return len(self._block(block).body)

    @torch.inference_mode()
    def head(self, block: int, x: torch.Tensor) -> torch.Tensor:
        return self._block(block).head(self._in(x)).to(x.device)

    # layer steps return the compute dtype: on a device the maps stay in it (``tiling.engine``)
    @torch.inference_mode()
    def rcab_residual(self, block: int, k: int, h: torch.Tensor) -> torch.Tensor:
        """r = conv2(relu(conv1(h))) of RCAB k: what its channel attention pools and scales."""
        rcab = self._rcab(block, k)
        return rcab.residual(self._in(h)).to(h.device)

    @torch.inference_mode()
    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor:
        """Per-channel gate (C,) of RCAB k from the channel means (C,) of its residual."""
        ca = self._rcab(block, k).ca
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
    """The fused inference RCAB (``runners.fused``): every convolution of a block with its
    epilogue (bias, ReLU, channel sums, residual, clamp) in one Triton kernel or after cuDNN's
    convolution in one pass, the gate and the residual in one pass, float16 guarded by the
    kernels' overflow flag. ``conv`` picks the convolution (``fused.CONV_IMPLS``; ``auto`` times
    them on the first image). Every plan runs on it: whole images and window batches through
    ``run_blocks``, the exact layer plan through ``block_on_device_maps`` (output regions of
    full-size maps, no window gathers), and the layer steps for maps in host memory. Where
    Triton cannot run on the device, or the model has no channel attention, the torch path runs
    (logged once)."""

    conv: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..kernels import fused_available
        from ..model import set_rcab_impl

        set_rcab_impl(self.model, "triton")
        self.fused = fused_available(self.device)
        self.kernels: FusedBlocks | None = None
        if self.fused and self.has_channel_attention:
            from .fused import FusedBlocks

            cache = None
            if self.device.type == "cuda":
                from ..export.openvino import default_cache_dir
                from .conv_choice import ChoiceCache

                cache = ChoiceCache(default_cache_dir())
            self.kernels = FusedBlocks(self.model, self.device, self.dtype, self.conv, cache)

    def overflow_guard(self) -> OverflowGuard | FlagGuard:  # type: ignore[override]
        """The kernels' own overflow flag (no pass of its own), or the hooks on the torch path."""
        return FlagGuard(self.kernels.flag) if self.kernels is not None else super().overflow_guard()

    def safe_twin(self) -> TritonRunner:
        if self._twin is None:
            model = copy.deepcopy(self.model).float()
            if self._float_state is not None:
                model.load_state_dict(self._float_state)
            # its own choice: the safe dtype's kernels are other kernels (and checked against cuDNN)
            self._twin = TritonRunner(model, self.device, safe_dtype(self.device))
        return cast(TritonRunner, self._twin)

    def whole_image_bytes(self, h: int, w: int) -> int:
        """Peak bytes of one block on a whole (h, w) image: the fused path holds 4 feature maps
        (the head's output for the long skip, the running features, conv1's and, on cuDNN,
        conv2's outputs; 3 on Triton, whose conv2 writes into the features, but the plan is
        made before the convolution is chosen), the torch path 5; plus the 3-channel images in
        and out."""
        maps = 4 if self.kernels is not None else 5
        return int(maps * self.n_feats * self.dtype.itemsize * h * w + 2 * 3 * self.dtype.itemsize * h * w)

    @torch.inference_mode()
    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if self.kernels is None:
            return super().run_blocks(x, start, stop)
        out = self._in(x)
        for i in range(start, stop):
            out = self.kernels.block(i, out)
        return out.float().to(x.device)

    @torch.inference_mode()
    def block_on_device_maps(
        self, i: int, x: torch.Tensor, cores: list[Core], tick: Callable[[int], None] | None = None
    ) -> torch.Tensor | None:
        """Block ``i`` of one image (3, H, W) with exact statistics over ``cores`` (y0, y1, x0,
        x1) of full-size maps on the device (``FusedBlocks.block_on_maps``: Triton regions, or
        cuDNN row bands where "auto" chose cuDNN); None where this runner has no such path (the
        torch path, or a convolution named by the user), and the engine's layer steps run."""
        if self.kernels is None:
            return None
        if self.kernels.conv == "auto":
            self.kernels.choose(x.shape[1], x.shape[2])
        if self.kernels.conv != "triton" and self.kernels.asked != "auto":
            return None  # the cuDNN convolution asked for: the engine's layer steps run it
        out = self.kernels.block_on_maps(i, self._in(x[None]), cores, tick)
        return out[0].float().to(x.device)

    # ---- layer steps (exact statistics with maps in host memory) ---------------------------
    @torch.inference_mode()
    def head(self, block: int, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            return super().head(block, x)
        return self.kernels.conv3x3(self._in(x), self.kernels.blocks[block].head).to(x.device)

    @torch.inference_mode()
    def rcab_residual(self, block: int, k: int, h: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            return super().rcab_residual(block, k, h)
        if self.kernels.conv == "auto":
            self.kernels.choose(h.shape[2], h.shape[3])
        return self.kernels.residual(self._in(h), self.kernels.blocks[block].rcabs[k]).to(h.device)

    @torch.inference_mode()
    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            return super().ca_scale(block, k, mean)
        from ..kernels.rcab import gate

        m = mean.to(self.device, torch.float32).reshape(1, -1)
        return gate(m, 1.0, *self.kernels.blocks[block].rcabs[k].attention).reshape(-1).to(mean.device)

    @torch.inference_mode()
    def finish(self, block: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            return super().finish(block, x, h)
        return self.kernels.finish(block, self._in(x), self._in(h)).float().to(x.device)

    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        from ..kernels import fused_available

        if not fused_available(r.device, warn=r.device.type == self.device.type):  # host maps: torch, by design
            return super().channel_sums(r)
        from ..kernels.rcab import channel_sums

        return channel_sums(r).double()

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        from ..kernels import fused_available

        if not fused_available(h.device, warn=h.device.type == self.device.type):
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
