"""Back-ends behind one call shape, so that tiling never depends on what computes a tile.

A ``Runner`` runs blocks N_start..N_stop-1 of a model on a batch of same-size image windows and
returns float32 images; a ``LayerRunner`` also runs a block's layer steps, which the exact
``global`` channel-attention mode of the tiler needs. Back-ends: eager PyTorch (``TorchRunner``,
``TritonRunner``), ONNX Runtime (``OrtRunner``) and OpenVINO (``OpenVINORunner``), chosen by
``load_runner``. Importing this package imports none of the optional runtimes.
"""

from __future__ import annotations

from .base import DTYPES, LayerRunner, Runner, resolve_device, resolve_dtype, safe_dtype
from .openvino_runner import OpenVINORunner
from .ort_runner import OrtRunner
from .select import BACKENDS, choose_backend, load_runner
from .torch_runner import TorchRunner, TritonRunner

__all__ = [
    "BACKENDS",
    "DTYPES",
    "LayerRunner",
    "OpenVINORunner",
    "OrtRunner",
    "Runner",
    "TorchRunner",
    "TritonRunner",
    "choose_backend",
    "load_runner",
    "resolve_device",
    "resolve_dtype",
    "safe_dtype",
]
