"""``benchmarks/gpu_check.sh --smoke``: the one-shot GPU acceptance run, on a CPU at tiny sizes, so
the script a rare GPU session depends on cannot rot between sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from .helpers import REPO

pytest.importorskip("triton")


@pytest.mark.long
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_smoke_run_covers_every_section_plan_and_dtype_and_packs_its_files(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # what the device tool brings back: at most 8 files, the summary beside one archive
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in tmp_path.iterdir()), files
    (archive,) = tmp_path.glob("gpu-check-*.tar.gz")
    with tarfile.open(archive) as tar:
        packed = {os.path.basename(n) for n in tar.getnames()}
        member = next(m for m in tar.getmembers() if m.name.endswith("steps.tsv"))
        steps = [line.split("\t") for line in tar.extractfile(member).read().decode().splitlines()[1:]]
    assert {"engine.log", "anchors.log", "quality.log", "startup.log", "packed.log"} <= packed
    # each step's limit, time taken and exit code, in order (what sizes the limits of the next run)
    assert [s[0] for s in steps][:2] == ["anchors", "engine"] and len(steps) == 9
    assert all(int(took) <= int(limit) and code == "0" for _, limit, took, code in steps), steps
    (js,) = tmp_path.glob("gpu-smoke-*.json")
    data = json.loads(js.read_text())
    rows = data["engine"]["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    assert {(r["plan"], r["dtype"]) for r in rows} == {
        (p, d) for p in ("whole", "layers", "layers-host", "block", "all") for d in ("float32", "bfloat16", "float16")
    }
    assert {r["rcab"] for r in rows} == {"torch", "fused"}
    fused = [r for r in rows if r["rcab"] == "fused"]
    assert fused and all(r["conv_run"].split()[0] in ("triton", "cudnn") for r in fused), fused
    for r in rows:  # exact plans in float32 equal the float32 whole image; tile statistics do not
        if r["dtype"] == "float32" and r["stats"] == "global":
            assert r["max_diff"] < 1e-4, r
        if r["stats"] == "tile":
            assert r["max_diff"] > 1e-3, r
    assert data["folder"]["exit_code"] == 0
    assert data["api"]["equal_to_host"] is True
    assert [r["cache"] for r in data["startup"]["rows"]] == ["empty", "filled"]
    assert {r["name"] for r in data["quality"]["rows"]} >= {"identity", "fused float32 whole", "fused float16 layers"}
    anchors = {r["what"]: r for r in data["anchors"]["rows"]}
    assert (
        "skipped" in anchors["bare model under torch.compile"]
        and anchors["bare model, eager, channels_last"]["seconds"] > 0
    )
    # block and N in fp32 and at the defaults; CUDA graphs recorded as skipped on a CPU, not dropped
    assert [(r["what"], r["options"]) for r in data["train"]] == [
        (w, o) for o in ("fp32", "default") for w in ("block", "N")
    ] + [("-", "bf16 CUDA graphs")]
    assert "CUDA device" in data["train"][-1]["skipped"]
    # one run alone, then three packed: the ratio is of the rates measured here
    solo, three = data["packed"]
    assert (solo["runs"], three["runs"]) == (1, 3)
    assert three["ratio_to_one"] == three["s_per_iter"] / solo["s_per_iter"]
    md = js.with_suffix(".md").read_text()
    for heading in (
        "## Targets",
        "## Anchors",
        "| layers-host |",
        "mcan-upscale on a folder",
        "## Quality",
        "Training step",
        "## Runs trained together",
        "| three paper-size runs packed in <= 1.5x the time of one",
    ):
        assert heading in md, heading


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_paper_plan_job_brings_back_the_report_metrics_and_curves_and_resumes(sample_dir, tmp_path):
    """benchmarks/gpu_train_paper.sh --smoke with a tiny plan: the files the device tool brings back
    (at most 8), and a second call that finds the run finished and copies them again."""
    import tomli_w

    from .helpers import tiny_plan_dict

    plan = tmp_path / "tiny.toml"
    plan.write_text(tomli_w.dumps(tiny_plan_dict()))
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "OUT": str(out), "RUN": str(run), "PLAN": str(plan), "PYTHON": sys.executable}
    script = ["bash", str(REPO / "benchmarks" / "gpu_train_paper.sh"), "--smoke"]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:]
    names = sorted(p.name.split("-", 3)[-1] for p in out.iterdir())
    assert names == ["curves.png", "metrics.jsonl", "report.md", "run.json", "strip.png", "train.log"]
    (metrics,) = out.glob("*-metrics.jsonl")
    assert metrics.read_bytes() == (run / "metrics.jsonl").read_bytes()
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stdout[-2000:]
