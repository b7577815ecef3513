"""runners/conv_sums.py: a 3x3 convolution's channel sums from its input's sums and borders,
against the sums of the convolution itself (float64: exact to rounding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mcan_deploy.runners.conv_sums import conv3x3_sums

SIZES = [(2, 5, 7, 9, 11), (1, 4, 3, 1, 1), (1, 3, 2, 1, 17), (2, 3, 4, 13, 1), (1, 2, 2, 2, 2)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_sums_from_the_input_equal_the_convolutions_own(size):
    """Every tap's shifted window, one pixel, one row, one column, 2x2 (where every pixel is a
    corner); channels_last too."""
    b, c, o, h, w = size
    g = torch.Generator().manual_seed(sum(size))
    t = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(o, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(o, generator=g, dtype=torch.float64)
    want = F.conv2d(t, weight, bias, padding=1).sum((2, 3))
    for layout in (t, t.contiguous(memory_format=torch.channels_last)):
        got = conv3x3_sums(layout, layout.sum((2, 3)), weight, bias)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-11)


def test_a_border_left_out_is_seen():
    """The premise: the interior sum alone (T times the weights' sums) misses the padding."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(1, 3, 6, 7, generator=g, dtype=torch.float64) + 1.0
    weight = torch.rand(2, 3, 3, 3, generator=g, dtype=torch.float64)
    naive = (weight.sum((2, 3)) @ t.sum((2, 3))[0])[None]
    want = F.conv2d(t, weight, None, padding=1).sum((2, 3))
    assert (naive - want).abs().min() > 1.0
    torch.testing.assert_close(conv3x3_sums(t, t.sum((2, 3)), weight, torch.zeros(2, dtype=torch.float64)), want)


def test_float16_maps_give_float32_sums():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 8, 10, 12, generator=g).half()
    weight, bias = torch.randn(4, 8, 3, 3, generator=g), torch.randn(4, generator=g)
    got = conv3x3_sums(t, t.float().sum((2, 3)), weight.half(), bias)
    want = F.conv2d(t.double(), weight.half().double(), bias.double(), padding=1).sum((2, 3))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)
