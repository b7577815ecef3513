"""The int8 gate: an export that misses the retention bar writes nothing; a forced one is written
with the verdict it measured on pairs it did not tune on, which an independent recomputation
(PyTorch float32, the int8 file through the tiler, scipy's t quantile) reproduces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")
from mcan_deploy.checkpoint import load_model, save_model
from mcan_deploy.cli.export import main as export_main
from mcan_deploy.data import PatchSampler, load_images
from mcan_deploy.export import openvino as ovx
from mcan_deploy.export.quantize import RECIPES, int8_convolutions
from mcan_deploy.metrics import psnr
from mcan_deploy.model import ModelConfig, build_model, init_block
from mcan_deploy.runners import OpenVINORunner
from mcan_deploy.tiling import TileConfig, upscale_tensor

from ..helpers import once_per_run

scipy = pytest.importorskip("scipy")  # the independent t quantile (NNCF depends on it)
CROPS = ("--calibration-crops", "4")  # of the 3 calibration pairs: enough for a model of 8 features


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    """A small block trained for 120 steps on the bundled pairs: it starts as the identity (tail
    zeroed) and ends with a real PSNR gain on the test crops, so retention means something
    (trained once for all workers)."""

    def build(folder):
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
        save_model(folder / "model.safetensors", model.eval())

    path = once_per_run(tmp_path_factory, "int8-trained", build) / "model.safetensors"
    return path, load_model(path).eval()


def _int8_at_1000_percent(path, out, sample_dir, *extra: str) -> list[str]:
    """mcan-export to int8 with a bar no int8 model reaches (--min-retention 10, i.e. 1000%)."""
    bar = ["--min-retention", "10"]
    return [str(path), "-o", str(out), "--precision", "int8", "--calibration", str(sample_dir), *bar, *extra, *CROPS]


def test_an_int8_export_below_the_bar_writes_nothing(trained, sample_dir, tmp_path, capsys):
    path, _ = trained
    out = tmp_path / "m.xml"
    rc = export_main(_int8_at_1000_percent(path, out, sample_dir))
    err = capsys.readouterr().err
    assert rc == 1 and "on pairs it was not tuned on" in err and "selection pairs" in err, err
    assert "lower bound of at least 1000% (--min-retention 10)" in err and "nothing was written" in err
    assert not list(tmp_path.iterdir())


def test_a_forced_int8_export_is_written_with_its_measured_retention(trained, sample_dir, tmp_path, capsys):
    path, model = trained
    out = tmp_path / "m.xml"
    assert export_main(_int8_at_1000_percent(path, out, sample_dir, "--force")) == 0
    assert "forced" in capsys.readouterr().out
    ov_model, meta = ovx.read_ir(out)
    q = meta["int8"]
    # the sample's 12 training pairs: 3 calibrate, 3 choose the recipe, 6 judge with the 3 test pairs
    roles = q["splits"]
    assert [len(roles[r]) for r in ("calibration", "selection", "verdict")] == [3, 3, 9]
    assert meta["precision"] == "int8" and q["min_retention"] is None and q["pairs"] == 9
    assert [t["recipe"] for t in q["tried"]] == [r.name for r in RECIPES], "every recipe ranked"
    n_int8, n_convs = int8_convolutions(ov_model, 1)
    assert q["int8_convolutions"] == n_int8 and q["convolutions"] == n_convs == 7 and n_int8 >= 5
    # recompute independently: torch float32 for the gain, the int8 file through the tiler for its PSNR
    pairs = {f"{k}/{n}": (x, y) for k in ("train", "test") for n, x, y in _loaded(sample_dir / k)}
    runner = OpenVINORunner(ov_model, meta, "auto")
    assert runner.precision == "int8"
    ident, fp32, int8 = [], [], []
    for name in roles["verdict"]:
        x, y = pairs[name]
        ident.append(psnr(x, y))
        with torch.no_grad():
            fp32.append(psnr(model(x[None])[0], y))
        int8.append(psnr(upscale_tensor(runner, x, TileConfig(ca_stats="global"))[0], y))
    n = len(ident)
    gain = np.array(fp32) - np.array(ident)
    kept = np.array(int8) - np.array(ident)
    assert gain.mean() > 0.1, "the fixture model must gain over the identity"
    assert q["psnr_identity"] == pytest.approx(np.mean(ident), abs=1e-6)
    assert q["psnr_fp32"] == pytest.approx(np.mean(fp32), abs=1e-3)
    assert q["psnr_int8"] == pytest.approx(np.mean(int8), abs=1e-6)
    assert q["retention"] == pytest.approx(kept.mean() / gain.mean(), abs=1e-3)
    loss = gain - kept
    t = scipy.stats.t.ppf(0.975, n - 1)
    assert q["bound"] == pytest.approx(1 - (loss.mean() + t * loss.std(ddof=1) / np.sqrt(n)) / gain.mean(), abs=2e-3)
    worst = int(np.argmin(np.where(gain > 0, kept / np.where(gain > 0, gain, 1), np.inf)))
    assert q["worst_image"] == roles["verdict"][worst]
    assert not set(roles["verdict"]) & (set(roles["calibration"]) | set(roles["selection"]))
    assert np.mean(int8) != pytest.approx(np.mean(fp32), abs=1e-4), "int8 must actually differ from float32"
    from mcan_deploy.describe import describe

    gate = describe(out).notes["int8 gate"]
    assert f"lower bound {100 * q['bound']:.1f}%, worst image {q['worst_image']}" in gate, gate


def _loaded(folder):
    p = load_images(folder, progress=False)
    return zip(p.names, p.inputs, p.targets)


def test_auto_precision_on_a_cpu_without_bf16_takes_the_fastest_that_passes(trained, sample_dir, tmp_path, monkeypatch):
    """The detection stubbed to a CPU without bf16 units: only fp32 and int8 are timed, and the
    file follows the rule applied to what was measured (stored in its metadata): with a bar int8
    cannot reach, a float32 file that records why (the int8 file of a passing gate is the forced
    test's)."""
    from mcan_deploy import hardware
    from mcan_deploy.gate.precision import choose_cpu_precision
    from mcan_deploy.gate.verdict import Verdict

    monkeypatch.setattr(hardware, "native_bf16", lambda device: (False, "stubbed: no bf16 units"))
    path, _ = trained
    out = tmp_path / "m.xml"
    args = [str(path), "-o", str(out), "--precision", "auto", "--calibration", str(sample_dir), *CROPS]
    assert export_main([*args, "--min-retention", "10"]) == 0  # an unreachable bar: int8 fails
    _, meta = ovx.read_ir(out)
    auto = meta["auto"]
    assert set(auto["seconds"]) == {"fp32", "int8"} and set(auto["verdicts"]) == {"int8"}
    verdict = Verdict(**{k: v for k, v in auto["verdicts"]["int8"].items() if k != "confidence"})
    want = choose_cpu_precision((False, "stubbed: no bf16 units"), auto["seconds"], {"int8": verdict})
    assert (auto["precision"], auto["why"]) == (want.precision, want.why)
    assert want.precision == "fp32" and meta["precision"] == "fp32" and meta["auto_precision"] == "fp32"
    assert "int8 fails the gate" in auto["why"] and "bf16 not native here (stubbed: no bf16 units)" in auto["why"]
    assert not verdict.passed and verdict.min_retention == 10
