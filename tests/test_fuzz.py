"""Fuzzing the readers with hypothesis: random bytes, valid-but-odd images, and mutated ones
into the image reader; random LR/HR folders into the pair loader. The only failure allowed is
the typed error (ImageReadError / DataError); anything that decodes must be a sane image."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from mcan_deploy.data import load_images
from mcan_deploy.errors import DataError, ImageReadError
from mcan_deploy.io import IMAGE_SUFFIXES, read_image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# CI runs a fixed, derandomised sample; MCAN_FUZZ_SCALE=20 runs twenty times as many, random ones
SCALE = int(os.environ.get("MCAN_FUZZ_SCALE", "1"))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=SCALE == 1)
MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00\x08\x00\x00\x00",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"#?RADIANCE\n",
    b"PF\n",
    b"P7\n",
    b"P6\n",
]


def _check_read(path: Path, max_pixels: int = 10_000_000) -> None:
    try:
        img = read_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        assert str(exc).startswith(str(path)), exc
        return
    h, w = img.size
    assert img.rgb.shape == (h, w, 3) and img.rgb.dtype == np.float32 and h * w <= max_pixels
    assert np.isfinite(img.rgb).all() and img.rgb.min() >= 0 and img.rgb.max() <= 1
    if img.alpha is not None:
        assert img.alpha.shape == (h, w)


@settings(max_examples=300 * SCALE, **SETTINGS)
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=600), suffix=st.sampled_from(IMAGE_SUFFIXES))
def test_random_bytes_never_crash_the_reader(magic, tail, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{suffix}"
        path.write_bytes(magic + tail)
        _check_read(path)


def _image(h, w, channels, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if dtype == "float32":
        return rng.random(shape, dtype=np.float32) * 1.5 - 0.25  # out of range on purpose
    hi = 256 if dtype == "uint8" else 65536
    return rng.integers(0, hi, shape).astype(dtype)


odd_images = st.tuples(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([1, 3, 4]),
    st.sampled_from(["uint8", "uint16", "float32"]),
    st.sampled_from(IMAGE_SUFFIXES),
    st.integers(0, 2**16),
)


@settings(max_examples=200 * SCALE, **SETTINGS)
@given(
    spec=odd_images, cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6)
)
def test_odd_and_damaged_images(spec, cut, flips):
    h, w, channels, dtype, suffix, seed = spec
    try:
        ok, buf = cv2.imencode(suffix, _image(h, w, channels, dtype, seed))
    except cv2.error:
        ok = False
    if not ok:
        return  # OpenCV cannot write this combination (e.g. float32 JPEG)
    data = buf.tobytes()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{suffix}"
        path.write_bytes(data)
        img = read_image(path)  # intact: must decode, at its size
        assert img.size == (h, w)
        _check_read(path, max_pixels=h * w)  # a limit at exactly its size still passes
        if h * w > 1:
            with pytest.raises(ImageReadError, match="header declares"):  # checked before decoding
                read_image(path, max_pixels=h * w - 1)
        damaged = bytearray(data[: max(1, int(len(data) * cut))])  # truncated, then bytes flipped
        for where, value in flips:
            damaged[int(where * (len(damaged) - 1))] = value
        path.write_bytes(bytes(damaged))
        _check_read(path)


pair_specs = st.lists(
    st.tuples(
        st.integers(8, 24),
        st.integers(8, 24),  # HR size
        st.sampled_from([1, 2, 3, 0]),  # LR scale (0: an unrelated size)
        st.sampled_from([1, 3, 4]),
        st.sampled_from([1, 3, 4]),  # HR / LR channels
        st.sampled_from(["ok", "ok", "ok", "truncate", "garbage", "no_lr", "no_hr"]),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=40 * SCALE, **SETTINGS)
@given(specs=pair_specs, seed=st.integers(0, 2**16))
def test_random_pair_folders_load_or_raise_one_data_error(specs, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "HR").mkdir()
        (root / "LR").mkdir()
        for i, (h, w, scale, c_hr, c_lr, damage) in enumerate(specs):
            lh, lw = (h // scale, w // scale) if scale else (h + 1, w)
            hr = _image(h, w, c_hr, "uint8", rng.integers(1 << 30))
            lr = _image(max(lh, 1), max(lw, 1), c_lr, "uint8", rng.integers(1 << 30))
            hr_b, lr_b = cv2.imencode(".png", hr)[1].tobytes(), cv2.imencode(".png", lr)[1].tobytes()
            if damage == "truncate":
                lr_b = lr_b[: len(lr_b) // 2]
            elif damage == "garbage":
                hr_b = rng.bytes(50)
            if damage != "no_hr":
                (root / "HR" / f"{i}.png").write_bytes(hr_b)
            if damage != "no_lr":
                (root / "LR" / f"{i}.png").write_bytes(lr_b)
        try:
            data = load_images(root, progress=False)
        except DataError as exc:
            assert str(exc).startswith(str(root))
            return
        for x, y in zip(data.inputs, data.targets):
            assert x.shape == y.shape and x.shape[0] == 3 and bool(((x >= 0) & (x <= 1)).all())
