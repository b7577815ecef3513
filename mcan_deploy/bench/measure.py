"""How ``mcan-bench`` measures: timed runs after a warm-up, peak memory where a back-end keeps
its data, the machine's matrix-multiply rate (the roofline), and what machine it was."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


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


@contextlib.contextmanager
def frozen_garbage() -> Iterator[None]:
    """Objects that exist on entry are left out of garbage collections until exit (``gc.freeze``,
    after one collection): each measurement collects first (garbage freed inside its window
    would lower the RSS), and with the libraries' objects frozen that takes milliseconds
    instead of ~0.1 s."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
