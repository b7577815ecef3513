"""The product path on one machine, for ``benchmarks/gpu_check.sh``: what a user's photo meets.

    python benchmarks/engine_check.py engine|folder|train|packed --out DIR [--smoke] [--seconds S]

Sections (each run as its own command, each with a time limit, each writing its part of
``DIR/gpu-<device>-<date>.json`` through ``gpu_results.Results`` as soon as it has a row):

- ``engine``: the paper-size N (3 blocks x 16 RCAB x 64 features, orthogonal weights) on a 12 MP
  image (``samples/photo`` resized to 4000x3000, on the device as the API hands it on) for every
  plan x float32/bfloat16/float16 on the fused path (each convolution it can choose, and its
  own choice) and the main rows of the eager path: model seconds after a warm-up at the same
  size, the allocator's peak against the memory model's estimate, the largest difference from
  the float32 eager whole-image result, float16 overflows redone, and each case's wall time.
- ``folder``: ``mcan-upscale`` on a folder of four 12 MP PNGs, wall time against the model time
  alone (the same images through ``upscale_tensor``, already on the device).
- ``train``: mcan-bench's training rows (the trainer's step, L1, Adam, batch 16 of 48x48) of one
  block and of N in float32, at ``[train]``'s defaults and in bf16 captured in a CUDA graph, and
  the hours the report's whole plan would take at each rate.
- ``packed``: one paper-size block phase (batch 16 of 48x48, Adam, ``[train]``'s defaults: CUDA
  graphs on a GPU) trained alone, then three seeds of it trained together (``train.packed``):
  each run's seconds per iteration over its last log window, and the packed rate against the
  solo one (issue 30's target: three runs in at most 1.5x the time of one).

``--smoke`` runs the same code on a CPU at tiny sizes (Triton in its interpreter), so CI keeps the
script working between GPU sessions; its timings mean nothing. Cases that would start after the
section's ``--seconds`` are recorded as skipped, never silently dropped.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from mcan_deploy.model import MCAN, ModelConfig, build_model, init_block

try:  # run as a script (python benchmarks/engine_check.py) or imported from the package
    from gpu_results import Results, start
except ImportError:
    from benchmarks.gpu_results import Results, start

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


# ---- sections -----------------------------------------------------------------------------
# (plan, dtype, RCAB, fused convolution), most telling first, so a time limit cuts the least:
# the float32 reference, the default (fused, bf16, auto), the old default, the targets' rows,
# each fused convolution forced, then every plan x dtype of the fused path and the torch path.
ENGINE_CASES = [
    ("whole", "float32", "torch", "-"),
    ("whole", "bfloat16", "fused", "auto"),
    ("whole", "bfloat16", "torch", "-"),
    ("layers", "bfloat16", "fused", "auto"),
    ("whole", "float16", "fused", "auto"),
    ("whole", "bfloat16", "fused", "triton"),
    ("whole", "bfloat16", "fused", "cudnn"),
    ("whole", "bfloat16", "fused", "cudnn-fused"),
    ("layers", "bfloat16", "fused", "cudnn"),
    ("layers-host", "bfloat16", "fused", "auto"),
    ("block", "bfloat16", "fused", "auto"),
    ("all", "bfloat16", "fused", "auto"),
    ("layers", "float16", "fused", "auto"),
    ("whole", "float32", "fused", "auto"),
    ("layers", "float32", "fused", "auto"),
    ("whole", "float16", "torch", "-"),
    ("layers", "bfloat16", "torch", "-"),
    ("layers-host", "float16", "fused", "auto"),
    ("layers-host", "float32", "fused", "auto"),
    ("block", "float16", "fused", "auto"),
    ("block", "float32", "fused", "auto"),
    ("all", "float16", "fused", "auto"),
    ("all", "float32", "fused", "auto"),
]
# on a CPU the fused kernels run in Triton's interpreter: every plan x dtype on the torch path,
# the fused path's main rows
SMOKE_CASES = [
    ("whole", "float32", "torch", "-"),
    ("whole", "bfloat16", "fused", "auto"),
    ("layers", "bfloat16", "fused", "auto"),
    ("whole", "float16", "fused", "auto"),
    ("whole", "bfloat16", "fused", "cudnn"),
    *[
        (p, d, "torch", "-")
        for p in ("whole", "layers", "layers-host", "block", "all")
        for d in ("float32", "bfloat16", "float16")
    ],
]
SMOKE_CASES = list(dict.fromkeys(SMOKE_CASES))


def _runner(
    cache: dict[tuple[str, str, str], Any], model: MCAN, device: torch.device, dtype: str, rcab: str, conv: str
):
    from mcan_deploy.runners import TorchRunner, TritonRunner

    key = (dtype, rcab, conv)
    if key not in cache:
        if rcab == "fused":
            cache[key] = TritonRunner(copy.deepcopy(model), device, getattr(torch, dtype), conv=conv)
        else:
            cache[key] = TorchRunner(copy.deepcopy(model), device, getattr(torch, dtype))
    return cache[key]


def engine(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    """Every case: a warm-up on the full-size image (convolution choice, compiles, cuDNN plans
    for this shape), then the timed run; the runner of a dtype and RCAB is built once."""
    from mcan_deploy.tiling import TileConfig, choose, default_tile, upscale_tensor

    # smoke: the all-blocks plan's 58-pixel windows (tile 16 + 2 x 21) must not cover 72 columns
    h, w = (24, 72) if args.smoke else (3000, 4000)
    x = torch.from_numpy(photo(h, w).transpose(2, 0, 1).copy()).to(device)  # as the API hands it on
    model = paper_model(args.smoke)
    tile = 24 if args.smoke else default_tile("global", device)
    deadline = time.monotonic() + args.seconds
    rows: list[dict[str, Any]] = []
    section = {"size": f"{w}x{h}", "tile": tile, "rows": rows}
    ref = None
    runners: dict[tuple[str, str, str], Any] = {}
    cases = SMOKE_CASES if args.smoke else ENGINE_CASES
    if args.only:
        cases = [cast(tuple[str, str, str, str], tuple(c.split(":"))) for c in args.only.split(",")] * 2
    for plan, dtype, rcab, conv in cases:
        row: dict[str, Any] = {"plan": plan, "dtype": dtype, "rcab": rcab, "conv": conv}
        rows.append(row)
        if time.monotonic() > deadline:
            row["skipped"] = f"time limit ({args.seconds:.0f} s)"
            res.put("engine", section)
            continue
        t_case = time.perf_counter()
        try:
            runner = _runner(runners, model, device, dtype, rcab, conv)
            tile_stats = plan in ("block", "all")
            cfg = TileConfig(
                tile=tile if not tile_stats else (16 if args.smoke else default_tile("tile", device)),
                batch=1 if device.type == "cpu" else 4,
                ca_stats="tile" if tile_stats else "global",
                plan=plan,
                max_memory=None,
            )
            if not args.smoke:
                upscale_tensor(runner, x, cfg)
            choice = choose(runner, h, w, cfg)
            sync(device)
            reset_peak(device)
            t0 = time.perf_counter()
            out, report = upscale_tensor(runner, x, cfg)
            sync(device)
            row["seconds"] = time.perf_counter() - t0
            kernels = getattr(runner, "kernels", None)
            row.update(
                peak_bytes=peak(device),
                model_bytes=choice.need.device,
                plan_run=report.plan,
                stats=report.ca_stats,
                overflows=report.overflows,
                summary=report.summary(),
                conv_run=(
                    (f"{kernels.conv} {kernels.config.describe()}" if kernels.config else kernels.conv)
                    + (f" with the head on {kernels.head}" if kernels.conv != "triton" else "")
                )
                if kernels is not None
                else "-",
            )
            if ref is None:
                ref = out
            row["max_diff"] = float((out - ref).abs().max())
            del out
        except Exception as exc:  # one failed case must not cost the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log.exception("engine case %s failed", row)
        row["wall_s"] = time.perf_counter() - t_case
        log.info("engine %s", {k: v for k, v in row.items() if k != "summary"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        res.put("engine", section)


def folder(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    import cv2

    from mcan_deploy.checkpoint import save_model
    from mcan_deploy.cli.upscale import main as upscale_main
    from mcan_deploy.io import read_photo_array, write_pixels
    from mcan_deploy.png import default_threads
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
        runner = load_runner(model_path, str(device), backend="torch")  # the defaults mcan-upscale takes
        cfg = TileConfig(tile=default_tile("global", device), batch=1 if device.type == "cpu" else 4)
        # the model alone: the images already on the device, as the pipeline hands them on
        xs = [torch.from_numpy(photo(h, w, i).transpose(2, 0, 1).copy()).to(device) for i in range(n)]
        upscale_tensor(runner, xs[0], cfg)  # warm-up at the full size
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
        # the pipeline's floor: nothing overlaps the first image's decode or the last one's
        # encode, as the pipeline does them (its read with the metadata, its PNG writer on
        # png.default_threads() cores); OpenCV's alone for reference
        t0 = time.perf_counter()
        first, _ = read_photo_array(src / "photo0.png")
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_pixels(tmp_path / "again.png", np.ascontiguousarray(first[:, :, ::-1]))
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cv2.imread(str(src / "photo0.png"), cv2.IMREAD_UNCHANGED)
        cv_decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cv2.imwrite(str(tmp_path / "again.png"), first)
        cv_encode_s = time.perf_counter() - t0
    res.put(
        "folder",
        {
            "images": n,
            "size": f"{w}x{h}",
            "wall_s": wall,
            "model_s": model_s,
            "decode_one_s": decode_s,
            "encode_one_s": encode_s,
            "encode_threads": default_threads(),
            "opencv_decode_one_s": cv_decode_s,
            "opencv_encode_one_s": cv_encode_s,
            "exit_code": rc,
            "command": "mcan-upscale MODEL photos/ -o out/ (defaults: --rcab auto, --dtype auto, --plan auto)",
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
        train_batch=2 if args.smoke else 16,  # smoke: the step's code, not its speed
        train_patch=16 if args.smoke else 48,
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


def packed(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    """One block phase alone, then three seeds of it packed (see the module docstring)."""
    from mcan_deploy.config import plan_from_dict
    from mcan_deploy.study.runs import plan_for_seed
    from mcan_deploy.train import train as train_run
    from mcan_deploy.train.packed import PackedRun, train_packed

    iters = 4 if args.smoke else 400
    stage = {"name": "adam", "optimizer": "adam", "iters": [iters], "lr": [1e-4], "clamp": True}
    base = plan_from_dict(
        {
            "model": {"n_blocks": 1, **({"n_resblocks": 2, "n_feats": 16} if args.smoke else {})},
            "data": {"patch_size": 16 if args.smoke else 48, "batch_size": 2 if args.smoke else 16},
            "train": {"log_every": iters // 4, "val_every": 0, "checkpoint_every": 0},
            "phases": [{"name": "1", "kind": "train_block", "block": 1, "init": "orthogonal", "stages": [stage]}],
        }
    )
    sample = REPO / "samples" / "city100"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (1, 3):
            runs = [
                PackedRun(plan_for_seed(base, s), sample, Path(tmp) / f"k{k}-seed{s}", f"seed{s}") for s in range(k)
            ]
            t0 = time.perf_counter()
            if k == 1:
                train_run(runs[0].plan, sample, runs[0].out_dir, device=str(device), progress=False)
            else:
                train_packed(runs, str(device), progress=False)
            wall = time.perf_counter() - t0
            rates = [_last_rate(r.out_dir) for r in runs]
            row: dict[str, Any] = {"runs": k, "iters": iters, "wall_s": wall, "s_per_iter": max(rates)}
            if k > 1:
                row["ratio_to_one"] = row["s_per_iter"] / rows[0]["s_per_iter"]
            rows.append(row)
            log.info("packed %d: %.1f ms/iteration, wall %.1f s", k, 1000 * row["s_per_iter"], wall)
            res.put("packed", rows)


def _last_rate(run: Path) -> float:
    """Seconds per iteration over a run's last log window (the first holds the graph capture)."""
    from mcan_deploy.train.rundir import read_metrics

    return float([r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"][-1]["sec_per_iter"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["engine", "folder", "train", "packed"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    p.add_argument("--seconds", type=float, default=150, help="start no new case after this long")
    p.add_argument(
        "--only",
        default="",
        help="engine cases to run, comma-separated plan:dtype:rcab:conv (a re-run of some rows; each is run twice)",
    )
    args = p.parse_args()
    device, res = start("engine_check", args)
    os.environ.setdefault("MCAN_DEPLOY_CACHE", str(Path(args.out) / ".cache"))
    {"engine": engine, "folder": folder, "train": train, "packed": packed}[args.section](args, device, res)


if __name__ == "__main__":
    main()
