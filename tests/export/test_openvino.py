"""OpenVINO: the runner against PyTorch (whole image, both statistics modes, odd sizes), IR
metadata round trip, the conversion cache, the back-end choice and every bad combination."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from mcan_deploy.checkpoint import save_model
from mcan_deploy.cli.export import main as export_main
from mcan_deploy.cli.upscale import main as upscale_main
from mcan_deploy.errors import MCANError
from mcan_deploy.export import openvino as ovx
from mcan_deploy.gate.openvino import export_openvino
from mcan_deploy.model import ModelConfig, build_model, init_block
from mcan_deploy.runners import LayerRunner, OpenVINORunner, choose_backend, load_runner, openvino_runner, select
from mcan_deploy.tiling import TileConfig, footprint, upscale_tensor

SMALL = ModelConfig(n_blocks=2, n_resblocks=2, n_feats=8)


def attentive_model(seed: int = 0, cfg: ModelConfig = SMALL):
    """Orthogonal weights with channel-attention gates that swing with the channel means (up
    weights x8), so per-tile statistics visibly differ from global ones."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    for b in model.blocks:
        init_block(b, "orthogonal", torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "ca"):
                m.ca.down.weight.mul_(8)
                m.ca.up.weight.mul_(8)
    return model.eval()


def split_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Texture on a dark left half and a bright right half: tiles see different channel means."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, h, w, generator=g) * 0.3
    x[:, :, w // 2 :] += 0.65
    return x


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    d = tmp_path_factory.mktemp("openvino")
    model = attentive_model()
    save_model(d / "m.safetensors", model)
    f = export_openvino(model, d / "m.xml", source_hash="abc")
    return model, d, f


@pytest.fixture(scope="module")
def runner(ir):
    _, d, _ = ir
    ov_model, meta = ovx.read_ir(d / "m.xml")
    return OpenVINORunner(ov_model, meta, "fp32")


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 7, 13), (1, 3, 33, 20)])
def test_whole_blocks_match_pytorch(ir, runner, shape):
    model, _, _ = ir
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        ref1 = model.blocks[0](x)
    assert (runner.run_blocks(x, 0, 2) - ref).abs().max() <= 1e-4
    assert (runner.run_blocks(x, 0, 1) - ref1).abs().max() <= 1e-4


@pytest.mark.parametrize("size", [(1, 1), (29, 47), (70, 90)])
def test_global_statistics_are_exact_where_tile_statistics_are_not(ir, runner, size):
    model, _, _ = ir
    x = split_image(*size)
    with torch.no_grad():
        ref = model(x[None])[0]
    assert isinstance(runner, LayerRunner)
    got, report = upscale_tensor(runner, x, TileConfig(16, ca_stats="global", plan="layers"))
    assert report.plan == "layer-by-layer" and (got - ref).abs().max() <= 1e-4
    got, report = upscale_tensor(runner, x, TileConfig(16, ca_stats="global"))
    assert report.plan == "whole-image" and (got - ref).abs().max() <= 1e-4
    if size[0] > 16:  # several tiles: per-tile means move the output well past the tolerance
        tiled, report = upscale_tensor(runner, x, TileConfig(16, ca_stats="tile"))
        assert report.ca_stats == "tile" and (tiled - ref).abs().max() > 1e-3


def test_ir_metadata_round_trip(ir):
    _model, d, f = ir
    assert f.precision == "fp32" and f.max_abs_error <= 1e-4 and f.quality is None
    assert (d / "m.bin").is_file()
    _, meta = ovx.read_ir(d / "m.xml")
    assert ModelConfig(**meta["model"]) == SMALL
    assert meta["format"] == ovx.FORMAT and meta["precision"] == "fp32" and meta["source_sha256"] == "abc"
    assert meta["n_blocks"] == 2 and meta["block_radii"] == [7, 7] and meta["receptive_field"] == 29
    names = [p[0] for p in meta["pieces"]]
    assert names == [
        "N1",
        "N1.head",
        "N1.r0",
        "N1.g0",
        "N1.r1",
        "N1.g1",
        "N1.finish",
        "N2",
        "N2.head",
        "N2.r0",
        "N2.g0",
        "N2.r1",
        "N2.g1",
        "N2.finish",
        "N",
    ]


def test_ir_without_our_metadata_or_weights_is_refused(ir, tmp_path):
    import openvino as ov

    _model, d, _ = ir
    plain = ov.convert_model(torch.nn.Conv2d(3, 3, 3, padding=1), example_input=torch.rand(1, 3, 8, 8))
    ov.save_model(plain, str(tmp_path / "plain.xml"))
    with pytest.raises(MCANError, match="without mcan-deploy metadata"):
        ovx.read_ir(tmp_path / "plain.xml")
    (tmp_path / "lonely.xml").write_bytes((d / "m.xml").read_bytes())
    with pytest.raises(MCANError, match="lonely.bin are missing"):
        ovx.read_ir(tmp_path / "lonely.xml")


