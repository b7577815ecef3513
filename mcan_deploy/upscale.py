"""Upscale image files with a trained model: read, optionally pre-resize, tile, write atomically.

For a real low-resolution photo, ``scale`` > 1 first resizes it bicubically to the target size
(the model restores detail at that size, as it was trained to); ``scale`` 1 takes input already
at the target size, like the training pairs. Alpha is resized the same way and carried through
unchanged by the model; gray and 16-bit files come back gray and 16-bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import MCANError
from .io import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image, write_image
from .runners import Runner
from .tiling import TileConfig, TileReport, upscale_tensor

log = logging.getLogger(__name__)


def resize(arr: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic resize of (H, W[, C]) float32 by ``scale``, clipped to [0, 1]."""
    import cv2

    if scale == 1:
        return arr
    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.clip(cv2.resize(arr, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    dst: Path


def plan_jobs(inputs: list[str | Path], out: str | Path, suffix: str | None = None) -> list[Job]:
    """Map input files and folders (their images, not recursive) to output paths in ``out``.

    A single input file with an ``out`` that has an image suffix is written to exactly ``out``.
    An output path equal to its input is refused.
    """
    out = Path(out)
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise MCANError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(item)  # a missing or bad file is reported when it is processed
    if len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        jobs = [Job(files[0], out)]
    else:
        jobs = [Job(f, out / (f.stem + (suffix or f.suffix or ".png"))) for f in files]
    for job in jobs:
        if job.src.exists() and job.dst.exists() and job.src.resolve() == job.dst.resolve():
            raise MCANError(f"{job.dst}: output path equals its input; choose another -o")
    dsts = [j.dst for j in jobs]
    dupes = sorted({str(d) for d in dsts if dsts.count(d) > 1})
    if dupes:
        raise MCANError(f"two inputs would write the same output {dupes[0]}; upscale them into separate folders")
    return jobs


@dataclass
class Prepared:
    """An input decoded and resized, ready for the engine, with what its output needs."""

    x: torch.Tensor  # (3, H, W) float32 in [0, 1]
    alpha: np.ndarray | None
    bit_depth: int
    gray: bool


def prepare(job: Job, scale: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
    """Read ``job.src`` and resize it (and its alpha) by ``scale``; ``max_pixels`` bounds the
    file's declared size (before decoding) and the size after ``scale``."""
    img = read_image(job.src, max_pixels)
    h, w = img.size
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    if th * tw > max_pixels:
        raise MCANError(f"{job.src}: {w}x{h} x {scale:g} = {tw}x{th} = {tw * th / 1e6:.1f} MP, above the "
                        f"limit of {max_pixels / 1e6:.1f} MP; lower --scale or raise --max-pixels")
    rgb = resize(img.rgb, scale)
    alpha = resize(img.alpha, scale) if img.alpha is not None else None
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return Prepared(x, alpha, img.bit_depth, img.gray)


def write_result(job: Job, prepared: Prepared, out: torch.Tensor) -> None:
    """Write the model's output with the input's alpha, bit depth and colour kind, atomically."""
    result = out.clamp(0, 1).permute(1, 2, 0).numpy()
    depth = 16 if prepared.bit_depth > 8 else 8
    write_image(job.dst, result, alpha=prepared.alpha, bit_depth=depth, gray=prepared.gray)


def upscale_file(runner: Runner, job: Job, cfg: TileConfig, scale: float = 1.0,
                 progress: Callable[[int], None] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> TileReport:
    """Upscale one file into ``job.dst`` (written atomically)."""
    prepared = prepare(job, scale, max_pixels)
    out, report = upscale_tensor(runner, prepared.x, cfg, progress)
    write_result(job, prepared, out)
    return report
