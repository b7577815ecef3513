"""Which optional packages (the extras: triton, onnx, onnxruntime, openvino, nncf) are installed,
found without importing them (openvino would start its telemetry at import)."""

from __future__ import annotations

import importlib.util

__all__ = ["installed"]


def installed(*modules: str) -> bool:
    """Whether every one of ``modules`` can be imported here (found, not imported)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)
