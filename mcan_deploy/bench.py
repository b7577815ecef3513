"""Benchmarks of the toolkit against eager PyTorch, measured in one run on one set of weights.

For each back-end (eager NCHW and channels_last, torch.compile, ONNX Runtime, and on CUDA float16
/bfloat16 and the fused inference RCAB in each dtype) and each image size, whole-image and tiled: megapixels per second (median of several
timed runs after a warm-up, with min and max), peak memory (RSS sampled during the run on CPU,
the allocator's peak on CUDA), the ratio to eager float32 NCHW from the same run, and the achieved
convolution FLOP rate as a share of this machine's matrix-multiply peak, also measured in the run.
Training: step time of one block and of all of N under each training option (precision, memory
format, optimiser form, CUDA graphs on CUDA) against today's float32 eager step, and the share of
a step spent sampling data; the fused Triton RCAB tail where a ``triton`` back-end is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .model import MCAN, ModelConfig, build_model, init_block

if TYPE_CHECKING:
    from .config import RcabImpl
    from .tiling import CAStats

log = logging.getLogger(__name__)


# training step options (issue 18): today's float32 eager step first, the ratios are against it
TRAIN_OPTIONS: dict[str, dict[str, Any]] = {
    "fp32": dict(precision="fp32", channels_last=False, optimizer_impl="for_loop"),
    "fp32 channels_last": dict(precision="fp32", channels_last=True, optimizer_impl="for_loop"),
    "fp32 fused optimiser": dict(precision="fp32", channels_last=False, optimizer_impl="auto"),
    "bf16": dict(precision="bf16", channels_last=False, optimizer_impl="for_loop"),
    "bf16 channels_last": dict(precision="bf16", channels_last=True, optimizer_impl="for_loop"),
    "default": {},  # TrainConfig()'s defaults, resolved on the device
    "bf16 CUDA graphs": dict(precision="bf16", channels_last=True, optimizer_impl="auto", cuda_graphs=True),
}
CUDA_ONLY_OPTIONS = ("bf16 CUDA graphs",)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``quick`` is the demo-size model at two small sizes."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(n_resblocks=4, n_feats=32))
    sizes: tuple[int, ...] = (256, 512)  # square image sides
    repeat: int = 3
    tile: int = 128  # tile core side for the tiled runs
    backends: tuple[str, ...] = ("eager", "channels_last", "compile", "onnxruntime")
    compile_sizes: tuple[int, ...] = (256,)  # torch.compile compiles per shape: keep this short
    train_steps: int = 5
    train_options: tuple[str, ...] = tuple(TRAIN_OPTIONS)  # keys of TRAIN_OPTIONS (CUDA-only ones skipped elsewhere)
    train_models: tuple[tuple[str, ModelConfig], ...] = (
        ("demo", ModelConfig(n_resblocks=4, n_feats=32)),
        ("paper", ModelConfig()),
    )
    device: str = "cpu"
    quality_model: str | None = None  # a trained model: quality table of every back-end and precision
    quality_data: str | None = None  # its pairs (train/ calibrates int8, test/ is measured)


TRITON_BACKENDS = {"triton": torch.float32, "triton_float16": torch.float16, "triton_bfloat16": torch.bfloat16}
OPENVINO_BACKENDS = {"openvino": "fp32", "openvino_bf16": "bf16", "openvino_int8": "int8"}
BACKENDS = (
    "eager",
    "channels_last",
    "compile",
    "onnxruntime",
    *OPENVINO_BACKENDS,
    "float16",
    "bfloat16",
    *TRITON_BACKENDS,
)


def _triton_usable(device: torch.device) -> str | None:
    """Why the Triton back-ends cannot be timed here (None: they can)."""
    from .kernels import fused_available

    if not fused_available(device, warn=False):
        return "Triton cannot run here (pip install 'mcan-deploy[gpu]' on a CUDA machine)"
    return None


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 2 ms (MB)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.current_mb())

    def __enter__(self) -> PeakRSS:
        self.peak = self.current_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_mb())


def conv_flops_per_pixel(model: nn.Module) -> int:
    """Multiply-adds x 2 of every spatial convolution per output pixel (the 1x1 channel-attention
    layers run on pooled vectors and are left out)."""
    return sum(
        2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    )


def matmul_peak_gflops(device: torch.device, n: int | None = None, repeat: int = 5) -> float:
    """This machine's float32 (CPU) or float16 (CUDA) matrix-multiply rate, the roofline. On a
    large GPU a 2048 product takes microseconds and reads low: 8192 there."""
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    times = _timed(lambda: a @ b, repeat, device)
    return 2 * n**3 / min(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], repeat: int, device: torch.device) -> list[float]:
    fn()  # warm-up: kernel selection, allocator, ORT's per-shape set-up
    _sync(device)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _measure(
    fn: Callable[[], object], repeat: int, device: torch.device, memory_on: str | None = None
) -> dict[str, float | str]:
    """Median, min and max seconds, and the peak memory where the back-end keeps its data:
    the CUDA allocator's peak for PyTorch on CUDA, the process's RSS for host back-ends (ONNX
    Runtime's and OpenVINO's CPU builds), whatever the bench's device."""
    memory_on = memory_on or ("cuda" if device.type == "cuda" else "host")
    if memory_on == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    import gc

    gc.collect()
    with PeakRSS() as rss:
        before = rss.peak
        times = _timed(fn, repeat, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if memory_on == "cuda" else rss.peak
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_mb": peak,
        "peak_of": "CUDA allocator" if memory_on == "cuda" else "process RSS",
        "rss_before_mb": before,
    }


