"""``mcan-export MODEL -o model.onnx`` / ``-o model.xml``: export a trained N to ONNX or OpenVINO.

ONNX: N or single blocks (--blocks), checked with onnx.checker and against PyTorch in ONNX
Runtime at two input sizes. OpenVINO (--format openvino, or -o *.xml): an IR file with every block
and the layer steps of exact global statistics, checked against PyTorch; with --precision int8,
calibrated on --calibration's training pairs and kept only if it holds --min-retention of the
float32 model's PSNR gain over the identity on the test pairs. A failed check writes nothing.
"""

from __future__ import annotations

import argparse
import sys

from .common import cli_main


def build_parser() -> argparse.ArgumentParser:
    from ..export.onnx import DEFAULT_OPSET

    p = argparse.ArgumentParser(
        prog="mcan-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="model.safetensors from mcan-train")
    p.add_argument("-o", "--out", required=True, help="output path: .onnx, or .xml for --format openvino")
    p.add_argument(
        "--format",
        choices=["onnx", "openvino"],
        help="onnx (default for -o *.onnx) or openvino: IR .xml/.bin with every block and the "
        "layer steps of exact global statistics (default for -o *.xml)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "int8", "auto"],
        default="fp32",
        help="openvino: auto times fp32, bf16 (where the CPU computes it natively) and int8 on this "
        "CPU and takes the fastest that passes the gate (bf16 at a 97%% bound, int8 at --min-retention); "
        "fp32; or int8: calibrated on some of --calibration's training pairs, its "
        "recipe chosen on others, and refused unless it keeps --min-retention of fp32's PSNR gain "
        "(lower confidence bound) on all the rest and the test pairs, no image below its identity",
    )
    p.add_argument(
        "--calibration",
        help="int8: dataset folder with train/ (split into calibration, recipe choice and verdict) and test/ (verdict)",
    )
    p.add_argument(
        "--calibration-crops",
        type=int,
        default=32,
        help="int8: 128-pixel crops of the calibration pairs' LR images that NNCF calibrates on (default 32)",
    )
    p.add_argument(
        "--min-retention",
        type=float,
        default=0.9,
        help="int8: share of the fp32 model's PSNR gain over the identity that int8 must keep, "
        "at the lower confidence bound over the verdict pairs (default 0.9)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="int8: write the file even if it misses --min-retention (its retention is still "
        "measured, printed and stored in the file)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="float16 weights and input/output")
    p.add_argument(
        "--blocks",
        default="all",
        help="'all' (N in one file) or block numbers like 1,2,3 (one <stem>.N<i>.onnx each, for block-by-block tiling)",
    )
    p.add_argument("--no-clamp", action="store_true", help="export N_i instead of N_i+ (no [0, 1] clamp)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="accept a pickle-based .pt/.pth model, reading only its tensors "
        "(torch.load weights_only=True); refused without this flag",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import importlib.util
    import math
    from pathlib import Path

    from ..checkpoint import load_model
    from ..errors import MCANError

    out, src = Path(args.out), Path(args.model).resolve()
    fmt = args.format or ("openvino" if out.suffix.lower() == ".xml" else "onnx")
    if fmt == "onnx" and (args.precision != "fp32" or args.calibration):
        raise MCANError("--precision/--calibration apply to --format openvino; ONNX takes --fp16")
    if fmt == "openvino" and (args.fp16 or args.blocks != "all"):
        raise MCANError(
            "--fp16/--blocks apply to --format onnx; an OpenVINO file holds every block and "
            "runs bf16 at run time (mcan-upscale --precision bf16)"
        )
    if args.calibration_crops < 1:
        raise MCANError(f"--calibration-crops {args.calibration_crops}: at least 1 (default 32)")
    if not math.isfinite(args.min_retention):
        raise MCANError(f"--min-retention {args.min_retention}: a share of the gain such as 0.9")
    siblings = [out.with_name(f"{out.stem}.N{i}{out.suffix or '.onnx'}") for i in range(1, 1000)]
    if any(o.resolve() == src for o in [out, out.with_suffix(".bin"), *siblings]):
        raise MCANError(f"-o {args.out}: would overwrite the model {args.model}; choose another output path")
    from ..io import file_sha256

    if fmt == "openvino":
        from ..gate.openvino import export_openvino

        if args.precision in ("int8", "auto") and importlib.util.find_spec("nncf") is None:
            raise MCANError(f"--precision {args.precision} needs NNCF: pip install 'mcan-deploy[openvino]'")
        model = load_model(args.model, trust_pickle=args.trust_pickle)
        ir = export_openvino(
            model,
            out,
            precision=args.precision,
            calibration=args.calibration,
            clamp=not args.no_clamp,
            source_hash=file_sha256(args.model),
            min_retention=None if args.force else args.min_retention,
            calibration_size=args.calibration_crops,
        )
        if ir.why:
            print(f"mcan-export: --precision auto chose {ir.why}")
        if ir.quality:
            q = ir.quality
            print(
                f"mcan-export: {ir.path} (int8, recipe '{q['recipe']}', {q['int8_convolutions']} of "
                f"{q['convolutions']} convolutions int8): on {q['pairs']} pairs the gate did not tune on, PSNR "
                f"{q['psnr_int8']:.3f} dB against fp32 {q['psnr_fp32']:.3f} dB and identity "
                f"{q['psnr_identity']:.3f} dB: keeps {100 * q['retention']:.1f}% of the gain, lower bound "
                f"{100 * q['bound']:.1f}% (bar {100 * args.min_retention:.0f}%{', forced' if args.force else ''}), "
                f"worst image {q['worst_image']} {100 * q['worst_retention']:.1f}%"
            )
        else:
            print(f"mcan-export: {ir.path} (fp32), OpenVINO vs PyTorch max abs error {ir.max_abs_error:.2g}")
            if ir.why:
                print(
                    f"mcan-export: mcan-upscale --precision auto runs it as {ir.why.split(':')[0]} on a CPU that has it"
                )
        return 0
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MCANError(f"ONNX export needs {', '.join(missing)}: pip install 'mcan-deploy[onnx]'")
    from ..export.onnx import export_onnx

    model = load_model(args.model, trust_pickle=args.trust_pickle)
    files = export_onnx(
        model,
        args.out,
        blocks=args.blocks,
        opset=args.opset,
        fp16=args.fp16,
        clamp=not args.no_clamp,
        source_hash=file_sha256(args.model),
    )
    for f in files:
        print(
            f"mcan-export: {f.path} (blocks {f.blocks[0] + 1}..{f.blocks[1]}), "
            f"ONNX Runtime vs PyTorch max abs error {f.max_abs_error:.2g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
