"""The Python API: every image kind round-trips with its shape, dtype and channel order, and the
pixels equal what ``mcan-upscale`` writes for the same input; the docstring example runs."""

from __future__ import annotations

import doctest
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import mcan_deploy
from mcan_deploy import api
from mcan_deploy.checkpoint import save_model
from mcan_deploy.cli.upscale import main as upscale_main
from mcan_deploy.errors import MCANError
from mcan_deploy.model import ModelConfig, build_model

H, W = 17, 23


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("api") / "model.safetensors"
    save_model(path, build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)))
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return mcan_deploy.load(model_path, backend="torch", tile=8)


def cli_output(model_path, tmp_path, file_array: np.ndarray, suffix: str = ".png") -> np.ndarray:
    """What mcan-upscale writes for a file holding ``file_array`` (as OpenCV stores it)."""
    src, dst = tmp_path / f"in{suffix}", tmp_path / "out.png"
    assert cv2.imwrite(str(src), file_array)
    assert (
        upscale_main([str(model_path), str(src), "-o", str(dst), "--backend", "torch", "--tile", "8", "--no-progress"])
        == 0
    )
    return cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)


def rng_image(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


# (array shape, dtype, channel order, how the file stores it, how to read the CLI's output back)
BGR_TO_RGB = lambda a: a[:, :, ::-1] if a.shape[2] == 3 else a[:, :, [2, 1, 0, 3]]  # noqa: E731
CASES = [
    ((H, W, 3), np.uint8, "rgb", BGR_TO_RGB, BGR_TO_RGB),
    ((H, W, 3), np.uint8, "bgr", lambda a: a, lambda a: a),
    ((H, W, 4), np.uint8, "rgb", BGR_TO_RGB, BGR_TO_RGB),
    ((H, W, 4), np.uint16, "bgr", lambda a: a, lambda a: a),
    ((H, W, 3), np.uint16, "rgb", BGR_TO_RGB, BGR_TO_RGB),
    ((H, W), np.uint8, "rgb", lambda a: a, lambda a: a),
    ((H, W), np.uint16, "rgb", lambda a: a, lambda a: a),
    ((H, W, 1), np.uint8, "rgb", lambda a: a[:, :, 0], lambda a: a[:, :, None]),
]


@pytest.mark.parametrize("shape, dtype, order, to_file, from_file", CASES)
def test_numpy_round_trip_equals_the_cli(model, model_path, tmp_path, shape, dtype, order, to_file, from_file):
    arr = rng_image(shape, dtype)
    out = model.upscale(arr, channel_order=order)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    want = from_file(cli_output(model_path, tmp_path, to_file(arr)))
    assert np.array_equal(out, want)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        assert np.array_equal(out[:, :, -1], arr[:, :, -1]), "alpha passes through unchanged"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_with_alpha_is_the_gray_path_plus_its_alpha(model, dtype):
    """(H, W, 2) has no file form the CLI reads as such (OpenCV decodes gray + alpha PNGs as
    BGRA), so it is held against the gray path, which is held against the CLI above."""
    arr = rng_image((H, W, 2), dtype)
    out = model.upscale(arr)
    assert out.shape == arr.shape and out.dtype == dtype
    assert np.array_equal(out[:, :, 0], model.upscale(np.ascontiguousarray(arr[:, :, 0])))
    assert np.array_equal(out[:, :, 1], arr[:, :, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_stay_float_and_match_the_cli_to_its_16_bits(model, model_path, tmp_path, dtype):
    arr = rng_image((H, W, 3), np.float32).astype(dtype)
    out = model.upscale(arr)
    assert out.shape == arr.shape and out.dtype == dtype and 0 <= out.min() and out.max() <= 1
    cli = cli_output(model_path, tmp_path, arr[:, :, ::-1].astype(np.float32), ".tiff")[:, :, ::-1]
    assert cli.dtype == np.uint16  # float input is written as 16-bit
    assert np.abs(out - cli / 65535.0).max() <= 0.5 / 65535 + 1e-6


@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "RGB", "RGBA"])
def test_pil_images_keep_their_mode_and_match_the_numpy_path(model, mode):
    arr = {
        "L": rng_image((H, W), np.uint8),
        "LA": rng_image((H, W, 2), np.uint8),
        "I;16": rng_image((H, W), np.uint16),
        "RGB": rng_image((H, W, 3), np.uint8),
        "RGBA": rng_image((H, W, 4), np.uint8),
    }[mode]
    image = Image.fromarray(arr)
    assert image.mode == mode
    out = model.upscale(image)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (W, H)
    assert np.array_equal(np.asarray(out), model.upscale(arr))


@pytest.mark.parametrize("shape", [(3, H, W), (2, 3, H, W), (1, H, W), (2, 4, H, W)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tensors_keep_shape_dtype_and_match_the_float_path(model, shape, dtype):
    t = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = model.upscale(t)
    assert out.shape == t.shape and out.dtype == dtype and out.device == t.device
    items = t if t.dim() == 4 else t[None]
    outs = out if t.dim() == 4 else out[None]
    for item, got in zip(items, outs):
        c = item.shape[0]
        rgb = item.float().expand(3, -1, -1) if c == 1 else item.float()[:3]
        want = model.upscale(np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()))
        want = torch.from_numpy(want).permute(2, 0, 1)
        want = want.mean(0, keepdim=True) if c == 1 else want
        tol = 1e-6 if dtype == torch.float32 else 1e-3
        torch.testing.assert_close(got.float()[: want.shape[0]], want, atol=tol, rtol=0)
        if c == 4:
            assert got[3].equal(item[3]), "alpha passes through"


def test_bad_images_are_one_line_errors(model):
    with pytest.raises(MCANError, match="cannot upscale a list"):
        model.upscale([1, 2, 3])
    with pytest.raises(MCANError, match="dtype int32"):
        model.upscale(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(MCANError, match="channel_order"):
        model.upscale(np.zeros((4, 4, 3), np.uint8), channel_order="rbg")
    with pytest.raises(MCANError, match=r"expected \(C, H, W\)"):
        model.upscale(torch.rand(2, 4, 4))
    with pytest.raises(MCANError, match="5 channels"):
        model.upscale(np.zeros((4, 4, 5), np.uint8))


def test_files_and_folders_as_the_cli(model, tmp_path, caplog):
    rgb = rng_image((H, W, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert model.upscale_file(tmp_path / "a.png", tmp_path / "one.png") is not None
    assert model.upscale_file(tmp_path / "a.png", tmp_path / "one.png") is None  # kept: no overwrite
    with caplog.at_level(logging.ERROR):
        stats = model.upscale_folder(tmp_path, tmp_path / "out")
    assert (stats.done, stats.failed) == (2, 1) and "bad.png" in caplog.text  # a.png, one.png; bad.png
    assert np.array_equal(cv2.imread(str(tmp_path / "out" / "a.png")), cv2.imread(str(tmp_path / "one.png")))
    assert model.info.kind == "model" and model.info.blocks == (0, 2) and len(model.info.sha256) == 64


def test_importing_the_package_is_light_and_the_docstring_example_runs(tmp_path, monkeypatch):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", "import sys, mcan_deploy; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.strip() == "False"
    monkeypatch.chdir(tmp_path)
    assert doctest.testmod(api, raise_on_error=False).failed == 0
