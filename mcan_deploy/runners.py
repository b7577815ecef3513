"""Back-ends behind one call shape, so that tiling never depends on what computes a tile.

A ``Runner`` runs blocks N_start..N_stop-1 of a model on a batch of same-size image windows and
returns float32 images. ``TorchRunner`` (eager PyTorch) also exposes the layer-level steps of a
block that the exact ``global`` channel-attention mode of the tiler needs; ONNX Runtime and the
Triton path plug in here too.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
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


def load_runner(model_path: str | Path, device: str = "auto", dtype: str = "float32",
                rcab_impl: str = "torch", trust_pickle: bool = False) -> Runner:
    """A runner for a model file: ``.onnx`` through ONNX Runtime, else safetensors through torch
    (``rcab_impl="triton"``: with the fused Triton RCAB tail)."""
    if Path(model_path).suffix.lower() == ".onnx":
        import importlib.util

        if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
            raise MCANError(f"{model_path}: running ONNX files needs the onnx extra: "
                            "pip install 'mcan-deploy[onnx]'")
        if dtype != "float32":
            raise MCANError("--dtype applies to PyTorch models; an ONNX file runs in the precision it was exported in")
        if rcab_impl != "torch":
            raise MCANError(f"--rcab {rcab_impl} applies to PyTorch models; ONNX Runtime runs the exported graph")
        return OrtRunner(model_path)
    from .checkpoint import load_model

    cls = {"torch": TorchRunner, "triton": TritonRunner}.get(rcab_impl)
    if cls is None:
        raise MCANError(f"--rcab {rcab_impl}: choose torch or triton")
    return cls.create(load_model(model_path, trust_pickle=trust_pickle), device, dtype)


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

    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        return r.sum((2, 3), dtype=torch.float64)

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        h.add_(r.mul_(gate.reshape(-1, 1, 1)))


@dataclass
class TritonRunner(TorchRunner):
    """PyTorch with the fused Triton RCAB tail: whole windows run the model with
    ``rcab_impl="triton"`` (per-window statistics fused), and the exact ``global`` mode sums each
    RCAB's channel statistics over all tiles with the reduction kernel and applies the gate with
    the apply kernel. Where Triton cannot run on a tensor's device the torch path runs (logged once).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        from .kernels import fused_available
        from .model import set_rcab_impl

        set_rcab_impl(self.model, "triton")
        self.fused = fused_available(self.device)

    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        from .kernels import fused_available

        if not fused_available(r.device):
            return super().channel_sums(r)
        from .kernels.rcab import channel_sums

        return channel_sums(r).double()

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        from .kernels import fused_available

        if not fused_available(h.device):
            return super().gate_add(h, r, gate)
        from .kernels import rcab
        from .kernels.rcab import max_offset, scale_add

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


class OrtRunner:
    """ONNX Runtime on files written by ``mcan-export``: CUDA where onnxruntime-gpu sees a GPU,
    else the CPU, with full graph optimisation and one intra-op thread per core.

    A file of all of N serves the all-blocks plan; per-block files (``<stem>.N1.onnx`` ...) beside
    it, or given instead of it, serve the block-by-block plan. Margins come from the files'
    metadata, so no PyTorch model is needed. Channel statistics are per tile only.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from .export.onnx import ExportError, read_metadata

        path = Path(path)
        meta = read_metadata(path)
        self.n_blocks = int(meta["n_blocks"])
        files: dict[tuple[int, int], Path] = {tuple(meta["blocks"]): path}
        stem = re.sub(r"\.N\d+$", "", path.stem)
        for i in range(1, self.n_blocks + 1):
            sib = path.with_name(f"{stem}.N{i}{path.suffix}")
            if sib.exists() and sib != path:
                files[(i - 1, i)] = sib
        radii: dict[int, int] = {}
        self._dtype: dict[tuple[int, int], str] = {}
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        available = ort.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.sessions: dict[tuple[int, int], object] = {}
        for rng, f in files.items():
            m = meta if f == path else read_metadata(f)
            if m["model"] != meta["model"] or m.get("source_sha256") != meta.get("source_sha256"):
                raise ExportError(f"{f}: exported from other weights than {path}; re-export both")
            for j, r in enumerate(m["block_radii"]):
                radii[m["blocks"][0] + j] = int(r)
            self._dtype[rng] = str(m["dtype"])
            try:
                self.sessions[rng] = ort.InferenceSession(str(f), sess_options=opts, providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
                raise ExportError(f"{f}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})"[:400]) from None
        if sorted(radii) != list(range(self.n_blocks)):
            raise ExportError(f"{path}: the ONNX files beside it do not cover blocks 1..{self.n_blocks}")
        self.block_radii = [radii[i] for i in range(self.n_blocks)]
        self.has_channel_attention = meta["model"]["kind"] == "mcan"
        self.device = torch.device("cpu")  # tensors in and out; ORT places the work itself
        log.info("ONNX Runtime %s on %s: %s", ort.__version__, self.providers[0],
                 ", ".join(p.name for p in files.values()))

    def supports(self, start: int, stop: int) -> bool:
        return (start, stop) in self.sessions or all((i, i + 1) in self.sessions for i in range(start, stop))

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        import numpy as np

        ranges = [(start, stop)] if (start, stop) in self.sessions else [(i, i + 1) for i in range(start, stop)]
        arr = x.detach().cpu().numpy()
        for rng in ranges:
            if rng not in self.sessions:
                raise MCANError(f"no ONNX file covers blocks {rng[0] + 1}..{rng[1]}; export with --blocks")
            sess = self.sessions[rng]
            feed = arr.astype(np.float16 if self._dtype[rng] == "float16" else np.float32, copy=False)
            arr = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(feed)})[0]
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(x.device)
