"""Fused 3x3 convolution kernels (kernels/conv3x3.py, kernels/epilogue.py) against a float64
oracle of the same weights (kernels/reference.py): every epilogue, odd sizes, both memory
formats, every dtype, output regions, and the float16 overflow flag.

CI runs them on CPU tensors through Triton's interpreter; on a CUDA machine they compile.
"""

from __future__ import annotations

import pytest
import torch

from mcan_deploy import kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not kernels.fused_available(DEVICE, warn=False), reason="Triton missing, or neither CUDA nor TRITON_INTERPRET=1"
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative to the output's scale. float32 sums 576 products as torch does (~1e-6); float16 and
# bfloat16 results carry one rounding of their 11/8-bit mantissa (2^-11, 2^-8 relative) on top
# of float32 accumulation of exact products of the rounded inputs.
RTOL = {torch.float32: 2e-5, torch.float16: 1.5e-3, torch.bfloat16: 1.2e-2}
SIZES = [  # (B, C_in, C_out, H, W)
    (2, 64, 64, 19, 23),  # the RCAB's convolution, no side a multiple of a block
    (1, 3, 64, 1, 1),  # the head on one pixel (its nine taps as one product, K = 27)
    (2, 3, 64, 13, 11),  # the head, two images
    (1, 64, 3, 1, 37),  # the tail on one row
    (2, 16, 24, 40, 1),  # one column; output channels not a power of two
    (1, 64, 64, 48, 48),  # the report's training patch
]


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = expected.abs().max().item() or 1.0
    err = (actual.double().cpu() - expected.cpu()).abs().max().item()
    assert err <= RTOL[dtype] * scale, f"{what}: max abs error {err:.3g} > {RTOL[dtype]:.1g} x {scale:.3g}"


def _conv(cin: int, cout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin**0.5), torch.randn(cout, generator=g) * 0.1


