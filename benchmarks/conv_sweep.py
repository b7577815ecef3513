"""Where the fused path's GPU time goes, and which Triton convolution launch is fastest.

    python benchmarks/conv_sweep.py --out DIR [--smoke] [--seconds S]

On the paper-size N's shapes (a 4000x3000 map of 64 features, bfloat16, channels_last):

1. ``conv``: one 64 -> 64 3x3 convolution with bias and ReLU in each Triton launch of a sweep
   (pixels per program, warps, stages, the program's pixels as rows x columns, the input loads
   through L1 or not), against cuDNN's convolution and its fused convolution-bias-ReLU in the
   same run; each launch's largest difference from cuDNN's result;
2. ``passes``: the passes around the convolutions (channel sums, the gate-and-residual, the
   one-pass bias epilogue) in GB/s against a copy of the map;
3. ``profile``: ``torch.profiler`` over the whole N through the fused path (the convolution
   ``auto`` would choose): the kernels that take the time.

Writes ``conv-sweep-<device>-<date>.json`` and ``.md`` into ``--out``. ``--smoke`` runs the same
code at tiny sizes on a CPU (Triton's interpreter), about 25 s: run it before a GPU session.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:  # run as a script (python benchmarks/conv_sweep.py) or imported from the package
    from engine_check import paper_model, sync
    from gpu_anchors import timed
except ImportError:
    from benchmarks.engine_check import paper_model, sync
    from benchmarks.gpu_anchors import timed

log = logging.getLogger("conv_sweep")


def sweep_configs(smoke: bool) -> list[Any]:
    """The launches to time: today's GPU choices, then row tiles, L1-cached input loads and
    TMA copies."""
    from mcan_deploy.kernels.conv3x3 import GPU_CONFIGS, Config

    if smoke:
        return [Config(64, 4, 1), Config(64, 4, 1, rows=4, cache=".ca"), Config(64, 4, 1, tma=True)]
    extra = [
        Config(128, 4, 3, cache=".ca"),
        Config(128, 4, 4, cache=".ca"),
        Config(128, 8, 3, cache=".ca"),
        Config(128, 4, 3, rows=2, cache=".ca"),
        Config(128, 4, 3, rows=4, cache=".ca"),
        Config(128, 4, 4, rows=4, cache=".ca"),
        Config(128, 8, 3, rows=4, cache=".ca"),
        Config(256, 8, 3, rows=4, cache=".ca"),
        Config(256, 8, 3, rows=8, cache=".ca"),
        Config(64, 4, 3, rows=2, cache=".ca"),
        Config(64, 4, 4, rows=4, cache=".ca"),
        Config(128, 4, 3, rows=4),
        Config(256, 8, 4, rows=4, cache=".ca"),
        Config(128, 8, 3),
        Config(128, 4, 3),
        Config(64, 4, 3, tma=True),
        Config(128, 4, 4, tma=True),
        Config(128, 8, 3, tma=True),
        Config(256, 8, 4, tma=True),
    ]
    return list(GPU_CONFIGS) + extra


def conv_section(h: int, w: int, device: torch.device, dtype: torch.dtype, smoke: bool, deadline: float) -> dict:
    from mcan_deploy.kernels.conv3x3 import conv3x3, pack

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(1, 64, h, w, generator=g, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(64, 64, 3, 3, generator=g, device=device) / 24).to(dtype)
    bias = torch.randn(64, generator=g, device=device) * 0.1
    wl = weight.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else weight
    rows: list[dict[str, Any]] = []
    ref = F.relu(F.conv2d(x, wl, bias.to(dtype), padding=1))
    rows.append(
        {"what": "cuDNN convolution (no bias)", "ms": 1e3 * timed(lambda: F.conv2d(x, wl, None, padding=1), device)}
    )
    rows.append(
        {
            "what": "cuDNN convolution + bias, then ReLU",
            "ms": 1e3 * timed(lambda: F.relu(F.conv2d(x, wl, bias.to(dtype), padding=1)), device),
        }
    )
    if device.type == "cuda" and hasattr(torch.ops.aten, "cudnn_convolution_relu"):
        bc = bias.to(dtype)
        rows.append(
            {
                "what": "cuDNN fused convolution-bias-ReLU",
                "ms": 1e3
                * timed(lambda: torch.ops.aten.cudnn_convolution_relu(x, wl, bc, [1, 1], [1, 1], [1, 1], 1), device),
            }
        )
    packed = pack(weight.float(), bias, dtype, device)
    scale = ref.float().abs().max().item() or 1.0
    for cfg in sweep_configs(smoke):
        row: dict[str, Any] = {"what": f"Triton conv + bias + ReLU, {cfg.describe()}", "config": cfg.describe()}
        rows.append(row)
        if time.monotonic() > deadline:
            row["skipped"] = "time limit"
            continue
        try:
            t0 = time.perf_counter()
            out, _ = conv3x3(x, packed, relu=True, config=cfg)
            sync(device)
            row["first_s"] = round(time.perf_counter() - t0, 2)
            row["max_diff_rel"] = (out.float() - ref.float()).abs().max().item() / scale
            row["ms"] = 1e3 * timed(lambda cfg=cfg, out=out: conv3x3(x, packed, relu=True, config=cfg, out=out), device)
        except Exception as exc:  # noqa: BLE001 - one launch that fails must not cost the others
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.info("conv %s", row)
    flops = 2 * 64 * 64 * 9 * h * w
    for row in rows:
        if "ms" in row:
            row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
    return {"size": f"{w}x{h}", "rows": rows}


def passes_section(h: int, w: int, device: torch.device, dtype: torch.dtype) -> dict:
    from mcan_deploy.kernels.epilogue import bias_act
    from mcan_deploy.kernels.rcab import channel_sums, scale_add

    g = torch.Generator(device=device).manual_seed(1)
    cl = torch.channels_last
    y = torch.rand(1, 64, h, w, generator=g, device=device, dtype=dtype).contiguous(memory_format=cl)
    hmap = torch.rand(1, 64, h, w, generator=g, device=device, dtype=dtype).contiguous(memory_format=cl)
    out = torch.empty_like(y)
    s = torch.rand(1, 64, device=device)
    b = torch.rand(64, device=device)
    nbytes = y.numel() * y.element_size()
    cases = [
        ("copy (read + write)", lambda: out.copy_(y), 2),
        ("channel sums (kernels.rcab, read)", lambda: channel_sums(y), 1),
        ("channel sums (torch.sum, read)", lambda: y.sum((2, 3), dtype=torch.float32), 1),
        ("gate and residual (scale_add: read 2, write 1)", lambda: scale_add(y, s, x=hmap, out=out), 3),
        ("bias + ReLU epilogue (bias_act: read, write)", lambda: bias_act(y, b, relu=True, out=out), 2),
    ]
    rows = []
    for what, fn, passes in cases:
        sec = timed(fn, device)
        rows.append({"what": what, "ms": 1e3 * sec, "GB/s": passes * nbytes / sec / 1e9})
        log.info("pass %s", rows[-1])
    return {"size": f"{w}x{h}", "map_GB": nbytes / 1e9, "rows": rows}


def whole_n(fb: Any, x: torch.Tensor) -> torch.Tensor:
    """Every block of the fused path on ``x``, as the whole-image plan runs them."""
    with torch.inference_mode():
        for i in range(len(fb.blocks)):
            x = fb.block(i, x)
    return x


def fastest(conv: dict | None, n: int = 3) -> list[Any]:
    """The ``n`` fastest Triton launches of the sweep that agreed with cuDNN."""
    if not conv:
        return []
    ok = [r for r in conv["rows"] if "config" in r and "ms" in r and r.get("max_diff_rel", 1) < 0.02]
    names = [r["config"] for r in sorted(ok, key=lambda r: r["ms"])[:n]]
    return [c for c in [*sweep_configs(False), *sweep_configs(True)] if c.describe() in names]


def profile_section(h: int, w: int, device: torch.device, dtype: torch.dtype, extra: list[Any]) -> dict:
    """The whole N as ``auto`` runs it, the sweep's fastest launches among its candidates."""
    from torch.profiler import ProfilerActivity, profile

    from mcan_deploy.kernels import conv3x3 as conv_mod
    from mcan_deploy.runners.fused import FusedBlocks

    conv_mod.GPU_CONFIGS = tuple(dict.fromkeys(tuple(conv_mod.GPU_CONFIGS) + tuple(extra)))
    model = paper_model(device.type != "cuda").to(device).eval()
    fb = FusedBlocks(model, device, dtype)
    x = torch.rand(1, 3, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    run = partial(whole_n, fb, x)
    choose_t0 = time.perf_counter()
    run()
    sync(device)
    first = time.perf_counter() - choose_t0
    sec = timed(run, device, reps=3)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
        sync(device)
    attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr, 0), reverse=True)
    kernels = []
    for e in events:
        if device.type == "cuda" and (getattr(e, "self_device_time_total", 0) or 0) <= 0:
            continue  # CPU-side ops: their kernels are listed themselves
        total = getattr(e, "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total", 0)
        kernels.append({"name": e.key[:110], "calls": e.count, "ms": total / 1e3})
        if len(kernels) >= 20:
            break
    fp16: dict[str, Any] = {}
    if device.type == "cuda":  # float16 as `auto` runs it (its guard included)
        del prof
        f16 = FusedBlocks(model, device, torch.float16)
        fp16 = {"model_s": timed(partial(whole_n, f16, x.to(torch.float16)), device, reps=3)}
        fp16["config"] = f"{f16.conv} {f16.config.describe() if f16.config else ''}"
        fp16["timings_ms_per_rcab"] = f16.timings
    return {
        "fp16": fp16,
        "conv": fb.conv,
        "config": fb.config.describe() if fb.config else None,
        "timings_ms_per_rcab": fb.timings,
        "first_s": first,
        "model_s": sec,
        "kernels": kernels,
    }


