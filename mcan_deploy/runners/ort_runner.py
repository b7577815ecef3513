"""ONNX Runtime on files written by ``mcan-export`` (tile statistics only)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import MCANError

log = logging.getLogger(__name__)


class OrtRunner:
    """ONNX Runtime on files written by ``mcan-export``: CUDA where onnxruntime-gpu sees a GPU,
    else the CPU, with full graph optimisation and one intra-op thread per core.

    A file of all of N serves the all-blocks plan; per-block files (``<stem>.N1.onnx`` ...) beside
    it, or given instead of it, serve the block-by-block plan. Margins come from the files'
    metadata, so no PyTorch model is needed. Channel statistics are per tile only.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from ..export.onnx import ExportError, read_metadata

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
        self.sessions: dict[tuple[int, int], Any] = {}  # onnxruntime.InferenceSession
        for rng, f in files.items():
            m = meta if f == path else read_metadata(f)
            if m["model"] != meta["model"] or m.get("source_sha256") != meta.get("source_sha256"):
                raise ExportError(f"{f}: exported from other weights than {path}; re-export both")
            for j, r in enumerate(m["block_radii"]):
                radii[m["blocks"][0] + j] = int(r)
            self._dtype[rng] = str(m["dtype"])
            try:
                self.sessions[rng] = ort.InferenceSession(str(f), sess_options=opts, providers=self.providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph classes
                raise ExportError(f"{f}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})"[:400]) from None
        if sorted(radii) != list(range(self.n_blocks)):
            raise ExportError(f"{path}: the ONNX files beside it do not cover blocks 1..{self.n_blocks}")
        self.block_radii = [radii[i] for i in range(self.n_blocks)]
        self.has_channel_attention = meta["model"]["kind"] == "mcan"
        self.device = torch.device("cpu")  # tensors in and out; ORT places the work itself
        log.info(
            "ONNX Runtime %s on %s: %s", ort.__version__, self.providers[0], ", ".join(p.name for p in files.values())
        )

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
