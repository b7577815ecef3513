"""Tiled inference against whole-image inference, margins from the receptive field, threads, OOM."""

from __future__ import annotations

import copy
import logging
import threading

import pytest
import torch

from mcan_deploy.checkpoint import load_model
from mcan_deploy.errors import MCANError
from mcan_deploy.model import ModelConfig, build_model, init_block, receptive_field
from mcan_deploy.runners import TorchRunner
from mcan_deploy.tiling import TileConfig, map_pass, spans, upscale_tensor
from mcan_deploy.train import train

from .helpers import once_per_run, tiny_plan

SIZES = [(1, 1), (1, 47), (29, 1), (5, 9), (37, 53), (64, 64), (100, 33)]
TILES = [4, 7, 16, 1000]


def runner_for(cfg: ModelConfig, seed: int = 0, scheme: str = "default") -> TorchRunner:
    """``scheme`` "attention": PyTorch's default weights with every channel-attention up-projection
    x20 (gates that swing with the image) and each RCAB's second conv and the tail x5 (so that
    what the gates scale reaches the output): per-window statistics miss the whole image by
    about 1e-2 here, against 1e-4 with default weights."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    for b in model.blocks:
        if scheme == "attention":
            with torch.no_grad():
                b.tail.weight.mul_(5)
                for rcab in b.body:
                    rcab.ca.up.weight.mul_(20)
                    rcab.conv2.weight.mul_(5)
        elif scheme != "default":
            init_block(b, scheme, torch.Generator().manual_seed(seed))
    return TorchRunner(model, torch.device("cpu"))


def whole(runner: TorchRunner, x: torch.Tensor) -> torch.Tensor:
    return runner.run_blocks(x[None], 0, runner.n_blocks)[0]


@pytest.fixture(scope="module")
def trained_runner(tmp_path_factory, sample_dir):
    def build(folder):
        train(tiny_plan(), sample_dir, folder / "run", device="cpu", progress=False)

    out = once_per_run(tmp_path_factory, "tiling-trained", build) / "run"
    return TorchRunner(load_model(out / "model.safetensors"), torch.device("cpu"))


def test_spans_cover_every_pixel_once_with_context():
    for length in (1, 2, 5, 17, 64, 100):
        for tile in (1, 3, 8, 64, 200):
            for margin in (0, 1, 2, 11):
                ss = spans(length, tile, margin)
                assert len({s.size for s in ss}) == 1, "every window has the same size"
                covered = [p for s in ss for p in range(s.lo, s.hi)]
                assert covered == list(range(length)), "cores partition the axis"
                for s in ss:
                    assert 0 <= s.start and s.start + s.size <= length
                    assert s.start <= max(s.lo - margin, 0)
                    assert s.start + s.size >= min(s.hi + margin, length)


@pytest.mark.parametrize("scheme", ["attention", "trained"])
def test_global_statistics_equal_the_whole_image(scheme, trained_runner):
    """The scaled-attention model's gates swing with the image: per-window statistics (what a
    broken global path would compute) miss the whole image by far more than the tolerance, so
    this can fail (checked below, each run)."""
    runner = (
        trained_runner
        if scheme == "trained"
        else runner_for(ModelConfig(n_blocks=2, n_resblocks=2, n_feats=8), scheme="attention")
    )
    torch.manual_seed(1)
    per_window = 0.0
    for h, w in SIZES:
        x = torch.rand(3, h, w)
        ref = whole(runner, x)
        for tile in TILES:
            for batch in (1, 3):
                out, report = upscale_tensor(runner, x, TileConfig(tile=tile, batch=batch, ca_stats="global"))
                assert out.shape == x.shape
                err = (out - ref).abs().max().item()
                assert err <= 1e-4, (h, w, tile, batch, err)
                assert report.ca_stats == "global"
        tiled, _ = upscale_tensor(runner, x, TileConfig(tile=16, ca_stats="tile", plan="block"))
        per_window = max(per_window, (tiled - ref).abs().max().item())
    assert per_window > 10 * 1e-4, f"per-window statistics err {per_window:.1e}: this model would not tell"


@pytest.mark.parametrize("plan", ["block", "all"])
def test_tile_statistics_pool_per_window(plan, trained_runner):
    """Tile mode: every core equals the model run on its own window, cropped (checked here window
    by window); one window covering the image gives the whole-image result exactly."""
    runner = trained_runner
    torch.manual_seed(2)
    x = torch.rand(3, 45, 38)
    out, report = upscale_tensor(runner, x, TileConfig(tile=16, ca_stats="tile", plan=plan))
    assert report.plan == {"block": "block-by-block", "all": "all-blocks"}[plan]
    ref = x
    stages = (
        [(i, i + 1, m) for i, m in enumerate(runner.block_radii)]
        if plan == "block"
        else [(0, runner.n_blocks, sum(runner.block_radii))]
    )
    for start, stop, margin in stages:
        nxt = torch.empty_like(ref)
        for sy in spans(45, 16, margin):
            for sx in spans(38, 16, margin):
                win = ref[:, sy.start : sy.start + sy.size, sx.start : sx.start + sx.size]
                y = runner.run_blocks(win[None], start, stop)[0]
                nxt[:, sy.lo : sy.hi, sx.lo : sx.hi] = y[
                    :, sy.lo - sy.start : sy.hi - sy.start, sx.lo - sx.start : sx.hi - sx.start
                ]
        ref = nxt
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    big, _ = upscale_tensor(runner, x, TileConfig(tile=1000, ca_stats="tile", plan=plan))
    torch.testing.assert_close(big, whole(runner, x), atol=1e-6, rtol=0)


def test_margin_follows_the_receptive_field():
    for n_res in (1, 4, 16):
        r = runner_for(ModelConfig(n_blocks=2, n_resblocks=n_res, n_feats=4))
        assert r.block_radii == [receptive_field(r.model.blocks[0]) // 2] * 2 == [3 + 2 * n_res] * 2
    # a local model (no channel attention) tiles exactly with its margin, and not with one less
    toy = runner_for(ModelConfig(kind="toy", n_blocks=2, n_feats=8), scheme="normal")
    assert toy.block_radii == [6, 6] and not toy.has_channel_attention
    torch.manual_seed(3)
    x = torch.rand(3, 40, 40)
    ref = whole(toy, x)
    for plan in ("block", "all"):
        out, report = upscale_tensor(toy, x, TileConfig(tile=8, ca_stats="global", plan=plan))
        assert report.ca_stats.startswith("exact")
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    toy.block_radii = [5, 5]
    short, _ = upscale_tensor(toy, x, TileConfig(tile=8, plan="block"))
    assert (short - ref).abs().max() > 1e-3, "a margin below the radius shows seams"


def test_concurrent_calls_do_not_mix_images(trained_runner):
    torch.manual_seed(4)
    images = [torch.rand(3, 50, 41), torch.rand(3, 33, 60)]
    cfgs = [TileConfig(tile=16, ca_stats="global"), TileConfig(tile=16, ca_stats="tile", plan="block")]
    for cfg in cfgs:
        sequential = [upscale_tensor(trained_runner, im, cfg)[0] for im in images]
        results: dict[int, torch.Tensor] = {}
        threads = [
            threading.Thread(
                target=lambda i=i: results.__setitem__(i, upscale_tensor(trained_runner, images[i], cfg)[0])
            )
            for i in range(2)
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            assert results[i].equal(sequential[i])


class OOMRunner(TorchRunner):
    """Raises CUDA's out-of-memory error for windows above a side, like a full GPU would."""

    limit = 30

    def _in(self, x):
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super()._in(x)


