"""Every entry point on its worst input: broken and odd image files, bad pairs, pickles, hostile
ONNX files. Each case fails with one line naming the file and the reason (a traceback only with
--debug), a batch goes on past a bad file, and nothing from an untrusted file is executed."""

from __future__ import annotations

import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from mcan_deploy.checkpoint import load_model, save_model
from mcan_deploy.cli.train import main as train_main
from mcan_deploy.cli.upscale import main as upscale_main
from mcan_deploy.data import find_pairs, load_images
from mcan_deploy.errors import CheckpointError, DataError, ImageReadError, MCANError
from mcan_deploy.io import read_image
from mcan_deploy.model import ModelConfig, build_model

from .helpers import tiny_plan_dict


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR chunk declaring the size, then nothing: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 segment declaring the size, EOI: a JPEG bomb's header."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def encoded(suffix: str, arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(suffix, arr)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=8))
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model)
    return path, model


# ---- image files ------------------------------------------------------------------------------


def rgb8(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


BAD_FILES = {
    "zero.png": (b"", "empty file"),
    "truncated.png": (encoded(".png", rgb8())[:60], "not a readable image"),
    "truncated.jpg": (encoded(".jpg", rgb8(64, 64))[:200], "not a readable image"),
    "text.png": (b"this is a text file, not a picture\n", "not a readable image"),
    "bomb.png": (png_header_only(100_000, 100_000), r"header declares 100000x100000 = 10000.0 MP, above the limit"),
    "bomb.jpg": (jpeg_header_only(60_000, 60_000), r"header declares 3600000000 pixels = 3600.0 MP, above the limit"),
    "big.jpg": (jpeg_header_only(15_000, 15_000), r"header declares 225000000 pixels = 225.0 MP, above the limit"),
    "float64.tif": (encoded(".tif", np.zeros((4, 4), np.float64)), "unsupported pixel type float64"),
    "nan.tif": (encoded(".tif", np.full((4, 4, 3), np.nan, np.float32)), "NaN or infinite"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_files_raise_one_typed_error_naming_the_file(name, tmp_path):
    data, message = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(tmp_path / name)
    assert str(info.value).startswith(str(tmp_path / name)) and "\n" not in str(info.value)


def test_pixel_limit_is_checked_from_the_header_for_every_format(tmp_path):
    for suffix, arr in (
        (".png", rgb8()),
        (".jpg", rgb8()),
        (".bmp", rgb8()),
        (".webp", rgb8()),
        (".tif", np.zeros((20, 30, 3), np.float32)),
        (".tiff", np.zeros((20, 30), np.uint16)),
    ):
        path = tmp_path / f"x{suffix}"
        path.write_bytes(encoded(suffix, arr))
        assert read_image(path, max_pixels=600).size == (20, 30)
        with pytest.raises(ImageReadError, match="header declares 30x20 = 0.0 MP"):  # before decoding
            read_image(path, max_pixels=599)


@pytest.mark.parametrize("suffix", [".hdr", ".pfm", ".pam", ".ppm"])
def test_other_formats_behind_an_image_name_are_not_decoded(suffix, tmp_path):
    """OpenCV would decode these (a Radiance HDR can be a run-length bomb): without a header the
    pixel limit can check, nothing is decoded."""
    arr = np.zeros((40, 40, 3), np.float32 if suffix in (".hdr", ".pfm") else np.uint8)
    (tmp_path / "x.png").write_bytes(encoded(suffix, arr))
    with pytest.raises(ImageReadError, match="no PNG, JPEG, TIFF, BMP or WebP header"):
        read_image(tmp_path / "x.png")


def test_tiff_with_a_repeated_size_tag_counts_the_largest(tmp_path):
    entries = [(256, 3, 1, 4000), (256, 3, 1, 10), (257, 3, 1, 10)]  # width twice: libtiff takes the first
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHIHH", t, ty, n, v, 0) for t, ty, n, v in entries)
    (tmp_path / "dup.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4)
    with pytest.raises(ImageReadError, match="header declares 4000x10 = 0.0 MP, above the limit"):
        read_image(tmp_path / "dup.tif", max_pixels=1000)


def test_a_file_larger_than_any_image_within_the_limit_is_not_read(tmp_path):
    with open(tmp_path / "big.png", "wb") as f:
        f.write(encoded(".png", rgb8()))
        f.truncate(2**27)  # 128 MB, sparse: no disk used
    with pytest.raises(ImageReadError, match="134217728 bytes, more than an image of at most"):
        read_image(tmp_path / "big.png", max_pixels=10)


def test_folder_given_as_a_file_and_non_ascii_names(tmp_path, model_file, capsys):
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")  # would block a plain read forever
    with pytest.raises(ImageReadError, match="pipe.png: not a regular file"):
        read_image(tmp_path / "pipe.png")
    path, _ = model_file
    src = tmp_path / "eingänge_写真"
    src.mkdir()
    (src / "straße_é.png").write_bytes(encoded(".png", rgb8()))
    rc = upscale_main([str(path), str(src), "-o", str(tmp_path / "ausgabe ö"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "ausgabe ö" / "straße_é.png").is_file()


def test_upscale_batch_goes_on_past_every_bad_file_with_one_line_each(tmp_path, model_file, capfd):
    """capfd: OpenCV writes its warnings to file descriptor 2 directly, past sys.stderr."""
    path, _ = model_file
    src = tmp_path / "src"
    src.mkdir()
    for name, (data, _) in BAD_FILES.items():
        (src / name).write_bytes(data)
    (src / "good.png").write_bytes(encoded(".png", rgb8()))
    (src / "one_pixel.png").write_bytes(encoded(".png", rgb8(1, 1)))
    (src / "gray16.png").write_bytes(encoded(".png", np.full((5, 7), 40000, np.uint16)))
    (src / "alpha.png").write_bytes(encoded(".png", np.dstack([rgb8(6, 6), np.full((6, 6), 9, np.uint8)])))
    rc = upscale_main([str(path), str(src), "-o", str(tmp_path / "out"), "--no-progress"])
    cap = capfd.readouterr()
    assert rc == 1, "failures make the exit code non-zero"
    assert f"4 written, 0 skipped, {len(BAD_FILES)} failed" in cap.out
    assert "Traceback" not in cap.err and "WARN" not in cap.err, cap.err  # OpenCV's own warnings are muted
    for name in BAD_FILES:
        assert sum(name in line for line in cap.err.splitlines()) == 1, (name, cap.err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "alpha.png",
        "good.png",
        "gray16.png",
        "one_pixel.png",
    ]
    assert cv2.imread(str(tmp_path / "out" / "gray16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_output_folder_that_cannot_be_written(tmp_path, model_file, capsys):
    path, _ = model_file
    (tmp_path / "a.png").write_bytes(encoded(".png", rgb8()))
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    rc = upscale_main([str(path), str(tmp_path / "a.png"), "-o", str(tmp_path / "blocker" / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot write" in err and "Traceback" not in err


def test_scale_beyond_the_pixel_limit_is_refused_before_resizing(tmp_path, model_file, capsys):
    path, _ = model_file
    (tmp_path / "a.png").write_bytes(encoded(".png", rgb8()))
    rc = upscale_main(
        [
            str(path),
            str(tmp_path / "a.png"),
            "-o",
            str(tmp_path / "o"),
            "--scale",
            "100",
            "--max-pixels",
            "1e6",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "3000x2000 = 6.0 MP, above the limit of 1.0 MP" in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, model_file, capsys, monkeypatch):
    import mcan_deploy.upscale.files as upscale_mod

    path, _ = model_file
    (tmp_path / "a.png").write_bytes(encoded(".png", rgb8()))

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(upscale_mod, "resize", boom)
    args = [str(path), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--no-progress"]
    assert upscale_main(args) == 1
    err = capsys.readouterr().err
    assert "a.png: unexpected ZeroDivisionError: a bug (--debug for the traceback)" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        upscale_main([*args, "--debug"])
    with pytest.raises(CheckpointError):  # library errors too: the traceback, not the line
        upscale_main(
            [str(tmp_path / "missing.safetensors"), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--debug"]
        )


# ---- LR/HR pairs -----------------------------------------------------------------------------


def _write_pairs(root, pairs):
    for split, files in pairs.items():
        for kind in ("HR", "LR"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (root / split / rel).write_bytes(data)


def test_every_pair_problem_is_named_in_one_report_before_training(tmp_path, capsys):
    good = encoded(".png", rgb8(64, 64))
    root = tmp_path / "data"
    _write_pairs(
        root,
        {
            "train": {
                "HR/ok.png": good,
                "LR/ok.png": good,
                "HR/no_lr.png": good,  # missing LR partner
                "LR/no_hr.png": good,  # missing HR partner
                "HR/dup.png": good,
                "HR/dup.jpg": encoded(".jpg", rgb8(64, 64)),
                "LR/dup.png": good,  # two HR files
                "HR/size.png": good,
                "LR/size.png": encoded(".png", rgb8(30, 64)),  # not an integer scale
                "HR/gray.png": good,
                "LR/gray.png": encoded(".png", rgb8(64, 64)[:, :, 0]),  # channels differ
                "HR/broken.png": good,
                "LR/broken.png": good[:50],  # unreadable
            },
            "test": {"HR/t.png": good, "LR/t.png": good, "HR/t2.png": good},  # and one in test/
        },
    )
    with pytest.raises(DataError) as info:
        find_pairs(root / "train")
    text = str(info.value)
    assert "3 problems" in text and all(
        s in text
        for s in ("no_lr.png: no LR partner", "no_hr.png: no HR partner", "dup.jpg and", "dup.png: two HR files")
    )
    # through mcan-train: pairing and loading problems of both splits, all in one error
    import tomli_w

    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(tiny_plan_dict()))
    rc = train_main(["--config", str(plan), "--data", str(root), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    for needle in (
        "train: 6 problems",
        "no_lr.png: no LR partner",
        "no_hr.png: no HR partner",
        "two HR files",
        "size.png (64x30) and",
        "sizes do not differ by one integer scale",
        "gray.png (gray) and",
        "(colour): channel counts differ",
        "broken.png: not a readable image",
        "test: 1 problem",
        "t2.png: no LR partner",
    ):
        assert needle in err, (needle, err)
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing trained"


def test_pair_loader_limit_applies_to_training_data(tmp_path):
    good = encoded(".png", rgb8(64, 64))
    _write_pairs(tmp_path, {"train": {"HR/a.png": good, "LR/a.png": good}})
    with pytest.raises(DataError, match="above the limit"):
        load_images(tmp_path / "train", progress=False, max_pixels=1000)


# ---- untrusted model files -------------------------------------------------------------------


class _Payload:
    """Pickles into a call of os.system: what a hostile .pt file carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_models_are_refused_or_read_with_weights_only(tmp_path, model_file, capsys):
    _path, model = model_file
    pt = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict()}, pt)
    with pytest.raises(CheckpointError, match="pickle-based PyTorch file, refused .* --trust-pickle"):
        load_model(pt)
    (tmp_path / "a.png").write_bytes(encoded(".png", rgb8()))
    rc = upscale_main([str(pt), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "--trust-pickle" in capsys.readouterr().err
    loaded = load_model(pt, trust_pickle=True)
    assert loaded.config == model.config
    assert all(loaded.state_dict()[k].equal(v) for k, v in model.state_dict().items())

    # protocol 0 pickles and legacy files do not start with the usual magic: still never unpickled
    import pickle

    (tmp_path / "old.pth").write_bytes(pickle.dumps({"w": 1}, protocol=0))
    with pytest.raises(CheckpointError, match="not a safetensors model file .* --trust-pickle"):
        load_model(tmp_path / "old.pth")

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "x": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"refused by torch.load\(weights_only=True\)"):
        load_model(evil, trust_pickle=True)
    assert not marker.exists(), "the payload must never run"


def test_a_safetensors_file_whose_first_byte_is_0x80_is_not_taken_for_a_pickle(tmp_path, model_file):
    """The first 8 bytes are the header length: 0x80 in 1 of 32 files; a pickle also starts so."""
    _, model = model_file
    for pad in range(40):
        path = tmp_path / f"m{pad}.safetensors"
        save_model(path, model, note="x" * pad)
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with a 0x80 first byte in 40 tries")
    assert load_model(path).config == model.config


def test_export_refuses_to_overwrite_its_input(tmp_path, model_file, capsys):
    pytest.importorskip("onnx")
    from mcan_deploy.cli.export import main as export_main

    path, _ = model_file
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(path.read_bytes())
    assert export_main([str(copy), "-o", str(copy)]) == 1
    assert "would overwrite the model" in capsys.readouterr().err
    assert load_model(copy).config.n_blocks == 1, "the model is intact"


# ---- hostile ONNX files ----------------------------------------------------------------------


def _onnx_with_external(tmp_path, location: str, offset: int = 0, length: int = 16):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = w.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [w],
    )
    path = tmp_path / "models" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save_model(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize(
    "location, message",
    [
        ("../secret.bin", "outside the model's folder"),
        ("/etc/hostname", "outside the model's folder"),
        ("link.bin", "outside the model's folder"),  # a symlink in the folder pointing out
        ("missing.bin", "which is missing"),
        ("short.bin", "reads bytes 0..16 of 'short.bin', which holds 4"),
    ],
)
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, location, message):
    from mcan_deploy.export.onnx import ExportError, read_metadata

    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _onnx_with_external(tmp_path, location)
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    (path.parent / "short.bin").write_bytes(b"\0" * 4)
    with pytest.raises(ExportError, match=message):
        read_metadata(path)


def test_onnx_checks_reach_sparse_constants_and_links_to_the_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from mcan_deploy.export.onnx import ExportError, read_metadata

    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "4")):
        e = values.external_data.add()
        e.key, e.value = k, v
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [1], [0]), [4])
    node = helper.make_node("Constant", [], ["y"], sparse_value=sparse)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4)
    onnx.save_model(helper.make_model(graph), str(tmp_path / "models" / "sparse.onnx"))
    with pytest.raises(ExportError, match="outside the model's folder"):
        read_metadata(tmp_path / "models" / "sparse.onnx")
    # a link to a model elsewhere: locations are joined to the link's folder, as runtimes do
    path = _onnx_with_external(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(b"\0" * 16)
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "m.onnx").symlink_to(path)
    (tmp_path / "dl" / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ExportError, match="outside the model's folder"):
        read_metadata(tmp_path / "dl" / "m.onnx")


def test_onnx_size_limits_and_legit_external_data(tmp_path, model_file):
    pytest.importorskip("onnxruntime")
    import onnx

    from mcan_deploy.export.onnx import ExportError, export_onnx, read_metadata
    from mcan_deploy.runners import OrtRunner

    _, model = model_file
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    with pytest.raises(ExportError, match="above the limit of 1000"):
        read_metadata(path, max_bytes=1000)
    # the same model with its weights in a file beside it: accepted, counted, and it runs
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save_model(onnx.load(str(path)), str(ext), save_as_external_data=True, location="m.weights")
    assert (ext.parent / "m.weights").stat().st_size > 1000, "the weights moved out of the .onnx file"
    assert read_metadata(ext)["n_blocks"] == 1
    with pytest.raises(ExportError, match="model and external data hold"):
        read_metadata(ext, max_bytes=ext.stat().st_size + 100)
    x = torch.rand(1, 3, 24, 24)
    torch.testing.assert_close(OrtRunner(ext).run_blocks(x, 0, 1), OrtRunner(path).run_blocks(x, 0, 1))


def test_onnx_with_malformed_metadata_is_one_error(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from mcan_deploy.export.onnx import META_KEY, ExportError, read_metadata

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(graph)
    helper.set_model_props(m, {META_KEY: "{not json"})
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    with pytest.raises(ExportError, match="malformed mcan-deploy metadata"):
        read_metadata(tmp_path / "m.onnx")
    with pytest.raises(MCANError):
        read_metadata(tmp_path / "none.onnx")
