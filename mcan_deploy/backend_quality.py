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
    PyTorch float32 gain, with the gate's lower bound and worst image for each."""
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
    measured = measure(named, test, "torch fp32")
    rows = [r.as_dict() for r in measured]
    for row in rows:  # the gate's figures beside the mean: the bound and the worst image
        if row["name"] in named and row["name"] != "torch fp32":
            row.update(gate_figures(test, named["torch fp32"], named[row["name"]], min_retention))
    return {
        "model": str(model_path),
        "data": str(data),
        "pairs": len(test),
        "max_size": max_size,
        "rows": rows,
        "notes": notes,
        "table": render(measured, "torch fp32") + "\n\n" + _spread_table(rows),
    }


def gate_figures(pairs: Any, reference: list[torch.Tensor], outs: list[torch.Tensor], bar: float) -> dict[str, Any]:
    """The gate's verdict for one back-end's outputs: the lower bound on the share kept, the worst
    image, the images below their identity (empty where float32 gains nothing to judge)."""
    from .errors import MCANError
    from .gate.int8 import image_scores
    from .gate.verdict import judge

    try:
        v = judge(image_scores(pairs, reference, outs), bar)
    except MCANError:
        return {}
    return {k: v.as_dict()[k] for k in ("bound", "worst_image", "worst_retention", "below_identity", "passed")}


def _spread_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| back-end / precision | lower bound of the share kept | worst image | below the identity |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "bound" in r:
            below = ", ".join(r["below_identity"]) or "none"
            worst = f"{r['worst_image']} {100 * r['worst_retention']:.1f}%"
            lines.append(f"| {r['name']} | {100 * r['bound']:.1f}% | {worst} | {below} |")
    return "\n".join(lines)
