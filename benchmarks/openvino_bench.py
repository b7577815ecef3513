"""The CPU production path against today's default, through mcan-upscale's own path, one run each.

    python benchmarks/openvino_bench.py [--model paper-random | MODEL.safetensors] [--image PHOTO]

Rows: eager PyTorch with exact global statistics (the default before OpenVINO), OpenVINO fp32
with the default plan (whole image where it fits: exact) and with the layer-by-layer tiled plan
(exact, flat-ish memory), OpenVINO bf16, and OpenVINO int8 (calibrated on the bundled sample's
training crops with the recipe that kept the gain on City100: head and tail convolutions float).
Each row runs in its own process: the runner is built as ``mcan-upscale`` builds it, one run on
the photo warms it up (compilation, first-shape set-up), then a second run is timed.
GFLOP/s counts the 3x3 convolutions; the share is of the float32 matrix-multiply rate measured at
the start of the same run. Writes benchmarks/results/openvino-cpu-<date>-<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "photo" / "city100_001_LR.png"
ROWS = [  # name, backend, precision, plan
    ("torch fp32, global statistics (default before)", "torch", "auto", "auto"),
    ("openvino fp32, default plan (new default)", "openvino", "fp32", "auto"),
    ("openvino fp32, layer-by-layer tiles", "openvino", "fp32", "layers"),
    ("openvino bf16, default plan", "openvino", "bf16", "auto"),
    ("openvino int8, default plan", "openvino", "int8", "auto"),
]


def build_model(spec: str):
    import torch

    from mcan_deploy.checkpoint import load_model
    from mcan_deploy.model import ModelConfig, init_block
    from mcan_deploy.model import build_model as build

    if spec != "paper-random":
        return load_model(spec)
    torch.manual_seed(0)
    model = build(ModelConfig())
    for b in model.blocks:
        init_block(b, "orthogonal", torch.Generator().manual_seed(0))
    return model


def one(args: argparse.Namespace) -> None:
    """One row, in this process: build, warm up, time one upscale of the photo."""
    import torch

    from mcan_deploy.bench import PeakRSS
    from mcan_deploy.io import read_image
    from mcan_deploy.runners import load_runner
    from mcan_deploy.tiling import TileConfig, default_tile, upscale_tensor

    t0 = time.perf_counter()
    runner = load_runner(args.file, backend=args.backend, precision=args.precision, cache_dir=args.cache)
    x = torch.from_numpy(read_image(args.image).rgb.transpose(2, 0, 1).copy())
    cfg = TileConfig(
        tile=default_tile("global", runner.device, max(runner.block_radii)), ca_stats="global", plan=args.plan
    )
    upscale_tensor(runner, x, cfg)  # warm-up on the photo itself: compilation, first-shape set-up
    startup = time.perf_counter() - t0
    with PeakRSS() as rss:
        t1 = time.perf_counter()
        out, report = upscale_tensor(runner, x, cfg)
        seconds = time.perf_counter() - t1
    import numpy as np

    np.save(args.save, out.numpy())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "startup_s": startup,
                "peak_rss_mb": rss.peak,
                "report": report.summary(),
                "threads": torch.get_num_threads(),
                "describe": getattr(runner, "describe", lambda: "torch")(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="paper-random", help="paper-random (random weights) or a model file")
    p.add_argument("--image", default=str(PHOTO))
    p.add_argument(
        "--calibration",
        default=str(REPO / "samples" / "city100"),
        help="pairs whose training crops calibrate the int8 row",
    )
    p.add_argument("--rows", help="comma-separated row numbers to run (default: all)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    for name in ("file", "backend", "precision", "plan", "cache", "save"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)

    import torch

    from mcan_deploy.bench import conv_flops_per_pixel, machine_info, matmul_peak_gflops
    from mcan_deploy.checkpoint import save_model
    from mcan_deploy.data import load_images, split_dirs
    from mcan_deploy.export.openvino import write_ir
    from mcan_deploy.export.quantize import SPEED_RECIPE, calibration_crops, int8_convolutions, quantized_for_speed
    from mcan_deploy.io import read_image

    model = build_model(args.model).eval()
    peak = matmul_peak_gflops(torch.device("cpu"))
    a = torch.rand(2048, 2048, dtype=torch.bfloat16)
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    peak_bf16 = 3 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9
    h, w = read_image(args.image).size
    flops = conv_flops_per_pixel(model) * h * w
    rows = [r for i, r in enumerate(ROWS, 1) if not args.rows or str(i) in args.rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(tmp / "model.safetensors", model)
        int8_info, ref = None, None
        if any(r[2] == "int8" for r in rows):
            t = time.perf_counter()
            train = load_images(split_dirs(args.calibration)[0], progress=False)
            q, _ = quantized_for_speed(model, calibration_crops(train), source_hash="bench")
            write_ir(q, tmp / "int8.xml")
            n_int8, n_convs = int8_convolutions(q, len(model.blocks))
            int8_info = {
                "recipe": SPEED_RECIPE.name,
                "int8_convolutions": n_int8,
                "convolutions": n_convs,
                "quantize_s": time.perf_counter() - t,
            }
        for name, backend, precision, plan in rows:
            file = tmp / ("int8.xml" if precision == "int8" else "model.safetensors")
            cmd = [
                sys.executable,
                __file__,
                "--one",
                "--file",
                str(file),
                "--backend",
                backend,
                "--precision",
                precision,
                "--plan",
                plan,
                "--image",
                args.image,
                "--cache",
                str(tmp / "cache"),
                "--save",
                str(tmp / f"out{len(results)}.npy"),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            import numpy as np

            from mcan_deploy.metrics import psnr

            got = torch.from_numpy(np.load(tmp / f"out{len(results)}.npy"))
            ref = ref if results else got  # the first row (PyTorch) is the reference
            r["max_abs_err_vs_torch"] = float((got - ref).abs().max())
            r["psnr_vs_torch"] = psnr(got, ref) if results else None
            r.update(
                name=name,
                backend=backend,
                precision=precision,
                plan=plan,
                gflops=flops / r["seconds"] / 1e9,
                share_of_fp32_peak=flops / r["seconds"] / 1e9 / peak,
            )
            results.append(r)
            print(
                f"{name}: {r['seconds']:.1f} s, {r['gflops']:.0f} GFLOP/s ({100 * r['share_of_fp32_peak']:.0f}% of "
                f"fp32 peak), {r['peak_rss_mb']:.0f} MB; {r['report']}",
                flush=True,
            )
    base = next((r for r in results if r["backend"] == "torch"), None)
    for r in results:
        r["x_default_before"] = base["seconds"] / r["seconds"] if base else None
    import openvino

    info = {**machine_info(torch.device("cpu")), "openvino": openvino.get_version()}
    try:
        import nncf

        info["nncf"] = nncf.__version__
    except ImportError:
        pass
    out = {
        "machine": info,
        "model": args.model,
        "image": f"{Path(args.image).name} ({w}x{h})",
        "matmul_peak_gflops_fp32": peak,
        "matmul_peak_gflops_bf16": peak_bf16,
        "conv_gflop_per_image": flops / 1e9,
        "int8": int8_info,
        "rows": results,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    stem = f"openvino-cpu-{time.strftime('%Y%m%d')}-{Path(args.model).stem}"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{stem}.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# OpenVINO CPU path: {args.model} on {out['image']}",
        "",
        f"{info.get('cpu')}, {info['cores']} cores, {platform.python_version()}, torch {info['torch']}, "
        f"openvino {info['openvino']}, nncf {info.get('nncf')}; float32 matmul peak {peak:.0f} GFLOP/s "
        f"(bfloat16 {peak_bf16:.0f}), measured in this run; one timed run per row after a warm-up.",
        "",
        "| path | seconds | GFLOP/s | share of fp32 peak | x default before | peak RSS MB | max abs diff "
        "from PyTorch | plan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        x = f"{r['x_default_before']:.2f}x" if r["x_default_before"] else "-"
        lines.append(
            f"| {r['name']} | {r['seconds']:.1f} | {r['gflops']:.0f} | {100 * r['share_of_fp32_peak']:.0f}% | "
            f"{x} | {r['peak_rss_mb']:.0f} | {r['max_abs_err_vs_torch']:.1e} | {r['report']} |"
        )
    if int8_info:
        lines += [
            "",
            f"int8: recipe '{int8_info['recipe']}', {int8_info['int8_convolutions']} of "
            f"{int8_info['convolutions']} 3x3 convolutions int8, quantized in {int8_info['quantize_s']:.0f} s.",
        ]
    (Path(args.out) / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