def _x(b, c, h, w, dtype, channels_last, seed=1):
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _reference(x, weight, bias, dtype, **kw):
    """float64 oracle from the inputs and weights as the kernel sees them (rounded to dtype)."""
    from mcan_deploy.kernels.reference import conv3x3_epilogue

    res = kw.pop("residual", None)
    return conv3x3_epilogue(
        x.double().cpu(),
        weight.to(dtype).double(),
        bias.double(),
        residual=None if res is None else res.double().cpu(),
        **kw,
    )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_convolution_with_bias_relu_and_sums_matches_float64(size, dtype, channels_last):
    from mcan_deploy.kernels.conv3x3 import conv3x3, pack

    b, cin, cout, h, w = size
    weight, bias = _conv(cin, cout)
    x = _x(b, cin, h, w, dtype, channels_last)
    packed = pack(weight, bias, dtype, DEVICE)
    out, sums = conv3x3(x, packed, relu=True, sums=True)
    assert out.dtype == dtype and out.shape == (b, cout, h, w)
    if channels_last and cout > 1 and h * w > 1:
        assert out.is_contiguous(memory_format=torch.channels_last), "output keeps the input's format"
    want = _reference(x, weight, bias, dtype, relu=True)
    _close(out, want, dtype, "out")
    assert sums is not None and sums.shape == (b, cout) and sums.dtype == torch.float32
    # the sums are of the stored (rounded) values: what a pool of the output map would take
    torch.testing.assert_close(sums.double().cpu(), out.double().cpu().sum((2, 3)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
def test_residual_and_clamp_epilogue_the_blocks_tail(dtype):
    """The tail of a block: x + tail(features), clamped (N_i+), in one kernel."""
    from mcan_deploy.kernels.conv3x3 import conv3x3, pack

    weight, bias = _conv(64, 3, seed=3)
    feats = _x(2, 64, 21, 17, dtype, True, seed=4)
    image = torch.rand(2, 3, 21, 17, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    out, sums = conv3x3(feats, pack(weight * 20, bias, dtype, DEVICE), residual=image, clamp=True)
    assert sums is None
    want = _reference(feats, weight * 20, bias, dtype, residual=image, clamp=True)
    assert 0.05 < (want == 0).double().mean() + (want == 1).double().mean(), "the test needs values that clamp"
    _close(out, want, dtype, "tail")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
def test_scale_and_residual_epilogue_the_folded_rcabs_conv2(dtype, channels_last):
    """conv2 of an RCAB whose gate is known before it runs: (conv + bias) * s[b, c] + residual,
    each image its own scale, in place over the residual; every launch a GPU chooses among."""
    from mcan_deploy.kernels.conv3x3 import GPU_CONFIGS, conv3x3, default_config, pack

    weight, bias = _conv(64, 64, seed=14)
    x = _x(2, 64, 11, 19, dtype, channels_last, seed=15)
    scale = torch.rand(2, 64, generator=torch.Generator().manual_seed(16)).to(DEVICE) * 2 - 0.5
    packed = pack(weight, bias, dtype, DEVICE)
    for cfg in (default_config(DEVICE), *GPU_CONFIGS):
        res = _x(2, 64, 11, 19, dtype, channels_last, seed=17)
        want = _reference(x, weight, bias, dtype, scale=scale.cpu().double(), residual=res)
        out, _ = conv3x3(x, packed, scale=scale, residual=res, out=res, config=cfg)
        assert out.data_ptr() == res.data_ptr()
        _close(out, want, dtype, f"{cfg}")
    with pytest.raises(ValueError, match="scale has shape"):
        conv3x3(x, packed, scale=scale[:1])
    weight, bias = _conv(16, 24, seed=18)  # 24 channels: the scale padded to the kernel's 32
    x = _x(2, 16, 7, 9, dtype, channels_last, seed=19)
    res = _x(2, 24, 7, 9, dtype, channels_last, seed=20)
    out, _ = conv3x3(x, pack(weight, bias, dtype, DEVICE), scale=scale[:, :24], residual=res)
    _close(out, _reference(x, weight, bias, dtype, scale=scale[:, :24].cpu().double(), residual=res), dtype, "24")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_output_region_of_a_larger_map_reads_real_neighbours(channels_last):
    """A region inside the map sees the map's pixels around it (not zeros); only the map's own
    border is zero padding. Written into a view of a bigger output, through its strides."""
    from mcan_deploy.kernels.conv3x3 import conv3x3, pack

    weight, bias = _conv(16, 16, seed=6)
    x = _x(1, 16, 30, 26, torch.float32, channels_last, seed=7)
    full = _reference(x, weight, bias, torch.float32)
    target = torch.zeros(1, 16, 30, 26, device=DEVICE)
    if channels_last:
        target = target.contiguous(memory_format=torch.channels_last)
    packed = pack(weight, bias, torch.float32, DEVICE)
    for (y0, x0), (hh, ww) in (((0, 0), (11, 26)), ((11, 0), (19, 9)), ((11, 9), (19, 17))):
        view = target[:, :, y0 : y0 + hh, x0 : x0 + ww]
        out, _ = conv3x3(x, packed, origin=(y0, x0), size=(hh, ww), out=view)
        assert out.data_ptr() == view.data_ptr()
    _close(target, full, torch.float32, "regions")
    with pytest.raises(ValueError, match="does not lie"):
        conv3x3(x, packed, origin=(25, 0), size=(6, 26))


@pytest.mark.parametrize("gpu_blocks", [False, True], ids=["interpreter-blocks", "gpu-blocks"])
def test_every_launch_configuration_computes_the_same(gpu_blocks):
    """The configurations a GPU chooses among by timing (and the interpreter's) must agree."""
    from mcan_deploy.kernels.conv3x3 import GPU_CONFIGS, conv3x3, default_config, pack

    weight, bias = _conv(64, 64, seed=8)
    x = _x(2, 64, 13, 29, torch.float16, True, seed=9)
    packed = pack(weight, bias, torch.float16, DEVICE)
    configs = GPU_CONFIGS if gpu_blocks else (default_config(DEVICE),)
    want = _reference(x, weight, bias, torch.float16, relu=True)
    for cfg in configs:
        out, sums = conv3x3(x, packed, relu=True, sums=True, config=cfg)
        _close(out, want, torch.float16, f"{cfg}")
        torch.testing.assert_close(sums.double().cpu(), out.double().cpu().sum((2, 3)), rtol=1e-5, atol=1e-3)
        region, _ = conv3x3(x, packed, relu=True, origin=(2, 3), size=(9, 17), config=cfg)  # row tiles too
        _close(region, want[:, :, 2:11, 3:20], torch.float16, f"{cfg} region")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_few_input_channels_run_the_nine_taps_as_one_product(channels_last, monkeypatch):
    """At most 3 input channels (the head's) are packed tap x channel into one K <= 32 product:
    1, 2 and 3 channels, every launch a GPU chooses among, output regions, int64 offsets."""
    from mcan_deploy.kernels import conv3x3 as K

    assert not K.pack(*_conv(4, 8), torch.float32, DEVICE).im2col, "4 channels: nine products"
    for cin in (1, 2, 3):
        weight, bias = _conv(cin, 24, seed=20 + cin)
        x = _x(2, cin, 9, 14, torch.float32, channels_last, seed=cin)
        packed = K.pack(weight, bias, torch.float32, DEVICE)
        assert packed.im2col and packed.weight.shape == (1, 16 if cin == 1 else 32, 32)
        want = _reference(x, weight, bias, torch.float32, relu=True)
        for cfg in (K.default_config(DEVICE), *K.GPU_CONFIGS[:2]):
            out, sums = K.conv3x3(x, packed, relu=True, sums=True, config=cfg)
            _close(out, want, torch.float32, f"{cin} channels {cfg}")
            torch.testing.assert_close(sums.double().cpu(), out.double().cpu().sum((2, 3)), rtol=1e-5, atol=1e-4)
            region, _ = K.conv3x3(x, packed, relu=True, origin=(2, 3), size=(6, 10), config=cfg)
            _close(region, want[:, :, 2:8, 3:13], torch.float32, f"{cin} channels {cfg} region")
    monkeypatch.setattr(K, "MAX_OFFSET", 100)
    wide, _ = K.conv3x3(x, packed, relu=True)
    _close(wide, want, torch.float32, "int64 offsets")


def test_the_overflow_flag_sees_what_a_relu_would_hide():
    """float16: a convolution to -inf that a ReLU turns into a finite 0 still sets the flag; a
    finite result leaves it alone; the bf16 and float32 ranges hold the same values."""
    from mcan_deploy.kernels.conv3x3 import conv3x3, pack

    weight = torch.zeros(8, 8, 3, 3)
    weight[:, :, 1, 1] = -torch.eye(8) * 4e4  # x = 2 -> -8e4, beyond float16's 65504
    x = torch.full((1, 8, 5, 6), 0.5, device=DEVICE, dtype=torch.float16)
    x[0, :, 2, 3] = 2.0
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    out, _ = conv3x3(x, pack(weight, None, torch.float16, DEVICE), relu=True, flag=flag)
    assert torch.isfinite(out).all() and out.abs().max() == 0, "the ReLU hides the overflow in the output"
    assert flag.item() == 1
    flag.zero_()
    conv3x3(x * 0.5, pack(weight, None, torch.float16, DEVICE), relu=True, flag=flag)
    assert flag.item() == 0, "-4e4 is within float16's range"
    for dtype in (torch.bfloat16, torch.float32):
        conv3x3(x.to(dtype), pack(weight, None, dtype, DEVICE), relu=True, flag=flag)
        assert flag.item() == 0, dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
def test_bias_act_pass_equals_the_epilogue_of_the_fused_kernel(dtype):
    """The cuDNN variant's epilogue pass, against the float64 oracle, in place and with the flag."""
    from mcan_deploy.kernels.epilogue import bias_act

    g = torch.Generator().manual_seed(10)
    y = torch.randn(2, 24, 7, 33, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    res = torch.randn(2, 24, 7, 33, generator=g).to(DEVICE, dtype)
    bias = torch.randn(24, generator=g)
    want = (torch.relu(y.double().cpu() + bias.double()[None, :, None, None]) + res.double().cpu()).clamp(0, 1)
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    out = bias_act(y, bias.to(DEVICE), relu=True, residual=res, clamp=True, flag=flag, out=y)
    assert out.data_ptr() == y.data_ptr() and flag.item() == 0
    _close(out, want, dtype, "bias_act")
    if dtype == torch.float16:
        big = torch.full((1, 2, 3, 3), -6e4, device=DEVICE, dtype=dtype)
        bias_act(big, torch.full((2,), -1e4, device=DEVICE), relu=True, flag=flag)
        assert flag.item() == 1, "-7e4 overflows float16 before the ReLU"


def test_bad_arguments_are_errors_not_wrong_numbers():
    from mcan_deploy.kernels.conv3x3 import conv3x3, pack
    from mcan_deploy.kernels.epilogue import bias_act

    weight, bias = _conv(8, 8)
    packed = pack(weight, bias, torch.float32, DEVICE)
    x = _x(1, 8, 4, 4, torch.float32, False)
    with pytest.raises(ValueError, match="channels"):
        conv3x3(x[:, :4], packed)
    with pytest.raises(TypeError, match="float64"):
        conv3x3(x.double(), packed)
    with pytest.raises(ValueError, match="not a 3x3"):
        pack(torch.zeros(8, 8, 1, 1), None, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="residual shape"):
        conv3x3(x, packed, residual=x[:, :, :2])
    with pytest.raises(ValueError, match="biases"):
        bias_act(x, bias[:3])


def test_int64_offsets_compute_the_same(monkeypatch):
    """Maps whose offsets pass int32 (above ~33 MP at 64 channels) switch the kernels to int64
    indices; forced here with a lowered limit, on an NCHW map, whose channel stride is the largest."""
    from mcan_deploy.kernels import conv3x3 as K
    from mcan_deploy.kernels import epilogue as E

    weight, bias = _conv(16, 16, seed=11)
    x = _x(2, 16, 9, 13, torch.float32, False, seed=12)
    res = _x(2, 16, 9, 13, torch.float32, False, seed=13)
    packed = K.pack(weight, bias, torch.float32, DEVICE)
    want, want_sums = K.conv3x3(x, packed, relu=True, residual=res, sums=True)
    monkeypatch.setattr(K, "MAX_OFFSET", 100)
    monkeypatch.setattr(E, "MAX_OFFSET", 100)
    got, got_sums = K.conv3x3(x, packed, relu=True, residual=res, sums=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_sums, want_sums, rtol=0, atol=0)
    torch.testing.assert_close(
        E.bias_act(x, bias.to(DEVICE), relu=True), torch.relu(x + bias.to(DEVICE)[:, None, None]), rtol=1e-6, atol=1e-6
    )


class _CountingLaunch:
    """Stands in for a Triton kernel: counts its launches, then launches the real one."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


TMA_CASES = [  # (B, C_in, C_out, H, W, origin, size): odd sizes, one pixel, one row, one column
    (2, 64, 64, 19, 23, (0, 0), None),
    (1, 64, 64, 1, 1, (0, 0), None),
    (1, 64, 3, 1, 37, (0, 0), None),
    (2, 16, 24, 40, 1, (0, 0), None),
    (2, 64, 64, 13, 29, (2, 3), (9, 17)),  # a region: its neighbours are real pixels, not zeros
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
def test_tma_launches_match_float64_and_run_where_the_map_allows(dtype, channels_last, monkeypatch):
    """A ``tma`` launch copies each tap's input as a box with zeros outside the map: 16-bit
    channels_last maps take it, others the pointer kernel, with the same results against the
    float64 oracle for every epilogue, odd sizes, regions, two images and int64 offsets."""
    from mcan_deploy.kernels import conv3x3 as K

    counter = _CountingLaunch(K.conv3x3_tma_kernel)
    monkeypatch.setattr(K, "conv3x3_tma_kernel", counter)
    cfg = K.Config(block_m=128, num_warps=4, num_stages=3, tma=True)
    for i, (b, cin, cout, h, w, origin, size) in enumerate(TMA_CASES):
        weight, bias = _conv(cin, cout, seed=30 + i)
        x = _x(b, cin, h, w, dtype, channels_last, seed=40 + i)
        packed = K.pack(weight, bias, dtype, DEVICE)
        ho, wo = size or (h, w)
        region = (slice(None), slice(None), slice(origin[0], origin[0] + ho), slice(origin[1], origin[1] + wo))
        want = _reference(x, weight, bias, dtype, relu=True)[region]
        tma_expected = dtype != torch.float32 and (channels_last or h * w == 1)  # 1x1: channels innermost
        before = counter.launches
        out, sums = K.conv3x3(x, packed, relu=True, sums=True, origin=origin, size=size, config=cfg)
        assert counter.launches - before == int(tma_expected), f"case {i}: TMA launch expected {tma_expected}"
        _close(out, want, dtype, f"case {i} relu")
        torch.testing.assert_close(sums.double().cpu(), out.double().cpu().sum((2, 3)), rtol=1e-5, atol=1e-3)
        res = _x(b, cout, ho, wo, dtype, channels_last, seed=50 + i)
        out, _ = K.conv3x3(x, packed, residual=res, clamp=True, origin=origin, size=size, config=cfg)
        want = _reference(x, weight, bias, dtype)[region] + res.double().cpu()
        _close(out, want.clamp(0, 1), dtype, f"case {i} residual and clamp")
    monkeypatch.setattr(K, "MAX_OFFSET", 100)
    wide, _ = K.conv3x3(x, packed, residual=res, clamp=True, origin=origin, size=size, config=cfg)
    _close(wide, want.clamp(0, 1), dtype, "int64 offsets")


def test_a_tma_launch_takes_one_row_of_at_most_256_pixels():
    from mcan_deploy.kernels.conv3x3 import Config

    assert Config(256, 8, 3, tma=True).describe() == "m256 w8 s3 tma"
    for bad in (dict(rows=4), dict(cache=".ca"), dict(block_m=512)):
        with pytest.raises(ValueError, match="TMA"):
            Config(**{"block_m": 128, "tma": True, **bad})
