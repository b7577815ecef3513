"""The fused inference RCAB (runners/fused.py, TritonRunner) against an independent reference:
the model itself in float64 (model.py's layers, not the kernels' code), through every plan of the
tiling engine, in each convolution implementation, and the float16 guard that needs no pass.

On CPU the kernels run in Triton's interpreter; the ``cudnn`` implementation runs there as
PyTorch's CPU convolution with the Triton epilogue pass.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from mcan_deploy import kernels
from mcan_deploy.model import ModelConfig, build_model, init_block

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not kernels.fused_available(DEVICE, warn=False), reason="Triton missing, or neither CUDA nor TRITON_INTERPRET=1"
)
# Relative to the output's scale, after two blocks of stored intermediate maps. Eager torch in the
# same dtype measured 1.6e-2 (bfloat16) and 2.2e-3 (float16) here; Triton's interpreter truncates
# float32 to bfloat16 where a GPU rounds (../shared/notes/gpu-review.md), which doubles the
# bfloat16 error on CPU only.
RTOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 5e-2}


def _model(n_blocks=2, n_resblocks=1, n_feats=16, seed=0):
    model = build_model(ModelConfig(n_blocks=n_blocks, n_resblocks=n_resblocks, n_feats=n_feats, reduction=4))
    g = torch.Generator().manual_seed(seed)
    for b in model.blocks:
        init_block(b, "orthogonal", g)
        with torch.no_grad():  # non-zero biases, so that every bias path is exercised
            for m in b.modules():
                if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                    m.bias.normal_(0, 0.05, generator=g)
    return model.eval()


def _reference(model, x):
    """The model's own forward in float64 on the CPU."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double().cpu())


def _close(actual, expected, dtype, what):
    scale = expected.abs().max().item() or 1.0
    err = (actual.double().cpu() - expected).abs().max().item()
    assert err <= RTOL[dtype] * scale, f"{what}: max abs error {err:.3g} > {RTOL[dtype]:.1g} x {scale:.3g}"


