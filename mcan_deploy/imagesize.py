"""An image's declared size from its header, before any pixel is decoded: the guard against
files whose header declares an enormous image (decompression bombs).

PNG and TIFF headers are read here (a PNG's IHDR chunk, a TIFF's first IFD: also the float RGB
TIFFs that OpenCV writes and Pillow does not open); Pillow reads JPEG, BMP and WebP headers
lazily. Where Pillow itself calls the file a decompression bomb, the pixel count it names is used.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

__all__ = ["declared_size"]

_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q"}  # every integer type a reader may accept
_PIL_FORMATS = ["JPEG", "BMP", "WEBP", "PNG", "TIFF"]  # the formats mcan-deploy reads, no others


def declared_size(data: bytes) -> tuple[int, str] | None:
    """(pixels, "WxH") declared by the file's header, or None if no header could be read."""
    for reader in (_png_size, _tiff_size):
        wh = reader(data)
        if wh is not None:
            return wh[0] * wh[1], f"{wh[0]}x{wh[1]}"
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: we judge the size
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:  # lazy: the header only
                w, h = int(im.size[0]), int(im.size[1])
                return w * h, f"{w}x{h}"
    except Image.DecompressionBombError as exc:  # "Image size (N pixels) exceeds limit of ..."
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(m[1]), f"{int(m[1])} pixels") if m else None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for files it cannot read
        return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """Width and length tags of the first IFD of a classic or Big TIFF."""
    try:
        order = {b"II": "<", b"MM": ">"}[data[:2]]
        magic = struct.unpack_from(order + "H", data, 2)[0]
        if magic == 42:
            ifd = struct.unpack_from(order + "I", data, 4)[0]
            n, entry, value_at = struct.unpack_from(order + "H", data, ifd)[0], 12, 8
            first = ifd + 2
        elif magic == 43:
            ifd = struct.unpack_from(order + "Q", data, 8)[0]
            n, entry, value_at = struct.unpack_from(order + "Q", data, ifd)[0], 20, 12
            first = ifd + 8
        else:
            return None
        found: dict[int, int] = {}
        for i in range(min(n, 4096)):
            at = first + i * entry
            tag, typ = struct.unpack_from(order + "HH", data, at)
            if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and typ in _TIFF_TYPES:
                # a repeated tag: the largest value counts (readers differ in which one they use)
                value = abs(struct.unpack_from(order + _TIFF_TYPES[typ], data, at + value_at)[0])
                found[tag] = max(found.get(tag, 0), value)
        if _TIFF_WIDTH in found and _TIFF_LENGTH in found:
            return found[_TIFF_WIDTH], found[_TIFF_LENGTH]
    except (KeyError, struct.error, OverflowError):  # offsets past the end, or beyond any index
        pass
    return None
