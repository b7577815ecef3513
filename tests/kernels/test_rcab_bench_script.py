"""benchmarks/rcab_bench.py (what benchmarks/gpu_check.sh runs on a GPU) in its --smoke mode, so
the script that takes the GPU measurements cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mcan_deploy import kernels

from ..helpers import REPO

pytestmark = pytest.mark.skipif(
    not kernels.fused_available(torch.device("cpu"), warn=False), reason="needs Triton's interpreter on CPU"
)


def test_smoke_run_writes_every_section_with_small_differences(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "rcab_bench.py"),
            "--smoke",
            "--reps",
            "1",
            "--no-compile",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    (js,) = tmp_path.glob("rcab-smoke-*.json")
    res = json.loads(js.read_text())
    assert res["wrong_results"] == [] and "errors" not in res
    assert {"torch", "triton", "date"} <= set(res["machine"])
    seen = {(r["section"], r["dtype"], r["impl"]) for r in res["rows"]}
    for section in ("tail_fwd", "tail_bwd", "rcab_fwd", "n_fwd"):
        for dtype in ("float32", "float16"):
            assert {(section, dtype, "eager"), (section, dtype, "triton")} <= seen
    for r in res["rows"]:
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        if r["impl"] == "triton":
            if "checks" in r:  # the tails: every output against float64, within its allowance
                assert all(c["ok"] for c in r["checks"]), r["checks"]
            else:
                assert r["max_abs_diff_vs_eager"] <= (1e-5 if r["dtype"] == "float32" else 2e-2), r
            assert r["speedup_vs_eager"] > 0
    # the smoke sizes are large enough that the old absolute rule (float16 5e-2) would have failed
    bwd16 = next(r for r in res["rows"] if (r["section"], r["dtype"], r["impl"]) == ("tail_bwd", "float16", "triton"))
    assert bwd16["max_abs_diff_vs_eager"] > 5e-2, bwd16["max_abs_diff_vs_eager"]
    assert {c["output"] for c in bwd16["checks"]} == {
        "dx",
        "dr",
        "d_down.weight",
        "d_down.bias",
        "d_up.weight",
        "d_up.bias",
    }
    assert js.with_suffix(".md").read_text().count("| triton |") == 8


@pytest.mark.parametrize("pixels", [1_000, 100_000, 2_000_000])
def test_gradient_sums_are_judged_against_float64_relative_to_their_size(pixels):
    """A synthetic attention-bias gradient: a sum over ``pixels`` values, so its size (and any
    float16 path's error) grows with the pixel count. Eager sums in float16 (relative error about
    1e-3), a correct fused kernel in float32 (about 1e-6). The old absolute rule (float16: 5e-2
    against eager) failed the correct kernel from 100k pixels on; the rule against float64 passes it
    at every size and still fails a kernel that is 1% off."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rcab_bench", REPO / "benchmarks" / "rcab_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    g = torch.Generator().manual_seed(0)
    values = torch.rand(64, pixels // 64 + 1, generator=g, dtype=torch.float64)
    ref64 = values.sum(1)  # 64 channels' bias gradients
    eager = (ref64 * (1 + 1e-3 * torch.randn(64, generator=g, dtype=torch.float64))).half().float()
    fused = (ref64 * (1 + 1e-6 * torch.randn(64, generator=g, dtype=torch.float64))).float()
    old_rule_passes = (fused - eager).abs().max().item() <= 5e-2
    assert old_rule_passes == (pixels < 100_000), "the old absolute rule fails a correct kernel at real sizes"
    row = {"section": "tail_bwd", "shape": [pixels], "dtype": "float16", "impl": "triton", "max_abs_diff_vs_eager": 0.0}
    row["checks"] = [bench.judged("d_up.bias", fused, eager, ref64, "float16")]
    assert bench.verdict([row]) == []
    wrong = dict(row, checks=[bench.judged("d_up.bias", fused * 1.01, eager, ref64, "float16")])
    assert len(bench.verdict([wrong])) == 1 and "d_up.bias off float64" in bench.verdict([wrong])[0]
