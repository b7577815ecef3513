"""Inference back-ends and the tiling engine side by side (pytest-benchmark groups).

    python -m pytest benchmarks/test_backends.py --benchmark-only

Demo-size network (3 blocks x 4 RCAB x 32 features, orthogonal random weights) on one 256x256
image; each group compares ways of computing the same output.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mcan_deploy.model import ModelConfig, build_model, init_block
from mcan_deploy.runners import TorchRunner
from mcan_deploy.tiling import TileConfig, upscale_tensor

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig(n_resblocks=4, n_feats=32)).eval()
    for b in m.blocks:
        init_block(b, "orthogonal", torch.Generator().manual_seed(0))
    return m


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="backend-256")
def test_eager_nchw(benchmark, model, image):
    r = TorchRunner(copy.deepcopy(model), torch.device("cpu"))
    benchmark.pedantic(r.run_blocks, args=(image[None], 0, 3), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="backend-256")
def test_eager_channels_last(benchmark, model, image):
    r = TorchRunner(copy.deepcopy(model), torch.device("cpu"))
    r.model = r.model.to(memory_format=torch.channels_last)
    r.channels_last = True
    benchmark.pedantic(r.run_blocks, args=(image[None], 0, 3), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="backend-256")
def test_onnxruntime(benchmark, model, image, tmp_path):
    pytest.importorskip("onnxruntime")
    from mcan_deploy.export.onnx import export_onnx
    from mcan_deploy.runners import OrtRunner

    export_onnx(model, tmp_path / "m.onnx")
    r = OrtRunner(tmp_path / "m.onnx")
    benchmark.pedantic(r.run_blocks, args=(image[None], 0, 3), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="tiling-256")
@pytest.mark.parametrize("ca_stats, tile", [("global", 64), ("global", 128), ("tile", 64), ("tile", 128)])
def test_tiled(benchmark, model, image, ca_stats, tile):
    r = TorchRunner(copy.deepcopy(model), torch.device("cpu"))
    benchmark.pedantic(
        upscale_tensor, args=(r, image, TileConfig(tile=tile, ca_stats=ca_stats)), rounds=3, warmup_rounds=1
    )
