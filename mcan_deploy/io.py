"""Reading and writing image files with OpenCV, and atomic file writes.

Images come in as float32 RGB in [0, 1] (H, W, 3) whatever their bit depth or channel layout,
with alpha kept apart so that it can be carried through unchanged. Files go out atomically: a
reader never sees a half-written image or model.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ImageReadError, MCANError

if TYPE_CHECKING:
    from .metadata import EncodeOptions, PhotoMeta

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
# Files whose header declares more pixels are refused before decoding (a float32 RGB copy of a
# 200 MP image is 2.4 GB); callers pass their own limit (mcan-upscale --max-pixels, data.max_pixels).
DEFAULT_MAX_PIXELS = 200_000_000


@dataclass
class LoadedImage:
    """A decoded image: RGB float32 in [0, 1], optional alpha, and what the file held."""

    rgb: np.ndarray  # (H, W, 3) float32
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], or None
    bit_depth: int  # 8 or 16 (32 for float files)
    gray: bool  # the file had a single colour channel

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[0], self.rgb.shape[1]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    a reader never sees a partial file; a failed write (full disk, no permission) leaves none
    and raises ``MCANError`` naming the file."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp"))
        with open(tmp, "xb") as f:  # created with the usual mode (umask applies), never reused
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise MCANError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that ``atomic_write_bytes`` leaves when its process is killed
    mid-write (``.NAME.<12 hex>.tmp``), in ``folder`` and below; returns what was removed."""
    import re

    pattern = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
    gone = [p for p in Path(folder).rglob(".*.tmp") if p.is_file() and pattern.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _to_unit_float(arr: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, 8
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, 16
    if arr.dtype == np.float32:
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{path}: float image holds NaN or infinite values; fix or re-export it")
        return np.clip(arr, 0.0, 1.0), 32
    raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}; use 8- or 16-bit PNG/TIFF or JPEG")


def _check_pixels(path: Path, pixels: int, size: str, max_pixels: int, what: str) -> None:
    if pixels > max_pixels:
        raise ImageReadError(
            f"{path}: {what} {size} = {pixels / 1e6:.1f} MP, above the limit of {max_pixels / 1e6:.1f} MP; "
            "raise the limit (mcan-upscale --max-pixels, data.max_pixels) if the file is trusted"
        )


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image file as stored (training pairs are registered so: the EXIF orientation of
    PNG, JPEG and WebP files is not applied; OpenCV's TIFF decoder applies a TIFF's own, to LR and
    HR alike); raises ``ImageReadError`` naming the file when it cannot.

    The size declared in the header is checked against ``max_pixels`` before any decoding."""
    path = Path(path)
    return decode_array(_decode_file(path, _read_bytes(path, max_pixels), max_pixels), path)


def read_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[LoadedImage, PhotoMeta]:
    """A photo to upscale: decoded, turned upright by its EXIF orientation, with the metadata
    its output should carry (``metadata.PhotoMeta``)."""
    arr, meta = read_photo_array(path, max_pixels)
    return decode_array(arr, path), meta


def read_photo_array(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, PhotoMeta]:
    """The photo's pixels as stored (uint8/uint16/float32, BGR(A) as OpenCV decodes them),
    turned upright by its EXIF orientation, and its metadata; checked as ``decode_array`` checks
    them, without the conversion to float (a GPU does that on the device)."""
    from .metadata import read_meta, upright

    path = Path(path)
    data = _read_bytes(path, max_pixels)
    arr = _decode_file(path, data, max_pixels)
    pixel_info(arr, path)  # a file that cannot be used fails first
    meta = read_meta(data, path)
    if meta.orientation != 1:
        arr = upright(arr, meta.orientation)
    return arr, meta


def pixel_info(arr: np.ndarray, where: str | Path = "image") -> tuple[int, bool, bool]:
    """(bit depth, gray, has alpha) of an (H, W[, C]) array, with ``decode_array``'s errors."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{where}: image array of shape {arr.shape}; expected (H, W) or (H, W, C)")
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16, np.dtype(np.float32): 32}.get(arr.dtype)
    if depth is None:
        raise ImageReadError(f"{where}: unsupported pixel type {arr.dtype}; use 8- or 16-bit PNG/TIFF or JPEG")
    if depth == 32 and not np.isfinite(arr).all():
        raise ImageReadError(f"{where}: float image holds NaN or infinite values; fix or re-export it")
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels not in (1, 2, 3, 4):
        raise ImageReadError(f"{where}: {channels} channels; expected 1, 2, 3 or 4")
    return depth, channels <= 2, channels in (2, 4)


