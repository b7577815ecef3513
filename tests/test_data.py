"""Pair discovery in both layouts, LR pre-upsampling, patch sampling and augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcan_deploy.data import (
    PairedImages,
    PatchSampler,
    augment,
    center_crop,
    find_pairs,
    load_images,
    load_pair,
    split_dirs,
)
from mcan_deploy.errors import DataError
from mcan_deploy.metrics import psnr

from .helpers import REPO, SAMPLE, SHARED_DATA


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def _smooth(h, w, seed=0):
    """A smooth 8-bit test image (bicubic interpolation is well-behaved on it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)


def test_folder_layout(sample_dir):
    train, test = split_dirs(sample_dir)
    pairs = find_pairs(train)
    assert len(pairs) == 12 and all(p.lr.name == p.hr.name for p in pairs)
    assert [p.name for p in find_pairs(test)] == ["001", "016", "048"]


def test_realsr_v3_layout_and_bicubic_upsampling(tmp_path):
    hr = _smooth(32, 48)
    lr = cv2.resize(hr, (24, 16), interpolation=cv2.INTER_AREA)
    _png(tmp_path / "Canon" / "Train" / "2" / "Canon_001_HR.png", hr)
    _png(tmp_path / "Canon" / "Train" / "2" / "Canon_001_LR2.png", lr)
    _png(tmp_path / "Nikon" / "Canon_002_HR.png", hr)
    _png(tmp_path / "Nikon" / "Canon_002_LR2.png", lr)
    pairs = find_pairs(tmp_path)
    assert sorted(p.name for p in pairs) == ["Canon/Train/2/Canon_001", "Nikon/Canon_002"]
    lr_t, hr_t = load_pair(pairs[0])
    assert lr_t.shape == hr_t.shape == (3, 32, 48)
    # independent reference: torch's bicubic (a = -0.75, half-pixel centres) on the LR file
    ref = F.interpolate(
        torch.from_numpy(lr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255,
        scale_factor=2,
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)[0]
    torch.testing.assert_close(lr_t[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=2e-5, rtol=0)


def test_pair_sizes_without_integer_scale_name_both_files(tmp_path):
    _png(tmp_path / "HR" / "a.png", _smooth(30, 40))
    _png(tmp_path / "LR" / "a.png", _smooth(14, 20))
    (pair,) = find_pairs(tmp_path)
    with pytest.raises(DataError, match=r"LR/a\.png \(20x14\) and .*HR/a\.png \(40x30\)"):
        load_pair(pair)


def test_missing_partner_and_empty_folder(tmp_path):
    _png(tmp_path / "HR" / "a.png", _smooth(8, 8))
    (tmp_path / "LR").mkdir()
    with pytest.raises(DataError, match="a.png: no LR partner"):
        find_pairs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image pairs found"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(DataError, match="expected a train/ and a test/"):
        split_dirs(tmp_path)


def _paired(n=3, h=40, w=56):
    torch.manual_seed(0)
    xs = [torch.rand(3, h, w) for _ in range(n)]
    return PairedImages([str(i) for i in range(n)], xs, [1 - x for x in xs])


def test_patches_stay_aligned_under_augmentation():
    sampler = PatchSampler(_paired(), patch_size=16, batch_size=32, augment=True, seed=3)
    for _ in range(5):
        x, y = sampler.sample()
        assert x.shape == y.shape == (32, 3, 16, 16)
        torch.testing.assert_close(y, 1 - x)


def test_augmentation_draws_all_eight_orientations():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    data = PairedImages(["a"], [img[0]], [img[0]])
    sampler = PatchSampler(data, patch_size=4, batch_size=64, augment=True, seed=0)
    x, _ = sampler.sample()
    seen = {tuple(p.flatten().tolist()) for p in x}
    expected = {tuple(augment(img[0], r, f).flatten().tolist()) for r in range(4) for f in (False, True)}
    assert seen == expected and len(expected) == 8


def test_sampler_state_replays_the_same_batches():
    sampler = PatchSampler(_paired(), 16, 4, seed=1)
    sampler.sample()
    state = sampler.get_state()
    a = sampler.sample()
    sampler.set_state(state)
    b = sampler.sample()
    assert a[0].equal(b[0]) and a[1].equal(b[1])


def test_image_smaller_than_patch_is_an_error():
    with pytest.raises(DataError, match="smaller than the 48x48 patch"):
        PatchSampler(_paired(h=40, w=40), 48, 4)


def test_center_crop():
    img = torch.arange(5 * 7).reshape(1, 5, 7)
    assert center_crop(img, 3).tolist() == [[[9, 10, 11], [16, 17, 18], [23, 24, 25]]]  # rows 1-3, cols 2-4
    assert center_crop(img, 100).equal(img)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="full City100 pairs not beside the checkout")
def test_full_city100_test_pair_matches_its_readme():
    data = load_images(SHARED_DATA / "test", progress=False)
    assert data.names == ["001", "016", "048", "060", "098"]
    assert data.targets[0].shape == (3, 870, 1218)
    assert psnr(data.inputs[0], data.targets[0]) == pytest.approx(26.5, abs=0.3)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/city100_nikon beside the checkout")
def test_make_sample_rebuilds_the_bundled_sample_and_cuts_larger_sets(tmp_path):
    """samples/make_sample.py at its defaults gives the bundled crops byte for byte; with options,
    the larger set that travels to a GPU machine (here 2 scenes a split, 96 px)."""
    import subprocess
    import sys

    script = REPO / "samples" / "make_sample.py"
    subprocess.run([sys.executable, str(script), str(SHARED_DATA), str(tmp_path / "s")], check=True, timeout=120)
    for f in sorted(SAMPLE.rglob("*.png")):
        assert (tmp_path / "s" / f.relative_to(SAMPLE)).read_bytes() == f.read_bytes(), f
    cmd = [sys.executable, str(script), str(SHARED_DATA), str(tmp_path / "g"), "--crop", "96", "--train", "2"]
    subprocess.run([*cmd, "--test", "2"], check=True, timeout=120)
    shapes = {cv2.imread(str(f)).shape for f in (tmp_path / "g").rglob("*.png")}
    assert shapes == {(96, 96, 3)} and len(list((tmp_path / "g").rglob("*.png"))) == 8