def _openvino(model: MCAN, precision: str, sample_dir: Path | None) -> Any:
    """An OpenVINO runner of ``model``; int8 is calibrated on the sample's training crops (random
    crops without one) with the recipe that kept the gain on City100."""
    from .runners.openvino_runner import OpenVINORunner

    if precision != "int8":
        from .export.openvino import get_metadata, to_openvino

        ov_model = to_openvino(model)
        return OpenVINORunner(ov_model, get_metadata(ov_model, "bench"), precision)
    from .export.quantize import calibration_crops, quantized_for_speed

    if sample_dir is not None and (sample_dir / "train").is_dir():
        from .data import load_images

        crops = calibration_crops(load_images(sample_dir / "train", progress=False))
    else:
        g = torch.Generator().manual_seed(0)
        crops = [torch.rand(1, 3, 128, 128, generator=g) for _ in range(32)]
    return OpenVINORunner(*quantized_for_speed(model, crops), precision)


def _backends(
    model: MCAN, cfg: BenchConfig, device: torch.device, tmp: Path, sample_dir: Path | None = None
) -> dict[str, Any]:
    """Runner per back-end name; those that cannot run here are skipped with the reason."""
    from .errors import MCANError
    from .runners import TorchRunner

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
                from .export.onnx import export_onnx
                from .runners import OrtRunner

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
                from .runners import TritonRunner

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

    from .tiling import TileConfig, upscale_tensor

    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    for b in model.blocks:
        init_block(b, "orthogonal", torch.Generator().manual_seed(0))
    flops_px = conv_flops_per_pixel(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
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


def bench_training(cfg: BenchConfig, device: torch.device, sample_dir: Path | None) -> list[dict[str, Any]]:
    """Step time of one block and of N (batch 16 at 48x48, L1, Adam) under each training option
    (``TRAIN_OPTIONS``: precision, memory format, optimiser form, CUDA graphs), with the ratio to
    today's float32 eager step in the same run, and the data-wait share. The step is the
    trainer's own (``TrainStep``); the fused Triton RCAB tail is timed in float32 eager only."""
    from .config import StageConfig, TrainConfig
    from .data import PairedImages, PatchSampler, load_images
    from .train.loop import loss_function
    from .train.step import StepOptions, TrainStep, make_optimizer

    if sample_dir is not None and (sample_dir / "train").is_dir():
        data = load_images(sample_dir / "train", progress=False).to(device)
    else:
        g = torch.Generator().manual_seed(0)
        xs = [torch.rand(3, 96, 96, generator=g) for _ in range(4)]
        data = PairedImages([str(i) for i in range(4)], xs, xs).to(device)
    options = [o for o in cfg.train_options if device.type == "cuda" or o not in CUDA_ONLY_OPTIONS]
    runs: list[tuple[RcabImpl, str]] = [("torch", o) for o in options]
    if any(b in TRITON_BACKENDS for b in cfg.backends) and _triton_usable(device) is None:
        runs.append(("triton", "fp32"))
    stage = StageConfig(name="bench", optimizer="adam", iters=[cfg.train_steps + 1], lr=[1e-4])
    rows: list[dict[str, Any]] = []
    for name, base_cfg in cfg.train_models:
        for impl, option in runs:
            torch.manual_seed(0)
            model = build_model(dataclasses.replace(base_cfg, rcab_impl=impl)).to(device)
            opts, _ = StepOptions.for_run(TrainConfig(**TRAIN_OPTIONS[option]), device)
            if opts.channels_last:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            for what, module, fwd in (
                ("block", model.blocks[0], lambda x, m=model: m.blocks[0](x)),
                ("N", model, lambda x, m=model: m(x)),
            ):
                sampler = PatchSampler(data, 48, 16, seed=0)
                opt = make_optimizer(module.parameters(), stage, opts.optimizer_impl, capturable=opts.cuda_graphs)
                step = TrainStep(fwd, opt, loss_function("l1"), opts)
                data_t, step_t = [], []
                for i in range(cfg.train_steps + 1):
                    t0 = time.perf_counter()
                    x, y = sampler.sample()
                    _sync(device)
                    t1 = time.perf_counter()
                    step(x, y)
                    _sync(device)
                    t2 = time.perf_counter()
                    if i:  # the first step warms up (and captures the CUDA graph)
                        data_t.append(t1 - t0)
                        step_t.append(t2 - t0)
                rows.append(
                    {
                        "model": name,
                        "what": what,
                        "rcab": impl,
                        "options": option,
                        "precision": opts.precision,
                        "describe": opts.describe(),
                        "step_s": statistics.median(step_t),
                        "min_s": min(step_t),
                        "max_s": max(step_t),
                        "data_share": sum(data_t) / sum(step_t),
                    }
                )
                log.info("train %s %s %s (%s): %.3f s/step", name, what, impl, option, rows[-1]["step_s"])
    for r in rows:  # speed-up over today's float32 eager step of the same model, same run
        base = next(
            (
                b
                for b in rows
                if (b["model"], b["what"], b["rcab"], b["options"]) == (r["model"], r["what"], "torch", "fp32")
            ),
            None,
        )
        r["speedup_vs_fp32"] = base["step_s"] / r["step_s"] if base else None
    return rows


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("onnxruntime", "onnx", "triton", "openvino", "nncf"):
        info[mod] = None
        for dist in (mod, f"{mod}-gpu"):  # installed versions, read without importing (openvino would
            try:  # start its telemetry at import)
                info[mod] = version(dist)
                break
            except PackageNotFoundError:
                pass
    return info


def run_bench(cfg: BenchConfig, out: Path, sample_dir: Path | None = None) -> dict[str, Any]:
    """Measure everything, write ``results.json``, ``report.md``, ``throughput.png``, ``memory.png``."""
    from .runners import resolve_device

    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak_gflops(device)
    log.info("matrix-multiply peak on %s: %.1f GFLOP/s", device, peak)
    # training in its own process: its memory would otherwise stay in this process's RSS and
    # hide the inference peaks; it also runs before ONNX Runtime's spinning thread pool starts
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        training = pool.submit(bench_training, cfg, device, sample_dir).result()
    results = {
        "machine": machine_info(device),
        "config": dataclasses.asdict(cfg),
        "matmul_peak_gflops": peak,
        "inference": bench_inference(cfg, device, peak, sample_dir),
        "training": training,
    }
    if cfg.quality_model:
        from .backend_quality import compare_backends

        results["quality"] = compare_backends(cfg.quality_model, cfg.quality_data or sample_dir or ".")
    from .io import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out / "report.md", render_report(results).encode())
    plot(results, out)
    return results


