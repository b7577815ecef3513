"""PSNR against hand-computed values, SSIM against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcan_deploy.metrics import psnr, rgb_to_y, ssim


def test_psnr_hand_computed():
    a = torch.zeros(3, 8, 8)
    b = torch.full((3, 8, 8), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)  # mse 0.01 -> 20 dB
    b2 = a.clone()
    b2[0, 0, 0] = 1.0  # one channel of one pixel fully off: mse = 1/192
    assert psnr(a, b2) == pytest.approx(10 * math.log10(192))
    assert psnr(a, a) == math.inf


def test_psnr_y_hand_computed_and_shave():
    a = torch.zeros(3, 6, 6)
    b = torch.zeros(3, 6, 6)
    b[0] = 1.0  # pure red: Y differs by 65.481 / 255
    assert psnr(a, b, y=True) == pytest.approx(-20 * math.log10(65.481 / 255))
    assert rgb_to_y(torch.ones(3, 1, 1)).item() == pytest.approx(235 / 255)
    c = a.clone()
    c[:, 0, :] = 0.5  # differs only in the top row
    assert psnr(a, c, shave=1) == math.inf
    assert psnr(a, c) < 20


def test_psnr_batch_is_mean_of_images():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])
    assert psnr(a, b) == pytest.approx((20 + 40) / 2)


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 50))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ref = skm.structural_similarity(
        a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, abs=1e-9)
    ya, yb = rgb_to_y(torch.from_numpy(a)), rgb_to_y(torch.from_numpy(b))
    ref_y = skm.structural_similarity(
        ya[0].numpy(), yb[0].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(torch.from_numpy(a), torch.from_numpy(b), y=True) == pytest.approx(ref_y, abs=1e-9)
    assert ssim(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(1.0)
