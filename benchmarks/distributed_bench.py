"""Speed-up of torchrun with K processes against one process, on this machine, in one run.

    python benchmarks/distributed_bench.py [--procs 2] [--iters 40] [--images 8]

Training: one block phase of the demo-size and of the paper-size network (batch 16 at 48x48,
Adam), each run through ``mcan-train``; the step time is the median ``sec_per_iter`` of its
metrics lines (the first line, with the warm-up, left out). One process uses every core through
intra-op threads; K processes get cores/K threads each (torchrun's OMP_NUM_THREADS), so the
comparison is at equal cores. Upscaling: ``mcan-upscale`` on a folder of images (the time it
reports, all ranks' files done; process start and model load excluded). Writes
benchmarks/results/distributed-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tomli_w
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "demo": {"n_blocks": 3, "n_resblocks": 4, "n_feats": 32},
    "paper": {"n_blocks": 3, "n_resblocks": 16, "n_feats": 64},
}


def plan(model: dict, iters: int) -> dict:
    return {
        "model": model,
        "data": {"patch_size": 48, "batch_size": 16},
        "train": {"seed": 0, "log_every": 5, "val_every": 0, "checkpoint_every": 0},
        "phases": [
            {
                "name": "1-1",
                "kind": "train_block",
                "block": 1,
                "init": "orthogonal",
                "stages": [{"name": "adam", "optimizer": "adam", "iters": [iters], "lr": [1e-4]}],
            }
        ],
    }


def launch(module: str, args: list[str], procs: int, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    env.pop("TRITON_INTERPRET", None)
    cmd = (
        [sys.executable, "-m", module, *args]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            module,
            *args,
        ]
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return proc


def train_step(model: str, procs: int, threads: int, iters: int, tmp: Path) -> dict:
    cfg = tmp / f"{model}.toml"
    cfg.write_text(tomli_w.dumps(plan(MODELS[model], iters)))
    out = tmp / f"run-{model}-{procs}"
    t0 = time.perf_counter()
    launch(
        "mcan_deploy.cli.train",
        [
            "--config",
            str(cfg),
            "--data",
            str(REPO / "samples" / "city100"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
        procs,
        threads,
    )
    wall = time.perf_counter() - t0
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [ln["sec_per_iter"] for ln in lines if ln["kind"] == "train"][1:]
    return {
        "what": f"train {model} block",
        "procs": procs,
        "threads": threads,
        "step_s": statistics.median(steps),
        "min_s": min(steps),
        "max_s": max(steps),
        "wall_s": wall,
    }


def upscale(procs: int, threads: int, images: int, model_path: Path, tmp: Path) -> dict:
    src = tmp / "images"
    if not src.exists():
        src.mkdir()
        for i in range(images):
            img = np.random.default_rng(i).integers(0, 256, (384, 384, 3), dtype=np.uint8)
            cv2.imwrite(str(src / f"{i:03d}.png"), img)
    out = tmp / f"up-{procs}"
    t0 = time.perf_counter()
    proc = launch(
        "mcan_deploy.cli.upscale",
        [str(model_path), str(src), "-o", str(out), "--no-progress", "--device", "cpu"],
        procs,
        threads,
    )
    wall = time.perf_counter() - t0
    reported = float(re.search(r"in ([\d.]+) s ->", proc.stdout)[1])
    return {
        "what": f"upscale {images} images 384x384 (demo model)",
        "procs": procs,
        "threads": threads,
        "seconds": reported,
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--models", default="demo,paper")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for model in args.models.split(","):
            for procs in (1, args.procs):
                rows.append(train_step(model, procs, max(1, cores // procs), args.iters, tmp))
                print(rows[-1], flush=True)
        model_path = tmp / "run-demo-1" / "model.safetensors"
        if not model_path.exists():
            model_path = next(tmp.glob("run-*-1")) / "model.safetensors"
        for procs in (1, args.procs):
            rows.append(upscale(procs, max(1, cores // procs), args.images, model_path, tmp))
            print(rows[-1], flush=True)
    for r in rows:
        base = next(b for b in rows if b["what"] == r["what"] and b["procs"] == 1)
        key = "step_s" if "step_s" in r else "seconds"
        r["speedup"] = base[key] / r[key]
    res = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "cores": cores,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rows": rows,
    }
    out = REPO / "benchmarks" / "results" / f"distributed-cpu-{time.strftime('%Y%m%d')}.json"
    out.write_text(json.dumps(res, indent=2))
    for r in rows:
        key = "step_s" if "step_s" in r else "seconds"
        print(f"{r['what']:<45} {r['procs']} proc x {r['threads']} threads: {r[key]:.3f} s  x{r['speedup']:.2f}")
    print(f"distributed_bench: {out}")


if __name__ == "__main__":
    main()
