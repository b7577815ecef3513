"""mcan-deploy: train, export and deploy the Multiblock Channel Attention Network (MCAN).

The public API, imported lazily (``import mcan_deploy`` loads no torch):

- ``mcan_deploy.load(path, device="auto", dtype="auto", backend="auto")`` -> ``Upscaler``, with
  ``.info`` (what the file is), ``.upscale(image)`` (numpy, PIL or torch), ``.upscale_file`` and
  ``.upscale_folder``;
- ``mcan_deploy.describe(path)`` -> ``ModelInfo`` without loading a back-end (``mcan-info``).

Optional back-ends (triton, onnx, onnxruntime, openvino, nncf, matplotlib) are imported inside the
functions that use them; openvino and nncf through ``telemetry``, which keeps their usage
telemetry off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["ModelInfo", "Upscaler", "__version__", "describe", "load"]

if TYPE_CHECKING:
    from .api import Upscaler, load
    from .describe import ModelInfo, describe

_LAZY = {"load": "api", "Upscaler": "api", "describe": "describe", "ModelInfo": "describe"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mcan_deploy' has no attribute {name!r}")
