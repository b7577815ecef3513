"""Tiled inference on full-size images, with margins from the receptive field.

Channel attention is the one non-local part of the model:

- ``global`` statistics (exact): a block runs on the whole image in one call where memory
  allows, else layer by layer over tiles with each RCAB's channel means summed over all tiles
  before its gate is applied. The full-size 64-channel maps of the layer plan stay on the
  runner's device in its compute dtype when they fit, else in host memory (``planner``).
- ``tile`` statistics (approximate, what other tools do): each window pools its own statistics.
  Memory stays flat as the image grows; the difference from the whole-image result is measured.

Float16 runs are guarded: a non-finite value in any layer's output redoes that block in the
runner's safe dtype (bfloat16 on GPUs that have it, else float32), so a float16 result never
carries NaN or inf. Nothing is kept between calls: the engine is functions over their arguments.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from ..errors import MCANError
from ..runners import LayerRunner, Runner
from .config import TileConfig
from .planner import LABELS, Choice, choose
from .windows import cores, map_pass, window_count

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Runner)


@dataclass
class TileReport:
    """What ran, for logs and for the user: mode, plan, sizes, time and precision fallbacks."""

    ca_stats: str
    plan: str
    tile: int
    margins: list[int]
    windows: int = 0
    seconds: float = 0.0
    oom_retries: int = 0
    overflows: int = 0  # float16 blocks redone in the safe dtype after a non-finite value
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.plan == "whole-image":
            s = f"{self.ca_stats} statistics, whole-image plan (one call per block), {self.seconds:.2f} s"
        else:
            s = (
                f"{self.ca_stats} statistics, {self.plan} plan, tile {self.tile}, margins "
                f"{self.margins} px, {self.windows} windows, {self.seconds:.2f} s"
            )
        s += f", {self.oom_retries} out-of-memory retries" if self.oom_retries else ""
        s += f", {self.overflows} float16 overflows redone" if self.overflows else ""
        return s + "".join(f"; {note}" for note in self.notes)


def _guarded(runner: R, step: Callable[[R], torch.Tensor], report: TileReport, what: str) -> torch.Tensor:
    """``step(runner)``, redone on the runner's safe-dtype twin when a float16 layer overflowed."""
    if getattr(runner, "dtype", None) != torch.float16:
        return step(runner)
    with runner.overflow_guard() as guard:  # type: ignore[attr-defined]
        out = step(runner)
    if not guard.tripped and bool(torch.isfinite(out).all()):
        return out
    del out
    safe = runner.safe_twin()  # type: ignore[attr-defined]
    report.overflows += 1
    if report.overflows == 1:
        log.warning(
            "float16 overflowed in %s; redoing it in %s (later ones in this image are counted)",
            what,
            str(safe.dtype).replace("torch.", ""),
        )
    return step(safe)


def _map_device(runner: Runner, plan: str) -> torch.device:
    return torch.device("cpu") if plan == "layers-host" else runner.device


def _global_block(
    runner: LayerRunner, i: int, x: torch.Tensor, cfg: TileConfig, plan: str, tick: Callable[[int], None] | None
) -> torch.Tensor:
    """One MCAN block with exact whole-image channel statistics, layer by layer. The maps are in
    the runner's map dtype, on its device or (``layers-host``) in page-locked host memory."""
    c, h, w = x.shape
    feats = int(getattr(runner, "n_feats", 0)) or runner.head(i, x[None, :, :1, :1]).shape[1]
    dev = _map_device(runner, plan)
    dtype = getattr(runner, "map_dtype", torch.float32)
    pin = dev.type == "cpu" and runner.device.type == "cuda"
    layout = bool(getattr(runner, "channels_last", False))  # maps in the layout the runner computes in
    xs = x.to(dev)

    def run(
        sources: list[torch.Tensor],
        fn: Callable[..., torch.Tensor],
        margin: int,
        channels: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        out_dtype: torch.dtype = dtype,
    ):
        return map_pass(sources, fn, margin, cfg, channels, dev, reduce, tick, out_dtype, pin, layout)

    hmap, _ = run([xs], lambda t: runner.head(i, t), 1, feats)
    for k in range(runner.n_rcabs(i)):
        r, total = run([hmap], lambda t, k=k: runner.rcab_residual(i, k, t), 2, feats, runner.channel_sums)
        gate = runner.ca_scale(i, k, (total / (h * w)).float())
        runner.gate_add(hmap, r, gate.to(dev))
        del r
    out, _ = run([xs, hmap], lambda a, b: runner.finish(i, a, b), 2, c, out_dtype=torch.float32)
    return out.to(x.device)


def _release_memory(runner: Runner) -> None:
    """Give freed tensors back: collect reference cycles, then return the CUDA cache."""
    gc.collect()
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()


