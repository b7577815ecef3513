"""The anchors a GPU result is judged against, measured in the same run (``gpu_check.sh``).

    python benchmarks/gpu_anchors.py --out DIR [--smoke] [--seconds S]

On the paper-size N's shapes (a 12 MP image, 64 features, bf16, channels_last):

- the bare model in eager PyTorch and under ``torch.compile`` (default mode; its compile time);
- cuDNN's floor: one 64 -> 64 3x3 convolution (no bias) times the 99 that N has, with and
  without ``cudnn.benchmark``;
- the fused path's own convolution alone (``kernels.conv3x3`` with bias and ReLU, each launch a
  GPU chooses among) and cuDNN's convolution followed by the one-pass epilogue, each x 99;
- one pass over a feature map (a copy: read and write), the unit every extra pass costs.

``--smoke`` runs the code at tiny sizes on a CPU (Triton's interpreter; no compile).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:  # run as a script (python benchmarks/gpu_anchors.py) or imported from the package
    from engine_check import paper_model, sync
    from gpu_results import Results, start
except ImportError:
    from benchmarks.engine_check import paper_model, sync
    from benchmarks.gpu_results import Results, start

log = logging.getLogger("gpu_anchors")
CONVS_64 = 99  # 3 blocks x (16 RCAB x 2 + the body convolution)


def timed(fn: Callable[[], object], device: torch.device, reps: int = 3) -> float:
    """Median seconds of ``reps`` calls after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def anchors(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    from mcan_deploy.kernels import fused_available

    h, w = (48, 64) if args.smoke else (3000, 4000)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows: list[dict[str, Any]] = []
    section: dict[str, Any] = {"size": f"{w}x{h}", "dtype": str(dtype).replace("torch.", ""), "rows": rows}
    deadline = time.monotonic() + args.seconds

    def add(what: str, fn: Callable[[], float | dict[str, Any]], note: str = "") -> None:
        row: dict[str, Any] = {"what": what}
        rows.append(row)
        if time.monotonic() > deadline:
            row["skipped"] = f"time limit ({args.seconds:.0f} s)"
        else:
            try:
                got = fn()
                row.update(got if isinstance(got, dict) else {"seconds": got})
                row.setdefault("note", note)
            except Exception as exc:  # one failed anchor must not cost the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                log.exception("anchor %s failed", what)
        log.info("anchor %s", row)
        res.put("anchors", section)

    cl = torch.channels_last
    feats = torch.randn(1, 64, h, w, device=device, dtype=dtype).contiguous(memory_format=cl)
    weight = (torch.randn(64, 64, 3, 3, device=device) / 24).to(dtype).contiguous(memory_format=cl)
    bias = torch.randn(64, device=device) * 0.1
    add("one pass over a 64-channel map (copy: read + write)", lambda: timed(lambda: feats.clone(), device))
    for bench in (False, True):

        def cudnn_conv(bench: bool = bench) -> dict[str, Any]:
            torch.backends.cudnn.benchmark = bench
            try:
                t = timed(lambda: F.conv2d(feats, weight, None, padding=1), device, reps=5)
            finally:
                torch.backends.cudnn.benchmark = False
            flops = 2 * 64 * 64 * 9 * h * w
            return {"seconds": t * CONVS_64, "note": f"{t * 1e3:.3f} ms x {CONVS_64}, {flops / t / 1e12:.0f} TFLOP/s"}

        add(f"cuDNN convolution floor (benchmark={bench})", cudnn_conv)
    if fused_available(device, warn=False):
        from mcan_deploy.kernels.conv3x3 import conv3x3, default_config, gpu_configs, pack
        from mcan_deploy.kernels.epilogue import bias_act

        packed = pack(weight.float(), bias, dtype, device)
        configs = gpu_configs(dtype) if device.type == "cuda" else (default_config(device),)
        for cfg in configs:

            def triton_conv(cfg: Any = cfg) -> dict[str, Any]:
                t = timed(lambda: conv3x3(feats, packed, relu=True, config=cfg), device, reps=5)
                return {"seconds": t * CONVS_64, "note": f"{t * 1e3:.3f} ms x {CONVS_64}"}

            add(f"fused Triton convolution + bias + ReLU, {cfg.describe()}", triton_conv)

        def cudnn_epilogue() -> dict[str, Any]:
            def step() -> None:
                y = F.conv2d(feats, weight, None, padding=1)
                bias_act(y, bias, relu=True, out=y)

            t = timed(step, device, reps=5)
            return {"seconds": t * CONVS_64, "note": f"{t * 1e3:.3f} ms x {CONVS_64}"}

        add("cuDNN convolution + one-pass bias and ReLU", cudnn_epilogue)
        # the head, 3 -> 64 channels (three in N): cuDNN pads the input to 8 channels and adds the
        # bias in a pass of its own; the Triton kernel takes the nine taps as one K = 27 product
        image = torch.rand(1, 3, h, w, device=device, dtype=dtype).contiguous(memory_format=cl)
        head_w = (torch.randn(64, 3, 3, 3, device=device) / 5).to(dtype).contiguous(memory_format=cl)
        head = pack(head_w.float(), bias, dtype, device)

        def head_cudnn() -> dict[str, Any]:
            def step() -> None:
                y = F.conv2d(image, head_w, None, padding=1)
                bias_act(y, bias, out=y)

            t = timed(step, device, reps=5)
            return {"seconds": 3 * t, "note": f"{t * 1e3:.3f} ms x 3"}

        def head_triton() -> dict[str, Any]:
            t = timed(lambda: conv3x3(image, head), device, reps=5)
            return {"seconds": 3 * t, "note": f"{t * 1e3:.3f} ms x 3"}

        add("the head (3 -> 64): cuDNN convolution + one-pass bias", head_cudnn)
        add("the head (3 -> 64): Triton, nine taps as one K = 27 product", head_triton)
    model = copy.deepcopy(paper_model(args.smoke)).to(device, dtype).eval()
    if device.type == "cuda":
        model = model.to(memory_format=cl)  # type: ignore[call-overload]
    x = torch.rand(1, 3, h, w, device=device, dtype=dtype).contiguous(memory_format=cl)
    with torch.inference_mode():
        add("bare model, eager, channels_last", lambda: timed(lambda: model(x), device, reps=2))
    if args.smoke:
        rows.append({"what": "bare model under torch.compile", "skipped": "--smoke: no compile on the CPU check"})
        res.put("anchors", section)
        return

    def compiled() -> dict[str, Any]:
        fn = torch.compile(model)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(x)
            sync(device)
            first = time.perf_counter() - t0
            t = timed(lambda: fn(x), device, reps=2)
        section["compile_s"] = t
        return {"seconds": t, "note": f"default mode; first call (compile) {first:.1f} s"}

    add("bare model under torch.compile", compiled)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    p.add_argument("--seconds", type=float, default=60, help="start no new anchor after this long")
    args = p.parse_args()
    device, res = start("gpu_anchors", args)
    anchors(args, device, res)


if __name__ == "__main__":
    main()
