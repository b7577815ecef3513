"""Fused Triton RCAB tail against the plain-torch oracle (kernels/reference.py), forward and every
gradient, over normal and odd shapes, every dtype and both memory formats.

CI runs these on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 where no GPU is present); on a CUDA machine they run natively.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from mcan_deploy import kernels
from mcan_deploy.model import MCANBlock, ModelConfig, build_model, init_block, set_rcab_impl

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not kernels.fused_available(DEVICE, warn=False), reason="Triton missing, or neither CUDA nor TRITON_INTERPRET=1"
)

# Relative tolerances sized to the dtype: float32 accumulates like torch does (about 1e-6 here);
# float16/bfloat16 outputs carry one rounding of their 11/8-bit mantissa (2^-10, 2^-7) on top.
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [  # (B, C, H, W, reduction)
    (2, 64, 48, 48, 4),  # the report's training patch
    (2, 64, 33, 47, 4),  # odd: no side a multiple of a block
    (1, 64, 1, 1, 4),  # one pixel
    (3, 24, 5, 70, 4),  # channels not a power of two (masked lanes)
    (1, 8, 130, 1, 2),  # one column
]


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Relative to the tensor's scale, so values near zero are not judged by a relative bound."""
    scale = expected.abs().max().item() or 1.0
    err = (actual.double() - expected).abs().max().item()
    assert err <= RTOL[dtype] * scale, f"{what}: max abs error {err:.3g} > {RTOL[dtype]:.1g} x {scale:.3g}"


def _inputs(shape, dtype, channels_last, seed=0):
    b, c, h, w, red = shape
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(b, c, h, w, generator=g) for _ in range(2))
    wd = torch.randn(c // red, c, 1, 1, generator=g) / c**0.5
    bd = torch.randn(c // red, generator=g) * 0.1
    wu = torch.randn(c, c // red, 1, 1, generator=g) / (c // red) ** 0.5
    bu = torch.randn(c, generator=g) * 0.1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, r = (t.to(DEVICE, dtype).contiguous(memory_format=fmt) for t in (x, r))
    # the attention weights stay float32, as the model's parameters do under autocast
    return x, r, *(t.to(DEVICE) for t in (wd, bd, wu, bu))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])))
def test_forward_and_gradients_match_reference(shape, dtype, channels_last):
    from mcan_deploy.kernels.rcab import fused_channel_attention
    from mcan_deploy.kernels.reference import channel_attention_tail

    args = [t.detach().requires_grad_() for t in _inputs(shape, dtype, channels_last)]
    y = fused_channel_attention(*args)
    assert y.dtype == dtype and y.shape == args[0].shape
    if channels_last and shape[2] * shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last), "output keeps the input's format"
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (y.float() * dy).sum().backward()

    # the oracle in float64 from the same (already rounded) inputs
    ref = [t.detach().double().requires_grad_() for t in args]
    y_ref = channel_attention_tail(*ref)
    (y_ref * dy.double()).sum().backward()
    _close(y, y_ref, dtype, "y")
    for name, a, b in zip(("dx", "dr", "dW_D", "db_D", "dW_U", "db_U"), args, ref):
        assert a.grad is not None and a.grad.dtype == a.dtype, name
        _close(a.grad, b.grad, dtype, name)