@pytest.mark.parametrize("mode", ["global", "tile"])
def test_out_of_memory_halves_the_tile_and_says_so(mode, caplog):
    torch.manual_seed(0)
    runner = OOMRunner(build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)), torch.device("cpu"))
    x = torch.rand(3, 70, 70)
    with caplog.at_level(logging.WARNING):
        out, report = upscale_tensor(
            runner, x, TileConfig(tile=64, ca_stats=mode, plan="block" if mode == "tile" else "layers")
        )
    assert report.tile < 64 and report.oom_retries >= 1
    assert "out of memory with 64x64 tiles" in caplog.text
    ref = TorchRunner(runner.model, torch.device("cpu"))
    if mode == "global":
        torch.testing.assert_close(out, whole(ref, x), atol=1e-4, rtol=0)
    runner.limit = 0
    with pytest.raises(MCANError, match="out of memory even with"):
        upscale_tensor(runner, x, TileConfig(tile=64, ca_stats=mode))


def test_map_pass_reduces_over_cores_only():
    x = torch.arange(2 * 9 * 11, dtype=torch.float32).reshape(2, 9, 11)
    out, total = map_pass(
        [x],
        lambda t: t * 2,
        margin=2,
        cfg=TileConfig(tile=4),
        out_channels=2,
        out_device=torch.device("cpu"),
        reduce=lambda t: t.sum((2, 3)),
    )
    assert out.equal(x * 2)
    torch.testing.assert_close(total, (x * 2).sum((1, 2)).double())


def test_bad_inputs():
    runner = runner_for(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=4))
    with pytest.raises(MCANError, match=r"expected an image tensor \(3, H, W\)"):
        upscale_tensor(runner, torch.rand(1, 4, 4))
    with pytest.raises(MCANError, match="must be >= 1"):
        TileConfig(tile=0)
    with pytest.raises(MCANError, match="choose float32, float16 or bfloat16"):
        TorchRunner(runner.model, torch.device("cpu"), torch.float64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_cuda_dtypes_channels_last(dtype, tol, trained_runner):
    torch.manual_seed(5)
    x = torch.rand(3, 70, 90)
    cpu_ref = whole(trained_runner, x)
    gpu = TorchRunner(copy.deepcopy(trained_runner.model), torch.device("cuda"), dtype)
    out, _ = upscale_tensor(gpu, x, TileConfig(tile=32, ca_stats="global"))
    assert (out - cpu_ref).abs().max() <= tol


def test_channels_last_maps_equal_the_plain_layout():
    """GPU runners keep maps channels-last; the windows and cores must be the same pixels."""
    torch.manual_seed(3)
    x = torch.rand(4, 23, 31)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        plain, s1 = map_pass(
            [x], conv, 1, TileConfig(tile=8, batch=3), 6, torch.device("cpu"), reduce=lambda t: t.sum((2, 3))
        )
        cl, s2 = map_pass(
            [x],
            conv,
            1,
            TileConfig(tile=8, batch=3),
            6,
            torch.device("cpu"),
            reduce=lambda t: t.sum((2, 3)),
            channels_last=True,
        )
        whole = conv(x[None])[0]
    assert cl.stride() == (1, 31 * 6, 6)
    torch.testing.assert_close(plain, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(cl, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(s1, s2)
