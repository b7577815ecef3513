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
            bound = 1e-5 if r["dtype"] == "float32" else 2e-2
            assert r["max_abs_diff_vs_eager"] <= bound, r
            assert r["speedup_vs_eager"] > 0
    assert js.with_suffix(".md").read_text().count("| triton |") == 8
