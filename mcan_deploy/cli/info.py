"""``mcan-info MODEL...``: what a model file is, without running it.

For ``model.safetensors`` (and blocks and training checkpoints) from ``mcan-train``, ``.onnx`` and
OpenVINO ``.xml`` from ``mcan-export``: the configuration, the blocks held, receptive field and
tile margins, how tiling stays exact, the back-ends and dtypes that can run it here, and the
file's SHA-256. ``--json`` prints the same as one JSON object per file.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcan-info", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="+", help="model files")
    p.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    p.add_argument(
        "--trust-pickle", action="store_true", help="describe a pickle-based .pt/.pth model, reading only its tensors"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from ..describe import describe

    infos = [describe(path, args.trust_pickle) for path in args.models]
    for info in infos:
        print(json.dumps(info.as_dict()) if args.json else info.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
