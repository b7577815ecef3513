"""Quality of every back-end and precision of a trained model on real test pairs.

    python benchmarks/quality_table.py MODEL.safetensors DATA [--max-size 1500]

PSNR RGB and Y, gain over the identity and the share of PyTorch float32's gain each keeps
(``mcan_deploy.backend_quality.compare_backends``, the table ``mcan-bench --quality-model`` adds to its
report); int8 is calibrated on DATA's training pairs as ``mcan-export --precision int8`` does.
Writes benchmarks/results/quality-<model dir>-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--max-size", type=int, default=1500, help="test images are centre-cropped to this side")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from mcan_deploy.backend_quality import compare_backends
    from mcan_deploy.bench import machine_info

    res = compare_backends(args.model, args.data, max_size=args.max_size)
    res["machine"] = machine_info(torch.device("cpu"))
    res["command"] = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    stem = f"quality-{Path(args.model).parent.name}-{time.strftime('%Y%m%d')}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    text = (
        f"# Quality of {args.model} on {res['pairs']} test pairs of {args.data}\n\n`{res['command']}`\n\n"
        f"{res['table']}\n" + "".join(f"\n- {n}" for n in res["notes"])
    )
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
