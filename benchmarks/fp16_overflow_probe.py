"""What a device's float16 convolutions return where the exact value is beyond float16's range.

    python benchmarks/fp16_overflow_probe.py --out DIR [--device cuda]

The float16 guard looks for inf (IEEE rounding of an overflow). On an H200 (cuDNN 9.19) a
convolution whose exact value was -72000 returned a finite value instead, so a guard that looks
for inf cannot see such an overflow there. This probe records, for each convolution the fused
path can run (F.conv2d, cuDNN's fused conv + bias + ReLU, the Triton kernel), what comes back
for +-72000 and +-64000 (in range), so that the guard can be designed on facts: ``fp16-probe.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("fp16_overflow_probe")


def probe(device: torch.device) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    x = torch.ones(1, 8, 6, 7, dtype=torch.float16, device=device).contiguous(memory_format=torch.channels_last)
    for target in (-72000.0, -64000.0, 64000.0, 72000.0):
        w = torch.full((8, 8, 3, 3), target / 72, dtype=torch.float16, device=device)
        b = torch.zeros(8, dtype=torch.float16, device=device)
        impls: dict[str, Any] = {"F.conv2d": lambda w=w, b=b: F.conv2d(x, w, b, padding=1)}
        if device.type == "cuda" and hasattr(torch.ops.aten, "cudnn_convolution_relu"):
            impls["cudnn_convolution_relu"] = lambda w=w, b=b: torch.ops.aten.cudnn_convolution_relu(
                x, w, b, [1, 1], [1, 1], [1, 1], 1
            )
        try:
            from mcan_deploy.kernels.conv3x3 import conv3x3, pack

            flag = torch.zeros(1, dtype=torch.int32, device=device)
            packed = pack(w, b, torch.float16, device)
            impls["triton conv3x3"] = lambda packed=packed, flag=flag: conv3x3(x, packed, flag=flag)[0]
        except Exception as exc:  # noqa: BLE001 - the probe records what it could not run
            log.warning("no Triton convolution here: %s", exc)
        for name, fn in impls.items():
            row: dict[str, Any] = {"exact": target, "impl": name}
            try:
                y = fn().float()
                row.update(centre=float(y[0, 0, 3, 3]), corner=float(y[0, 0, 0, 0]), finite=bool(y.isfinite().all()))
                if name == "triton conv3x3":
                    row["flag"] = int(flag.item())
                    flag.zero_()
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
            rows.append(row)
            log.info("%s", row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    if device.type == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fp16-probe.json").write_text(json.dumps({**info, "rows": probe(device)}, indent=1))


if __name__ == "__main__":
    main()