def render_report(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# mcan-bench report ({m['date']})",
        "",
        f"{m.get('gpu') or m.get('cpu')}, {m['cores']} cores, torch {m['torch']}, "
        f"onnxruntime {m.get('onnxruntime')}, {m['threads']} threads; matrix-multiply peak "
        f"{res['matmul_peak_gflops']:.1f} GFLOP/s.",
        "",
        f"Model: {res['config']['model']}",
        "",
        "## Inference",
        "",
        "| backend | size | mode | MP/s (median) | min-max s | peak MB | x eager | GFLOP/s | share of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["inference"]:
        ratio = f"{r['ratio_to_eager']:.2f}" if r["ratio_to_eager"] else "-"
        lines.append(
            f"| {r['backend']} | {r['size']}x{r['size']} | {r['mode']} | {r['mp_per_s']:.4f} | "
            f"{r['min_s']:.3f}-{r['max_s']:.3f} | {r['peak_mb']:.0f} | {ratio} | {r['gflops']:.1f} | "
            f"{100 * r['peak_share']:.1f}% |"
        )
    lines += [
        "",
        "## Training (batch 16 at 48x48, L1, Adam)",
        "",
        "Each option's step is the trainer's own; the speed-up is over today's float32 eager step "
        "(NCHW, for-loop Adam) of the same model in this run. `default` is `[train]`'s defaults "
        "resolved on this machine.",
        "",
        "| model | trains | RCAB tail | options | computed as | s/step (median) | min-max s | x fp32 | data wait share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["training"]:
        ratio = f"{r['speedup_vs_fp32']:.2f}" if r.get("speedup_vs_fp32") else "-"
        lines.append(
            f"| {r['model']} | {r['what']} | {r.get('rcab', 'torch')} | {r.get('options', 'fp32')} | "
            f"{r.get('describe', '-')} | {r['step_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {ratio} | "
            f"{100 * r['data_share']:.1f}% |"
        )
    if res.get("quality"):
        q = res["quality"]
        lines += [
            "",
            f"## Quality ({q['model']} on {q['pairs']} test pairs of {q['data']})",
            "",
            "Exact global statistics except where noted; retention is the share of PyTorch float32's "
            "PSNR gain over the identity.",
            "",
            q["table"],
            *[f"- {n}" for n in q["notes"]],
        ]
    lines += ["", "![throughput](throughput.png)", "", "![memory](memory.png)", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, ylabel, fname in (
        ("mp_per_s", "megapixels per second", "throughput.png"),
        ("peak_mb", "peak memory (MB)", "memory.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict[str, list[tuple[float, float]]] = {}
        for r in res["inference"]:
            series.setdefault(f"{r['backend']} {r['mode']}", []).append((r["size"] ** 2 / 1e6, r[key]))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set(xlabel="image size (megapixels)", ylabel=ylabel, xscale="log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
