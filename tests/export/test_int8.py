"""The int8 gate: an export that misses the retention bar writes nothing; a forced one is written
with the retention it measured, which an independent recomputation reproduces."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from mcan_deploy.checkpoint import save_model
from mcan_deploy.cli.export import main as export_main
from mcan_deploy.data import PatchSampler, load_images
from mcan_deploy.export import openvino as ovx
from mcan_deploy.export.quantize import int8_convolutions
from mcan_deploy.metrics import psnr
from mcan_deploy.model import ModelConfig, build_model, init_block
from mcan_deploy.runners import OpenVINORunner
from mcan_deploy.tiling import TileConfig, upscale_tensor


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    """A small block trained for 120 steps on the bundled pairs: it starts as the identity (tail
    zeroed) and ends with a real PSNR gain on the test crops, so retention means something."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=1, n_resblocks=2, n_feats=8))
    init_block(model.blocks[0], "orthogonal", torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.blocks[0].tail.weight.zero_()
        model.blocks[0].tail.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sampler = PatchSampler(load_images(sample_dir / "train", progress=False), 32, 8, seed=0)
    for _ in range(120):
        x, y = sampler.sample()
        loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("int8") / "model.safetensors"
    save_model(path, model.eval())
    return path, model


def test_an_int8_export_below_the_bar_writes_nothing(trained, sample_dir, tmp_path, capsys):
    path, _ = trained
    out = tmp_path / "m.xml"
    rc = export_main(
        [str(path), "-o", str(out), "--precision", "int8", "--calibration", str(sample_dir), "--min-retention", "10"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "int8 keeps at most" in err and "below --min-retention 10; nothing was written" in err
    assert not list(tmp_path.iterdir())


def test_a_forced_int8_export_is_written_with_its_measured_retention(trained, sample_dir, tmp_path, capsys):
    path, model = trained
    out = tmp_path / "m.xml"
    assert (
        export_main(
            [
                str(path),
                "-o",
                str(out),
                "--precision",
                "int8",
                "--calibration",
                str(sample_dir),
                "--min-retention",
                "10",
                "--force",
            ]
        )
        == 0
    )
    assert "forced" in capsys.readouterr().out
    ov_model, meta = ovx.read_ir(out)
    q = meta["int8"]
    assert meta["precision"] == "int8" and q["min_retention"] is None and q["pairs"] == 3
    n_int8, n_convs = int8_convolutions(ov_model, 1)
    assert q["int8_convolutions"] == n_int8 and q["convolutions"] == n_convs == 7 and n_int8 >= 5
    # recompute independently: torch float32 for the gain, the int8 file through the tiler for its PSNR
    test = load_images(sample_dir / "test", progress=False)
    runner = OpenVINORunner(ov_model, meta, "auto")
    assert runner.precision == "int8"
    ident = sum(psnr(x, y) for x, y in zip(test.inputs, test.targets)) / 3
    with torch.no_grad():
        fp32 = sum(psnr(model(x[None])[0], y) for x, y in zip(test.inputs, test.targets)) / 3
    int8 = (
        sum(
            psnr(upscale_tensor(runner, x, TileConfig(ca_stats="global"))[0], y)
            for x, y in zip(test.inputs, test.targets)
        )
        / 3
    )
    assert fp32 - ident > 0.1, "the fixture model must gain over the identity"
    assert q["psnr_identity"] == pytest.approx(ident, abs=1e-6)
    assert q["psnr_fp32"] == pytest.approx(fp32, abs=1e-3)
    assert q["psnr_int8"] == pytest.approx(int8, abs=1e-6)
    assert q["retention"] == pytest.approx((int8 - ident) / (fp32 - ident), abs=1e-3)
    assert int8 != pytest.approx(fp32, abs=1e-4), "int8 must actually differ from float32"
