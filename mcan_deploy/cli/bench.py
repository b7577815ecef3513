"""``mcan-bench [--device cpu|cuda] [--quick] [--out DIR]``: benchmark reports against eager PyTorch.

Writes DIR/report.md (tables), DIR/results.json (every figure, with the machine, versions and
date), DIR/throughput.png and DIR/memory.png. --quick (a few minutes on a 2-core CPU) runs the
demo-size network at 256x256 and 512x512; without it the sizes go up to 4096x4096 (16 MP).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcan-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (minutes on a CPU)")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    p.add_argument(
        "--model",
        choices=["demo", "paper"],
        default="demo",
        help="network size for inference: demo (3x4 RCAB, 32 features) or paper (3x16, 64)",
    )
    p.add_argument("--sizes", help="square image sides, comma-separated (overrides --quick's)")
    p.add_argument(
        "--backends",
        help="comma-separated back-ends to time (default: eager, channels_last, compile, "
        "onnxruntime, and openvino, openvino_bf16, openvino_int8 where OpenVINO is "
        "installed; on CUDA also float16, bfloat16, triton, triton_float16, "
        "triton_bfloat16, the fused inference RCAB). eager is always timed: the "
        "ratios are against it",
    )
    p.add_argument("--repeat", type=int, help="timed runs per measurement after one warm-up")
    p.add_argument("--data", default="samples/city100", help="training pairs for the data-wait share")
    p.add_argument(
        "--quality-model",
        help="a trained model.safetensors: adds a quality table (PSNR, gain over "
        "the identity, retention) for every back-end and precision",
    )
    p.add_argument(
        "--quality-data", help="pairs for the quality table (train/ calibrates int8, test/ is measured; default --data)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run_bench
    from ..errors import MCANError
    from ..model import ModelConfig

    model = ModelConfig() if args.model == "paper" else ModelConfig(n_resblocks=4, n_feats=32)
    sizes: tuple[int, ...] = (256, 512) if args.quick else (512, 1024, 2048, 4096)
    if args.sizes:
        try:
            sizes = tuple(int(s) for s in args.sizes.split(","))
        except ValueError:
            raise MCANError(f"--sizes {args.sizes}: give image sides like 256,512") from None
    if any(s < 1 for s in sizes) or (args.repeat is not None and args.repeat < 1):
        raise MCANError("--sizes and --repeat must be >= 1")
    import importlib.util

    from ..bench import BACKENDS

    backends: tuple[str, ...] = ("eager", "channels_last", "compile", "onnxruntime")
    if not args.device.startswith("cuda") and importlib.util.find_spec("openvino"):
        backends += ("openvino", "openvino_bf16", "openvino_int8")
    if args.device.startswith("cuda"):
        backends += ("float16", "bfloat16", "triton", "triton_float16", "triton_bfloat16")
    if args.backends:
        asked = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        unknown = [b for b in asked if b not in BACKENDS]
        if unknown:
            raise MCANError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        backends = ("eager", *(b for b in asked if b != "eager"))
    cfg = BenchConfig(
        model=model,
        sizes=sizes,
        repeat=args.repeat or 3,
        backends=backends,
        compile_sizes=sizes[:1],
        tile=128 if args.quick else 512,
        train_steps=3 if args.quick else 10,
        device=args.device,
        quality_model=args.quality_model,
        quality_data=args.quality_data or args.data,
    )
    res = run_bench(cfg, Path(args.out), Path(args.data))
    out = Path(args.out)
    print(f"mcan-bench: matrix-multiply peak {res['matmul_peak_gflops']:.1f} GFLOP/s")
    for r in res["inference"]:
        ratio = f"{r['ratio_to_eager']:.2f}x eager" if r["ratio_to_eager"] else ""
        print(
            f"  {r['backend']:>13} {r['size']:>5}px {r['mode']:>5}: {r['mp_per_s']:.4f} MP/s "
            f"{ratio}, {100 * r['peak_share']:.1f}% of peak, {r['peak_mb']:.0f} MB"
        )
    print(f"mcan-bench: {out / 'report.md'}, {out / 'results.json'}, {out / 'throughput.png'}, {out / 'memory.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
