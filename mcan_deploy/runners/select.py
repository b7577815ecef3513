"""Which back-end runs a model file, and why: ``choose_backend`` decides, ``load_runner`` builds.

``auto`` takes ONNX Runtime for ``.onnx`` files, OpenVINO for ``.xml`` IR files, and for model
files from ``mcan-train`` OpenVINO float32 on a CPU where OpenVINO is installed (exact global
statistics, about twice eager PyTorch's speed), else PyTorch. Options that belong to one back-end
(``--dtype``, ``--rcab``, ``--fused-conv`` for PyTorch; ``--precision`` for OpenVINO) are errors
with another. On CUDA, PyTorch model files run the fused inference RCAB (``TritonRunner``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import MCANError
from ..extras import installed
from .base import Runner, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")


def choose_backend(
    model_path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    rcab_impl: str = "auto",
    precision: str = "auto",
) -> tuple[str, str]:
    """(back-end, why) for a model file and the options asked; one-line errors for combinations
    that cannot run."""
    if backend not in BACKENDS:
        raise MCANError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    suffix = Path(model_path).suffix.lower()
    torch_options = dtype not in ("auto", "float32") or rcab_impl not in ("auto", "torch")
    if suffix == ".onnx":
        name, why = "onnxruntime", "an ONNX file"
        if backend not in ("auto", "onnxruntime"):
            raise MCANError(
                f"--backend {backend}: {model_path} is an ONNX file, which runs on onnxruntime; "
                "give the model.safetensors or an OpenVINO .xml instead"
            )
    elif suffix == ".xml":
        name, why = "openvino", "an OpenVINO IR file"
        if backend not in ("auto", "openvino"):
            raise MCANError(f"--backend {backend}: {model_path} is an OpenVINO IR file, which runs on openvino")
    elif backend == "onnxruntime":
        raise MCANError(
            f"--backend onnxruntime: {model_path} is not an ONNX file; export it first with "
            f"mcan-export {model_path} -o model.onnx"
        )
    elif backend in ("torch", "openvino"):
        name, why = backend, "asked for"
    elif torch_options:
        name, why = "torch", "--dtype/--rcab are PyTorch options"
    elif precision not in ("auto", "fp32"):
        name, why = "openvino", f"--precision {precision} runs on OpenVINO"
    elif resolve_device(device).type != "cpu":
        name, why = "torch", f"device {resolve_device(device)}"
    elif not installed("openvino"):
        name, why = "torch", "OpenVINO is not installed (pip install 'mcan-deploy[openvino]' runs about 2x faster)"
    else:
        name, why = "openvino", "a CPU with OpenVINO installed"
    if name != "torch" and torch_options:
        option = f"--dtype {dtype}" if dtype not in ("auto", "float32") else f"--rcab {rcab_impl}"
        raise MCANError(f"{option} applies to PyTorch models (the torch back-end), not {name}")
    if name != "openvino" and precision not in ("auto", "fp32"):
        raise MCANError(
            f"--precision {precision} applies to the openvino back-end, not {name}"
            + (" (on CUDA use --dtype float16/bfloat16)" if name == "torch" else "")
        )
    if name == "openvino" and device not in ("auto", "cpu"):
        raise MCANError(f"--device {device}: the openvino back-end runs on the CPU; use --backend torch for CUDA")
    if name == "onnxruntime" and device not in ("auto", "cpu"):
        raise MCANError(
            f"--device {device}: ONNX Runtime places the work itself (CUDA where "
            "onnxruntime-gpu sees a GPU); leave --device at auto"
        )
    needs = {"openvino": ("openvino",), "onnxruntime": ("onnx", "onnxruntime")}.get(name, ())
    if not installed(*needs):
        extra = "openvino" if name == "openvino" else "onnx"
        raise MCANError(
            f"{model_path}: the {name} back-end needs the {extra} extra: pip install 'mcan-deploy[{extra}]'"
        )
    return name, why


def load_runner(
    model_path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    rcab_impl: str = "auto",
    trust_pickle: bool = False,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    conv: str = "auto",
) -> Runner:
    """A runner for a model file on the back-end ``choose_backend`` picks; the log names the
    back-end, its precision and why it was chosen. For PyTorch, ``rcab_impl`` ``auto`` is the
    fused inference RCAB (``TritonRunner``) on CUDA where Triton is installed, eager torch
    elsewhere; ``conv`` is the fused path's convolution (``fused.CONV_IMPLS``)."""
    name, why = choose_backend(model_path, backend, device, dtype, rcab_impl, precision)
    if name == "onnxruntime":
        from .ort_runner import OrtRunner

        runner: Runner = OrtRunner(model_path, threads=threads)
        log.info("back-end onnxruntime, float32 as exported (%s)", why)
        return runner
    if name == "openvino":
        from ..export.openvino import default_cache_dir, model_for_openvino
        from .openvino_runner import OpenVINORunner

        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        ov_model, meta = model_for_openvino(model_path, cache, trust_pickle)
        ov_runner = OpenVINORunner(ov_model, meta, precision, threads, cache / "compiled", source=model_path)
        log.info("back-end openvino: %s (%s)", ov_runner.describe(), why)
        return ov_runner
    from ..checkpoint import load_model
    from .fused import CONV_IMPLS
    from .torch_runner import TorchRunner, TritonRunner

    if rcab_impl not in ("auto", "torch", "triton"):
        raise MCANError(f"--rcab {rcab_impl}: choose auto, torch or triton")
    if conv not in CONV_IMPLS:
        raise MCANError(f"--fused-conv {conv}: choose one of {', '.join(CONV_IMPLS)}")
    model = load_model(model_path, trust_pickle=trust_pickle)
    dev = resolve_device(device)
    rcab = rcab_impl
    if rcab == "auto":
        from ..kernels import fused_available

        fusable = model.config.kind == "mcan" and dev.type == "cuda" and fused_available(dev, warn=False)
        rcab = "triton" if fusable else "torch"
    if conv != "auto" and rcab != "triton":
        raise MCANError(f"--fused-conv {conv} applies to the fused RCAB (--rcab triton, the CUDA default)")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    pt: TorchRunner
    if rcab == "triton":
        pt = TritonRunner(model, dev, resolve_dtype(dtype, dev), conv=conv)
    else:
        pt = TorchRunner.create(model, device, dtype)
    what = "fused inference RCAB (Triton)" if rcab == "triton" else "eager RCAB"
    log.info(
        "back-end torch, %s on %s, %s (%s%s)",
        str(pt.dtype).replace("torch.", ""),
        pt.device,
        what,
        why,
        "; --rcab auto" if rcab_impl == "auto" else "",
    )
    return pt
