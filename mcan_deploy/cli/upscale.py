"""``mcan-upscale MODEL INPUT... -o OUT``: tiled inference on full-size images and folders.

Outputs are written atomically; an existing output is skipped unless --overwrite; a bad file is
reported by name and the batch goes on; the exit code is 0 only if every file succeeded.
Under torchrun (``torchrun --nproc_per_node K -m mcan_deploy.cli.upscale ...``, also across
machines) the files are split over the processes, each file processed once, one GPU each.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from .common import cli_main

if TYPE_CHECKING:
    from concurrent.futures import Future
    from pathlib import Path

    from ..api import Upscaler
    from ..distributed import Dist
    from ..upscale import Job


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcan-upscale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "model", help="trained model: model.safetensors from mcan-train, or .onnx / .xml (OpenVINO) from mcan-export"
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("-o", "--out", required=True, help="output folder (or file, for one input)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="resize the input bicubically by this factor first (1: input is at target size)",
    )
    _engine_options(p)
    _output_options(p)
    return p


def _engine_options(p: argparse.ArgumentParser) -> None:
    """How the model runs: tiles, statistics, back-end, device, precision, memory."""
    p.add_argument(
        "--tile",
        type=int,
        help="tile core side in pixels (default on CPU: global 256, tile max(256, 16 x margin); twice that on CUDA)",
    )
    p.add_argument("--batch", type=int, help="windows per model call (default 1 on CPU, 4 on CUDA)")
    p.add_argument(
        "--prefetch",
        type=int,
        help="images decoded ahead and results waiting to be written, so that reading and "
        "writing files overlap the model (default 2; 0, one image after another, for "
        "PyTorch on a CPU, where the model already keeps every core busy)",
    )
    p.add_argument(
        "--ca-stats",
        choices=["auto", "global", "tile"],
        default="auto",
        help="channel-attention statistics: global (exact), per tile (approximate, flat memory), "
        "or auto: global where the back-end can (PyTorch, OpenVINO), else tile (ONNX Runtime)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "openvino", "onnxruntime"],
        default="auto",
        help="auto: onnxruntime for .onnx, openvino for .xml; for a model file OpenVINO on a CPU "
        "where it is installed, else PyTorch",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="OpenVINO precision: auto is the file's own (fp32, or int8 for a calibrated int8 "
        "export); bf16 where the CPU has it",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    p.add_argument(
        "--cache-dir",
        help="where converted and compiled OpenVINO models are kept (default "
        "$MCAN_DEPLOY_CACHE or ~/.cache/mcan-deploy)",
    )
    p.add_argument(
        "--plan",
        choices=["auto", "whole", "layers", "layers-host", "block", "all"],
        default="auto",
        help="exact plans: whole (each block on the whole image in one call), layers (global statistics "
        "layer by layer over tiles, maps on the device), layers-host (maps in host memory); tile-"
        "statistics plans: block, all (blocks per window); auto: the fastest exact plan that fits "
        "--max-memory (the log says which and why), or the measured tile plan",
    )
    p.add_argument(
        "--max-memory",
        type=float,
        help="GB the plan may take on the device that computes (default: 80%% of a GPU's free "
        "memory, half of the available RAM on a CPU)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="PyTorch compute precision: auto is bfloat16 on CUDA devices that have it, else float32; "
        "float16 blocks that overflow are redone in bfloat16 (or float32) and counted",
    )
    p.add_argument(
        "--rcab",
        choices=["auto", "torch", "triton"],
        default="auto",
        help="RCAB implementation for PyTorch models: triton is the fused inference RCAB (every "
        "convolution with its bias, ReLU, channel sums and residual in one kernel; float16 guarded "
        "without a pass of its own), torch the eager layers; auto: triton on CUDA where Triton is "
        "installed, else torch",
    )
    p.add_argument(
        "--fused-conv",
        choices=["auto", "triton", "cudnn", "cudnn-fused"],
        default="auto",
        help="the fused RCAB's convolution: Triton implicit GEMM with the epilogue inside, or "
        "cuDNN's convolution with a one-pass epilogue (cudnn-fused: cuDNN's own conv-bias-ReLU "
        "for conv1); auto times them on the first image and logs the choice",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    """What is written and how: format, size limit, encoder quality, overwriting, logging."""
    p.add_argument("--suffix", help="output format, e.g. .png (default: the input's)")
    p.add_argument(
        "--max-pixels",
        type=float,
        default=200e6,
        help="refuse images larger than this many pixels, from the file's header before "
        "decoding, and after --scale (default 200e6)",
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=95, help="JPEG output quality 1-100 (default 95: restored detail kept)"
    )
    p.add_argument(
        "--jpeg-subsampling",
        choices=["4:4:4", "4:2:2", "4:2:0"],
        default="4:4:4",
        help="JPEG chroma subsampling (default 4:4:4: 4:2:0 halves the colour resolution the model restored)",
    )
    p.add_argument("--webp-quality", type=int, default=95, help="WebP output quality 1-100 (default 95)")
    p.add_argument("--webp-lossless", action="store_true", help="lossless WebP output")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="accept a pickle-based .pt/.pth model, reading only its tensors "
        "(torch.load weights_only=True); refused without this flag",
    )
    p.add_argument("-v", "--verbose", action="store_true")


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import math

    from ..errors import MCANError
    from ..io import IMAGE_SUFFIXES

    if not (math.isfinite(args.scale) and args.scale > 0):
        raise MCANError(f"--scale {args.scale}: must be a number > 0")
    if args.max_memory is not None and not (math.isfinite(args.max_memory) and args.max_memory > 0):
        raise MCANError(f"--max-memory {args.max_memory}: give gigabytes > 0")
    if args.threads is not None and args.threads < 1:
        raise MCANError(f"--threads {args.threads}: must be >= 1")
    if args.prefetch is not None and args.prefetch < 0:
        raise MCANError(f"--prefetch {args.prefetch}: must be >= 0")
    if not (math.isfinite(args.max_pixels) and args.max_pixels >= 1):
        raise MCANError(f"--max-pixels {args.max_pixels}: must be a number >= 1")
    if args.suffix and args.suffix.lower() not in IMAGE_SUFFIXES:
        raise MCANError(f"--suffix {args.suffix}: choose one of {', '.join(IMAGE_SUFFIXES)}")
    from .. import distributed

    # gloo only counts the results at the end; ranks whose share finishes early wait there for
    # the others, however long their images take
    dist, device = distributed.init(args.device, timeout_min=7 * 24 * 60, backend="gloo")
    try:
        return _upscale(args, dist, device)
    finally:
        distributed.shutdown()


def _upscale(args: argparse.Namespace, dist: Dist, device: str) -> int:
    from ..errors import MCANError
    from ..upscale import plan_jobs, read_first

    # the files are planned before the model loads, so that this rank's first file is read
    # meanwhile (read_first); a planning error is raised after the load, so that a bad model
    # is still the error reported first
    try:
        planned: list[Job] | MCANError = plan_jobs(args.inputs, args.out, args.suffix)
    except MCANError as exc:
        planned = exc
    jobs = dist.shard(planned) if isinstance(planned, list) else []  # every rank planned all files
    with read_first(jobs, int(args.max_pixels), args.overwrite) as started:
        model = _load(args, device)
        if isinstance(planned, MCANError):
            raise planned
        dist.check_same("the list of input files", [(str(j.src), str(j.dst)) for j in planned])
        return _run_jobs(args, dist, model, jobs, started)


def _load(args: argparse.Namespace, device: str) -> Upscaler:
    """The model as the options ask, its set-up time logged."""
    import logging

    from ..api import load

    t_load = time.perf_counter()
    model = load(
        args.model,
        device,
        args.dtype,
        args.backend,
        precision=args.precision,
        rcab=args.rcab,
        fused_conv=args.fused_conv,
        threads=args.threads,
        ca_stats=args.ca_stats,
        plan=args.plan,
        tile=args.tile,
        batch=args.batch,
        max_memory=args.max_memory,
        cache_dir=args.cache_dir,
        trust_pickle=args.trust_pickle,
    )

    # where a single photo's wall time goes (imports and interpreter start-up are before this)
    log = logging.getLogger("mcan_deploy.cli.upscale")
    log.info("model ready in %.2f s (read, back-end set-up, device context)", time.perf_counter() - t_load)
    return model


def _run_jobs(
    args: argparse.Namespace, dist: Dist, model: Upscaler, jobs: list[Job], started: dict[Path, Future]
) -> int:
    """Every job through the model (``started``: the first file's read, begun during the load)."""
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..metadata import EncodeOptions

    log = logging.getLogger("mcan_deploy.cli.upscale")
    encode = EncodeOptions(args.jpeg_quality, args.jpeg_subsampling, args.webp_quality, args.webp_lossless)
    t0 = time.perf_counter()
    with logging_redirect_tqdm():  # log lines through tqdm.write, as with the bars, on every rank
        stats = model.upscale_jobs(
            jobs,
            scale=args.scale,
            overwrite=args.overwrite,
            prefetch=args.prefetch,
            max_pixels=int(args.max_pixels),
            progress=not args.no_progress and dist.is_main,
            debug=args.debug,
            encode=encode,
            started=started,
        )
    log.info(
        "time: decode %.2f s, model %.2f s (the first image's includes kernel compiles and tuning), "
        "encode %.2f s, summed over images; wall %.2f s",
        stats.decode_s,
        stats.model_s,
        stats.encode_s,
        stats.wall_s,
    )
    done, skipped, failed, overflows = dist.sum_ints([stats.done, stats.skipped, stats.failed, stats.overflows])
    if dist.is_main:
        ranks = f" by {dist.world} processes" if dist.enabled else ""
        redone = f", {overflows} float16 overflows redone" if overflows else ""
        print(
            f"mcan-upscale: {done} written, {skipped} skipped, {failed} failed{ranks}{redone} "
            f"in {time.perf_counter() - t0:.1f} s -> {args.out}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
