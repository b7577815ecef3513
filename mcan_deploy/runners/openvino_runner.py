"""OpenVINO on the CPU: whole blocks for tile statistics, and the layer steps of the exact
``global`` statistics mode, in float32, bfloat16 or int8.

The runner takes the OpenVINO model of ``mcan_deploy.export.openvino`` (from an IR file, or
converted in memory from a model file and cached on disk) and compiles each piece it is asked
for as a sub-model, once. Channel sums and the gate's in-place add run in torch on the
full-size maps, as in ``TorchRunner``; everything that convolves runs in OpenVINO.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import MCANError
from . import base

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

# INFERENCE_PRECISION_HINT per precision. An int8 file's float parts (adds, channel attention,
# the layers kept float) run in bf16 where the CPU has it, else f32 (bf16 measured 1.3x faster for
# them on a paper-size block, 0.3 points of retention less; the export's gate measures this).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}


def cpu_capabilities(core: ov.Core | None = None) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. FP32, BF16, INT8)."""
    from ..telemetry import import_openvino

    ov = import_openvino()

    return [str(c) for c in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def resolve_precision(
    asked: str, file_precision: str, capabilities: list[str], source: str | Path, preferred: str | None = None
) -> str:
    """The precision to run: ``auto`` is what ``mcan-export --precision auto`` chose for the file
    (``preferred``, where this CPU has it), else the file's own; bad combinations are one-line
    errors."""
    if asked == "auto":
        asked = preferred if preferred == "bf16" and "BF16" in capabilities else file_precision
    if asked not in HINTS:
        raise MCANError(f"--precision {asked}: choose fp32, bf16, int8 or auto")
    if asked == "int8" and file_precision != "int8":
        raise MCANError(
            f"--precision int8: {source} is not an int8 file; make one with mcan-export MODEL "
            "-o model.xml --format openvino --precision int8 --calibration DATA"
        )
    if file_precision == "int8" and asked != "int8":
        raise MCANError(
            f"--precision {asked}: {source} is an int8 file; run it with --precision int8 "
            "(or auto), or export a float32 file"
        )
    if asked == "bf16" and "BF16" not in capabilities:
        raise MCANError(
            f"--precision bf16: this CPU has no bfloat16 support (OpenVINO capabilities: "
            f"{', '.join(capabilities)}); use --precision fp32"
        )
    return asked


class OpenVINORunner:
    """Runs blocks and layer steps of N with OpenVINO's CPU plugin.

    ``meta`` is the model's mcan-deploy metadata; ``precision`` fp32, bf16 (where the CPU has it),
    int8 (int8 files only) or auto; ``threads`` None lets OpenVINO use every core; ``cache_dir``
    keeps compiled blobs so that a second run starts fast.
    """

    def __init__(
        self,
        ov_model: ov.Model,
        meta: dict[str, Any],
        precision: str = "auto",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        source: str | Path = "model",
    ) -> None:
        from ..telemetry import import_openvino

        ov = import_openvino()

        self.core = ov.Core()
        self.capabilities = cpu_capabilities(self.core)
        self.precision = resolve_precision(
            precision, str(meta["precision"]), self.capabilities, source, meta.get("auto_precision")
        )
        hint = HINTS[self.precision] if "BF16" in self.capabilities else "f32"  # bf16 asked: refused above
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.config["CACHE_DIR"] = str(cache_dir)
        self.meta = meta
        self.source = str(source)
        self.n_blocks = int(meta["n_blocks"])
        self.block_radii = [int(r) for r in meta["block_radii"]]
        self.has_channel_attention = meta["model"]["kind"] == "mcan"
        self.device = torch.device("cpu")
        self.n_feats = int(meta["model"]["n_feats"])
        self.map_dtype = torch.float32  # layer steps cross the API as float32 maps
        self.prefers_whole = True  # whole-graph kernels keep features in OpenVINO's own layout
        self._n_rcabs = int(meta["model"]["n_resblocks"])
        self._params = {p.get_friendly_name(): p for p in ov_model.get_parameters()}
        self._results = {r.get_friendly_name(): r for r in ov_model.get_results()}
        self._inputs = {name: tuple(ins) for name, ins in meta["pieces"]}
        missing = [n for n in self._inputs if n not in self._results]
        if missing:
            raise MCANError(
                f"{source}: the OpenVINO model lacks the outputs {', '.join(missing[:3])}; "
                "re-export with mcan-export --format openvino"
            )
        self._compiled: dict[str, Any] = {}
        # live pieces, least recently used first, with the bytes each holds: OpenVINO keeps a
        # compiled model's intermediate buffers until it is dropped, so keeping every piece
        # compiled held 6.4 GB for the layer plan of a 1 MP photo (paper-size N, fp32); dropped
        # pieces are compiled again from the cache when needed
        self._live: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.max_live_bytes = 2**30
        self.threads = 0

    def describe(self) -> str:
        """One line for the log: OpenVINO's version, the precision, and the threads the compiled
        model reports (compiling, if nothing is yet, the graph a whole image runs through)."""
        from ..telemetry import import_openvino

        if not self._compiled:
            self._compile("N" if "N" in self._inputs else "N1")
        version = import_openvino().get_version().split("-")[0]
        return f"OpenVINO {version} CPU, {self.precision}, {self.threads} threads"

    def _compile(self, name: str) -> Any:
        compiled = self._compiled.get(name)
        if compiled is None:
            from ..telemetry import import_openvino

            ov = import_openvino()
            params = [self._params[n] for n in self._inputs[name]]
            sub = ov.Model([self._results[name]], params, name)
            try:
                compiled = self._compiled[name] = self.core.compile_model(sub, "CPU", self.config)
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own error classes
                raise MCANError(
                    f"{self.source}: OpenVINO cannot compile {name} ({type(exc).__name__}: {exc})"[:400]
                ) from None
            self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        return compiled

    def _request(self, name: str, pixels: int) -> Any:
        """The infer request of ``name``; older requests are dropped (their buffers freed) while
        the live ones would hold more than ``max_live_bytes`` for inputs of this size."""
        need = pixels * self._bytes_per_pixel()
        entry = self._live.pop(name, None)
        req = entry[0] if entry else self._compile(name).create_infer_request()
        while self._live and sum(b for _, b in self._live.values()) + need > self.max_live_bytes:
            dropped, _ = self._live.popitem(last=False)
            self._compiled.pop(dropped, None)
        self._live[name] = (req, need)
        return req

    def _infer(self, name: str, *xs: torch.Tensor) -> torch.Tensor:
        req = self._request(name, xs[0].shape[0] * xs[0].shape[-1] * xs[0].shape[-2])
        feed = [np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()) for x in xs]
        req.infer(feed, share_inputs=True)
        return torch.from_numpy(req.get_output_tensor(0).data.copy())

    def _bytes_per_pixel(self) -> int:
        return 4 * int(self.meta["model"]["n_feats"]) * (4 if self.precision == "fp32" else 2)

    def whole_image_bytes(self, h: int, w: int) -> int:
        """Peak memory of one whole-image call per block: OpenVINO keeps about four feature maps
        alive (measured 985 B/px in f32 and 410 B/px in bf16 with 64 features at 1-4 MP), plus
        the float32 images in and out and a fixed 256 MB for compiled kernels and buffers; a
        block's buffers are freed before the next block's are taken (``_request``).
        Whole-image calls run 2-6x faster than the layer steps over tiles, whose float32 maps
        cross the API at every step."""
        return h * w * (self._bytes_per_pixel() + 64) + 256 * 2**20

    # ---- Runner ---------------------------------------------------------------------------
    def supports(self, start: int, stop: int) -> bool:
        return 0 <= start < stop <= self.n_blocks

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if (start, stop) == (0, self.n_blocks) and "N" in self._inputs:
            return self._infer("N", x).to(x.device)
        out = x
        for i in range(start, stop):
            out = self._infer(f"N{i + 1}", out)
        return out.to(x.device)

    # ---- LayerRunner: the steps of one block for exact global statistics ------------------
    def n_rcabs(self, block: int) -> int:
        return self._n_rcabs

    def head(self, block: int, x: torch.Tensor) -> torch.Tensor:
        return self._infer(f"N{block + 1}.head", x)

    def rcab_residual(self, block: int, k: int, h: torch.Tensor) -> torch.Tensor:
        return self._infer(f"N{block + 1}.r{k}", h)

    def ca_scale(self, block: int, k: int, mean: torch.Tensor) -> torch.Tensor:
        return self._infer(f"N{block + 1}.g{k}", mean.reshape(1, -1, 1, 1)).reshape(-1)

    def finish(self, block: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self._infer(f"N{block + 1}.finish", x, h)

    def channel_sums(self, r: torch.Tensor) -> torch.Tensor:
        return base.channel_sums(r)

    def gate_add(self, h: torch.Tensor, r: torch.Tensor, gate: torch.Tensor) -> None:
        base.gate_add(h, r, gate)
