"""ONNX Runtime (CPU) against eager PyTorch on the same model and image, in one run.

    python benchmarks/ort_bench.py [--size 512] [--repeat 5]

Model: one full-size block N_i (64 features, 16 RCAB; random orthogonal weights: speed does not
depend on the values) and the demo-size N. Input: a centre crop of samples/photo. Reports
megapixels per second (median of --repeat runs after one warm-up run) and the ratio to eager
float32 NCHW measured in the same run; writes benchmarks/results/ort-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mcan_deploy.export.onnx import export_onnx
from mcan_deploy.io import read_image
from mcan_deploy.model import ModelConfig, build_model, init_block
from mcan_deploy.runners import OrtRunner

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up: oneDNN primitives, ORT's per-shape kernels
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    rgb = read_image(REPO / "samples" / "photo" / "city100_001_LR.png").rgb
    h, w = rgb.shape[:2]
    s = args.size
    crop = rgb[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    rows = []
    for name, cfg in (
        ("N_i paper size (1 block, 64 feats, 16 RCAB)", ModelConfig(n_blocks=1)),
        ("N demo size (3 blocks, 32 feats, 4 RCAB)", ModelConfig(n_resblocks=4, n_feats=32)),
    ):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        for b in model.blocks:
            init_block(b, "orthogonal", torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, Path(tmp) / "m.onnx")
            ort_runner = OrtRunner(Path(tmp) / "m.onnx")
            with torch.inference_mode():
                t_eager = timed(lambda m=model: m(x), args.repeat)
            t_ort = timed(lambda r=ort_runner, n=cfg.n_blocks: r.run_blocks(x, 0, n), args.repeat)
            with torch.inference_mode():
                err = float((ort_runner.run_blocks(x, 0, cfg.n_blocks) - model(x)).abs().max())
        mp = s * s / 1e6
        e, o = statistics.median(t_eager), statistics.median(t_ort)
        rows.append(
            {
                "model": name,
                "image": f"{s}x{s}",
                "eager_s": t_eager,
                "ort_s": t_ort,
                "eager_mp_per_s": mp / e,
                "ort_mp_per_s": mp / o,
                "ort_over_eager": e / o,
                "max_abs_diff": err,
            }
        )
    import onnxruntime

    result = {
        "what": "ONNX Runtime CPU vs eager PyTorch float32 NCHW",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    out = REPO / "benchmarks" / "results" / f"ort-cpu-{time.strftime('%Y%m%d')}.json"
    out.write_text(json.dumps(result, indent=2))
    print("| model | image | eager MP/s | ORT MP/s | ORT / eager | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['image']} | {r['eager_mp_per_s']:.4f} | {r['ort_mp_per_s']:.4f} | "
            f"{r['ort_over_eager']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    print(f"written {out}")


if __name__ == "__main__":
    main()
