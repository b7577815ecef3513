"""mcan-upscale on files: bit depths, gray, alpha, --scale, skipping, bad files, exit codes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mcan_deploy.checkpoint import save_model
from mcan_deploy.cli.upscale import main
from mcan_deploy.errors import MCANError
from mcan_deploy.model import ModelConfig, build_model
from mcan_deploy.runners import TorchRunner
from mcan_deploy.upscale import plan_jobs


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8))
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model)
    return path, model


def expected(model, rgb01: np.ndarray) -> np.ndarray:
    """Independent reference: the whole image through the model, as float RGB (H, W, 3)."""
    runner = TorchRunner(model, torch.device("cpu"))
    x = torch.from_numpy(np.ascontiguousarray(rgb01.transpose(2, 0, 1)))[None]
    return runner.run_blocks(x, 0, 2)[0].clamp(0, 1).permute(1, 2, 0).numpy()


def run(args, capsys):
    rc = main([*map(str, args), "--no-progress", "--tile", "24"])
    return rc, capsys.readouterr()


def test_8_bit_rgb_matches_whole_image(model_file, tmp_path, capsys):
    path, model = model_file
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), bgr)
    rc, cap = run([path, tmp_path / "in.png", "-o", tmp_path / "out"], capsys)
    assert rc == 0 and "1 written, 0 skipped, 0 failed" in cap.out
    got = cv2.imread(str(tmp_path / "out" / "in.png"), cv2.IMREAD_UNCHANGED)
    want = np.rint(expected(model, bgr[:, :, ::-1].astype(np.float32) / 255) * 255)[:, :, ::-1]
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_16_bit_gray_and_alpha_are_kept(model_file, tmp_path, capsys):
    path, _ = model_file
    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "g16.png"), rng.integers(0, 65536, (20, 30), dtype=np.uint16))
    bgra = rng.integers(0, 256, (25, 19, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rc, _ = run([path, tmp_path / "g16.png", tmp_path / "a.png", "-o", tmp_path / "out"], capsys)
    assert rc == 0
    g = cv2.imread(str(tmp_path / "out" / "g16.png"), cv2.IMREAD_UNCHANGED)
    assert g.dtype == np.uint16 and g.shape == (20, 30)
    a = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert a.shape == (25, 19, 4) and a[:, :, 3].tolist() == bgra[:, :, 3].tolist()


def test_scale_resizes_bicubically_first(model_file, tmp_path, capsys):
    path, model = model_file
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "small.png"), bgr)
    rc, _ = run([path, tmp_path / "small.png", "-o", tmp_path / "big.png", "--scale", "2"], capsys)
    assert rc == 0
    got = cv2.imread(str(tmp_path / "big.png"))
    assert got.shape == (20, 26, 3)
    up = np.clip(cv2.resize(bgr[:, :, ::-1].astype(np.float32) / 255, (26, 20), interpolation=cv2.INTER_CUBIC), 0, 1)
    want = np.rint(expected(model, up) * 255)[:, :, ::-1]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_folder_skip_overwrite_and_bad_file(model_file, tmp_path, capsys):
    path, _ = model_file
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(src / name), np.full((12, 12, 3), 100, np.uint8))
    (src / "broken.png").write_bytes(b"not an image")
    rc, cap = run([path, src, "-o", tmp_path / "out"], capsys)
    assert rc == 1, "a failed file makes the exit code non-zero"
    assert "2 written, 0 skipped, 1 failed" in cap.out
    assert "broken.png: not a readable image" in cap.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"], "no partial files"
    (src / "broken.png").unlink()
    rc, cap = run([path, src, "-o", tmp_path / "out"], capsys)
    assert rc == 0 and "0 written, 2 skipped, 0 failed" in cap.out
    rc, cap = run([path, src, "-o", tmp_path / "out", "--overwrite"], capsys)
    assert rc == 0 and "2 written, 0 skipped" in cap.out


def test_output_equal_to_input_is_refused(model_file, tmp_path, capsys):
    path, _ = model_file
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4, 3), np.uint8))
    rc, cap = run([path, tmp_path / "x.png", "-o", tmp_path / "x.png", "--overwrite"], capsys)
    assert rc == 1 and "output path equals its input" in cap.err
    with pytest.raises(MCANError, match="holds no images"):
        (tmp_path / "empty").mkdir()
        plan_jobs([tmp_path / "empty"], tmp_path / "o")


def test_bad_options_are_one_line(model_file, tmp_path, capsys):
    path, _ = model_file
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4, 3), np.uint8))
    for extra, message in (
        (["--suffix", ".xyz"], "--suffix .xyz"),
        (["--scale", "nan"], "--scale nan"),
        (["--device", "gpu"], "--device gpu: not a device"),
    ):
        rc, cap = run([path, tmp_path / "x.png", "-o", tmp_path / "o", *extra], capsys)
        assert rc == 1 and cap.err.strip().count("\n") == 0 and message in cap.err, cap.err


def test_missing_model_is_one_line(tmp_path, capsys):
    rc, cap = run([tmp_path / "nope.safetensors", tmp_path, "-o", tmp_path / "o"], capsys)
    assert rc == 1 and cap.err.strip().count("\n") == 0 and "nope.safetensors" in cap.err
