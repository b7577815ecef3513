"""One image file in and out: read, optionally pre-resize, and upload (``prepare``); bring the
model's output back (``fetch_result``) and write it atomically with what the input carried
(``write_result``).

For a real low-resolution photo, ``scale`` > 1 first resizes it bicubically to the target size
(the model restores detail at that size, as it was trained to); ``scale`` 1 takes input already
at the target size, like the training pairs. Alpha is resized the same way and carried through
unchanged by the model; gray and 16-bit files come back gray and 16-bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..device_io import DeviceIO, Pending
from ..errors import MCANError
from ..io import (
    DEFAULT_MAX_PIXELS,
    decode_array,
    output_depth,
    pixel_info,
    read_photo_array,
    write_image,
    write_pixels,
)
from ..metadata import EncodeOptions, PhotoMeta
from .jobs import Job


def resize(arr: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic resize of (H, W[, C]) float32 by ``scale``, clipped to [0, 1]."""
    import cv2

    if scale == 1:
        return arr
    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.clip(cv2.resize(arr, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


@dataclass
class Prepared:
    """An input decoded and resized, ready for the engine, with what its output needs."""

    x: torch.Tensor  # (3, H, W) float32 in [0, 1], upright (EXIF orientation applied)
    alpha: np.ndarray | None
    bit_depth: int
    gray: bool
    meta: PhotoMeta = dataclasses.field(default_factory=PhotoMeta)  # what the output carries
    upload: Pending | None = None  # x on its way to a GPU (``x`` is then that device tensor)


def read_source(job: Job, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, PhotoMeta]:
    """``job.src``'s pixels as stored and its metadata (``io.read_photo_array``): the part of
    ``prepare`` that needs no device, so it can run before the model is ready."""
    return read_photo_array(job.src, max_pixels)


def prepare(
    job: Job,
    scale: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    io: DeviceIO | None = None,
    source: tuple[np.ndarray, PhotoMeta] | None = None,
) -> Prepared:
    """Read ``job.src`` (or take ``source``, what ``read_source`` returned for it) and resize
    it (and its alpha) by ``scale``; ``max_pixels`` bounds the file's declared size (before
    decoding) and the size after ``scale``. With a GPU's ``io`` the image goes up at once on a
    side stream: colour pixels at the target size as stored integers, converted on the device;
    anything else as float32 from pinned memory."""
    arr, meta = source if source is not None else read_source(job, max_pixels)
    depth, gray, has_alpha = pixel_info(arr, job.src)
    h, w = arr.shape[:2]
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    if th * tw > max_pixels:
        raise MCANError(
            f"{job.src}: {w}x{h} x {scale:g} = {tw}x{th} = {tw * th / 1e6:.1f} MP, above the "
            f"limit of {max_pixels / 1e6:.1f} MP; lower --scale or raise --max-pixels"
        )
    if io is not None and io.cuda and scale == 1 and not gray and depth in (8, 16):
        up = io.upload(arr, "bgr")
        alpha = arr[:, :, 3].astype(np.float32) / (255.0 if depth == 8 else 65535.0) if has_alpha else None
        return Prepared(up.value, alpha, depth, gray, meta, up)
    img = decode_array(arr, job.src)
    rgb = resize(img.rgb, scale)
    alpha = resize(img.alpha, scale) if img.alpha is not None else None
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    upload = io.upload(x) if io is not None and io.cuda else None
    return Prepared(x if upload is None else upload.value, alpha, img.bit_depth, img.gray, meta, upload)


def fetch_result(job: Job, prepared: Prepared, out: torch.Tensor, io: DeviceIO | None = None) -> Pending:
    """The model's output on its way to the host: on a GPU as the stored pixels of the output
    file (rounded on the device; gray outputs, a mean of colours, as float), else as is."""
    if io is None or not io.cuda:
        return Pending(out)
    depth = None if prepared.gray else output_depth(prepared.bit_depth, job.dst.suffix or ".png")
    return io.download(out, depth, "rgb")


def write_result(
    job: Job, prepared: Prepared, out: torch.Tensor | Pending, encode: EncodeOptions | None = None
) -> None:
    """Write the model's output (a float tensor, or ``fetch_result``'s pixels) with the input's
    alpha, bit depth, colour kind and metadata (colour profile, EXIF, text, DPI; orientation 1,
    since the pixels are upright), atomically."""
    result = out.result() if isinstance(out, Pending) else out
    options = encode or EncodeOptions()
    if result.dtype in (torch.uint8, torch.uint16):  # pixels encoded on the device
        pixels = result.numpy()
        if prepared.alpha is not None:  # as io.encode_array rounds it
            peak = 255.0 if result.dtype == torch.uint8 else 65535.0
            a = np.clip(np.rint(prepared.alpha * peak), 0, peak).astype(pixels.dtype)
            pixels = np.concatenate([pixels, a[:, :, None]], axis=2)
        write_pixels(job.dst, pixels, meta=prepared.meta, options=options)
        return
    rgb = result.float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    write_image(
        job.dst,
        rgb,
        alpha=prepared.alpha,
        bit_depth=16 if prepared.bit_depth > 8 else 8,
        gray=prepared.gray,
        meta=prepared.meta,
        options=options,
    )
