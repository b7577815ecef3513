"""The PNG writer (``mcan_deploy.png``) against independent decoders: OpenCV's (libpng) and
Pillow's read back exactly the pixels written, in every colour type and depth, at sizes down to
one pixel and with strips that end mid-image; zlib checks the stream and its Adler-32; the bytes
do not depend on the thread count."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from mcan_deploy import png

from .helpers import png_chunks

SIZES = [(1, 1), (1, 7), (5, 1), (37, 29)]


def pixels(h: int, w: int, c: int, dtype: type, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, (h, w, c), endpoint=False).astype(dtype)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, each chunk's CRC checked."""
    return [(kind, body) for kind, body, _ in png_chunks(data)]


def opencv_reads(data: bytes, c: int) -> np.ndarray:
    """OpenCV's decode, as (H, W, C) in the written channel order."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr.ndim == 2:
        return arr[:, :, None]
    return arr[:, :, [2, 1, 0, 3][:c]] if c in (3, 4) else arr


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("c", [1, 3, 4])
def test_opencv_and_pillow_read_back_every_pixel(dtype, c, monkeypatch):
    monkeypatch.setattr(png, "STRIP_BYTES", 64)  # many strips even at these sizes, some mid-row-count
    for h, w in [*SIZES, (50, 3)]:
        x = pixels(h, w, c, dtype, seed=h * w)
        data = png.encode_png(x, threads=3)
        back = opencv_reads(data, c)
        assert back.dtype == dtype and np.array_equal(back, x), (h, w)
        if dtype == np.uint8:  # Pillow reads 16-bit colour as 8-bit; its 8-bit reads are exact
            pil = np.asarray(Image.open(io.BytesIO(data)))
            assert np.array_equal(pil.reshape(x.shape), x), (h, w)


def test_gray_alpha_and_two_dimensional_gray():
    ga = pixels(9, 11, 2, np.uint8)
    im = Image.open(io.BytesIO(png.encode_png(ga)))
    assert im.mode == "LA" and np.array_equal(np.asarray(im), ga)
    g16 = pixels(9, 11, 1, np.uint16)[:, :, 0]
    assert np.array_equal(cv2.imdecode(np.frombuffer(png.encode_png(g16), np.uint8), cv2.IMREAD_UNCHANGED), g16)


def test_the_stream_is_one_zlib_stream_whose_bytes_do_not_depend_on_the_threads(monkeypatch):
    monkeypatch.setattr(png, "STRIP_BYTES", 300)
    x = pixels(61, 40, 3, np.uint8)
    data = png.encode_png(x, threads=1)
    assert png.encode_png(x, threads=4) == data == png.encode_png(x, threads=None)
    parts = chunks(data)
    idat = b"".join(body for kind, body in parts if kind == b"IDAT")
    assert sum(kind == b"IDAT" for kind, _ in parts) == -(-61 // (300 // 120)) > 1  # one per strip of 2 rows
    raw = zlib.decompress(idat)  # checks the Adler-32 put together from the strips'
    rows = np.frombuffer(raw, np.uint8).reshape(61, 1 + 120)
    assert (rows[:, 0] == 1).all()  # SUB on every row, as OpenCV's default
    # undo SUB by hand: each byte plus the reconstructed byte 3 to its left, modulo 256
    assert np.array_equal(np.cumsum(rows[:, 1:].reshape(61, 40, 3), axis=1, dtype=np.uint8), x)
    assert [k for k, _ in parts][:1] == [b"IHDR"] and parts[-1] == (b"IEND", b"")
    assert parts[0][1] == struct.pack(">IIBBBBB", 40, 61, 8, 2, 0, 0, 0)


def test_ancillary_chunks_come_before_the_image_data():
    x = pixels(4, 5, 3, np.uint8)
    data = png.encode_png(x, [(b"tEXt", b"Title\x00harbour"), (b"pHYs", struct.pack(">IIB", 11811, 11811, 1))])
    kinds = [k for k, _ in chunks(data)]
    assert kinds == [b"IHDR", b"tEXt", b"pHYs", b"IDAT", b"IEND"]
    im = Image.open(io.BytesIO(data))
    assert im.text == {"Title": "harbour"} and im.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_adler32_combine_equals_zlibs_on_the_whole():
    rng = np.random.default_rng(1)
    for n1, n2 in [(0, 0), (0, 5), (7, 0), (1, 65521), (70000, 3), (123457, 200003)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert png.adler32_combine(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)
    ones = b"\xff" * 400000  # sums that wrap the modulus many times
    assert png.adler32_combine(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(ones * 2)


def test_a_photo_compresses_as_opencvs_png_does():
    """The same filter, level and strategy as OpenCV's default: no larger than its file (+1%)."""
    photo = cv2.imread(str(png_photo()), cv2.IMREAD_COLOR)
    assert photo is not None
    ok, ref = cv2.imencode(".png", photo)
    ours = png.encode_png(np.ascontiguousarray(photo[:, :, ::-1]))
    assert ok and len(ours) <= 1.01 * len(ref), (len(ours), len(ref))


def png_photo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "samples" / "photo" / "city100_001_LR.png"


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((2, 3, 5), np.uint8), "shape"),
        (np.zeros((0, 3, 3), np.uint8), "shape"),
        (np.zeros((2, 3, 3), np.float32), "dtype"),
    ],
)
def test_what_a_png_cannot_hold_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        png.encode_png(bad)
