"""The CPU paths of one checkout, for a before/after comparison of a change that should not touch
them: mcan-bench --quick's inference section and mcan-upscale on a folder.

    PYTHONPATH=CHECKOUT python benchmarks/cpu_before_after.py CHECKOUT MODEL OUT.json [KEEP]

Run it for the old checkout (a ``git worktree``) and the new one, alternating, on the same
machine: ``bench_inference`` (eager, channels_last, onnxruntime, openvino; the demo-size model at
256 and 512 px, 3 timed runs after a warm-up), then ``mcan-upscale MODEL`` at its defaults on four
copies of ``samples/photo``, twice; KEEP, where given, receives the first run's outputs, for a
pixel comparison of the two checkouts. ``results/cpu-paths-*.md`` holds what it measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mcan_deploy.bench import BenchConfig, bench_inference, matmul_peak_gflops


def main() -> None:
    repo, model, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    keep = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    dev = torch.device("cpu")
    cfg = BenchConfig(backends=("eager", "channels_last", "onnxruntime", "openvino"), repeat=3)
    rows = bench_inference(cfg, dev, matmul_peak_gflops(dev), repo / "samples" / "city100")
    res: dict[str, object] = {
        "inference": [{k: r[k] for k in ("backend", "size", "mode", "median_s", "min_s")} for r in rows]
    }
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for i in range(4):
            shutil.copy(repo / "samples" / "photo" / "city100_001_LR.png", photos / f"p{i}.png")
        times = []
        for rep in range(2):
            cmd = [sys.executable, "-m", "mcan_deploy.cli.upscale", str(model), str(photos), "-o", f"{tmp}/o{rep}"]
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--no-progress"], check=True, capture_output=True, cwd=repo)
            times.append(time.perf_counter() - t0)
        res["folder_s"] = times
        if keep is not None:
            shutil.copytree(f"{tmp}/o0", keep, dirs_exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
