"""What a single photo costs besides the model, for ``gpu_check.sh``.

    python benchmarks/gpu_io.py api|startup --out DIR [--smoke]

- ``api``: ``mcan_deploy.load(model).upscale(uint8 12 MP array)`` at the defaults, the first call
  (convolution choice, compiles, cuDNN plans for the size) and the second; and whether the
  result equals the host-conversion path's array bit for bit (the same model on the same input).
- ``startup``: one 12 MP PNG through ``mcan-upscale`` in a fresh process, with an empty Triton
  cache and convolution choice (a first run on a machine) and again with them filled: wall time, and the process's own
  split (model ready, decode, model, encode); and, each in a fresh process, the interpreter's start, the imports
  and the CUDA context.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # run as a script (python benchmarks/gpu_io.py) or imported from the package
    from engine_check import REPO, paper_model, photo
    from gpu_results import Results, start
except ImportError:
    from benchmarks.engine_check import REPO, paper_model, photo
    from benchmarks.gpu_results import Results, start

log = logging.getLogger("gpu_io")


def _model_file(folder: Path, smoke: bool) -> Path:
    from mcan_deploy.checkpoint import save_model

    path = folder / "model.safetensors"
    save_model(path, paper_model(smoke))
    return path


def api(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    import mcan_deploy

    h, w = (96, 128) if args.smoke else (3000, 4000)
    arr = np.rint(photo(h, w) * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = _model_file(Path(tmp), args.smoke)
        model = mcan_deploy.load(path, device=str(device), backend="torch")
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = model.upscale(arr)
            times.append(time.perf_counter() - t0)
        model._io = None  # the host conversions, same model and input bits
        host = model.upscale(arr)
    row = {
        "size": f"{w}x{h}",
        "first_s": times[0],
        "second_s": times[1],
        "equal_to_host": bool(np.array_equal(out, host)),
        "runner": repr(model),
    }
    log.info("api %s", row)
    res.put("api", row)


def _run_cli(model: Path, src: Path, out: Path, device: torch.device, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mcan_deploy.cli.upscale", str(model), str(src), "-o", str(out)]
    cmd += ["--overwrite", "--no-progress", "--device", str(device), "--backend", "torch"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"mcan-upscale exited {proc.returncode}: {text[-500:]}")
    row: dict[str, Any] = {"wall_s": wall}
    ready = re.search(r"model ready in ([\d.]+) s", text)
    split = re.search(r"time: decode ([\d.]+) s, model ([\d.]+) s .*encode ([\d.]+) s", text)
    if ready:
        row["ready_s"] = float(ready.group(1))
    if split:
        row.update(decode_s=float(split.group(1)), model_s=float(split.group(2)), encode_s=float(split.group(3)))
    return row


# what mcan-upscale imports on its way to the first image (the CLI's own imports are lazy), then
# the CUDA context (the first tensor on the device), timed inside one fresh process
IMPORTS = "torch, cv2, PIL.Image, mcan_deploy.api, mcan_deploy.upscale, mcan_deploy.cli.upscale"
PARTS = (
    f"import time; t0 = time.perf_counter(); import {IMPORTS}; t1 = time.perf_counter(); "
    "cuda = torch.cuda.is_available(); cuda and (torch.empty(1, device='cuda'), torch.cuda.synchronize()); "
    "print(t1 - t0, time.perf_counter() - t1 if cuda else -1)"
)


def startup_parts(env: dict[str, str]) -> dict[str, float]:
    """A fresh process's costs before the model: the interpreter's start (``python -c pass``),
    the imports, and on a GPU the CUDA context."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env, timeout=60)
    interpreter = time.perf_counter() - t0
    proc = subprocess.run([sys.executable, "-c", PARTS], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"the import timing exited {proc.returncode}: {proc.stderr[-300:]}")
    imports, cuda = (float(v) for v in proc.stdout.split())
    return {"interpreter_s": interpreter, "imports_s": imports, **({"cuda_context_s": cuda} if cuda >= 0 else {})}


def startup(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    import cv2

    h, w = (96, 128) if args.smoke else (3000, 4000)
    rows: list[dict[str, Any]] = []
    section: dict[str, Any] = {"size": f"{w}x{h}", "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _model_file(folder, args.smoke)
        src = folder / "photo.png"
        cv2.imwrite(str(src), np.rint(photo(h, w)[:, :, ::-1] * 255).astype(np.uint8))
        env = {
            **os.environ,
            "TRITON_CACHE_DIR": str(folder / "triton-cache"),  # compiled kernels
            "MCAN_DEPLOY_CACHE": str(folder / "mcan-cache"),  # the convolution choice
            "PYTHONPATH": str(REPO),
        }
        for cache in ("empty", "filled"):
            row = {"cache": cache, **_run_cli(path, src, folder / "out", device, env)}
            rows.append(row)
            log.info("startup %s", row)
            res.put("startup", section)
        section.update(startup_parts(env))  # last: a step cut off by its time limit keeps the rows
        log.info("startup parts %s", {k: v for k, v in section.items() if k.endswith("_s")})
        res.put("startup", section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["api", "startup"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    args = p.parse_args()
    device, res = start("gpu_io", args)
    {"api": api, "startup": startup}[args.section](args, device, res)


if __name__ == "__main__":
    main()
