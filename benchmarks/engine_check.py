"""The product path on one machine, for ``benchmarks/gpu_check.sh``: what a user's photo meets.

    python benchmarks/engine_check.py engine|folder|train --out DIR [--smoke] [--seconds S]

Sections (each run as its own command, each with a time limit, each writing its part of
``DIR/engine-<device>-<date>.json`` and re-rendering the ``.md`` as soon as it has a row):

- ``engine``: the paper-size N (3 blocks x 16 RCAB x 64 features, orthogonal weights) on a 12 MP
  image (``samples/photo`` resized to 4000x3000) for every plan x float32/bfloat16/float16 x
  torch/Triton RCAB: seconds, the allocator's peak against the memory model's estimate, the
  largest difference from the float32 whole-image result, float16 overflows redone.
- ``folder``: ``mcan-upscale`` on a folder of four 12 MP PNGs, wall time against the model time
  alone (the same images through ``upscale_tensor``, decoded beforehand).
- ``train``: mcan-bench's training rows (the trainer's step, L1, Adam, batch 16 of 48x48) of one
  block and of N in float32, at ``[train]``'s defaults and in bf16 captured in a CUDA graph, and
  the hours the report's whole plan would take at each rate.

``--smoke`` runs the same code on a CPU at tiny sizes (Triton in its interpreter), so CI keeps the
script working between GPU sessions; its timings mean nothing. Cases that would start after the
section's ``--seconds`` are recorded as skipped, never silently dropped.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcan_deploy.model import MCAN, ModelConfig, build_model, init_block

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "photo" / "city100_001_LR.png"
log = logging.getLogger("engine_check")


# ---- shared -------------------------------------------------------------------------------
def paper_model(smoke: bool) -> MCAN:
    cfg = ModelConfig(n_resblocks=2, n_feats=16) if smoke else ModelConfig()
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    for block in model.blocks:
        init_block(block, "orthogonal", gen)
    return model


def photo(h: int, w: int, variant: int = 0) -> np.ndarray:
    """The sample photo resized bicubically to (h, w), RGB float32 in [0, 1]; ``variant`` flips
    and shifts it so that files differ."""
    import cv2

    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    rgb = cv2.resize(bgr[:, :, ::-1].astype(np.float32) / 255, (w, h), interpolation=cv2.INTER_CUBIC)
    if variant % 2:
        rgb = rgb[:, ::-1]
    rgb = np.roll(rgb, 7 * variant, axis=0)
    return np.ascontiguousarray(np.clip(rgb, 0, 1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


class Results:
    """One JSON file per device and date, each section its own key, saved after every row."""

    def __init__(self, out: Path, device: torch.device, smoke: bool) -> None:
        from mcan_deploy.bench import machine_info

        kind = "smoke" if smoke else device.type
        self.path = out / f"engine-{kind}-{time.strftime('%Y%m%d')}.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data["machine"] = {
            **machine_info(device),
            "cuda": torch.version.cuda,
            "tf32_conv": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }

    def put(self, section: str, value: Any) -> None:
        self.data[section] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)
        self.path.with_suffix(".md").write_text(render(self.data))


def gb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


def render(d: dict[str, Any]) -> str:
    m = d.get("machine", {})
    lines = [
        f"# Engine check: {m.get('gpu') or m.get('cpu')}",
        "",
        f"{m.get('date')}; torch {m.get('torch')}, CUDA {m.get('cuda')}, triton {m.get('triton')}; "
        f"TF32 convolutions {'on' if m.get('tf32_conv') else 'off'}.",
        "",
    ]
    if "engine" in d:
        e = d["engine"]
        lines += [
            f"## Paper-size N on a {e['size']} image",
            "",
            "| plan asked | ran | dtype | RCAB | s | peak GB | model GB | max diff vs fp32 whole | overflows "
            "| statistics |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in e["rows"]:
            if "skipped" in r or "error" in r:
                lines.append(
                    f"| {r['plan']} | | {r['dtype']} | {r['rcab']} | | | | | | {r.get('skipped') or r.get('error')} |"
                )
                continue
            lines.append(
                f"| {r['plan']} | {r['plan_run']} | {r['dtype']} | {r['rcab']} | {r['seconds']:.3f} | {gb(r['peak_bytes'])} "
                f"| {gb(r['model_bytes'])} | {r['max_diff']:.2e} | {r['overflows']} | {r['stats']} |"
            )
        lines.append("")
    if "folder" in d:
        f = d["folder"]
        lines += [
            f"## mcan-upscale on a folder of {f['images']} {f['size']} photos",
            "",
            f"- wall time {f['wall_s']:.2f} s, model time alone {f['model_s']:.2f} s: "
            f"**{f['wall_s'] / f['model_s']:.2f}x** (target <= 1.3x on an H100/H200)",
            f"- command: `{f['command']}`",
            "",
        ]
    if "train" in d:
        lines += [
            "## Training step (the trainer's step: L1, Adam, batch 16 of 48x48)",
            "",
            "The paper plan column: configs/paper.toml's iterations at these rates (block phases at the "
            "block's step, phase 4 at N's; generation and validation not counted).",
            "",
            "| what | options | computed as | ms/step (median) | x fp32 | paper plan (hours) |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in d["train"]:
            if "skipped" in r:
                lines.append(f"| - | {r['options']} | {r['skipped']} | | | |")
                continue
            hours = f"{r['paper_plan_hours']:.1f}" if "paper_plan_hours" in r else ""
            lines.append(
                f"| {r['what']} | {r['options']} | {r['describe']} | {1000 * r['step_s']:.1f} | "
                f"{r['speedup_vs_fp32']:.2f} | {hours} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---- sections -----------------------------------------------------------------------------
def engine(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    from mcan_deploy.runners import TorchRunner, TritonRunner
    from mcan_deploy.tiling import TileConfig, choose, default_tile, upscale_tensor

    h, w = (96, 128) if args.smoke else (3000, 4000)
    x = torch.from_numpy(photo(h, w).transpose(2, 0, 1).copy())
    model = paper_model(args.smoke)
    tile = 32 if args.smoke else default_tile("global", device)
    crop = x[:, : min(h, 600), : min(w, 600)]
    deadline = time.monotonic() + args.seconds
    # most telling first: the reference, bf16 whole (the default), then the fallbacks
    cases = [
        ("whole", "float32", "torch"),
        ("whole", "bfloat16", "torch"),
        ("whole", "float16", "torch"),
        ("whole", "bfloat16", "triton"),
        ("layers", "bfloat16", "torch"),
        ("layers", "bfloat16", "triton"),
        ("layers-host", "bfloat16", "torch"),
        ("block", "bfloat16", "torch"),
        ("all", "bfloat16", "torch"),
        ("whole", "float16", "triton"),
        ("layers", "float16", "torch"),
        ("layers", "float32", "torch"),
        ("layers-host", "float32", "torch"),
        ("layers-host", "float16", "torch"),
        ("block", "float32", "torch"),
        ("block", "float16", "torch"),
        ("all", "float32", "torch"),
        ("all", "float16", "torch"),
        ("whole", "float32", "triton"),
        ("layers", "float32", "triton"),
    ]
    rows: list[dict[str, Any]] = []
    section = {"size": f"{w}x{h}", "tile": tile, "rows": rows}
    ref = None
    for plan, dtype, rcab in cases:
        row: dict[str, Any] = {"plan": plan, "dtype": dtype, "rcab": rcab}
        rows.append(row)
        if time.monotonic() > deadline:
            row["skipped"] = f"time limit ({args.seconds:.0f} s)"
            res.put("engine", section)
            continue
        try:
            cls = TritonRunner if rcab == "triton" else TorchRunner
            runner = cls(copy.deepcopy(model), device, getattr(torch, dtype))
            tile_stats = plan in ("block", "all")
            cfg = TileConfig(
                tile=tile if not tile_stats else (64 if args.smoke else default_tile("tile", device)),
                batch=1 if device.type == "cpu" else 4,
                ca_stats="tile" if tile_stats else "global",
                plan=plan,
                max_memory=None,
            )
            upscale_tensor(runner, crop, cfg)  # warm-up: cuDNN setup, Triton compiles
            choice = choose(runner, h, w, cfg)
            sync(device)
            reset_peak(device)
            t0 = time.perf_counter()
            out, report = upscale_tensor(runner, x, cfg)
            sync(device)
            row["seconds"] = time.perf_counter() - t0
            row.update(
                peak_bytes=peak(device),
                model_bytes=choice.need.device,
                plan_run=report.plan,
                stats=report.ca_stats,
                overflows=report.overflows,
                summary=report.summary(),
            )
            if ref is None:
                ref = out
            row["max_diff"] = float((out - ref).abs().max())
            del runner, out
        except Exception as exc:  # one failed case must not cost the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log.exception("engine case %s failed", row)
        log.info("engine %s", {k: v for k, v in row.items() if k != "summary"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        res.put("engine", section)


def folder(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    import cv2

    from mcan_deploy.checkpoint import save_model
    from mcan_deploy.cli.upscale import main as upscale_main
    from mcan_deploy.runners import load_runner
    from mcan_deploy.tiling import TileConfig, default_tile, upscale_tensor

    h, w = (96, 128) if args.smoke else (3000, 4000)
    n = 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_path = tmp_path / "model.safetensors"
        save_model(model_path, paper_model(args.smoke))
        src = tmp_path / "photos"
        src.mkdir()
        for i in range(n):
            cv2.imwrite(str(src / f"photo{i}.png"), np.rint(photo(h, w, i)[:, :, ::-1] * 255).astype(np.uint8))
        runner = load_runner(model_path, str(device), backend="torch")
        cfg = TileConfig(tile=default_tile("global", device), batch=1 if device.type == "cpu" else 4)
        xs = [torch.from_numpy(photo(h, w, i).transpose(2, 0, 1).copy()) for i in range(n)]
        upscale_tensor(runner, xs[0][:, :256, :256], cfg)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for x in xs:
            upscale_tensor(runner, x, cfg)
        sync(device)
        model_s = time.perf_counter() - t0
        del runner
        argv = [
            str(model_path),
            str(src),
            "-o",
            str(tmp_path / "out"),
            "--no-progress",
            "--device",
            str(device),
            "--backend",
            "torch",
        ]
        t0 = time.perf_counter()
        rc = upscale_main(argv)
        wall = time.perf_counter() - t0
    res.put(
        "folder",
        {
            "images": n,
            "size": f"{w}x{h}",
            "wall_s": wall,
            "model_s": model_s,
            "exit_code": rc,
            "command": "mcan-upscale MODEL photos/ -o out/ (defaults: --dtype auto, --plan auto)",
        },
    )
    log.info("folder: wall %.2f s, model alone %.2f s, exit %d", wall, model_s, rc)
    if rc != 0:
        raise SystemExit(f"engine_check folder: mcan-upscale exited {rc}")


# the training options gpu_check records (issue 18), from mcan-bench's: float32 as the trainer
# ran before, [train]'s defaults (bf16, channels_last, fused Adam on such a GPU), and bf16 with
# the step captured in a CUDA graph
TRAIN_OPTIONS = ("fp32", "default", "bf16 CUDA graphs")


def paper_plan_hours(block_s: float, n_s: float) -> float:
    """Hours the report's plan (configs/paper.toml) takes at these step times: block phases at
    the block's rate, phase 4 at N's; generation phases and validation not counted."""
    from mcan_deploy.config import load_plan

    plan = load_plan(REPO / "configs" / "paper.toml")
    seconds = sum(p.total_iters * (block_s if p.kind == "train_block" else n_s) for p in plan.phases)
    return seconds / 3600


def train(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    """mcan-bench's training rows (the trainer's own step of one block and of N, batch 16 of
    48x48) for ``TRAIN_OPTIONS``, with the paper plan's hours at each option's rates."""
    from mcan_deploy.bench import CUDA_ONLY_OPTIONS, BenchConfig, bench_training

    cfg = BenchConfig(
        train_steps=2 if args.smoke else 20,
        train_models=(("paper", ModelConfig(n_resblocks=2, n_feats=16) if args.smoke else ModelConfig()),),
        train_options=TRAIN_OPTIONS,
        device=str(device),
    )
    rows: list[dict[str, Any]] = bench_training(cfg, device, None)
    for option in TRAIN_OPTIONS:
        timed = {r["what"]: r["step_s"] for r in rows if r["options"] == option}
        if option in CUDA_ONLY_OPTIONS and device.type != "cuda":
            rows.append({"what": "-", "options": option, "skipped": "CUDA graphs need a CUDA device"})
        elif len(timed) == 2 and not args.smoke:
            next(r for r in rows if r["options"] == option and r["what"] == "N")["paper_plan_hours"] = paper_plan_hours(
                timed["block"], timed["N"]
            )
    for r in rows:
        if "step_s" in r:
            log.info("train %s (%s): %.1f ms/step", r["what"], r["options"], 1000 * r["step_s"])
    res.put("train", rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["engine", "folder", "train"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    p.add_argument("--seconds", type=float, default=150, help="start no new case after this long")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("engine_check: no CUDA device visible (use --smoke on a CPU)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    os.environ.setdefault("MCAN_DEPLOY_CACHE", str(out / ".cache"))
    {"engine": engine, "folder": folder, "train": train}[args.section](args, device, Results(out, device, args.smoke))


if __name__ == "__main__":
    main()
