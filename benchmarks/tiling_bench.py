"""Tiled against whole-image inference on the CPU: time ratio, peak memory, tile-mode PSNR.

    python benchmarks/tiling_bench.py --model runs/demo/model.safetensors [--sizes 1,4,16]

Each measurement runs in its own process, so that its peak RSS is its own. The sample photo
(samples/photo, 1218x870) is the 1-megapixel case; larger cases are that photo resized bicubically
to the given megapixels (real content, not noise). Writes benchmarks/results/tiling-<device>-<date>.json
and prints a Markdown table. Times are medians of --repeat runs inside each process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "photo" / "city100_001_LR.png"


def load_input(megapixels: float) -> np.ndarray:
    import cv2

    from mcan_deploy.io import read_image

    rgb = read_image(PHOTO).rgb
    h, w = rgb.shape[:2]
    f = (megapixels * 1e6 / (h * w)) ** 0.5
    if abs(f - 1) > 0.05:
        rgb = np.clip(cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC), 0, 1)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def one(args: argparse.Namespace) -> None:
    import torch

    from mcan_deploy.checkpoint import load_model
    from mcan_deploy.model import ModelConfig, build_model
    from mcan_deploy.runners import TorchRunner
    from mcan_deploy.tiling import TileConfig, default_tile, upscale_tensor

    if args.model == "paper-random":
        torch.manual_seed(0)
        model = build_model(ModelConfig())
    else:
        model = load_model(args.model)
    runner = TorchRunner(model, torch.device("cpu"))
    x = torch.from_numpy(load_input(args.mp))
    times, report = [], None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        if args.mode == "whole":
            out = runner.run_blocks(x[None], 0, runner.n_blocks)[0]
        else:
            tile = args.tile or default_tile(args.mode, runner.device, max(runner.block_radii))
            out, rep = upscale_tensor(runner, x, TileConfig(tile=tile, ca_stats=args.mode))
            report = rep.summary()
        times.append(time.perf_counter() - t0)
    np.save(args.save, out.numpy())
    print(
        json.dumps(
            {
                "seconds": sorted(times)[len(times) // 2],
                "all_seconds": times,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "height": x.shape[1],
                "width": x.shape[2],
                "report": report,
            }
        )
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else -10 * np.log10(mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--model",
        default=str(REPO / "runs" / "demo" / "model.safetensors"),
        help="model file, or 'paper-random' for the paper-size network with random weights",
    )
    p.add_argument("--sizes", default="1,4,16", help="megapixels, comma-separated")
    p.add_argument("--tile", type=int, default=0, help="tile side (default: mcan-upscale's per mode)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--mp", type=float, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in [float(s) for s in args.sizes.split(",")]:
            res = {}
            for mode in ("whole", "global", "tile"):
                save = f"{tmp}/{mode}-{mp}.npy"
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--model",
                    args.model,
                    "--mode",
                    mode,
                    "--mp",
                    str(mp),
                    "--tile",
                    str(args.tile),
                    "--repeat",
                    str(args.repeat),
                    "--save",
                    save,
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    res[mode] = {"error": proc.stderr.strip().splitlines()[-1:]}
                    print(f"{mp} MP {mode}: failed: {res[mode]['error']}", file=sys.stderr)
                    continue
                res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"{mp} MP {mode}: {res[mode]['seconds']:.1f} s, {res[mode]['peak_rss_mb']:.0f} MB", file=sys.stderr
                )
            whole_out = np.load(f"{tmp}/whole-{mp}.npy") if "seconds" in res.get("whole", {}) else None
            for mode in ("global", "tile"):
                if "seconds" not in res.get(mode, {}):
                    continue
                if whole_out is not None:
                    out = np.load(f"{tmp}/{mode}-{mp}.npy")
                    res[mode]["psnr_vs_whole"] = psnr(out, whole_out)
                    res[mode]["max_abs_vs_whole"] = float(np.abs(out - whole_out).max())
                    res[mode]["time_ratio"] = res[mode]["seconds"] / res["whole"]["seconds"]
            rows.append({"megapixels": mp, **res})
    result = {
        "what": "tiled vs whole-image inference, CPU float32",
        "model": args.model,
        "tile": args.tile or "mcan-upscale default (global 256, tile max(256, 16 x margin))",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpu": platform.processor(),
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out) / f"tiling-cpu-{time.strftime('%Y%m%d')}-{Path(args.model).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        "| MP | whole s | whole MB | global s (ratio) | global MB | global max abs | tile s (ratio) | tile MB | tile PSNR vs whole |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        w, g, t = r.get("whole", {}), r.get("global", {}), r.get("tile", {})
        f = lambda d, k, fmt: (fmt % d[k]) if k in d else "-"  # noqa: E731
        print(
            f"| {r['megapixels']:g} | {f(w, 'seconds', '%.1f')} | {f(w, 'peak_rss_mb', '%.0f')} | "
            f"{f(g, 'seconds', '%.1f')} ({f(g, 'time_ratio', '%.2f')}) | {f(g, 'peak_rss_mb', '%.0f')} | "
            f"{f(g, 'max_abs_vs_whole', '%.1e')} | {f(t, 'seconds', '%.1f')} ({f(t, 'time_ratio', '%.2f')}) | "
            f"{f(t, 'peak_rss_mb', '%.0f')} | {f(t, 'psnr_vs_whole', '%.2f')} dB |"
        )
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
