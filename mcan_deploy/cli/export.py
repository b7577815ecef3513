"""``mcan-export MODEL -o model.onnx``: export a trained N (or single blocks) to ONNX.

Every file is checked with onnx.checker and against PyTorch in ONNX Runtime at two input sizes
before it is kept; a failed check deletes it and names the difference.
"""

from __future__ import annotations

import argparse
import sys

from .common import cli_main


def build_parser() -> argparse.ArgumentParser:
    from ..export.onnx import DEFAULT_OPSET

    p = argparse.ArgumentParser(prog="mcan-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model.safetensors from mcan-train")
    p.add_argument("-o", "--out", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="float16 weights and input/output")
    p.add_argument("--blocks", default="all",
                   help="'all' (N in one file) or block numbers like 1,2,3 (one <stem>.N<i>.onnx each, "
                        "for block-by-block tiling)")
    p.add_argument("--no-clamp", action="store_true", help="export N_i instead of N_i+ (no [0, 1] clamp)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="accept a pickle-based .pt/.pth model, reading only its tensors "
                        "(torch.load weights_only=True); refused without this flag")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..errors import MCANError

    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MCANError(f"ONNX export needs {', '.join(missing)}: pip install 'mcan-deploy[onnx]'")
    from ..export.onnx import export_onnx, file_sha256

    from pathlib import Path

    out, src = Path(args.out), Path(args.model).resolve()
    siblings = [out.with_name(f"{out.stem}.N{i}{out.suffix or '.onnx'}") for i in range(1, 1000)]
    if any(o.resolve() == src for o in [out, *siblings]):
        raise MCANError(f"-o {args.out}: would overwrite the model {args.model}; choose another output path")
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    files = export_onnx(model, args.out, blocks=args.blocks, opset=args.opset, fp16=args.fp16,
                        clamp=not args.no_clamp, source_hash=file_sha256(args.model))
    for f in files:
        print(f"mcan-export: {f.path} (blocks {f.blocks[0] + 1}..{f.blocks[1]}), "
              f"ONNX Runtime vs PyTorch max abs error {f.max_abs_error:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
