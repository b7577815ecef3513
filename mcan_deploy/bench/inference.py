"""The inference section of ``mcan-bench``: every back-end at every size, whole-image and tiled,
against eager float32 NCHW from the same run."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..model import MCAN, build_model, init_block
from .config import OPENVINO_BACKENDS, TRITON_BACKENDS, BenchConfig
from .measure import _measure, conv_flops_per_pixel, frozen_garbage

if TYPE_CHECKING:
    from ..tiling import CAStats

log = logging.getLogger("mcan_deploy.bench")


def _triton_usable(device: torch.device) -> str | None:
    """Why the Triton back-ends cannot be timed here (None: they can)."""
    from ..kernels import fused_available

    if not fused_available(device, warn=False):
        return "Triton cannot run here (pip install 'mcan-deploy[gpu]' on a CUDA machine)"
    return None


def _openvino(model: MCAN, precision: str, sample_dir: Path | None) -> Any:
    """An OpenVINO runner of ``model``; int8 is calibrated on the sample's training crops (random
    crops without one) with the recipe that kept the gain on City100."""
    from ..runners.openvino_runner import OpenVINORunner

    if precision != "int8":
        from ..export.openvino import get_metadata, to_openvino

        ov_model = to_openvino(model)
        return OpenVINORunner(ov_model, get_metadata(ov_model, "bench"), precision)
    from ..export.quantize import calibration_crops, quantized_for_speed

    if sample_dir is not None and (sample_dir / "train").is_dir():
        from ..data import load_images

        crops = calibration_crops(load_images(sample_dir / "train", progress=False))
    else:
        g = torch.Generator().manual_seed(0)
        crops = [torch.rand(1, 3, 128, 128, generator=g) for _ in range(32)]
    return OpenVINORunner(*quantized_for_speed(model, crops), precision)


def _backends(
    model: MCAN, cfg: BenchConfig, device: torch.device, tmp: Path, sample_dir: Path | None = None
) -> dict[str, Any]:
    """Runner per back-end name; those that cannot run here are skipped with the reason."""
    from ..errors import MCANError
    from ..runners import TorchRunner

    out: dict[str, Any] = {}
    for name in cfg.backends:
        try:
            if name == "eager":  # the baseline is float32 NCHW on every device (TorchRunner is NHWC on CUDA)
                r = TorchRunner(_copy(model), device)
                if r.channels_last:
                    r.model = r.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
                    r.channels_last = False
                out[name] = r
            elif name == "channels_last":
                r = TorchRunner(_copy(model), device)
                # nn.Module.to takes memory_format (documented); torch's overloads for it leave it out
                r.model = r.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                r.channels_last = True
                out[name] = r
            elif name == "compile":
                r = TorchRunner(_copy(model), device)
                # torch.compile is typed as returning a callable; given a module it returns a module
                r.model.blocks = nn.ModuleList(cast(nn.Module, torch.compile(b, dynamic=False)) for b in r.model.blocks)
                out[name] = r
            elif name == "onnxruntime":
                from ..export.onnx import export_onnx
                from ..runners import OrtRunner

                export_onnx(model, tmp / "bench.onnx")
                out[name] = OrtRunner(tmp / "bench.onnx")
            elif name in OPENVINO_BACKENDS and device.type == "cpu":
                import importlib.util

                if importlib.util.find_spec("openvino") is None:
                    log.warning("backend %s skipped: pip install 'mcan-deploy[openvino]'", name)
                    continue
                out[name] = _openvino(model, OPENVINO_BACKENDS[name], sample_dir)
            elif name in ("float16", "bfloat16") and device.type == "cuda":
                out[name] = TorchRunner(_copy(model), device, getattr(torch, name))
            elif name in TRITON_BACKENDS and (device.type == "cuda" or TRITON_BACKENDS[name] == torch.float32):
                from ..runners import TritonRunner

                why = _triton_usable(device)
                if why:
                    log.warning("backend %s skipped: %s", name, why)
                    continue
                if device.type != "cuda":
                    log.warning(
                        "backend %s runs in Triton's interpreter on %s: its timings say nothing about speed",
                        name,
                        device.type,
                    )
                out[name] = TritonRunner(_copy(model), device, TRITON_BACKENDS[name])
            else:
                log.info("backend %s skipped on %s", name, device.type)
        except (ImportError, MCANError) as exc:
            log.warning("backend %s skipped: %s", name, exc)
    return out


def _copy(model: MCAN) -> MCAN:
    import copy

    return copy.deepcopy(model)


def bench_inference(
    cfg: BenchConfig, device: torch.device, peak_gflops: float, sample_dir: Path | None = None
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from ..tiling import TileConfig, upscale_tensor

    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    for b in model.blocks:
        init_block(b, "orthogonal", torch.Generator().manual_seed(0))
    flops_px = conv_flops_per_pixel(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, frozen_garbage():
        runners = _backends(model, cfg, device, Path(tmp), sample_dir)
        jobs = [
            (n, s, m)
            for s in cfg.sizes
            for n in runners
            for m in ("whole", "tiled")
            if not (n == "compile" and (s not in cfg.compile_sizes or m == "tiled"))
        ]
        for name, size, mode in tqdm(jobs, desc="inference", unit="run"):
            runner = runners[name]
            x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))
            fn: Callable[..., object]
            if mode == "whole":
                fn = lambda r=runner, x=x: r.run_blocks(x[None], 0, r.n_blocks)  # noqa: E731
            else:
                stats: CAStats = "global" if hasattr(runner, "n_rcabs") else "tile"  # exact where the runner can
                tc = TileConfig(tile=cfg.tile, ca_stats=stats, plan="layers" if stats == "global" else "auto")
                fn = lambda r=runner, x=x, tc=tc: upscale_tensor(r, x, tc)  # noqa: E731
            torch_runner = isinstance(getattr(runner, "model", None), nn.Module)
            m = _measure(fn, cfg.repeat, device, "cuda" if device.type == "cuda" and torch_runner else "host")
            mp = size * size / 1e6
            rows.append(
                {
                    "backend": name,
                    "size": size,
                    "mode": mode,
                    "memory_format": "channels_last" if getattr(runner, "channels_last", False) else "NCHW",
                    **m,
                    "mp_per_s": mp / m["median_s"],
                    "gflops": flops_px * size * size / m["median_s"] / 1e9,
                    "peak_share": flops_px * size * size / m["median_s"] / 1e9 / peak_gflops,
                }
            )
    for r in rows:  # ratios against eager float32 NCHW, whole image, same size, this run
        base = next(
            (b for b in rows if b["backend"] == "eager" and b["mode"] == "whole" and b["size"] == r["size"]), None
        )
        r["ratio_to_eager"] = r["mp_per_s"] / base["mp_per_s"] if base else None
    return rows
