"""The quality table of ``mcan-bench --quality-model``: every back-end and precision of one trained
model on real test pairs (PyTorch, ONNX Runtime, OpenVINO fp32/bf16/int8), with the share of
PyTorch float32's gain each keeps. Measurement itself is ``quality.py``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .tiling import TileConfig


def compare_backends(
    model_path: str | Path, data: str | Path, max_size: int = 1500, min_retention: float = 0.9
) -> dict[str, Any]:
    """Every back-end and precision of a trained model on ``data``'s test pairs (int8 calibrated
    on its training pairs, as ``mcan-export`` does): rows of PSNR, gain and retention of the
    PyTorch float32 gain."""
    import importlib.util

    from .checkpoint import load_model
    from .data import load_images, split_dirs
    from .quality import measure, outputs, render
    from .runners import TorchRunner

    model = load_model(model_path).eval()
    test = load_images(split_dirs(data)[1], max_size=max_size, progress=False)
    exact = TileConfig(ca_stats="global")
    named = {"torch fp32": outputs(TorchRunner(model, torch.device("cpu")), test, exact)}
    notes: list[str] = []
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        import tempfile

        from .export.onnx import export_onnx
        from .runners import OrtRunner

        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, Path(tmp) / "m.onnx")
            named["onnxruntime fp32 (tile statistics)"] = outputs(
                OrtRunner(Path(tmp) / "m.onnx"), test, TileConfig(ca_stats="tile")
            )
    if importlib.util.find_spec("openvino"):
        from .errors import OpenVINOError
        from .export.openvino import get_metadata, to_openvino
        from .io import file_sha256
        from .runners.openvino_runner import OpenVINORunner, cpu_capabilities

        ov_model = to_openvino(model, source_hash=file_sha256(model_path))
        meta = get_metadata(ov_model, model_path)
        named["openvino fp32"] = outputs(OpenVINORunner(ov_model, meta, "fp32"), test, exact)
        if "BF16" in cpu_capabilities():
            named["openvino bf16"] = outputs(OpenVINORunner(ov_model, meta, "bf16"), test, exact)
        if importlib.util.find_spec("nncf"):
            from .gate.int8 import quantize_int8

            try:
                q_model, q = quantize_int8(
                    ov_model, meta, model, Path(data), True, min_retention, model_path, max_size=max_size
                )
                named[f"openvino int8 ({q['recipe']})"] = outputs(
                    OpenVINORunner(q_model, {**meta, "precision": "int8"}, "int8"), test, exact
                )
            except OpenVINOError as exc:
                notes.append(f"openvino int8: {exc}")
    rows = measure(named, test, "torch fp32")
    return {
        "model": str(model_path),
        "data": str(data),
        "pairs": len(test),
        "max_size": max_size,
        "rows": [r.as_dict() for r in rows],
        "notes": notes,
        "table": render(rows, "torch fp32"),
    }