def test_conversion_is_cached_by_content(ir, tmp_path, monkeypatch):
    _, d, _ = ir
    calls = []
    real = ovx.to_openvino
    monkeypatch.setattr(ovx, "to_openvino", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    a = load_runner(d / "m.safetensors", backend="openvino", cache_dir=cache)
    b = load_runner(d / "m.safetensors", backend="openvino", cache_dir=cache)
    assert len(calls) == 1 and len(list((cache / "ir").glob("*.xml"))) == 1
    x = split_image(20, 30)[None]
    assert torch.equal(a.run_blocks(x, 0, 2), b.run_blocks(x, 0, 2))


def _write(path, arr):
    assert cv2.imwrite(str(path), arr)


def test_whole_image_plan_follows_the_memory_budget(runner):
    x = split_image(40, 50)
    assert runner.whole_image_bytes(40, 50) > 40 * 50 * 4 * 8 * 4  # four float32 maps of 8 features at least
    need = footprint(runner, "whole", 40, 50, TileConfig(16)).total()  # the images in and out too
    _, report = upscale_tensor(runner, x, TileConfig(16, ca_stats="global", max_memory=need))
    assert report.plan == "whole-image" and "GB budget" in report.notes[0]
    _, report = upscale_tensor(runner, x, TileConfig(16, ca_stats="global", max_memory=need - 1))
    assert report.plan == "layer-by-layer"
    _, report = upscale_tensor(runner, x, TileConfig(16, ca_stats="tile"))
    assert report.plan != "whole-image"  # tile statistics were asked for: flat memory
    with pytest.raises(MCANError, match="tile-statistics plan"):
        upscale_tensor(runner, x, TileConfig(16, ca_stats="global", plan="block"))


@pytest.mark.parametrize(
    "backend_args",
    [
        ["--backend", "openvino"],
        ["--backend", "openvino", "--plan", "layers"],
        ["--backend", "openvino", "--ca-stats", "tile"],
    ],
)
def test_cli_matches_torch_on_odd_gray_alpha_and_one_pixel_images(ir, tmp_path, capsys, backend_args):
    _, d, _ = ir
    rng = np.random.default_rng(0)
    _write(tmp_path / "odd.png", rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    _write(tmp_path / "gray.png", rng.integers(0, 256, (23, 31), dtype=np.uint8))
    _write(tmp_path / "alpha.png", rng.integers(0, 256, (19, 25, 4), dtype=np.uint8))
    _write(tmp_path / "one.png", rng.integers(0, 256, (1, 1, 3), dtype=np.uint8))
    ins = [tmp_path / n for n in ("odd.png", "gray.png", "alpha.png", "one.png")]
    common = ["--no-progress", "--tile", "16", "--cache-dir", str(tmp_path / "cache")]
    stats = backend_args[-2:] if "--ca-stats" in backend_args else []
    assert (
        upscale_main(
            [
                str(d / "m.safetensors"),
                *map(str, ins),
                "-o",
                str(tmp_path / "torch"),
                "--backend",
                "torch",
                *stats,
                *common,
            ]
        )
        == 0
    )
    assert (
        upscale_main([str(d / "m.safetensors"), *map(str, ins), "-o", str(tmp_path / "ov"), *backend_args, *common])
        == 0
    )
    for f in ins:
        want = cv2.imread(str(tmp_path / "torch" / f.name), cv2.IMREAD_UNCHANGED)
        got = cv2.imread(str(tmp_path / "ov" / f.name), cv2.IMREAD_UNCHANGED)
        assert got.shape == want.shape and got.dtype == want.dtype, f.name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, f.name
    alpha_in = cv2.imread(str(tmp_path / "alpha.png"), cv2.IMREAD_UNCHANGED)[:, :, 3]
    assert np.array_equal(cv2.imread(str(tmp_path / "ov" / "alpha.png"), cv2.IMREAD_UNCHANGED)[:, :, 3], alpha_in)


def test_export_cli_writes_ir_that_upscale_runs(ir, tmp_path, capsys):
    _, d, _ = ir
    assert export_main([str(d / "m.safetensors"), "-o", str(tmp_path / "cli.xml")]) == 0
    assert "(fp32), OpenVINO vs PyTorch max abs error" in capsys.readouterr().out
    _write(tmp_path / "in.png", np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    assert (
        upscale_main(
            [
                str(tmp_path / "cli.xml"),
                str(tmp_path / "in.png"),
                "-o",
                str(tmp_path / "out"),
                "--no-progress",
                "--tile",
                "16",
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "in.png").is_file()


# ---- the back-end choice and the combinations that cannot run --------------------------------


def test_auto_takes_openvino_on_a_cpu_and_torch_without_it(monkeypatch):
    assert choose_backend("m.safetensors", device="cpu")[0] == "openvino"
    assert choose_backend("m.xml")[0] == "openvino"
    assert choose_backend("m.onnx")[0] == "onnxruntime"
    assert choose_backend("m.safetensors", dtype="bfloat16", device="cpu")[0] == "torch"
    assert choose_backend("m.safetensors", rcab_impl="triton", device="cpu")[0] == "torch"
    real = select.installed
    monkeypatch.setattr(select, "installed", lambda *m: "openvino" not in m and real(*m))
    name, why = choose_backend("m.safetensors", device="cpu")
    assert name == "torch" and "not installed" in why
    with pytest.raises(MCANError, match=r"needs the openvino extra: pip install 'mcan-deploy\[openvino\]'"):
        choose_backend("m.safetensors", backend="openvino")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"path": "m.onnx", "backend": "openvino"}, "ONNX file, which runs on onnxruntime"),
        ({"path": "m.xml", "backend": "torch"}, "OpenVINO IR file, which runs on openvino"),
        ({"path": "m.safetensors", "backend": "onnxruntime"}, "export it first"),
        (
            {"path": "m.safetensors", "backend": "openvino", "dtype": "bfloat16"},
            "--dtype bfloat16 applies to PyTorch models",
        ),
        ({"path": "m.safetensors", "backend": "torch", "precision": "bf16"}, "applies to the openvino back-end"),
        ({"path": "m.onnx", "precision": "int8"}, "applies to the openvino back-end, not onnxruntime"),
        ({"path": "m.safetensors", "backend": "openvino", "device": "cuda"}, "runs on the CPU"),
    ],
)
def test_bad_combinations_are_one_line_errors(kwargs, message):
    path = kwargs.pop("path")
    with pytest.raises(MCANError, match=message) as err:
        choose_backend(path, **kwargs)
    assert "\n" not in str(err.value)


def test_precision_errors(ir, monkeypatch):
    _, d, _ = ir
    ov_model, meta = ovx.read_ir(d / "m.xml")
    with pytest.raises(MCANError, match="not an int8 file; make one with mcan-export"):
        OpenVINORunner(ov_model, meta, "int8")
    with pytest.raises(MCANError, match="is an int8 file"):
        OpenVINORunner(ov_model, {**meta, "precision": "int8"}, "bf16")
    monkeypatch.setattr(openvino_runner, "cpu_capabilities", lambda core=None: ["FP32", "INT8"])
    with pytest.raises(MCANError, match="no bfloat16 support"):
        OpenVINORunner(ov_model, meta, "bf16")


def test_global_statistics_on_onnx_runtime_is_refused(tmp_path):
    from mcan_deploy.tiling import upscale_tensor as up

    class TileOnly:  # what OrtRunner offers: whole blocks, no layer steps
        device, n_blocks, block_radii, has_channel_attention = torch.device("cpu"), 1, [3], True

        def run_blocks(self, x, start, stop):
            return x

        def supports(self, start, stop):
            return True

    with pytest.raises(MCANError, match="cannot run global statistics; use --ca-stats tile"):
        up(TileOnly(), torch.rand(3, 8, 8), TileConfig(4, ca_stats="global"))


def test_export_refuses_bad_requests(ir, tmp_path, capsys):
    _, d, _ = ir
    src = str(d / "m.safetensors")
    cases = [
        ([src, "-o", str(tmp_path / "m.xml"), "--precision", "int8"], "needs --calibration"),
        ([src, "-o", str(tmp_path / "m.onnx"), "--precision", "int8"], "apply to --format openvino"),
        ([src, "-o", str(tmp_path / "m.xml"), "--fp16"], "apply to --format onnx"),
        ([src, "-o", str(tmp_path / "m.bin"), "--format", "openvino"], "ends in .xml"),
    ]
    for argv, message in cases:
        assert export_main(argv) == 1
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_nothing_phones_home(tmp_path):
    """A conversion and a run in a fresh process with an empty home: the telemetry package is
    never imported, no socket is opened and nothing is written under ~/intel."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(
        "import socket, sys, torch\n"
        "def refuse(*a, **k):\n    raise AssertionError(f'network use: {a}')\n"
        "socket.socket.connect = refuse\nsocket.getaddrinfo = refuse\n"
        "from mcan_deploy.model import ModelConfig, build_model\n"
        "from mcan_deploy.export.openvino import to_openvino, get_metadata\n"
        "from mcan_deploy.runners import OpenVINORunner\n"
        "m = to_openvino(build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=4)))\n"
        "OpenVINORunner(m, get_metadata(m, 'm')).run_blocks(torch.rand(1, 3, 8, 8), 0, 1)\n"
        "import nncf\n"
        "assert sys.modules['openvino_telemetry'] is None\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("CI", "NNCF_CI")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "home" / "intel").exists()
