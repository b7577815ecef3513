"""mcan-info: what each model file is, and one-line errors for bad and hostile files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mcan_deploy.checkpoint import save_block, save_model
from mcan_deploy.cli.info import main
from mcan_deploy.model import ModelConfig, build_model, receptive_field

from .test_bad_input import _onnx_with_external, _Payload


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("info")
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=2, n_feats=8))
    save_model(d / "model.safetensors", model, plan=["1", "2"])
    save_block(d / "N2.safetensors", model.blocks[1], model.config, 2)
    return d, model


def test_model_and_block_are_described_from_their_metadata(files, capsys):
    d, model = files
    assert main([str(d / "model.safetensors"), str(d / "N2.safetensors"), "--json"]) == 0
    whole, block = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    r = receptive_field(model.blocks[0]) // 2  # 7 convolutions: 7 px a side
    assert r == 7
    assert whole["kind"] == "model" and whole["blocks"] == [0, 2] and whole["block_radii"] == [r, r]
    assert whole["receptive_field"] == 4 * r + 1 and whole["config"]["n_feats"] == 8
    assert "exact" in whole["tiling"] and "torch" in whole["backends"]
    import hashlib

    assert whole["sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert block["kind"] == "block" and block["blocks"] == [1, 2] and block["receptive_field"] == 2 * r + 1
    assert main([str(d / "model.safetensors")]) == 0
    assert "receptive field 29x29" in capsys.readouterr().out


def test_onnx_file_is_described(files, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from mcan_deploy.export.onnx import export_onnx

    _d, model = files
    out = tmp_path / "m.onnx"
    export_onnx(model, out)
    assert main([str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "onnx" and info["blocks"] == [0, 2] and "approximate" in info["tiling"]


def test_bad_and_hostile_files_get_one_line_errors(files, tmp_path, capsys):
    d, _ = files
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((d / "model.safetensors").read_bytes()[:300])
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not onnx at all")
    cases = {
        truncated: "corrupt, truncated or another format",
        evil: "pickle-based PyTorch file, refused",
        junk: "not a readable ONNX",
        tmp_path / "missing.safetensors": "no such file",
        _onnx_with_external(tmp_path, "../secret.bin"): "outside the model's folder",
    }
    for path, message in cases.items():
        assert main([str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not marker.exists(), "the pickle ran"