def markdown(res: dict) -> str:
    lines = [f"# Fused path on {res['device']}: the convolution sweep and a profile", "", res["versions"], ""]
    conv = res.get("conv")
    if conv:
        lines += [f"## One 64 -> 64 3x3 convolution on {conv['size']} ({res['dtype']}, channels_last)", ""]
        lines += ["| what | ms | TFLOP/s | first call s | max diff / scale |", "|---|---:|---:|---:|---:|"]
        for r in conv["rows"]:
            if "ms" not in r:
                lines.append(f"| {r['what']} | {r.get('error') or r.get('skipped')} | | | |")
                continue
            diff = f"{r['max_diff_rel']:.1e}" if "max_diff_rel" in r else ""
            lines.append(f"| {r['what']} | {r['ms']:.3f} | {r['tflops']:.0f} | {r.get('first_s', '')} | {diff} |")
        lines.append("")
    passes = res.get("passes")
    if passes:
        lines += [f"## Passes over one {passes['map_GB']:.2f} GB map", "", "| pass | ms | GB/s |", "|---|---:|---:|"]
        lines += [f"| {r['what']} | {r['ms']:.3f} | {r['GB/s']:.0f} |" for r in passes["rows"]]
        lines.append("")
    prof = res.get("profile")
    if prof:
        lines += [
            f"## The whole N through the fused path: {prof['model_s']:.3f} s ({prof['conv']} {prof['config'] or ''}; "
            f"first call {prof['first_s']:.1f} s)",
            "",
            "ms per RCAB as `choose` timed them: "
            + ", ".join(f"{k} {v:.3f}" for k, v in prof["timings_ms_per_rcab"].items()),
            "",
            "| kernel | calls | ms |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{k['name']}` | {k['calls']} | {k['ms']:.1f} |" for k in prof["kernels"]]
        lines.append("")
        if prof.get("fp16"):
            f = prof["fp16"]
            lines += [
                f"float16, the whole N: {f['model_s']:.3f} s (triton {f['config']}); ms per RCAB: "
                + ", ".join(f"{k} {v:.3f}" for k, v in f["timings_ms_per_rcab"].items()),
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU (Triton's interpreter)")
    p.add_argument("--seconds", type=float, default=90.0, help="time for the convolution sweep")
    p.add_argument("--sections", default="conv,passes,profile")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h, w = (3000, 4000) if device.type == "cuda" else (24, 40)
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (interpreter)"
    res: dict[str, Any] = {
        "device": name,
        "dtype": str(dtype).replace("torch.", ""),
        "versions": f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}; torch {torch.__version__}, triton {triton.__version__}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"conv-sweep-{name.split()[-1].lower() if device.type == 'cuda' else 'cpu'}-{time.strftime('%Y%m%d')}"
    torch.backends.cudnn.benchmark = True
    sections = args.sections.split(",")
    for section in sections:
        try:
            if section == "conv":
                res["conv"] = conv_section(h, w, device, dtype, args.smoke, time.monotonic() + args.seconds)
            elif section == "passes":
                res["passes"] = passes_section(h, w, device, dtype)
            elif section == "profile":
                res["profile"] = profile_section(h, w, device, dtype, fastest(res.get("conv")))
        except Exception as exc:
            log.exception("section %s failed", section)
            res[f"{section}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
        (out / f"{stem}.md").write_text(markdown(res))
    log.info("wrote %s", out / f"{stem}.md")


if __name__ == "__main__":
    main()