def _read_bytes(path: Path, max_pixels: int) -> bytes:
    from .imagesize import declared_size

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO (which would block), a device
            raise ImageReadError(f"{path}: not a regular file")
        # no image within the pixel limit needs more bytes than 16-bit RGBA, uncompressed
        if st.st_size > 8 * max_pixels + 2**26:
            raise ImageReadError(
                f"{path}: {st.st_size} bytes, more than an image of at most {max_pixels / 1e6:.1f} MP can hold; refused"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    declared = declared_size(data)
    if declared is None:  # never decode what the pixel limit could not be checked on
        raise ImageReadError(f"{path}: not a readable image (no PNG, JPEG, TIFF, BMP or WebP header)")
    _check_pixels(path, *declared, max_pixels, "header declares")
    return data


def _decode_file(path: Path, data: bytes, max_pixels: int) -> np.ndarray:
    import cv2

    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. OpenCV's own size limit, or a decoder failure
        raise ImageReadError(f"{path}: not a readable image ({str(exc).strip().splitlines()[-1][:200]})") from None
    if arr is None or arr.size == 0:
        raise ImageReadError(
            f"{path}: not a readable image (truncated, corrupt or not one of {', '.join(IMAGE_SUFFIXES)})"
        )
    _check_pixels(path, arr.shape[0] * arr.shape[1], f"{arr.shape[1]}x{arr.shape[0]}", max_pixels, "decoded size")
    return arr


def decode_array(arr: np.ndarray, where: str | Path = "image", order: str = "bgr") -> LoadedImage:
    """An (H, W[, C]) uint8/uint16/float32 array as a ``LoadedImage``: C is 1 or absent (gray),
    2 (gray + alpha), 3 (colour) or 4 (colour + alpha), the colours in ``order`` ("bgr" as OpenCV
    gives them, or "rgb"). ``where`` names the source in errors."""
    path = Path(str(where))
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{where}: image array of shape {arr.shape}; expected (H, W) or (H, W, C)")
    arr, depth = _to_unit_float(arr, path)
    alpha = None
    gray = False
    if arr.ndim == 2:
        gray = True
        rgb = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 2:  # gray + alpha
        gray = True
        rgb, alpha = np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1]
    elif arr.shape[2] in (3, 4):
        rgb = arr[:, :, 2::-1] if order == "bgr" else arr[:, :, :3]
        alpha = arr[:, :, 3] if arr.shape[2] == 4 else None
    else:
        raise ImageReadError(f"{where}: {arr.shape[2]} channels; expected 1, 2, 3 or 4")
    return LoadedImage(np.ascontiguousarray(rgb), alpha, depth, gray)


def output_depth(bit_depth: int, suffix: str) -> int:
    """The bit depth a file of ``suffix`` gets for an input of ``bit_depth`` bits: 16 for 16-bit
    and float inputs where the format holds it, else 8 (JPEG, BMP and WebP hold 8 bits only)."""
    if suffix.lower() in (".jpg", ".jpeg", ".bmp", ".webp"):
        return 8
    return 16 if bit_depth > 8 else 8


def encode_image(
    rgb: np.ndarray,
    suffix: str,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    gray: bool = False,
    meta: PhotoMeta | None = None,
    options: EncodeOptions | None = None,
    where: str | Path = "image",
) -> bytes:
    """Encode float RGB in [0, 1] (H, W, 3) as an image file's bytes of the given suffix. With
    ``meta`` (a photo's metadata) or ``options`` (JPEG/WebP quality) it goes through
    ``metadata.encode_with_meta``; ``where`` names the file in its warnings."""
    if bit_depth not in (8, 16):
        raise MCANError(f"bit depth {bit_depth} cannot be written; use 8 or 16")
    if bit_depth == 16:
        bit_depth = output_depth(16, suffix)
    return encode_pixels(encode_array(rgb, alpha, bit_depth, gray, order="rgb"), suffix, meta, options, where)


def encode_pixels(
    pixels: np.ndarray,
    suffix: str,
    meta: PhotoMeta | None = None,
    options: EncodeOptions | None = None,
    where: str | Path = "image",
) -> bytes:
    """Encode stored pixels, (H, W[, C]) uint8/uint16 in RGB(A) order (``encode_array``'s
    output, or a GPU's), as an image file's bytes of the given suffix."""
    import cv2

    if meta is not None or options is not None:
        from .metadata import EncodeOptions, PhotoMeta, encode_with_meta

        data = encode_with_meta(pixels, suffix, meta or PhotoMeta(), options or EncodeOptions(), where)
        if data is not None:
            return data
    if suffix.lower() == ".png":
        from .png import encode_png

        return encode_png(pixels)  # on several cores (png.py)
    colour = pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    bgr = pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]] if colour else pixels
    try:
        ok, buf = cv2.imencode(suffix, bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise MCANError(f"cannot encode an image as '{suffix}'; use one of {IMAGE_SUFFIXES}")
    return buf.tobytes()


def encode_array(
    rgb: np.ndarray, alpha: np.ndarray | None = None, bit_depth: int = 8, gray: bool = False, order: str = "bgr"
) -> np.ndarray:
    """Float RGB in [0, 1] (H, W, 3) as the array a file stores: uint8 or uint16 (``bit_depth``
    8 or 16) or float32 (32), colours in ``order``. Gray is the mean of the colours, (H, W, 1), or
    with alpha the gray repeated in three channels plus alpha (image formats hold no two-channel
    gray + alpha), as files are written."""
    img = rgb.mean(axis=2, keepdims=True) if gray else (rgb[:, :, ::-1] if order == "bgr" else rgb)
    if alpha is not None:
        img = np.concatenate([np.repeat(img, 3, axis=2) if gray else img, alpha[:, :, None]], axis=2)
    if bit_depth == 32:
        return np.clip(img, 0.0, 1.0).astype(np.float32)
    peak, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    # rint(clip(img * peak)) as before, with one float temporary, in C order (img may be a
    # permuted view): each fresh 12 MP float array costs page faults, 1.3 s on a small VM
    scaled = np.multiply(img, peak, order="C")
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, peak, out=scaled)
    return scaled.astype(dtype)


def write_image(
    path: str | Path,
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    gray: bool = False,
    meta: PhotoMeta | None = None,
    options: EncodeOptions | None = None,
) -> None:
    """Write float RGB in [0, 1] atomically; the format follows the file's suffix."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(rgb, path.suffix or ".png", alpha, bit_depth, gray, meta, options, path))


def write_pixels(
    path: str | Path,
    pixels: np.ndarray,
    meta: PhotoMeta | None = None,
    options: EncodeOptions | None = None,
) -> None:
    """Write stored pixels (``encode_pixels``) atomically; the format follows the file's suffix."""
    path = Path(path)
    atomic_write_bytes(path, encode_pixels(pixels, path.suffix or ".png", meta, options, path))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (model files, sources of a fine-tune), read in 1 MB pieces."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