def test_gradient_of_a_broadcast_output_gradient():
    """y.sum() hands backward an expanded dy (all strides 0): the kernels read it through strides."""
    from mcan_deploy.kernels.rcab import fused_channel_attention
    from mcan_deploy.kernels.reference import channel_attention_tail

    args = [t.detach().requires_grad_() for t in _inputs((2, 16, 9, 11, 4), torch.float32, False)]
    fused_channel_attention(*args).sum().backward()
    ref = [t.detach().double().requires_grad_() for t in args]
    channel_attention_tail(*ref).sum().backward()
    for a, b in zip(args, ref):
        _close(a.grad, b.grad, torch.float32, "grad")


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")
def test_torch_autograd_gradcheck_in_float32_against_finite_differences():
    """An oracle that does not share code with reference.py: finite differences (float32 steps,
    so loose tolerances; the float64 comparison above is the tight one)."""
    from mcan_deploy.kernels.rcab import fused_channel_attention

    args = [t.detach().requires_grad_() for t in _inputs((1, 4, 2, 3, 2), torch.float32, False)]
    assert torch.autograd.gradcheck(fused_channel_attention, args, eps=1e-2, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
def test_reduction_and_apply_are_separately_callable_on_cropped_views(dtype):
    """What the tiling engine does: sum the statistics over several windows (cropped, strided
    views), make the gate once, apply it in place; equals the whole-image tail."""
    from mcan_deploy.kernels import rcab as K
    from mcan_deploy.kernels.reference import channel_attention_tail

    x, r, wd, bd, wu, bu = _inputs((1, 32, 40, 30, 4), dtype, False)
    sums = torch.zeros(1, 32, dtype=torch.float64, device=DEVICE)
    # three windows: full rows (pixels still one strided axis) and column crops (they are not)
    windows = [(slice(0, 17), slice(None)), (slice(17, 40), slice(0, 13)), (slice(17, 40), slice(13, 30))]
    for rows, cols in windows:
        part = r[:, :, rows, cols]
        got = K.channel_sums(part)
        torch.testing.assert_close(got.double(), part.double().sum((2, 3)), rtol=1e-5, atol=1e-4)
        sums += got
    s = K.gate(sums, 40 * 30, wd, bd, wu, bu)
    s_ref = torch.sigmoid(
        torch.nn.functional.conv2d(
            torch.relu(torch.nn.functional.conv2d(r.double().mean((2, 3), keepdim=True), wd.double(), bd.double())),
            wu.double(),
            bu.double(),
        )
    )
    _close(s, s_ref.reshape(1, -1), torch.float32, "gate")
    h = x.clone()
    for rows, cols in windows:  # in place, per window
        K.scale_add(r[:, :, rows, cols], s, x=h[:, :, rows, cols], out=h[:, :, rows, cols])
    _close(h, channel_attention_tail(*(t.double() for t in (x, r, wd, bd, wu, bu))), dtype, "applied")


def test_bad_arguments_are_errors_not_wrong_numbers():
    from mcan_deploy.kernels import rcab as K

    x, r, wd, bd, wu, bu = _inputs((1, 16, 4, 4, 4), torch.float32, False)
    with pytest.raises(ValueError, match="shapes differ"):
        K.fused_channel_attention(x[:, :, :2], r, wd, bd, wu, bu)
    with pytest.raises(ValueError, match="do not fit"):
        K.fused_channel_attention(x, r, wu, bu, wd, bd)  # W_U given as W_D
    with pytest.raises(TypeError, match="float64"):
        K.channel_sums(r.double())
    with pytest.raises(ValueError, match="gate shape"):
        K.scale_add(r, torch.ones(1, 8, device=DEVICE))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_mcan_block_with_fused_path_equals_torch_path_forward_and_backward(channels_last):
    torch.manual_seed(0)
    cfg = ModelConfig(n_blocks=1, n_resblocks=3, n_feats=16, reduction=4)
    ref_block = MCANBlock(cfg).to(DEVICE)
    init_block(ref_block, "orthogonal", torch.Generator().manual_seed(0))
    fused_block = MCANBlock(ModelConfig(**{**cfg.__dict__, "rcab_impl": "triton"})).to(DEVICE)
    fused_block.load_state_dict(ref_block.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    x = x.contiguous(memory_format=fmt)
    outs, grads = [], []
    for block in (ref_block, fused_block):
        block.to(memory_format=fmt)
        block.zero_grad()
        y = block(x, clamp=False)
        (y * y).mean().backward()
        outs.append(y)
        grads.append({k: p.grad.clone() for k, p in block.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_set_rcab_impl_switches_a_loaded_model_and_falls_back_with_one_log_line(monkeypatch, caplog):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=2, n_feats=8)).to(DEVICE)
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        ref = model(x)
        fused = set_rcab_impl(model, "triton")(x)
    assert model.config.rcab_impl == "triton"
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    assert not fused.equal(model.blocks[0](x)), "the test needs a block that changes its input"

    # where the kernels cannot run, the torch path runs and the log says so once
    monkeypatch.setattr(kernels, "_why_not", lambda device_type: "no Triton in this test")
    kernels._log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="mcan_deploy.kernels"), torch.no_grad():
        again = model(x)
        model(x)
    kernels._log_fallback.cache_clear()
    assert again.equal(ref), "the fallback is the torch path itself"
    lines = [r for r in caplog.records if "torch path runs instead" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    with pytest.raises(Exception, match="rcab_impl"):
        set_rcab_impl(model, "cuda")  # type: ignore[arg-type]


@pytest.mark.parametrize("ca_stats", ["global", "tile"])
def test_triton_runner_in_the_tiling_engine_equals_the_torch_runner(ca_stats):
    """global: the reduction kernel sums statistics over all tiles, the apply kernel scales in
    place; equals the whole image through eager torch. tile: per-window statistics, fused."""
    from mcan_deploy.runners import TorchRunner, TritonRunner
    from mcan_deploy.tiling import TileConfig, upscale_tensor

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=2, n_feats=8))
    eager = TorchRunner(model, DEVICE)
    fused = TritonRunner(copy.deepcopy(model), DEVICE)
    assert fused.fused and all(r.impl == "triton" for b in fused.model.blocks for r in b.body)
    assert all(r.impl == "torch" for b in eager.model.blocks for r in b.body), "the copy is switched, not the source"
    x = torch.rand(3, 45, 38, generator=torch.Generator().manual_seed(3))
    cfg = TileConfig(tile=16, batch=2, ca_stats=ca_stats)
    ref = eager.run_blocks(x[None], 0, 2)[0] if ca_stats == "global" else upscale_tensor(eager, x, cfg)[0]
    out, report = upscale_tensor(fused, x, cfg)
    assert report.ca_stats == ca_stats
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _cuda_launch(monkeypatch, groups: int | None = None):
    """The launch parameters a GPU gets (64-pixel blocks for 64 channels, many reduction
    programs), so that the interpreter covers the loops and masks the GPU will run."""
    import triton

    from mcan_deploy.kernels import channel_stats, launch
    from mcan_deploy.kernels import rcab as K

    monkeypatch.setattr(
        launch,
        "map_blocks",
        lambda c, hw, device: (triton.next_power_of_2(c), max(16, 4096 // triton.next_power_of_2(c)), 4),
    )
    if groups is not None:
        monkeypatch.setattr(
            channel_stats, "n_groups", lambda batch, hw, block_p, device: min(groups, triton.cdiv(hw, block_p))
        )
    return K


def test_gpu_launch_parameters_with_many_reduction_programs(monkeypatch):
    """150 programs per image: the gate kernels sum the partials in several 64-row passes."""
    from mcan_deploy.kernels.reference import channel_attention_tail

    K = _cuda_launch(monkeypatch, groups=150)
    args = [t.detach().requires_grad_() for t in _inputs((2, 64, 97, 101, 4), torch.float16, True)]
    assert K._partial_sums(args[1]).shape == (2, 150, 64)
    y = K.fused_channel_attention(*args)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (y.float() * dy).sum().backward()
    ref = [t.detach().double().requires_grad_() for t in args]
    y_ref = channel_attention_tail(*ref)
    (y_ref * dy.double()).sum().backward()
    _close(y, y_ref, torch.float16, "y")
    for a, b in zip(args, ref):
        _close(a.grad, b.grad, torch.float16, "grad")


def test_grid_fits_cuda_limits_for_a_12_megapixel_map(monkeypatch):
    """CUDA caps grid axes 1 and 2 at 65535 blocks: a 12 MP map has 187500 pixel blocks, so the
    pixel axis must be axis 0. The launches are recorded, not run (expanded, storage-free maps)."""
    K = _cuda_launch(monkeypatch)
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *a, **k: None

    monkeypatch.setattr(K, "_scale_add_kernel", Recorder())
    from mcan_deploy.kernels import channel_stats

    monkeypatch.setattr(channel_stats, "_channel_sums_kernel", Recorder())
    big = torch.zeros(1, 64, 1, 1, device=DEVICE, dtype=torch.float16).expand(1, 64, 3000, 4000)
    K.scale_add(big, torch.ones(1, 64, device=DEVICE), x=big, out=big)
    K.channel_sums(big)
    assert len(grids) == 2 and grids[0][0] == 187500
    for g in grids:
        assert all(n <= 65535 for n in g[1:]) and g[0] <= 2**31 - 1, g


def test_mixed_dtypes_and_partial_gradients():
    """float32 x with float16 r (autocast-style); gradients only where asked for."""
    from mcan_deploy.kernels.rcab import fused_channel_attention
    from mcan_deploy.kernels.reference import channel_attention_tail

    x, _, wd, bd, wu, bu = _inputs((2, 16, 9, 13, 4), torch.float32, False)
    _, r, *_ = _inputs((2, 16, 9, 13, 4), torch.float16, False, seed=5)
    r = r.detach().requires_grad_()
    y = fused_channel_attention(x, r, wd, bd, wu, bu)  # only r needs a gradient
    assert y.dtype == torch.float32
    y.sum().backward()
    rr = r.detach().double().requires_grad_()
    y_ref = channel_attention_tail(x.double(), rr, wd.double(), bd.double(), wu.double(), bu.double())
    y_ref.sum().backward()
    _close(y, y_ref, torch.float16, "y")
    assert r.grad.dtype == torch.float16
    _close(r.grad, rr.grad, torch.float16, "dr")


def test_double_backward_is_refused_not_silently_wrong():
    from mcan_deploy.kernels.rcab import fused_channel_attention

    args = [t.detach().requires_grad_() for t in _inputs((1, 8, 4, 4, 2), torch.float32, False)]
    (g,) = torch.autograd.grad(fused_channel_attention(*args).pow(2).sum(), args[1], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_maps_beyond_int32_offsets_are_applied_in_pieces(monkeypatch, channels_last):
    """The kernels index within an image in int32; the runner splits bigger maps (lowered limit)."""
    from mcan_deploy.kernels import rcab as K
    from mcan_deploy.runners import TorchRunner, TritonRunner

    model = build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=8))
    g = torch.Generator().manual_seed(0)
    h = torch.randn(8, 30, 20, generator=g).to(DEVICE)
    if channels_last:
        h = h.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # (C, H, W) with channels innermost
    r = torch.randn(8, 30, 20, generator=g).to(DEVICE)
    gate = torch.rand(8, generator=g).to(DEVICE)
    want = h.clone()
    TorchRunner(model, DEVICE).gate_add(want, r.clone(), gate)
    monkeypatch.setattr(K, "MAX_OFFSET", 1000)  # < 8 * 30 * 20: needs several pieces
    with pytest.raises(ValueError, match="exceed int32"):
        K.scale_add(r[None], gate[None], x=h[None], out=h[None].clone())
    TritonRunner(copy.deepcopy(model), DEVICE).gate_add(h, r, gate)
    torch.testing.assert_close(h, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gpu_launch", [False, True], ids=["interpreter-launch", "gpu-launch"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_channel_sums_and_maxima_in_one_read(monkeypatch, channels_last, gpu_launch):
    """channel_sums_max: the sums of channel_sums and each channel's largest |value|, against
    torch on the same float16 map (odd size; with the GPU's launch, several programs per image),
    an inf kept as inf."""
    from mcan_deploy.kernels.channel_stats import channel_sums_max

    if gpu_launch:
        _cuda_launch(monkeypatch, groups=7)
    _, r, *_ = _inputs((2, 64, 13, 29, 4), torch.float16, channels_last, seed=3)
    sums, most = channel_sums_max(r)
    assert sums.dtype == most.dtype == torch.float32 and most.shape == (2, 64)
    torch.testing.assert_close(sums.double().cpu(), r.double().cpu().sum((2, 3)), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(most.cpu(), r.float().abs().amax((2, 3)).cpu(), rtol=0, atol=0)
    r[1, 5, 12, 28] = -float("inf")
    _, most = channel_sums_max(r)
    assert most[1, 5] == float("inf") and torch.isfinite(most[0]).all()