@pytest.mark.parametrize("conv", ["triton", "cudnn"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_fused_blocks_equal_the_model_in_float64(dtype, channels_last, conv):
    from mcan_deploy.runners.fused import FusedBlocks

    model = _model()
    x = torch.rand(2, 3, 21, 34, generator=torch.Generator().manual_seed(1))
    fused = FusedBlocks(copy.deepcopy(model).to(DEVICE, dtype), DEVICE, dtype, conv)
    xin = x.to(DEVICE, dtype)
    if channels_last:
        xin = xin.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = xin
        for i in range(2):
            out = fused.block(i, out)
    assert out.dtype == dtype and out.shape == x.shape
    assert fused.flag.item() == 0, "no overflow flagged where there is none (float16's bounds too)"
    # the reference from the weights as the kernels hold them (rounded to dtype)
    _close(out, _reference(copy.deepcopy(model).to(dtype), xin), dtype, f"{conv} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_tma_launches_run_whole_blocks_and_the_exact_tiled_plan(dtype, monkeypatch):
    """A TMA launch chosen for the 16-bit convolutions (as a GPU may choose it): whole blocks
    and the tiled plan's output regions equal the model in float64, through the TMA kernel."""
    from mcan_deploy.kernels import conv3x3 as K
    from mcan_deploy.runners.fused import FusedBlocks
    from mcan_deploy.tiling.windows import cores

    real, launches = K.conv3x3_tma_kernel, []

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(K, "conv3x3_tma_kernel", Counting())
    model = _model(n_blocks=1)
    fused = FusedBlocks(copy.deepcopy(model).to(DEVICE, dtype), DEVICE, dtype, "triton")
    fused.config = fused.maps_config = K.Config(64, 4, 3, tma=True)
    x = torch.rand(1, 3, 19, 37, generator=torch.Generator().manual_seed(6)).to(DEVICE, dtype)
    x = x.contiguous(memory_format=torch.channels_last)  # as the engine hands images to a GPU
    want = _reference(copy.deepcopy(model).to(dtype), x)
    with torch.inference_mode():
        whole = fused.block(0, x)
        n_whole = len(launches)
        tiled = fused.block_on_maps(0, x, cores(19, 37, 16), lambda n: None)
    assert n_whole >= 3 and len(launches) > n_whole, "conv1, conv2 and body: each through the TMA kernel"
    _close(whole, want, dtype, "whole block, TMA launches")
    _close(tiled, want, dtype, "tiled plan, TMA launches")


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (33, 1), (37, 29)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_tiled_plan_on_device_maps_equals_the_whole_image(shape):
    """block_on_maps: cores of at most 16 px over full-size maps, sizes that are no multiple
    of a tile (16 cuts 37 into 13 + 12 + 12)."""
    from mcan_deploy.runners.fused import FusedBlocks
    from mcan_deploy.tiling.windows import cores

    model = _model(n_blocks=1)
    fused = FusedBlocks(copy.deepcopy(model).to(DEVICE), DEVICE, torch.float32, "triton")
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ticks = []
    with torch.inference_mode():
        tiled = fused.block_on_maps(0, x, cores(*shape, 16), ticks.append)
        whole = fused.block(0, x)
    torch.testing.assert_close(tiled, whole, rtol=2e-5, atol=2e-6)
    _close(tiled, _reference(model, x), torch.float32, "tiled vs float64")
    cells = -(-shape[0] // 16) * -(-shape[1] // 16)
    assert ticks == [cells] * (model.config.n_resblocks + 2), "head, every RCAB and the finish each tick once"


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (33, 1), (37, 29)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cudnn_row_bands_equal_the_whole_image(shape):
    """block_on_maps where "auto" chose cuDNN: full-width row bands of a core's pixels (at least
    8 rows: 37 rows in 8 + 8 + 8 + 8 + 5), each convolution on a slice with its edge rows
    dropped, equal the whole image through the same convolution."""
    from mcan_deploy.runners.fused import FusedBlocks
    from mcan_deploy.runners.fused_maps import band_rows
    from mcan_deploy.tiling.windows import cores

    model = _model(n_blocks=1, n_resblocks=2)
    fused = FusedBlocks(copy.deepcopy(model).to(DEVICE), DEVICE, torch.float32, "auto")
    fused.conv = "cudnn"  # as if timed the fastest on whole maps
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    parts = cores(*shape, 4)
    assert shape != (37, 29) or band_rows(parts, 29) == 8
    ticks = []
    with torch.inference_mode():
        banded = fused.block_on_maps(0, x, parts, ticks.append)
        whole = fused.block(0, x)
    torch.testing.assert_close(banded, whole, rtol=2e-5, atol=2e-6)
    _close(banded, _reference(model, x), torch.float32, "bands vs float64")
    assert ticks == [len(parts)] * (model.config.n_resblocks + 2), "head, every RCAB and the finish each tick once"


def test_maps_run_triton_where_auto_chose_cudnn_and_refuse_where_cudnn_was_asked():
    """The exact layer plan on device maps: where "auto" chose cuDNN for whole maps, the maps
    run (cuDNN in row bands; float16 on the fastest agreeing Triton launch); where the user
    named cuDNN, they are refused and the engine's layer steps run cuDNN."""
    from mcan_deploy.errors import MCANError
    from mcan_deploy.runners.fused import FusedBlocks
    from mcan_deploy.tiling.windows import cores

    model = _model(n_blocks=1)
    x = torch.rand(1, 3, 19, 23, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    auto = FusedBlocks(copy.deepcopy(model).to(DEVICE), DEVICE, torch.float32, "auto")
    auto.conv = "cudnn"  # as if timed the fastest on whole maps
    asked = FusedBlocks(copy.deepcopy(model).to(DEVICE), DEVICE, torch.float32, "cudnn")
    with torch.inference_mode():
        tiled = auto.block_on_maps(0, x, cores(19, 23, 16))
        with pytest.raises(MCANError, match="'cudnn' was asked for"):
            asked.block_on_maps(0, x, cores(19, 23, 16))
    assert auto.conv == "cudnn", "the whole-map choice stays"
    _close(tiled, _reference(model, x), torch.float32, "maps vs float64")


@pytest.mark.parametrize(
    ("plan", "ca_stats"),
    [("whole", "global"), ("layers", "global"), ("block", "tile"), ("all", "tile")],
)
def test_triton_runner_runs_every_plan_like_the_torch_runner(plan, ca_stats):
    from mcan_deploy.runners import TorchRunner, TritonRunner
    from mcan_deploy.tiling import TileConfig, upscale_tensor

    model = _model()
    eager = TorchRunner(copy.deepcopy(model), DEVICE)
    fused = TritonRunner(copy.deepcopy(model), DEVICE)
    # the Triton convolution on the interpreter; on CUDA the default times every candidate (auto)
    assert fused.kernels is not None and fused.kernels.conv == ("auto" if DEVICE.type == "cuda" else "triton")
    x = torch.rand(3, 31, 27, generator=torch.Generator().manual_seed(3))
    cfg = TileConfig(tile=16, batch=4, ca_stats=ca_stats, plan=plan)
    ref, _ = upscale_tensor(eager, x, cfg)
    out, report = upscale_tensor(fused, x, cfg)
    assert report.ca_stats == ca_stats
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if ca_stats == "global":
        _close(out, _reference(model, x[None])[0], torch.float32, f"{plan} vs float64")


@pytest.mark.parametrize("conv", ["triton", "cudnn"])
def test_layer_steps_with_maps_in_host_memory_equal_the_whole_image(monkeypatch, conv):
    """The layer steps (head, residual, gate, finish) behind the engine's window passes: what
    layers-host runs on a GPU, and the layer plan when the cuDNN convolution is chosen."""
    from mcan_deploy.runners import TritonRunner
    from mcan_deploy.tiling import TileConfig, upscale_tensor

    model = _model()
    runner = TritonRunner(copy.deepcopy(model), DEVICE, conv=conv)
    monkeypatch.setattr(runner, "block_on_device_maps", lambda *a: None)  # the engine's own layer passes
    x = torch.rand(3, 30, 21, generator=torch.Generator().manual_seed(4))
    out, report = upscale_tensor(runner, x, TileConfig(tile=16, plan="layers"))
    assert report.plan == "layer-by-layer"
    _close(out, _reference(model, x[None])[0], torch.float32, "layer steps vs float64")


def test_auto_times_the_candidates_and_logs_the_choice(caplog):
    from mcan_deploy.runners.fused import FusedBlocks

    fused = FusedBlocks(copy.deepcopy(_model()).to(DEVICE), DEVICE, torch.float32, "auto")
    with caplog.at_level(logging.INFO, logger="mcan_deploy.runners.fused"):
        chosen = fused.choose(24, 20, side=16, again=True)  # on a CPU "auto" is the Triton kernel, untimed
    names = set(fused.timings)
    assert chosen in ("triton", "cudnn") and "cudnn" in names and any(n.startswith("triton m") for n in names)
    assert all(t > 0 for t in fused.timings.values())
    assert f"using {chosen}" in caplog.text and "16x16" in caplog.text


def test_a_candidate_that_disagrees_is_not_chosen(monkeypatch, caplog):
    """A miscompiled kernel (wrong numbers, as Triton's 8-warp conv bug gave inductor) must lose
    to the slower correct one."""
    from mcan_deploy.kernels import conv3x3 as K
    from mcan_deploy.runners.fused import FusedBlocks

    real = K.conv3x3

    def wrong(*args, **kw):
        out, sums = real(*args, **kw)
        return out.mul_(1.5), sums

    monkeypatch.setattr(K, "conv3x3", wrong)
    fused = FusedBlocks(copy.deepcopy(_model()).to(DEVICE), DEVICE, torch.float32, "auto")
    with caplog.at_level(logging.WARNING):
        assert fused.choose(16, 16, again=True) in ("cudnn", "cudnn-fused")  # cuDNN's, never the wrong one
    assert "convolution disagrees" in caplog.text and "the triton m" in caplog.text


def _relu_hidden_overflow_model():
    """float16's trap: block 1's first conv1 gives -72000 inside the image (beyond 65504, so
    -inf in float16), which its ReLU turns into 0, the float32 value too. The output stays
    finite either way, so only a check of the layer itself sees the overflow."""
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8, reduction=4))
    with torch.no_grad():
        b = model.blocks[0]
        b.head.weight.zero_()
        b.head.bias.fill_(1.0)  # features of 1 everywhere
        b.body[0].conv1.weight.fill_(-1000.0)  # 9 taps x 8 channels x -1000 = -72000
        b.body[0].conv1.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("runner_kind", ["torch", "fused"])
@pytest.mark.parametrize("plan", ["whole", "layers", "block"])
def test_float16_overflow_that_a_relu_hides_is_found_and_redone(runner_kind, plan, caplog):
    """The fused kind runs the Triton convolution (its flag is what is tested). The torch kind's
    convolution is the device's: on a CPU it overflows to -inf as IEEE says; cuDNN's float16
    convolution (an H200, cuDNN 9.19) gave a finite value there instead, which the ReLU turns
    into the right 0 with nothing to flag. Either way the output must equal float32's."""
    from mcan_deploy.runners import TorchRunner, TritonRunner
    from mcan_deploy.tiling import TileConfig, upscale_tensor

    model = _relu_hidden_overflow_model()
    x = torch.rand(3, 21, 26, generator=torch.Generator().manual_seed(5))
    ref = TorchRunner(copy.deepcopy(model), DEVICE).run_blocks(x[None], 0, 2)[0]
    if runner_kind == "fused":
        half = TritonRunner(copy.deepcopy(model), DEVICE, torch.float16, conv="triton")
    else:
        half = TorchRunner(copy.deepcopy(model), DEVICE, torch.float16)
    with torch.inference_mode():  # the premise: unguarded float16 ends finite, so only the guard sees it
        feats = half.model.blocks[0].head(x[None].to(DEVICE, torch.float16))
        overflows = bool(torch.isinf(half.model.blocks[0].body[0].conv1(feats)).any())
        assert torch.isfinite(half.model(x[None].to(DEVICE, torch.float16))).all()
    if DEVICE.type == "cpu":
        assert overflows, "the premise: this convolution overflows to -inf in float16"
    cfg = TileConfig(16, plan=plan, ca_stats="tile" if plan == "block" else "global")
    with caplog.at_level(logging.WARNING):
        out, report = upscale_tensor(half, x, cfg)
    expected = 1 if runner_kind == "fused" or overflows else 0
    assert report.overflows == expected, "block 1 overflowed and was redone; block 2 did not"
    assert caplog.text.count("float16 overflowed") == expected
    torch.testing.assert_close(out.cpu(), ref.cpu(), rtol=0, atol=4e-3)


def test_the_hook_guard_sees_a_layer_that_outputs_inf():
    from mcan_deploy.runners.overflow import OverflowGuard

    conv = torch.nn.Conv2d(2, 2, 3, padding=1).half()
    with torch.no_grad():
        conv.weight.fill_(3e4)
    seq = torch.nn.Sequential(conv, torch.nn.ReLU())
    x = torch.ones(1, 2, 4, 4, dtype=torch.float16)
    with OverflowGuard(seq) as guard:
        seq(-x)  # -inf, hidden by the ReLU
    assert guard.tripped
    with OverflowGuard(seq) as guard:
        seq(x * 1e-4)
    assert not guard.tripped


def test_each_thread_has_its_own_overflow_flag():
    """Two threads sharing a runner: one's guard must not clear (or see) the other's overflow."""
    import threading

    from mcan_deploy.runners.fused import FusedBlocks

    fused = FusedBlocks(copy.deepcopy(_model()).to(DEVICE, torch.float16), DEVICE, torch.float16, "triton")
    mine = fused.flag
    mine.fill_(1)
    seen = []
    t = threading.Thread(target=lambda: seen.append((fused.flag.item(), fused.flag is mine)))
    t.start()
    t.join()
    assert seen == [(0, False)] and fused.flag is mine and mine.item() == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d)[6:])
def test_the_head_on_triton_beside_cudnn_equals_the_model_in_float64(dtype, monkeypatch):
    """Where the head was timed faster on Triton (its taps as one K = 27 product, bias in the
    epilogue), only the heads leave cuDNN; float16 stays guarded (its flag stays clear)."""
    from mcan_deploy.kernels import conv3x3 as K
    from mcan_deploy.runners.fused import FusedBlocks

    model = _model()
    x = torch.rand(2, 3, 17, 22, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    fused = FusedBlocks(copy.deepcopy(model).to(DEVICE, dtype), DEVICE, dtype, "cudnn")
    fused.head = "triton"
    real, packed = K.conv3x3, []
    monkeypatch.setattr(K, "conv3x3", lambda x, conv, **kw: packed.append(conv.im2col) or real(x, conv, **kw))
    with torch.inference_mode():
        out = fused.block(1, fused.block(0, x))
    assert packed == [True, True], "the two heads, and nothing else, on Triton"
    assert fused.flag.item() == 0
    _close(out, _reference(copy.deepcopy(model).to(dtype), x), dtype, f"head on triton, {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d)[6:])
def test_where_triton_wins_the_rcab_the_head_is_still_timed(dtype, monkeypatch):
    """The Triton RCAB won: the head is timed on its own and may run on cuDNN (through F.conv2d),
    with the block equal to the model in float64; float16 keeps the head on Triton untimed, as
    no bound is computed for a cuDNN head there."""
    import torch.nn.functional as F

    from mcan_deploy.kernels.conv3x3 import default_config
    from mcan_deploy.runners import fused as fused_mod
    from mcan_deploy.runners.fused import FusedBlocks

    monkeypatch.setattr(FusedBlocks, "candidates", lambda self: [("triton", default_config(DEVICE))])
    model = _model(n_blocks=1)
    fused = FusedBlocks(copy.deepcopy(model).to(DEVICE, dtype), DEVICE, dtype, "auto")
    assert fused.choose(17, 19, again=True) == "triton"
    if dtype == torch.float16:
        assert fused.head == "triton" and not any(n.startswith("head") for n in fused.timings)
        return
    assert {"head cudnn", "head triton"} <= set(fused.timings)
    fused.head = "cudnn"  # as a GPU may choose it
    calls = []
    real = F.conv2d
    monkeypatch.setattr(fused_mod.F, "conv2d", lambda x, w, *a, **kw: calls.append(w.shape[1]) or real(x, w, *a, **kw))
    x = torch.rand(1, 3, 17, 19, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    with torch.inference_mode():
        out = fused.block(0, x)
    assert calls == [3], "the head, and nothing else, on cuDNN"
    _close(out, _reference(copy.deepcopy(model).to(dtype), x), dtype, "triton RCABs, cuDNN head")


def test_where_cudnn_wins_the_head_is_timed_kept_and_never_a_wrong_one(tmp_path, monkeypatch, caplog):
    from mcan_deploy.kernels import conv3x3 as K
    from mcan_deploy.runners.conv_choice import ChoiceCache, choice_key
    from mcan_deploy.runners.fused import HEAD_IMPLS, FusedBlocks

    monkeypatch.setattr(FusedBlocks, "candidates", lambda self: [("cudnn", None)])  # as if cuDNN won
    cache = ChoiceCache(tmp_path / "cache")

    def runner() -> FusedBlocks:
        return FusedBlocks(copy.deepcopy(_model()).to(DEVICE), DEVICE, torch.float32, "auto", cache)

    first = runner()
    with caplog.at_level(logging.INFO, logger="mcan_deploy.runners.fused"):
        assert first.choose(18, 20, again=True) == "cudnn"
    assert {"head cudnn", "head triton"} <= set(first.timings) and first.head in HEAD_IMPLS
    assert f"the head on {first.head}" in caplog.text
    key = choice_key(DEVICE, torch.float32, 16, 18, 20)
    assert cache.get(key) == {"choice": "cudnn", "maps": None, "head": first.head, "candidates": "cudnn"}
    for head in HEAD_IMPLS:  # a kept head is taken as it is
        cache.put(key, "cudnn", None, head, "cudnn")
        second = runner()
        assert second.choose(18, 20, again=True) == "cudnn" and second.head == head and not second.timings
    cache.put(key, "cudnn", None, "nothing", "cudnn")  # kept by another version: timed again
    again = runner()
    again.choose(18, 20, again=True)
    assert "head triton" in again.timings

    real = K.conv3x3

    def wrong_head(x, conv, **kw):
        out, sums = real(x, conv, **kw)
        return (out.mul_(1.5) if conv.im2col else out), sums

    monkeypatch.setattr(K, "conv3x3", wrong_head)
    caplog.clear()
    wrong = runner()
    with caplog.at_level(logging.WARNING):
        wrong.choose(18, 19, again=True)
    assert wrong.head == "cudnn" and "head triton" not in wrong.timings
    assert "fused head: the triton convolution disagrees" in caplog.text


def test_a_choice_is_kept_for_the_next_process_and_timed_again_when_stale(tmp_path, caplog):
    """The second runner (as a new process would) takes the first one's choice without timing;
    a kept name that is no longer a candidate, or an unreadable file, means timing again."""
    from mcan_deploy.runners.conv_choice import ChoiceCache, choice_key
    from mcan_deploy.runners.fused import FusedBlocks

    cache = ChoiceCache(tmp_path / "cache")

    def runner() -> FusedBlocks:
        return FusedBlocks(copy.deepcopy(_model()).to(DEVICE), DEVICE, torch.float32, "auto", cache)

    first = runner()
    chosen = first.choose(18, 20, again=True)
    key = choice_key(DEVICE, torch.float32, 16, 18, 20)
    entry = cache.get(key)
    assert entry is not None and entry["choice"] in first.timings and entry["choice"].split()[0] == chosen
    assert entry["maps"] == min((n for n in first.timings if n.startswith("triton")), key=first.timings.__getitem__)
    second = runner()
    with caplog.at_level(logging.INFO, logger="mcan_deploy.runners.fused"):
        assert second.choose(18, 20, again=True) == chosen
    assert second.timings == {} and second.config == first.config and "as timed before" in caplog.text
    assert runner().choose(18, 21, again=True) and cache.get(choice_key(DEVICE, torch.float32, 16, 18, 21)), (
        "another size is another key"
    )

    names = entry["candidates"]
    assert names and entry["choice"] in names.split(", ")
    for kept, among in (("triton m999 w1 s1", names), (entry["choice"], "cudnn")):
        # a launch this version no longer has; a choice made before other candidates existed
        cache.put(key, kept, None, "cudnn", among)
        stale = runner()
        stale.choose(18, 20, again=True)
        assert stale.timings, f"{kept} among {among}: timed again"
    cache.path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "unreadable" in caplog.text


def test_a_cache_that_cannot_be_written_costs_nothing_but_a_warning(tmp_path, caplog):
    from mcan_deploy.runners.conv_choice import ChoiceCache

    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = ChoiceCache(blocker / "sub")  # a directory under a file cannot be made
    with caplog.at_level(logging.WARNING):
        cache.put("k", "cudnn", None)
    assert cache.get("k") is None and "cannot keep the convolution choice" in caplog.text


def test_float16_bounds_hold_each_convolution_output():
    """The bound of float16 on cuDNN: no output of a convolution exceeds sum |w| |x| + |b|,
    where |x| is each input channel's largest magnitude (random weights and maps)."""
    import torch.nn.functional as F

    from mcan_deploy.runners.fused import FusedBlocks

    fused = FusedBlocks(copy.deepcopy(_model(n_feats=16)).to(DEVICE), DEVICE, torch.float32, "cudnn")
    cw = fused.blocks[0].rcabs[0].conv1
    x = torch.randn(2, 16, 11, 13, generator=torch.Generator().manual_seed(6)).to(DEVICE) * 3
    m = x.abs().amax((2, 3))
    bound = fused._bound(cw, m)
    y = F.conv2d(x, cw.weight.float(), cw.bias, padding=1)
    assert (y.abs().amax((2, 3)) <= bound).all()
    # and the best bound from magnitudes alone: an input with the signs of channel 0's weights
    # around one pixel reaches it there
    w0 = cw.weight.float()[0]  # (C_in, 3, 3)
    x[0, :, 4:7, 5:8] = m[0][:, None, None] * torch.where(w0 >= 0, 1.0, -1.0)
    y = F.conv2d(x, cw.weight.float(), cw.bias, padding=1)
    reach = (m[0] * w0.abs().sum((1, 2))).sum() + cw.bias[0]
    torch.testing.assert_close(y[0, 0, 5, 6], reach, rtol=1e-5, atol=1e-5)
    assert reach <= bound[0, 0] + 1e-4


def test_float16_on_cudnn_is_guarded_by_bounds_where_its_result_is_finite_and_wrong(monkeypatch, caplog):
    """cuDNN's float16 convolution gave a finite 0 for an exact -72000 on an H200
    (CUDNN_FLOAT16_NOTE): emulated here by a convolution that turns overflows into 0. No output
    check can see that; the bounds do, the block is redone, and the output equals float32's.
    Without the bounds (patched out) the flag stays clear: the premise."""
    import torch.nn.functional as F

    from mcan_deploy.runners import TorchRunner, TritonRunner
    from mcan_deploy.runners import fused as fused_mod
    from mcan_deploy.tiling import TileConfig, upscale_tensor

    real = F.conv2d

    def finite_wrong(x, *args, **kw):
        out = real(x, *args, **kw)
        return out.masked_fill(~torch.isfinite(out), 0.0) if out.dtype == torch.float16 else out

    monkeypatch.setattr(fused_mod.F, "conv2d", finite_wrong)
    model = _relu_hidden_overflow_model()
    x = torch.rand(3, 21, 26, generator=torch.Generator().manual_seed(5))
    half = TritonRunner(copy.deepcopy(model), DEVICE, torch.float16, conv="cudnn")
    assert half.kernels is not None
    with torch.inference_mode():
        half.kernels.block(1, half.kernels.block(0, x[None].to(DEVICE, torch.float16)))
    assert half.kernels.flag.item() == 1, "the bounds trip"
    with monkeypatch.context() as m, torch.inference_mode():
        m.setattr(fused_mod.FusedBlocks, "_trip", lambda self, bound: bound)
        half.kernels.flag.zero_()
        half.kernels.block(0, x[None].to(DEVICE, torch.float16))
        assert half.kernels.flag.item() == 0, "the premise: nothing but the bounds sees it"
    ref = TorchRunner(copy.deepcopy(model), DEVICE).run_blocks(x[None], 0, 2)[0]
    with caplog.at_level(logging.WARNING):
        out, report = upscale_tensor(half, x, TileConfig(16, plan="whole"))
    assert report.overflows == 1 and caplog.text.count("float16 overflowed") == 1
    torch.testing.assert_close(out.cpu(), ref.cpu(), rtol=0, atol=4e-3)
