"""A folder of large photos one image after another (``--prefetch 0``) against pipelined (``--prefetch 2``).

    python benchmarks/folder_bench.py [--model MODEL.safetensors] [--backends auto,torch] [--images 8]

Builds a folder of ``--images`` ~4 MP PNGs (the bundled photo resized bicubically to 2330x1750,
then a 2300x1730 crop at a different offset and a different flip each, so the files differ but
share one shape), then upscales it with ``mcan_deploy.upscale.upscale_jobs`` as ``mcan-upscale``
does (global statistics, the default tile, progress off) on the CPU, sequential and pipelined,
``--repeats`` times each, the order reversed every other round (seq, pipe, pipe, seq, ...); ``--workers``
adds pipelined rows with that many decode and write threads each (default: the library's,
``min(prefetch, 2)``). One image is run first to warm the back-end up. Reports the wall time, the decode / model / encode seconds (summed over images; in
the pipelined run decode and encode overlap the model), the share decode + encode take of the
sequential wall time (the most pipelining can save), and the speed-up.
The default back-end is auto, OpenVINO on a CPU where it is installed (6.7 s per 4 MP image with
the 3-block demo model on 2 cores; PyTorch's layer plan about 15 s; ``--backends torch,auto`` adds it).
Writes benchmarks/results/folder-pipeline-cpu-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "photo" / "city100_001_LR.png"
SIZE = (2300, 1730)  # width, height of each benchmark image: 4.0 MP


def default_model() -> Path:
    demo = REPO / "runs" / "demo" / "model.safetensors"
    return demo if demo.exists() else REPO / "runs" / "nikon-demo" / "model.safetensors"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_folder(folder: Path, n: int) -> list[dict]:
    """``n`` PNGs of SIZE cut from the photo resized to 30x20 px more, each at its own offset and flip."""
    import cv2

    img = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"cannot read {PHOTO}")
    w, h = SIZE
    big = cv2.resize(img, (w + 30, h + 20), interpolation=cv2.INTER_CUBIC)
    folder.mkdir(parents=True)
    made = []
    for i in range(n):
        x0, y0 = (7 * i) % 31, (5 * i) % 21
        crop = big[y0 : y0 + h, x0 : x0 + w]
        flip = (None, 1, 0, -1)[i % 4]  # none, horizontal, vertical, both
        if flip is not None:
            crop = cv2.flip(crop, flip)
        path = folder / f"photo_{i:02d}.png"
        cv2.imwrite(str(path), crop)
        made.append({"name": path.name, "width": w, "height": h, "bytes": path.stat().st_size})
    return made


def versions() -> dict[str, str]:
    import cv2
    import numpy
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cv2": cv2.__version__,
    }
    try:
        import openvino

        out["openvino"] = openvino.__version__
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument(
        "--backends",
        default="auto",
        help="comma-separated: auto (OpenVINO on a CPU where it is installed), torch, openvino "
        "(torch with global statistics takes ~50 s per 4 MP image on 2 cores: 15+ minutes)",
    )
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode per back-end")
    ap.add_argument("--prefetch", type=int, default=2, help="the pipelined mode's --prefetch")
    ap.add_argument(
        "--workers", default="", help="comma-separated thread counts for extra pipelined rows, e.g. 1 (default: none)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    import torch

    from mcan_deploy.runners import LayerRunner, load_runner
    from mcan_deploy.tiling import TileConfig, default_tile
    from mcan_deploy.upscale import plan_jobs, upscale_jobs

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not args.model.exists():
        sys.exit(f"{args.model}: no such model; pass --model PATH")
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="folder-bench-"))
    try:
        t0 = time.perf_counter()
        images = build_folder(tmp / "in", args.images)
        print(
            f"built {len(images)} PNGs of {SIZE[0]}x{SIZE[1]} ({sum(i['bytes'] for i in images) / 1e6:.0f} MB) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        runs, summary = [], []
        for backend in args.backends.split(","):
            runner = load_runner(args.model, device="cpu", backend=backend)
            kind = type(runner).__name__
            ca_stats = "global" if isinstance(runner, LayerRunner) else "tile"
            cfg = TileConfig(tile=default_tile(ca_stats, runner.device, max(runner.block_radii)), ca_stats=ca_stats)
            warm = upscale_jobs(runner, plan_jobs([tmp / "in"], tmp / "warm")[:1], cfg, prefetch=0, progress=False)
            print(f"{backend} ({kind}): warm-up image {warm.wall_s:.1f} s", flush=True)
            modes = [(0, None), (args.prefetch, None), *((args.prefetch, int(w)) for w in args.workers.split(",") if w)]
            order = [m for r in range(args.repeats) for m in (modes if r % 2 == 0 else modes[::-1])]
            for k, (prefetch, workers) in enumerate(order):
                out = tmp / f"out-{backend}-{k}"
                jobs = plan_jobs([tmp / "in"], out)
                load = os.getloadavg()[0]
                s = upscale_jobs(runner, jobs, cfg, prefetch=prefetch, workers=workers, progress=False)
                if s.done != len(jobs):
                    sys.exit(f"{backend} prefetch {prefetch}: {s.failed} failed")
                row = {
                    "backend": backend,
                    "runner": kind,
                    "prefetch": prefetch,
                    "workers": workers,
                    "run": k,
                    "images": s.done,
                    "wall_s": s.wall_s,
                    "decode_s": s.decode_s,
                    "model_s": s.model_s,
                    "encode_s": s.encode_s,
                    "load_average_1min_before": load,
                }
                runs.append(row)
                print(
                    f"  prefetch {prefetch}, workers {workers or 'default'}: {s.wall_s:6.1f} s wall, decode "
                    f"{s.decode_s:5.1f} s, model {s.model_s:6.1f} s, encode {s.encode_s:5.1f} s "
                    f"(load {load:.1f} before)",
                    flush=True,
                )
                shutil.rmtree(out)
            first = len(summary)
            for prefetch, workers in modes:
                rows = [
                    r for r in runs if r["backend"] == backend and (r["prefetch"], r["workers"]) == (prefetch, workers)
                ]
                med = {
                    key: statistics.median(r[key] for r in rows)
                    for key in ("wall_s", "decode_s", "model_s", "encode_s")
                }
                summary.append(
                    {
                        "backend": backend,
                        "runner": kind,
                        "prefetch": prefetch,
                        "workers": workers,
                        "runs": len(rows),
                        "wall_s_min": min(r["wall_s"] for r in rows),
                        **{f"{key}_median": v for key, v in med.items()},
                    }
                )
            seq = summary[first]
            seq["io_share_of_wall"] = (seq["decode_s_median"] + seq["encode_s_median"]) / seq["wall_s_median"]
            seq["ceiling_speedup"] = seq["wall_s_median"] / seq["model_s_median"]
            for pipe in summary[first + 1 :]:
                pipe["speedup"] = seq["wall_s_median"] / pipe["wall_s_median"]
            del runner
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    date = datetime.now(UTC)
    result = {
        "benchmark": "folder-pipeline",
        "date": date.isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "settings": {
            "ca_stats": "global (default)",
            "tile": "default",
            "device": "cpu",
            "workers": "per row: decode threads and as many write threads; null: the default, min(prefetch, 2)",
        },
        "images": images,
        "runs": runs,
        "summary": summary,
        "command": " ".join(["python", str(Path(__file__).resolve().relative_to(REPO)), *sys.argv[1:]]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"folder-pipeline-cpu-{date:%Y%m%d}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Folder pipeline on the CPU, {date:%Y-%m-%d}",
        "",
        f"{len(images)} PNGs of {SIZE[0]}x{SIZE[1]} (4.0 MP, {sum(i['bytes'] for i in images) / 1e6:.0f} MB) through "
        f"`{result['model']}`, global statistics, default tile; {result['cpu']}, {result['cores']} cores; "
        f"torch {result['versions']['torch']}, OpenCV {result['versions']['cv2']}"
        + (f", OpenVINO {result['versions']['openvino'].split('-')[0]}" if "openvino" in result["versions"] else "")
        + f"; 1-minute load average {load_before:.1f} before, {result['load_average_1min']['after']:.1f} after"
        + f". Medians of {args.repeats} runs each (order reversed every other round). Decode, model and encode "
        "are seconds summed over images; pipelined, decode and encode overlap the model. Threads: decode and "
        "write threads each (default min(prefetch, 2)).",
        "",
        "| back-end | prefetch | threads | wall s (median / min) | decode s | model s | encode s | decode+encode share of wall | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        share = (
            f"{100 * s['io_share_of_wall']:.1f} % (ceiling {s['ceiling_speedup']:.2f}x)"
            if "io_share_of_wall" in s
            else ""
        )
        speed = f"{s['speedup']:.2f}x" if "speedup" in s else "1.00x"
        threads = "-" if not s["prefetch"] else (s["workers"] or f"{min(s['prefetch'], 2)} (default)")
        lines.append(
            f"| {s['backend']} ({s['runner']}) | {s['prefetch']} | {threads} | "
            f"{s['wall_s_median']:.1f} / {s['wall_s_min']:.1f} | "
            f"{s['decode_s_median']:.1f} | {s['model_s_median']:.1f} | {s['encode_s_median']:.1f} | {share} | {speed} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