def upscale_tensor(
    runner: Runner, image: torch.Tensor, cfg: TileConfig = TileConfig(), progress: Callable[[int], None] | None = None
) -> tuple[torch.Tensor, TileReport]:
    """Run the whole network on ``image`` (3, H, W) float32 in [0, 1]; returns the output
    (3, H, W) float32 on the image's device and a report of what ran and why.

    The plan comes from ``planner.choose``. On CUDA out of memory the failed attempt's maps are
    freed first; then an automatic plan steps down to the next exact plan (whole image, maps on
    the device, maps in host memory), and the tiled plans halve the tile."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise MCANError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
    tile, retries = cfg.tile, 0
    exclude: tuple[str, ...] = ()
    while True:
        choice = choose(
            runner, image.shape[1], image.shape[2], dataclasses.replace(cfg, tile=tile), exclude=exclude, image=image
        )
        try:
            t0 = time.perf_counter()
            out, report = _run_plan(runner, image, dataclasses.replace(cfg, tile=tile), choice, progress)
            report.seconds = time.perf_counter() - t0
            report.oom_retries = retries
            return out, report
        except RuntimeError as exc:
            if not isinstance(exc, torch.OutOfMemoryError):
                if "can't allocate memory" in str(exc) or "DefaultCPUAllocator" in str(exc):
                    raise MCANError(
                        f"out of host memory for a {image.shape[-1]}x{image.shape[-2]} image "
                        f"({choice.label} plan); lower --max-memory or use --ca-stats tile"
                    ) from None
                raise
        # out of the except block: the exception's frames, which hold the failed attempt's
        # full-size maps, are gone, so the memory can be given back before the retry
        _release_memory(runner)
        retries += 1
        if cfg.plan == "auto" and choice.plan in ("whole", "layers") and runner.device.type != "cpu":
            exclude = (*exclude, choice.plan)
            log.warning("out of memory in the %s plan; trying the next exact plan", choice.label)
            continue
        if choice.plan == "whole" or tile <= 16:
            raise MCANError(
                f"out of memory even with {tile}x{tile} tiles ({choice.label} plan); use --device cpu, "
                "a smaller --batch or --max-memory"
            ) from None
        log.warning("out of memory with %dx%d tiles; retrying with %dx%d", tile, tile, tile // 2, tile // 2)
        tile //= 2


def _run_plan(
    runner: Runner, image: torch.Tensor, cfg: TileConfig, choice: Choice, progress: Callable[[int], None] | None
) -> tuple[torch.Tensor, TileReport]:
    _, h, w = image.shape
    n = runner.n_blocks
    exact_local = not runner.has_channel_attention
    mode = "global" if cfg.ca_stats == "global" else "tile"
    mode = "exact (local model)" if exact_local and choice.plan in ("block", "all") else mode
    notes = [choice.why]
    if choice.plan == "whole":  # one window holds the image: channel statistics are the whole image's
        report = TileReport("global", "whole-image", max(h, w), [0], windows=n, notes=notes)
        x = image[None]
        if getattr(runner, "dtype", None) == torch.float16:  # block by block, each one guarded
            for i in range(n):

                def whole_block(r: Runner, x: torch.Tensor = x, i: int = i) -> torch.Tensor:
                    return r.run_blocks(x, i, i + 1)

                x = _guarded(runner, whole_block, report, f"block {i + 1}")
        else:
            x = runner.run_blocks(x, 0, n)
        if progress:
            progress(n)
        return x[0].to(image.device), report
    if choice.plan in ("layers", "layers-host"):
        assert isinstance(runner, LayerRunner)
        report = TileReport("global", LABELS[choice.plan], cfg.tile, [1, 2], notes=notes)
        x = image
        for i in range(n):
            report.windows += window_count(h, w, cfg.tile, 1) + window_count(h, w, cfg.tile, 2) * (
                runner.n_rcabs(i) + 1
            )

            def layers_block(r: LayerRunner, x: torch.Tensor = x, i: int = i) -> torch.Tensor:
                # a runner that reads its tiles in place from full-size maps on its device
                on_maps = getattr(r, "block_on_device_maps", None) if choice.plan == "layers" else None
                out = on_maps(i, x, cores(h, w, cfg.tile), progress) if on_maps is not None else None
                return out if out is not None else _global_block(r, i, x, cfg, choice.plan, progress)

            x = _guarded(runner, layers_block, report, f"block {i + 1}")
        return x, report
    if choice.plan == "all":
        margin = sum(runner.block_radii)
        report = TileReport(mode, "all-blocks", cfg.tile, [margin], notes=notes)
        report.windows = window_count(h, w, cfg.tile, margin)
        out = _guarded(
            runner,
            lambda r: map_pass(
                [image], lambda t: r.run_blocks(t, 0, n), margin, cfg, 3, image.device, progress=progress
            )[0],
            report,
            "the image",
        )
        return out, report
    report = TileReport(mode, "block-by-block", cfg.tile, list(runner.block_radii), notes=notes)
    x = image
    for i, margin in enumerate(runner.block_radii):
        report.windows += window_count(h, w, cfg.tile, margin)

        def tiled_block(r: Runner, x: torch.Tensor = x, i: int = i, m: int = margin) -> torch.Tensor:
            return map_pass([x], lambda t: r.run_blocks(t, i, i + 1), m, cfg, 3, image.device, progress=progress)[0]

        x = _guarded(runner, tiled_block, report, f"block {i + 1}")
    return x, report


def planned_windows(runner: Runner, h: int, w: int, cfg: TileConfig) -> int:
    """An upper bound on the windows ``upscale_tensor`` runs, for progress bars."""
    if cfg.ca_stats == "global" and runner.has_channel_attention and isinstance(runner, LayerRunner):
        return sum(
            window_count(h, w, cfg.tile, 1) + window_count(h, w, cfg.tile, 2) * (runner.n_rcabs(i) + 1)
            for i in range(runner.n_blocks)
        )
    return max(
        sum(window_count(h, w, cfg.tile, m) for m in runner.block_radii),
        window_count(h, w, cfg.tile, sum(runner.block_radii)),
    )
