"""Image files through OpenCV: bit depths, gray, alpha, and clear errors."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from mcan_deploy.errors import ImageReadError
from mcan_deploy.io import read_image, write_image


def test_8_and_16_bit_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img8)
    got = read_image(tmp_path / "a.png")
    assert got.bit_depth == 8 and not got.gray and got.alpha is None
    np.testing.assert_array_equal(got.rgb, img8[:, :, ::-1].astype(np.float32) / 255)
    write_image(tmp_path / "b.png", got.rgb)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "b.png")), img8)

    img16 = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), img16)
    got16 = read_image(tmp_path / "c.png")
    assert got16.bit_depth == 16
    write_image(tmp_path / "d.png", got16.rgb, bit_depth=16)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED), img16)


def test_gray_and_alpha(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    got = read_image(tmp_path / "g.png")
    assert got.gray and got.rgb.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(got.rgb[:, :, c], gray / np.float32(255))
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, [[0, 255], [128, 7]]
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    got = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(got.alpha, bgra[..., 3] / np.float32(255))
    assert got.rgb[0, 0, 0] == np.float32(200 / 255) and got.rgb[0, 0, 2] == np.float32(10 / 255)
    write_image(tmp_path / "b.png", got.rgb, alpha=got.alpha)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED), bgra)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="broken.png: not a readable image"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="nope.png: no such file"):
        read_image(tmp_path / "nope.png")


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_failed_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from mcan_deploy.errors import MCANError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MCANError, match="cannot write"):
        write_image(blocker / "sub" / "x.png", np.zeros((2, 2, 3), np.float32))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores folder permissions: the kernel's refusal, injected
            import builtins

            from mcan_deploy import io as io_module

            def refused(file, *args, **kwargs):
                if str(file).startswith(str(ro)):
                    raise PermissionError(13, "Permission denied", str(file))
                return builtins.open(file, *args, **kwargs)

            monkeypatch.setattr(io_module, "open", refused, raising=False)
        with pytest.raises(MCANError, match="x.png: cannot write \\(Permission denied\\)"):
            write_image(ro / "x.png", np.zeros((2, 2, 3), np.float32))
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
