"""What a photo carries besides its pixels: orientation, colour profile, EXIF, text and DPI.

A same-size restoration model changes pixels, not what they mean, so ``mcan-upscale`` carries
the input's meaning into the output (issue 19). Read with Pillow from the file's bytes (headers
only, no second decode, unless a PNG keeps EXIF or text after its pixels); JPEG and WebP outputs
are written by Pillow, TIFF by tifffile, and PNG by ``png.encode_png`` with the metadata chunks.

- Orientation: the pixels are turned upright before the model (``ImageOps.exif_transpose``'s
  rule for each EXIF orientation 1-8) and the output says orientation 1, so it displays the same
  in every viewer and every format, with ``--scale`` and alpha applied to the upright image.
- Colour profile: the ICC bytes are written unchanged, also into another output format; nothing
  converts colours (the model runs on the stored values).
- EXIF: kept, with the orientation reset and the pixel dimensions updated; the embedded thumbnail
  (IFD1) is not written, so no viewer shows the picture before the upscale.
- PNG text chunks and DPI: kept where the output format has them.

Malformed metadata (EXIF that does not parse, an ICC profile that does not parse, an orientation
outside 1-8) is dropped with one warning line; it never fails an image.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import numbers
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}  # Pillow's JPEG subsampling codes
ORIENTATION = 0x0112  # EXIF tags
EXIF_IFD = 0x8769
PIXEL_X, PIXEL_Y = 0xA002, 0xA003  # in the Exif IFD
IMAGE_WIDTH, IMAGE_LENGTH = 0x0100, 0x0101  # in IFD0
GPS_IFD = 0x8825
# how a TIFF stores its own pixels (strips, tiles, samples, compression, its ICC copy...): never
# EXIF of the output, whatever the input's IFD0 held
_STRUCTURAL_TAGS = frozenset(
    {258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325, 338, 339, 530, 532, 700, 33723, 34377, 34675}
)
# EXIF tags that are also plain TIFF tags of IFD0: what a TIFF input's camera data is, and what a
# TIFF output gets (description, make, model, software, date, artist, copyright)
_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)
# PNG text keys that are other metadata blocks (stale orientation, sizes, thumbnail): not copied
_PNG_TEXT_SKIPPED = frozenset(
    {"XML:com.adobe.xmp", "Raw profile type exif", "Raw profile type APP1", "Raw profile type xmp"}
)
_MAX_DPI = 65535.0  # JFIF and TIFF hold 16-bit or rational densities; larger values wrap
_EXIF_WARNINGS = threading.Lock()  # warnings.catch_warnings is process-wide; decode runs on threads


@dataclass
class PhotoMeta:
    """A photo's metadata as read; ``orientation`` is already applied to the decoded pixels."""

    orientation: int = 1
    icc: bytes | None = None
    exif: bytes | None = None  # as read (orientation and sizes are rewritten when written)
    text: dict[str, str] = field(default_factory=dict)  # PNG tEXt/zTXt/iTXt
    dpi: tuple[float, float] | None = None

    @property
    def empty(self) -> bool:
        return self.icc is None and self.exif is None and not self.text and self.dpi is None


@dataclass(frozen=True)
class EncodeOptions:
    """How lossy outputs are written. Restored photos keep their fine detail, so the defaults
    keep it too: JPEG quality 95 with 4:4:4 chroma (4:2:0 would halve the colour resolution the
    model restored), WebP quality 95 (``webp_lossless`` for bit-exact output)."""

    jpeg_quality: int = 95
    jpeg_subsampling: str = "4:4:4"  # "4:4:4", "4:2:2" or "4:2:0"
    webp_quality: int = 95
    webp_lossless: bool = False

    def __post_init__(self) -> None:
        from .errors import MCANError

        for name in ("jpeg_quality", "webp_quality"):
            if not 1 <= getattr(self, name) <= 100:
                raise MCANError(f"{name.replace('_', ' ')} {getattr(self, name)}: give 1 to 100 (default 95)")
        if self.jpeg_subsampling not in _SUBSAMPLING:
            raise MCANError(
                f"JPEG chroma subsampling {self.jpeg_subsampling!r}: give one of {', '.join(_SUBSAMPLING)} (default 4:4:4)"
            )


def _warn(where: object, what: str) -> None:
    log.warning("%s: %s; written without it", where, what)


