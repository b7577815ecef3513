"""``mcan-train --config PLAN --data DIR --out RUN``: phased training, resumable.

Running the same command again after an interruption continues from the last checkpoint; a
finished run says so and exits 0. Ctrl-C or SIGTERM writes a checkpoint first (exit 130).
Under torchrun (``torchrun --nproc_per_node K -m mcan_deploy.cli.train ...``) every phase trains
with DistributedDataParallel (NCCL on GPUs, gloo on CPUs), each process on its slice of the
global batch; rank 0 writes the run directory. A run resumes with any number of processes.

How each step is computed (--precision, --channels-last, --optimizer-impl, --cuda-graphs; the
plan's [train] keys) may change between sessions of a run: checkpoints stay float32.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from .common import EXIT_INTERRUPTED, cli_main, positive_int, seed_list

if TYPE_CHECKING:
    from ..config import Plan
    from ..train import RunResult


class StopFlag:
    """Set by SIGINT/SIGTERM; a second Ctrl-C falls back to the default (immediate) behaviour."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: object) -> None:
            self.stop = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(
                f"\nmcan-train: {signal.Signals(signum).name} received, writing a checkpoint "
                "after this iteration (Ctrl-C again to abort at once)",
                file=sys.stderr,
            )

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcan-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="phase plan: a shipped name (demo, paper, ...; see --list-plans) or a TOML file")
    p.add_argument(
        "--data",
        nargs="+",
        help="dataset folder(s) with train/ and test/ (each HR/+LR/ or RealSR v3 files), or 'sample' "
        "for the bundled City100 crops; several folders (cameras) train together, mixed by the "
        "plan's data.mix (equal shares by default), each validated on its own (default: data.dirs)",
    )
    p.add_argument(
        "--val-data",
        nargs="+",
        help="dataset folders validated on but not trained on (their test/ pairs, each on its own "
        "line): how the model does on another camera (default: data.val_dirs)",
    )
    p.add_argument("--out", help="run directory (created, or resumed if it exists)")
    p.add_argument("--list-plans", action="store_true", help="show the shipped plans and exit")
    p.add_argument(
        "--init-from",
        help="start from a trained model (or block, or checkpoint) file: the phases "
        "that say init = 'from:', else the plan's first training phase (fine-tuning)",
    )
    p.add_argument(
        "--max-iters", type=int, help="cut every span of iterations to this many: a smoke run (use a separate --out)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--rcab",
        choices=["torch", "triton"],
        help="RCAB channel-attention tail: eager torch or the fused Triton kernels "
        "(default: the plan's model.rcab_impl, else torch); may differ on resume",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="training precision: bf16 autocast (float32 weights, optimiser state, loss and "
        "metrics) or fp32; auto is bf16 where the device computes it natively (default: the "
        "plan's train.precision, else auto); may differ on resume",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="NHWC activations while training (default: the plan's train.channels_last, else on)",
    )
    p.add_argument(
        "--optimizer-impl",
        choices=["auto", "for_loop", "foreach", "fused"],
        help="PyTorch's optimiser implementation; auto is fused Adam and foreach Adadelta "
        "(default: the plan's train.optimizer_impl, else auto)",
    )
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        help="CUDA only: capture each stage's whole step once and replay it (default: the plan's train.cuda_graphs)",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        help="comma-separated seeds: one run of the plan per seed, in OUT/seed<k>, trained together "
        "on the device (see --pack); each gives what a run with train.seed = k gives alone",
    )
    p.add_argument(
        "--pack",
        type=positive_int,
        help="with --seeds: runs trained at once, each on its own CUDA stream, taking turns step by step "
        "(default 3 on CUDA, 1 on a CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..config import cap_iterations, load_plan, with_init_from
    from ..errors import MCANError
    from ..resources import list_plans, resolve_data, resolve_plan
    from ..train import TrainingInterrupted, train

    if args.list_plans:
        entries = list_plans()
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"{e.name:<{width}}  {e.summary}")
        return 0
    missing = [f"--{k}" for k in ("config", "out") if not getattr(args, k)]
    if missing:
        raise MCANError(
            f"mcan-train needs {', '.join(missing)} (e.g. mcan-train --config demo --data sample "
            "--out runs/demo; --list-plans shows the shipped plans)"
        )
    plan = load_plan(resolve_plan(args.config))
    folders = args.data or plan.data.dirs
    if not folders:
        raise MCANError("mcan-train needs --data (one or more dataset folders, or 'sample'), or data.dirs in the plan")
    args.data = [resolve_data(d) for d in folders]
    if len(args.data) == 1:
        args.data = args.data[0]  # one folder: recorded as before
    if args.val_data:
        import dataclasses

        vals = [str(resolve_data(d)) for d in args.val_data]
        plan = dataclasses.replace(plan, data=dataclasses.replace(plan.data, val_dirs=vals))
    if args.init_from:
        plan = with_init_from(plan, args.init_from)
    if args.max_iters is not None:
        if args.max_iters < 1:
            raise MCANError(f"--max-iters {args.max_iters}: must be >= 1")
        plan = cap_iterations(plan, args.max_iters)
    if args.rcab:
        import dataclasses

        plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, rcab_impl=args.rcab))
    speed = {
        k: v
        for k, v in (
            ("precision", args.precision),
            ("channels_last", args.channels_last),
            ("optimizer_impl", args.optimizer_impl),
            ("cuda_graphs", args.cuda_graphs),
        )
        if v is not None
    }
    if speed:
        import dataclasses

        plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, **speed)).validate(str(args.config))
    stop = StopFlag()
    stop.install()
    from tqdm.contrib.logging import logging_redirect_tqdm

    if args.pack is not None and not args.seeds:
        raise MCANError("--pack applies to --seeds (runs trained together); give --seeds 0,1,2 or drop --pack")
    dist, device = distributed.init(args.device)
    if args.seeds and dist.enabled:
        distributed.shutdown()
        raise MCANError("--seeds trains several runs in one process; under torchrun train one seed per command")
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bars
            if args.seeds:
                results = _train_seeds(plan, args, device, stop)
            else:
                results = [
                    train(
                        plan,
                        args.data,
                        args.out,
                        device=device,
                        progress=not args.no_progress,
                        should_stop=stop,
                        dist=dist,
                    )
                ]
    except TrainingInterrupted as exc:
        if dist.is_main:
            print(f"mcan-train: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        distributed.shutdown()
    if not dist.is_main:
        return 0
    for result in results:
        _print_result(result)
    return 0


def _train_seeds(plan: Plan, args: argparse.Namespace, device: str, stop: StopFlag) -> list[RunResult]:
    """One run per seed in OUT/seed<k>, ``--pack`` at a time trained together."""
    from pathlib import Path

    from ..study.runs import plan_for_seed
    from ..train.packed import PackedRun, resolve_pack, train_packed

    runs = [PackedRun(plan_for_seed(plan, s), args.data, Path(args.out) / f"seed{s}", f"seed{s}") for s in args.seeds]
    pack = resolve_pack(args.pack, device)
    results = []
    for i in range(0, len(runs), pack):
        results += train_packed(runs[i : i + pack], device, not args.no_progress, stop)
    return results


def _print_result(result: RunResult) -> None:
    state = "already finished" if result.already_finished else "finished"
    ident = result.identity.get("psnr", float("nan"))
    print(f"mcan-train: run {state}: {result.paths.root}")
    print(f"  identity (LR vs HR): {ident:.3f} dB")
    for r in result.phases:
        print(
            f"  phase {r['phase']:>8} {r['block']:>3}: {r['psnr']:.3f} dB "
            f"({r['psnr'] - ident:+.3f} dB), Y {r['psnr_y']:.3f} dB"
        )
    print(f"  model: {result.paths.model}\n  report: {result.paths.report}")


if __name__ == "__main__":
    sys.exit(main())
