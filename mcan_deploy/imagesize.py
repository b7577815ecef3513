"""An image's size from its header, before any pixel is decoded: the guard against files whose
header declares an enormous image (decompression bombs).

Pillow reads the header of PNG, JPEG, BMP, WebP and most TIFFs lazily; TIFFs it does not open
(e.g. 3-channel float32, which OpenCV writes) are read from their first IFD here.
"""

from __future__ import annotations

import io
import struct
import warnings

__all__ = ["header_size"]

_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8 (BigTIFF)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by the file's header, or None if no header could be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: we judge the size
            with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        pass  # Pillow's own, lower limit: read the size ourselves below where we can
    except (UnidentifiedImageError, OSError, ValueError, struct.error, SyntaxError, EOFError):
        pass
    return _tiff_size(data)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """Width and length tags of the first IFD of a classic or Big TIFF."""
    try:
        order = {b"II": "<", b"MM": ">"}[data[:2]]
        magic = struct.unpack_from(order + "H", data, 2)[0]
        if magic == 42:
            ifd = struct.unpack_from(order + "I", data, 4)[0]
            n, entry, count_fmt, head = struct.unpack_from(order + "H", data, ifd)[0], 12, "I", 2
        elif magic == 43:
            ifd = struct.unpack_from(order + "Q", data, 8)[0]
            n, entry, count_fmt, head = struct.unpack_from(order + "Q", data, ifd)[0], 20, "Q", 8
        else:
            return None
        found: dict[int, int] = {}
        for i in range(min(n, 4096)):
            at = ifd + head + i * entry
            tag, typ = struct.unpack_from(order + "HH", data, at)
            if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and typ in _TIFF_TYPES:
                fmt, _ = _TIFF_TYPES[typ]
                value_at = at + 4 + struct.calcsize(count_fmt)
                found[tag] = struct.unpack_from(order + fmt, data, value_at)[0]
        if _TIFF_WIDTH in found and _TIFF_LENGTH in found:
            return found[_TIFF_WIDTH], found[_TIFF_LENGTH]
    except (KeyError, struct.error):
        pass
    return None
