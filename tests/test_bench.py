"""mcan-bench on a tiny configuration: the JSON's structure, and ratios computed from its own figures."""

from __future__ import annotations

import json

import pytest
import torch

from mcan_deploy.bench import BenchConfig, PeakRSS, conv_flops_per_pixel, run_bench
from mcan_deploy.model import MCANBlock, ModelConfig

from .helpers import SAMPLE


def test_conv_flops_hand_computed():
    block = MCANBlock(ModelConfig(n_resblocks=1, n_feats=8))
    # head 3->8, two RCAB convs 8->8, body conv 8->8, tail 8->3; 3x3 kernels, 2 FLOPs per MAC
    assert conv_flops_per_pixel(block) == 2 * 9 * (3 * 8 + 3 * 8 * 8 + 8 * 3)


def test_peak_rss_sees_an_allocation():
    """A transient 256 MB allocation, freed before the window closes, is in the peak: the
    sampler, not the final reading, must see it. The memory is an anonymous mapping of its own,
    so that unmapping it returns it to the system whatever the allocator does with freed blocks
    (glibc kept a freed 256 MB NumPy buffer resident once in CI)."""
    import mmap
    import time

    import numpy as np

    size = 256 * 2**20
    with PeakRSS() as rss:
        before = PeakRSS.current_mb()
        big = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        pages = np.frombuffer(big, dtype=np.uint8)
        pages[:: mmap.PAGESIZE] = 1  # touched: every page resident
        del pages  # releases the buffer, so that the mapping can close
        time.sleep(0.05)
        big.close()
        after = PeakRSS.current_mb()
    assert after < before + 100, "the allocation must be gone again for this test to mean anything"
    assert rss.peak >= before + 200, (before, rss.peak, after)


@pytest.mark.long
def test_tiny_bench_writes_consistent_outputs(tmp_path):
    import importlib.util

    from mcan_deploy.kernels import fused_available

    backends = ("eager", "channels_last")
    if importlib.util.find_spec("onnxruntime"):
        backends += ("onnxruntime",)
    triton = fused_available(torch.device("cpu"), warn=False)  # CI: Triton's interpreter
    if triton:
        backends += ("triton",)
    openvino = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    if openvino:
        backends += ("openvino", "openvino_int8")
    from mcan_deploy.checkpoint import save_model
    from mcan_deploy.model import build_model

    torch.manual_seed(0)
    save_model(tmp_path / "m.safetensors", build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=4)))
    cfg = BenchConfig(
        model=ModelConfig(n_blocks=1, n_resblocks=1, n_feats=8),  # one block: Triton's interpreter pays per call
        sizes=(32, 48),
        repeat=1,
        tile=24,  # two tiles a side at both sizes (the interpreter pays per launch)
        backends=backends,
        compile_sizes=(),
        train_steps=2,
        train_batch=2,  # the step's code, not its speed: two 16-pixel patches
        train_patch=16,
        train_models=(("tiny", ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)),),
        train_options=("fp32", "bf16 channels_last", "bf16 CUDA graphs"),
        quality_model=str(tmp_path / "m.safetensors"),
        quality_data=str(SAMPLE),
    )
    run_bench(cfg, tmp_path, SAMPLE)
    for name in ("results.json", "report.md", "throughput.png", "memory.png"):
        assert (tmp_path / name).is_file(), name
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "config", "matmul_peak_gflops", "inference", "training"} <= set(res)
    assert {"date", "torch", "cores", "cpu", "device"} <= set(res["machine"])
    rows = res["inference"]
    assert {(r["backend"], r["size"], r["mode"]) for r in rows} == {
        (b, s, m) for b in backends for s in (32, 48) for m in ("whole", "tiled")
    }
    for r in rows:  # the baseline is float32 NCHW, and memory is where the back-end keeps its data
        assert r["memory_format"] == ("channels_last" if r["backend"] == "channels_last" else "NCHW"), r
        assert r["peak_of"] == "process RSS", "a CPU run: RSS for every back-end"
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["mp_per_s"] == pytest.approx(r["size"] ** 2 / 1e6 / r["median_s"])
        base = next(b for b in rows if (b["backend"], b["size"], b["mode"]) == ("eager", r["size"], "whole"))
        assert r["ratio_to_eager"] == pytest.approx(r["mp_per_s"] / base["mp_per_s"])
        flops = 2 * 9 * (3 * 8 + 2 * 8 * 8 + 8 * 8 + 8 * 3) * 1 * r["size"] ** 2  # one block
        assert r["gflops"] == pytest.approx(flops / r["median_s"] / 1e9)
        assert r["peak_share"] == pytest.approx(r["gflops"] / res["matmul_peak_gflops"])
        assert r["peak_mb"] > 0
    train_rows = res["training"]
    # CUDA graphs are CPU-skipped; the fused Triton tail is timed in float32 eager
    assert [(r["what"], r["rcab"], r["options"]) for r in train_rows] == [
        ("block", "torch", "fp32"),
        ("N", "torch", "fp32"),
        ("block", "torch", "bf16 channels_last"),
        ("N", "torch", "bf16 channels_last"),
    ] + ([("block", "triton", "fp32"), ("N", "triton", "fp32")] if triton else [])
    assert all(0 <= r["data_share"] < 1 and r["min_s"] <= r["step_s"] <= r["max_s"] for r in train_rows)
    for r in train_rows:  # each against the same model's float32 eager torch step
        base = next(b for b in train_rows if (b["what"], b["rcab"], b["options"]) == (r["what"], "torch", "fp32"))
        assert r["speedup_vs_fp32"] == pytest.approx(base["step_s"] / r["step_s"])
    assert [r["precision"] for r in train_rows[:4]] == ["fp32", "fp32", "bf16", "bf16"]
    assert (
        "| tiny | block | torch | bf16 channels_last | bf16, channels_last, for_loop optimiser |"
        in (tmp_path / "report.md").read_text()
    )
    assert "| eager | 32x32 | whole |" in (tmp_path / "report.md").read_text()
    q = res["quality"]
    by = {r["name"]: r for r in q["rows"]}
    assert by["identity"]["gain"] == 0 and q["pairs"] == 3
    for r in q["rows"][2:]:  # retention is each gain over the PyTorch float32 gain
        assert r["gain"] == pytest.approx(r["psnr"] - by["identity"]["psnr"])
        if by["torch fp32"]["gain"] > 0:
            assert r["retention"] == pytest.approx(r["gain"] / by["torch fp32"]["gain"])
            assert r["bound"] <= r["retention"] + 1e-9 and r["worst_retention"] <= r["retention"] + 1e-9
        else:  # nothing to keep: no bound to give
            assert "bound" not in r
    if openvino:  # same weights in float32: OpenVINO equals PyTorch; int8 is a row, or a note saying why not
        assert by["openvino fp32"]["psnr"] == pytest.approx(by["torch fp32"]["psnr"], abs=1e-4)
        assert any("int8" in n for n in q["notes"]) or any("int8" in name for name in by)
    assert "## Quality" in (tmp_path / "report.md").read_text()
