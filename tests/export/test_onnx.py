"""ONNX export: parity with PyTorch in ONNX Runtime, metadata, tiling through ORT, bad files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from mcan_deploy.checkpoint import load_model, save_model  # noqa: E402
from mcan_deploy.cli.export import main as export_main  # noqa: E402
from mcan_deploy.cli.upscale import main as upscale_main  # noqa: E402
from mcan_deploy.export import onnx as onnx_export  # noqa: E402
from mcan_deploy.export.onnx import ExportError, export_onnx, read_metadata  # noqa: E402
from mcan_deploy.model import ModelConfig, build_model, init_block  # noqa: E402
from mcan_deploy.runners import OrtRunner, TorchRunner  # noqa: E402
from mcan_deploy.tiling import TileConfig, upscale_tensor  # noqa: E402

from ..helpers import once_per_run  # noqa: E402

SMALL = ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)


def small_model(seed: int = 0, cfg: ModelConfig = SMALL):
    torch.manual_seed(seed)
    model = build_model(cfg)
    for b in model.blocks:
        init_block(b, "orthogonal", torch.Generator().manual_seed(seed))
    return model.eval()


def ort_run(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """A small model, its whole-N and per-block ONNX files (exported once for all workers)."""

    def build(d):
        model = small_model()
        save_model(d / "m.safetensors", model)
        export_onnx(model, d / "m.onnx", source_hash="abc")
        export_onnx(model, d / "m.onnx", blocks="1,2", source_hash="abc")

    d = once_per_run(tmp_path_factory, "onnx-small-export", build)
    return load_model(d / "m.safetensors").eval(), d


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 7, 13), (1, 3, 33, 20), (3, 3, 64, 48)])
def test_parity_at_many_sizes(small_export, shape):
    model, d = small_export
    torch.manual_seed(1)
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ort_run(d / "m.onnx", x) - ref).max() <= 1e-4
    with torch.no_grad():
        ref1 = model.blocks[0](x).numpy()
    assert np.abs(ort_run(d / "m.N1.onnx", x) - ref1).max() <= 1e-4


def test_metadata_round_trip(small_export):
    _model, d = small_export
    meta = read_metadata(d / "m.onnx")
    assert "rcab_impl" not in meta["model"], "how a model runs is not part of the file"
    assert ModelConfig(**meta["model"]) == SMALL
    assert meta["blocks"] == [0, 2] and meta["block_radii"] == [5, 5] and meta["receptive_field"] == 21
    assert meta["opset"] == onnx_export.DEFAULT_OPSET and meta["source_sha256"] == "abc"
    assert read_metadata(d / "m.N2.onnx")["blocks"] == [1, 2]


def test_full_size_configuration_exports_with_the_paper_margins(tmp_path):
    model = small_model(cfg=ModelConfig())
    (f,) = export_onnx(model, tmp_path / "paper.onnx")
    assert f.max_abs_error <= 1e-4
    meta = read_metadata(tmp_path / "paper.onnx")
    assert meta["block_radii"] == [35, 35, 35] and meta["receptive_field"] == 211
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert np.abs(ort_run(tmp_path / "paper.onnx", x) - model(x).numpy()).max() <= 1e-4


@pytest.mark.parametrize("plan", ["all", "block"])
def test_tiling_onnx_equals_tiling_pytorch(small_export, plan):
    model, d = small_export
    ort_runner = OrtRunner(d / "m.onnx")
    assert ort_runner.block_radii == [5, 5] and ort_runner.supports(0, 2) and ort_runner.supports(1, 2)
    torch_runner = TorchRunner(model, torch.device("cpu"))
    torch.manual_seed(2)
    x = torch.rand(3, 45, 61)
    cfg = TileConfig(tile=16, ca_stats="tile", plan=plan)
    got, _rep = upscale_tensor(ort_runner, x, cfg)
    want, _ = upscale_tensor(torch_runner, x, cfg)
    assert (got - want).abs().max() <= 1e-4
    with pytest.raises(Exception, match="cannot run global statistics"):
        upscale_tensor(ort_runner, x, TileConfig(tile=16, ca_stats="global"))


def test_per_block_files_alone_serve_the_block_plan(small_export, tmp_path):
    model, d = small_export
    for i in (1, 2):
        (tmp_path / f"m.N{i}.onnx").write_bytes((d / f"m.N{i}.onnx").read_bytes())
    runner = OrtRunner(tmp_path / "m.N1.onnx")
    assert not runner.supports(0, 2) or runner.supports(0, 1)
    x = torch.rand(3, 30, 30)
    out, rep = upscale_tensor(runner, x, TileConfig(tile=12, ca_stats="tile"))
    assert rep.plan == "block-by-block"
    want, _ = upscale_tensor(
        TorchRunner(model, torch.device("cpu")), x, TileConfig(tile=12, ca_stats="tile", plan="block")
    )
    assert (out - want).abs().max() <= 1e-4


def _perturbed_exports(monkeypatch, scale: float = 1.001) -> None:
    """Every exported file with its float weights x ``scale`` (0.1%): a faulty export the parity
    check must catch at its real tolerance (1e-4 in float32)."""
    import onnx
    from onnx import numpy_helper

    real = onnx_export._export_one

    def perturbed(module, opset):
        proto = onnx.load_from_string(real(module, opset))
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 1:
                init.CopyFrom(numpy_helper.from_array(arr * np.float32(scale), init.name))
        return proto.SerializeToString()

    monkeypatch.setattr(onnx_export, "_export_one", perturbed)


def test_failed_check_writes_nothing_and_keeps_the_old_file(monkeypatch, tmp_path):
    export_onnx(small_model(), tmp_path / "old.onnx", blocks="1,2")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert onnx_export.TOLERANCE["float32"] == 1e-4, "checked at the shipped tolerance"
    _perturbed_exports(monkeypatch)
    with pytest.raises(ExportError, match="old.N1.onnx"):
        export_onnx(small_model(seed=3), tmp_path / "old.onnx", blocks="1,2")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "old files intact, no temp files"
    with pytest.raises(
        ExportError,
        match=r"x.onnx: ONNX Runtime output .* differs from PyTorch at 53x37: max abs error .* nothing was written",
    ):
        export_onnx(small_model(), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_and_truncated_files_give_clear_errors(small_export, tmp_path, capsys):
    _, d = small_export
    data = (d / "m.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.onnx").write_text("hello")
    for name in ("trunc.onnx", "text.onnx"):
        with pytest.raises(ExportError, match=name):
            OrtRunner(tmp_path / name)
        img = tmp_path / "in.png"
        import cv2

        cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
        rc = upscale_main([str(tmp_path / name), str(img), "-o", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err.count("\n") == 0 and name in err


def test_export_cli_and_source_hash(small_export, tmp_path, capsys):
    _, d = small_export
    rc = export_main([str(d / "m.safetensors"), "-o", str(tmp_path / "cli.onnx"), "--blocks", "2"])
    assert rc == 0 and "cli.N2.onnx" in capsys.readouterr().out
    meta = read_metadata(tmp_path / "cli.N2.onnx")
    assert meta["source_sha256"] == hashlib.sha256((d / "m.safetensors").read_bytes()).hexdigest()
    assert export_main([str(d / "m.safetensors"), "-o", str(tmp_path / "x.onnx"), "--blocks", "7"]) == 1
    assert "blocks are numbered 1..2" in capsys.readouterr().err


def test_upscale_through_onnx_matches_pytorch(small_export, tmp_path, capsys):
    import cv2

    _, d = small_export
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "in.png"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for model, out in ((d / "m.onnx", "o1"), (d / "m.safetensors", "o2")):
        assert (
            upscale_main(
                [
                    str(model),
                    str(tmp_path / "in.png"),
                    "-o",
                    str(tmp_path / out),
                    "--no-progress",
                    "--tile",
                    "16",
                    "--ca-stats",
                    "tile",
                    "--plan",
                    "all",
                ]
            )
            == 0
        )
    a = cv2.imread(str(tmp_path / "o1" / "in.png")).astype(int)
    b = cv2.imread(str(tmp_path / "o2" / "in.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_fp16_export_within_its_stated_tolerance(tmp_path):
    model = small_model()
    (f,) = export_onnx(model, tmp_path / "h.onnx", fp16=True)
    assert read_metadata(tmp_path / "h.onnx")["dtype"] == "float16"
    assert 0 < f.max_abs_error <= onnx_export.TOLERANCE["float16"]
    runner = OrtRunner(tmp_path / "h.onnx")
    x = torch.rand(1, 3, 21, 17)
    with torch.no_grad():
        ref = model(x)
    assert (runner.run_blocks(x, 0, 2) - ref).abs().max() <= onnx_export.TOLERANCE["float16"]
