"""The fused path from the command line: mcan-train --rcab triton, mcan-upscale --rcab triton.
Run through Triton's interpreter in CI (see tests/conftest.py), natively on CUDA."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tomli_w
import torch

from mcan_deploy import kernels
from mcan_deploy.checkpoint import load_tensors, save_model
from mcan_deploy.cli.train import main as train_main
from mcan_deploy.cli.upscale import main as upscale_main
from mcan_deploy.model import ModelConfig, build_model

from ..helpers import tiny_plan_dict

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter
pytestmark = pytest.mark.skipif(
    not kernels.fused_available(torch.device(DEVICE), warn=False), reason="Triton cannot run here"
)


def test_train_with_the_fused_tail_matches_torch_and_resumes_across_impls(sample_dir, tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    data = tiny_plan_dict()
    data["train"]["precision"] = "fp32"  # the two tails compared at float32 tolerance (bf16 is tested apart)
    plan.write_text(tomli_w.dumps(data))
    runs = {}
    for impl in ("torch", "triton"):
        out = tmp_path / impl
        assert (
            train_main(
                [
                    "--config",
                    str(plan),
                    "--data",
                    str(sample_dir),
                    "--out",
                    str(out),
                    "--device",
                    DEVICE,
                    "--no-progress",
                    "--rcab",
                    impl,
                ]
            )
            == 0
        )
        runs[impl] = out
    capsys.readouterr()
    w_torch, meta = load_tensors(runs["torch"] / "model.safetensors")
    w_triton, meta_t = load_tensors(runs["triton"] / "model.safetensors")
    assert meta["model"] == meta_t["model"] and "rcab_impl" not in meta["model"]
    assert 'rcab_impl = "triton"' in (runs["triton"] / "plan.toml").read_text()
    # 16 iterations of Adadelta/Adam: the two paths differ only in summation order, and do differ
    assert any(not w_triton[k].equal(w_torch[k]) for k in w_torch), "the fused path did not run"
    for k in w_torch:
        torch.testing.assert_close(w_triton[k], w_torch[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    val = [json.loads(ln) for ln in (runs["triton"] / "metrics.jsonl").read_text().splitlines()]
    assert any("psnr" in v for v in val)
    # how the RCABs run may change on resume; the plan itself may not
    assert (
        train_main(
            [
                "--config",
                str(plan),
                "--data",
                str(sample_dir),
                "--out",
                str(runs["torch"]),
                "--device",
                DEVICE,
                "--no-progress",
                "--rcab",
                "triton",
            ]
        )
        == 0
    )
    assert "already finished" in capsys.readouterr().out


def test_upscale_with_the_fused_tail_matches_torch(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_model(path, build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)))
    bgr = np.random.default_rng(0).integers(0, 256, (41, 57, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), bgr)
    outs = {}
    for impl in ("torch", "triton"):
        for stats in ("global", "tile"):
            rc = upscale_main(
                [
                    str(path),
                    str(tmp_path / "in.png"),
                    "-o",
                    str(tmp_path / f"{impl}-{stats}"),
                    "--rcab",
                    impl,
                    "--ca-stats",
                    stats,
                    "--tile",
                    "24",
                    "--device",
                    DEVICE,
                    "--no-progress",
                ]
            )
            assert rc == 0
            outs[impl, stats] = cv2.imread(str(tmp_path / f"{impl}-{stats}" / "in.png"), cv2.IMREAD_UNCHANGED)
    for stats in ("global", "tile"):
        diff = np.abs(outs["triton", stats].astype(int) - outs["torch", stats].astype(int))
        assert diff.max() <= 1, (stats, diff.max())  # float rounding may flip one 8-bit step
    assert not np.array_equal(outs["torch", "global"], bgr), "the model must change the image"
    assert "1 written" in capsys.readouterr().out


def test_onnx_model_refuses_the_triton_option(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"")
    rc = upscale_main(
        [str(tmp_path / "m.onnx"), str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--rcab", "triton"]
    )
    assert rc != 0 and "--rcab triton applies to PyTorch models" in capsys.readouterr().err
