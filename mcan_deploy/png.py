"""PNG files written on several cores: the same format, filter and compression as OpenCV's
default PNG, with the deflate work split over threads.

Why: a 12 MP photo's PNG took 0.60 s to encode on one core of the H200 host (OpenCV; libpng,
Pillow and imagecodecs also encode one image on one thread), more than the model's 0.27 s. The
last image of a folder is encoded after the model has finished, so that time is added to the
folder's wall time, and a single photo waits for it too.

How, as pigz and mtpng do it: the image's rows go in strips of about ``STRIP_BYTES``; each strip
is filtered (SUB, every row, as OpenCV does by default) and deflated on its own (level 1, the
RLE strategy, as OpenCV), ending on a byte boundary with a full flush, so that the strips'
outputs follow one another as one zlib stream. Its Adler-32 is put together from the strips'.
The strips do not depend on the thread count, so the bytes are the same on every machine.
zlib and NumPy release the GIL for this work.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["STRIP_BYTES", "adler32_combine", "encode_png", "png_chunk"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
STRIP_BYTES = 1 << 21  # raw bytes a strip holds at most (at least one row): 18 strips for 12 MP RGB
MAX_THREADS = 8  # a 12 MP photo's 18 strips: 8 threads take it to about 1/6 of one thread's time
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray + alpha, RGB, RGBA (PNG spec, 11.2.2)
_ADLER_BASE = 65521


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One chunk: length, type, data, CRC of type and data (PNG spec, sec. 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def adler32_combine(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of two byte strings one after the other, from each one's Adler-32 and the
    second's length (zlib's ``adler32_combine``, which Python's zlib does not expose)."""
    base = _ADLER_BASE
    rem = second_len % base
    a = ((first & 0xFFFF) + (second & 0xFFFF) - 1) % base
    b = (rem * (first & 0xFFFF) + (first >> 16) + (second >> 16) - rem) % base
    return a | (b << 16)


def default_threads() -> int:
    """The cores this process may use, at most ``MAX_THREADS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _strip(rows: np.ndarray, bpp: int, last: bool) -> tuple[bytes, int, int]:
    """One strip's rows (n, row bytes) uint8 filtered with SUB and deflated: (raw deflate data
    ending on a byte boundary, Adler-32 of the filtered bytes, their length)."""
    n, width = rows.shape
    filtered = np.empty((n, width + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type SUB: each byte minus the byte bpp to its left, modulo 256
    filtered[:, 1 : 1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, 1 + bpp :])
    data = filtered.data.cast("B")  # the bytes as they are, no copy
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    out = deflate.compress(data) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)
    return out, zlib.adler32(data), len(data)


def encode_png(pixels: np.ndarray, chunks: Sequence[tuple[bytes, bytes]] = (), threads: int | None = None) -> bytes:
    """(H, W[, C]) uint8 or uint16 pixels as a PNG file's bytes: C = 1 gray, 2 gray + alpha,
    3 RGB, 4 RGBA (in that order: no BGR). ``chunks``: (type, data) pairs of ancillary chunks
    (iCCP, eXIf, pHYs, text), written after the header, before the image data. ``threads``:
    how many strips are deflated at once (None: ``default_threads()``); the bytes do not
    depend on it."""
    arr = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if arr.ndim != 3 or arr.shape[2] not in _COLOUR_TYPE or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"PNG: pixels of shape {pixels.shape}; expected (H, W) or (H, W, 1-4)")
    if arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
        arr = arr.astype(">u2")  # PNG stores 16-bit samples most significant byte first
    else:
        raise ValueError(f"PNG: pixels of dtype {pixels.dtype}; expected uint8 or uint16")
    h, w, c = arr.shape
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(h, w * c * depth // 8)
    bpp = c * depth // 8
    step = max(1, STRIP_BYTES // raw.shape[1])
    starts = range(0, h, step)
    jobs = [(raw[y : y + step], bpp, y + step >= h) for y in starts]
    workers = min(len(jobs), threads if threads is not None else default_threads())
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="mcan-png") as pool:
            strips = list(pool.map(lambda job: _strip(*job), jobs))
    else:
        strips = [_strip(*job) for job in jobs]
    adler = 1  # of no bytes
    for _, strip_adler, length in strips:
        adler = adler32_combine(adler, strip_adler, length)
    parts = [SIGNATURE, png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, _COLOUR_TYPE[c], 0, 0, 0))]
    parts += [png_chunk(kind, data) for kind, data in chunks]
    for i, (deflated, _, _) in enumerate(strips):
        head = b"\x78\x01" if i == 0 else b""  # zlib header: deflate, 32 KB window, fastest
        tail = struct.pack(">I", adler) if i == len(strips) - 1 else b""
        parts.append(png_chunk(b"IDAT", head + deflated + tail))
    parts.append(png_chunk(b"IEND", b""))
    return b"".join(parts)
