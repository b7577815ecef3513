"""``benchmarks/gpu_check.sh --smoke``: the one-shot GPU acceptance run, on a CPU at tiny sizes, so
the script a rare GPU session depends on cannot rot between sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .helpers import REPO

pytest.importorskip("triton")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_smoke_run_covers_every_plan_dtype_and_section(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (js,) = tmp_path.glob("engine-smoke-*.json")
    data = json.loads(js.read_text())
    rows = data["engine"]["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    assert {(r["plan"], r["dtype"]) for r in rows} == {
        (p, d) for p in ("whole", "layers", "layers-host", "block", "all") for d in ("float32", "bfloat16", "float16")
    }
    assert {r["rcab"] for r in rows} == {"torch", "triton"}
    for r in rows:  # exact plans in float32 equal the float32 whole image; tile statistics do not
        if r["dtype"] == "float32" and r["stats"] == "global":
            assert r["max_diff"] < 1e-4, r
        if r["stats"] == "tile":
            assert r["max_diff"] > 1e-3, r
    assert data["folder"]["exit_code"] == 0
    # block and N in fp32 and at the defaults; CUDA graphs recorded as skipped on a CPU, not dropped
    assert [(r["what"], r["options"]) for r in data["train"]] == [
        (w, o) for o in ("fp32", "default") for w in ("block", "N")
    ] + [("-", "bf16 CUDA graphs")]
    assert "CUDA device" in data["train"][-1]["skipped"]
    md = js.with_suffix(".md").read_text()
    assert "| layers-host |" in md and "mcan-upscale on a folder" in md and "Training step" in md