def read_meta(data: bytes, where: str | Path = "image") -> PhotoMeta:
    """The metadata of an encoded image; anything malformed is dropped with one warning."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))  # lazy: reads the headers, decodes no pixels
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # e.g. a float TIFF
        log.debug("%s: Pillow cannot open it (%s); no metadata carried", where, exc)
        return PhotoMeta()
    meta = PhotoMeta()
    icc = im.info.get("icc_profile")
    if icc:
        meta.icc = icc if _valid_icc(icc) else None
        if meta.icc is None:
            _warn(where, f"colour profile of {len(icc)} bytes does not parse")
    try:
        with _EXIF_WARNINGS, warnings.catch_warnings(record=True) as caught:  # Pillow warns on truncated EXIF
            warnings.simplefilter("always")
            # Pillow decodes a whole PNG to look for EXIF after its pixels: only where some is there
            headers_only = im.format == "PNG" and not _png_metadata_after_pixels(data)
            exif = Image.Image.getexif(im) if headers_only else im.getexif()
            if len(exif):
                exif.get_ifd(EXIF_IFD)  # parse the sub-IFD now: a broken one fails here, not when written
        if caught:
            raise ValueError(str(caught[0].message).strip())
        orientation = exif.get(ORIENTATION, 1)
        if orientation not in range(1, 9):
            log.warning("%s: EXIF orientation %r is not 1-8; pixels kept as stored", where, orientation)
        elif im.format != "TIFF":  # OpenCV's TIFF decoder turns a TIFF upright itself (measured, 1-8)
            meta.orientation = int(orientation)
        if im.format == "TIFF":  # a TIFF's IFD0 is its own structure: keep only its camera data
            exif = _camera_exif(exif)
        if len(exif):
            meta.exif = exif.tobytes()
    except (SyntaxError, ValueError, OSError, KeyError, TypeError, IndexError, struct.error) as exc:  # corrupt EXIF
        meta.exif, meta.orientation = None, 1
        _warn(where, f"EXIF does not parse ({type(exc).__name__}: {str(exc)[:80]})")
    if im.format == "PNG":
        meta.text = {
            k: str(v)
            for k, v in im.info.items()
            if isinstance(k, str) and isinstance(v, str) and k not in _PNG_TEXT_SKIPPED and _png_text_ok(k, v)
        }
    dpi = im.info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2 and all(isinstance(d, numbers.Real) for d in dpi):  # TIFF: rationals
        if all(0 < d <= _MAX_DPI for d in dpi):
            meta.dpi = (float(dpi[0]), float(dpi[1]))
        else:
            _warn(where, f"resolution {dpi[0]:g}x{dpi[1]:g} DPI is outside 1-{_MAX_DPI:g}")
    return meta


_PNG_METADATA_CHUNKS = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})


def _png_metadata_after_pixels(data: bytes) -> bool:
    """Whether a PNG holds EXIF or text after its first image data chunk. Pillow finds such
    chunks only by decoding every pixel (``PngImageFile.getexif`` loads the image unless an eXIf
    came first): 0.2-0.3 s of a 12 MP photo's 0.4 s read, for the usual file that has none.
    Walks the chunk list (length, type, data, CRC; PNG spec, sec. 5.3) without reading the data;
    a list that does not parse answers True, leaving the file to Pillow as before."""
    pos, pixels = 8, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return False
        if kind == b"IDAT":
            pixels = True
        elif pixels and kind in _PNG_METADATA_CHUNKS:
            return True
        pos += 12 + length
    return True


def _png_text_ok(key: str, value: str) -> bool:
    """A keyword of 1-79 Latin-1 characters (PNG spec, sec. 11.3.4) and a value without NUL."""
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return 1 <= len(key) <= 79 and "\x00" not in value


def _camera_exif(ifd0: Any) -> Any:
    """A TIFF input's EXIF: its text tags (make, model, date, ...) and its Exif and GPS sub-IFDs."""
    from PIL import Image

    out = Image.Exif()
    for tag in _TIFF_TEXT_TAGS:
        if tag in ifd0:
            out[tag] = ifd0[tag]
    for tag in (EXIF_IFD, GPS_IFD):
        if tag in ifd0:
            out[tag] = ifd0.get_ifd(tag)
    return out


def _valid_icc(icc: bytes) -> bool:
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow without littlecms: keep the bytes unchecked
        return True
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return True
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.debug("ICC profile does not parse: %s", exc)
        return False


def upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W[, C]) turned as ``ImageOps.exif_transpose`` turns an image of that EXIF
    orientation: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr))


def output_exif(meta: PhotoMeta, width: int, height: int) -> bytes | None:
    """The EXIF to write: orientation 1 (the pixels are upright), pixel dimensions of the
    output, no thumbnail IFD."""
    if meta.exif is None:
        return None
    from PIL import Image

    exif = Image.Exif()
    exif.load(meta.exif)
    for tag in _STRUCTURAL_TAGS & set(exif):
        del exif[tag]
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    for tag, value in ((IMAGE_WIDTH, width), (IMAGE_LENGTH, height)):
        if tag in exif:
            exif[tag] = value
    if EXIF_IFD in exif:  # get_ifd would otherwise add an empty Exif IFD
        sub = exif.get_ifd(EXIF_IFD)
        for tag, value in ((PIXEL_X, width), (PIXEL_Y, height)):
            if tag in sub:
                sub[tag] = value
    return exif.tobytes()


