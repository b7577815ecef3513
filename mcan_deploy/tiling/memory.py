"""What each plan costs in memory for one image, and what the budget allows.

Costs are counted in feature maps: one map is ``n_feats`` x pixels values of the runner's map
dtype. The counts below were measured as peak RSS on a CPU (float32, PyTorch 2.13, 64 features,
0.25-1 MP; ``test_memory_model_against_measured_peak_rss`` in ``tests/test_planner.py`` keeps them
within 25%), and are the same tensors on a GPU, where ``benchmarks/gpu_check.sh`` records the CUDA
allocator's peak beside the estimate.

- whole image: the peak of one block on the whole image holds 5 maps (the running features, conv1's
  output and its ReLU, conv2's output, the attention product), plus the 3-channel images; the fused
  GPU path states its own 4 (``TritonRunner.whole_image_bytes``: the head's output for the long
  skip, the running features, conv1's and conv2's outputs);
- exact tiles (``layers``): 2 full-size maps (the running features and one RCAB's residual) and
  the 3-channel input and output, wherever the maps live, plus the working set of one window
  batch on the runner's device;
- tile statistics: the window working set on the device, float32 images on the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import TileConfig
from .windows import window_side_pixels

WHOLE_MAPS = 5.0  # feature maps alive at a whole-image block's peak (measured 5.0, CPU float32)
LAYER_MAPS = 2.0  # full-size maps of the exact tiled plans: features and one residual
WINDOW_MAPS = 8.0  # per window pixel: stacked input, conv outputs, copies (measured 7-9, CPU)
DEVICE_SHARE = 0.8  # of a GPU's free memory (the caching allocator's reusable part included)
RAM_SHARE = 0.5  # of the available RAM


@dataclass(frozen=True)
class Footprint:
    """Peak bytes of one image: on the runner's device and in host memory."""

    device: int
    host: int

    def total(self) -> int:
        return self.device + self.host


@dataclass(frozen=True)
class Budget:
    """Bytes a plan may take. ``shared``: the runner computes in host memory (a CPU), so device
    and host bytes come out of the one ``device`` budget."""

    device: int
    host: int
    shared: bool

    def fits(self, need: Footprint) -> bool:
        if self.shared:
            return need.total() <= self.device
        return need.device <= self.device and need.host <= self.host

    def describe(self, need: Footprint) -> str:
        if self.shared:
            return f"about {need.total() / 1e9:.2f} GB of a {self.device / 1e9:.1f} GB budget"
        return (
            f"about {need.device / 1e9:.2f} GB of a {self.device / 1e9:.1f} GB device budget and "
            f"{need.host / 1e9:.2f} GB of {self.host / 1e9:.1f} GB host memory"
        )


def available_memory() -> int:
    """Bytes of RAM available to a new allocation (Linux MemAvailable; else physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_device_memory(device: torch.device) -> int:
    """Bytes a new allocation can take on a CUDA device: the driver's free memory plus what
    PyTorch's caching allocator holds reserved but unused, which it hands out first. (The
    driver alone counts that cache as taken, so after the first image every later one would
    look short of memory.)"""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def budget_for(device: torch.device, max_memory: int | None = None) -> Budget:
    """The budget on ``device``: ``max_memory`` bytes if given, else a share of what is free
    (80% of a GPU's, 50% of the available RAM on a CPU). Host maps of a GPU run get half the
    available RAM."""
    host = int(available_memory() * RAM_SHARE)
    if device.type == "cuda":
        dev = max_memory if max_memory is not None else int(free_device_memory(device) * DEVICE_SHARE)
        return Budget(dev, host, shared=False)
    return Budget(max_memory if max_memory is not None else host, host, shared=True)


def map_itemsize(runner: object) -> int:
    """Bytes per value of the runner's full-size feature maps (its compute dtype on a device)."""
    return getattr(runner, "map_dtype", torch.float32).itemsize


def footprint(runner: object, plan: str, h: int, w: int, cfg: TileConfig, margin: int = 2) -> Footprint:
    """Estimated peak bytes of ``plan`` for one (3, h, w) image on ``runner``.

    ``margin``: the windows' margin (2 for the exact plans' layer steps; the receptive-field
    radius for the tile-statistics plans). A runner may state its own whole-image peak with
    ``whole_image_bytes(h, w)`` (OpenVINO does, from its own measurements)."""
    feats = int(getattr(runner, "n_feats", 64))
    b = map_itemsize(runner)
    px = h * w
    image = 2 * 3 * 4 * px  # float32 input and output on the host
    window = int(WINDOW_MAPS * feats * b * cfg.batch * window_side_pixels(h, w, cfg.tile, margin))
    if plan == "whole":
        own = getattr(runner, "whole_image_bytes", None)
        need = own(h, w) if own is not None else int(WHOLE_MAPS * feats * b * px + 2 * 3 * b * px)
        return Footprint(need, image)
    maps = int(LAYER_MAPS * feats * b * px + 2 * 3 * b * px)
    if plan == "layers":
        return Footprint(maps + window, image)
    if plan == "layers-host":
        return Footprint(window, image + maps)
    return Footprint(window, image + 3 * 4 * px)  # tile statistics: block or all