def encode_with_meta(
    arr: np.ndarray, suffix: str, meta: PhotoMeta, options: EncodeOptions, where: object = "image"
) -> bytes | None:
    """``arr`` (H, W[, C]) uint8/uint16 in RGB order, encoded with ``meta``; None where the plain
    encoder (``io.encode_pixels``) should write it (BMP, or PNG/TIFF with nothing to carry).
    Metadata that cannot be written is left out with one warning naming ``where``: it never
    fails an image."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        suffix.lower()
    )
    if fmt is None or (fmt in ("PNG", "TIFF") and meta.empty):
        return None
    if fmt == "JPEG" and arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # JPEG holds no alpha (OpenCV dropped it the same way)
    gray = arr.ndim == 2 or arr.shape[2] == 1
    if meta.icc is not None and meta.icc[16:20] != (b"GRAY" if gray else b"RGB "):
        space = meta.icc[16:20].decode("latin-1", "replace").strip()
        _warn(where, f"colour profile is for {space!r} data, the output is {'gray' if gray else 'RGB'}")
        meta = dataclasses.replace(meta, icc=None)
    # what a writer refuses is left out, EXIF first (the likeliest: over 64 KB in JPEG), then the rest
    attempts = [meta, *([dataclasses.replace(meta, exif=None)] if meta.exif is not None else []), PhotoMeta()]
    for attempt in attempts:
        try:
            return _encode(arr, fmt, attempt, options)
        except (OSError, ValueError, TypeError, KeyError, struct.error) as exc:
            if attempt.empty:
                raise
            left_out = "EXIF" if attempt.exif is not None else "metadata"
            _warn(where, f"{left_out} could not be written ({type(exc).__name__}: {str(exc)[:80]})")
    raise AssertionError("unreachable: the last attempt carries no metadata")


def _encode(arr: np.ndarray, fmt: str, meta: PhotoMeta, options: EncodeOptions) -> bytes | None:
    if fmt == "TIFF":
        return _tiff(arr, meta)
    h, w = arr.shape[:2]
    exif = output_exif(meta, w, h)
    if fmt == "PNG":
        return _png(arr, meta, exif)
    from PIL import Image

    img = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    kw: dict[str, Any] = {}
    if meta.icc is not None:
        kw["icc_profile"] = meta.icc
    if exif is not None:
        kw["exif"] = exif
    if fmt == "JPEG":
        kw.update(quality=options.jpeg_quality, subsampling=_SUBSAMPLING[options.jpeg_subsampling])
        if meta.dpi is not None:
            kw["dpi"] = meta.dpi
    else:
        kw.update(quality=options.webp_quality, lossless=options.webp_lossless)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png(arr: np.ndarray, meta: PhotoMeta, exif: bytes | None) -> bytes:
    """A PNG (``png.encode_png``: OpenCV's format and compression, on several cores) with the
    metadata chunks (iCCP, eXIf, pHYs, tEXt/iTXt) before the image data."""
    from .png import encode_png

    chunks: list[tuple[bytes, bytes]] = []
    if meta.icc is not None:
        chunks.append((b"iCCP", b"icc\x00\x00" + zlib.compress(meta.icc)))
    if exif is not None:
        chunks.append((b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    if meta.dpi is not None:
        ppm = [round(d / 0.0254) for d in meta.dpi]
        chunks.append((b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    for k, v in meta.text.items():
        if v.isascii():
            chunks.append((b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1")))
        else:
            chunks.append((b"iTXt", k.encode("latin-1") + b"\x00\x00\x00\x00\x00" + v.encode("utf-8")))
    return encode_png(arr, chunks)


def _tiff(arr: np.ndarray, meta: PhotoMeta) -> bytes:
    """A TIFF (tifffile: 8- and 16-bit colour, zlib) with its colour profile, resolution and the
    EXIF tags that are TIFF tags (make, model, date, ...); the EXIF sub-IFD is not written."""
    import tifffile

    extratags, text = [], {}
    if meta.exif is not None:
        from PIL import Image

        exif = Image.Exif()
        exif.load(meta.exif)
        for tag in _TIFF_TEXT_TAGS:
            value = exif.get(tag)
            if isinstance(value, str) and value.isascii():
                text[tag] = value
        # tifffile writes description and software itself: given as arguments, the rest as tags
        extratags = [(tag, "s", 0, v, True) for tag, v in text.items() if tag not in (270, 305)]
    buf = io.BytesIO()
    color = arr.ndim == 3 and arr.shape[2] >= 3
    tifffile.imwrite(
        buf,
        arr if color else arr.reshape(arr.shape[:2]),
        photometric="rgb" if color else "minisblack",
        extrasamples=("unassalpha",) if color and arr.shape[2] == 4 else None,
        iccprofile=meta.icc,
        resolution=(meta.dpi[0], meta.dpi[1]) if meta.dpi else None,
        resolutionunit="INCH" if meta.dpi else None,
        compression="zlib",
        extratags=extratags,
        description=text.get(270),
        software=text.get(305, False),
        metadata=None,  # no tifffile JSON in the description
    )
    return buf.getvalue()
