"""``mcan-upscale MODEL INPUT... -o OUT``: tiled inference on full-size images and folders.

Outputs are written atomically; an existing output is skipped unless --overwrite; a bad file is
reported by name and the batch goes on; the exit code is 0 only if every file succeeded.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .common import run_main, setup_logging

log = logging.getLogger("mcan-upscale")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcan-upscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="trained model (model.safetensors from mcan-train)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("-o", "--out", required=True, help="output folder (or file, for one input)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize the input bicubically by this factor first (1: input is at target size)")
    p.add_argument("--tile", type=int, help="tile core side in pixels (default 256 on CPU, 512 on CUDA)")
    p.add_argument("--batch", type=int, help="windows per model call (default 1 on CPU, 4 on CUDA)")
    p.add_argument("--ca-stats", choices=["global", "tile"], default="global",
                   help="channel-attention statistics: global (exact) or per tile (approximate, flat memory)")
    p.add_argument("--plan", choices=["auto", "block", "all"], default="auto",
                   help="tile statistics: block by block, all blocks per window, or measure (auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="compute precision (float16/bfloat16 on CUDA)")
    p.add_argument("--suffix", help="output format, e.g. .png (default: the input's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        from ..checkpoint import load_model
        from ..errors import MCANError
        from ..runners import TorchRunner
        from ..tiling import TileConfig, planned_windows
        from ..upscale import plan_jobs, upscale_file

        if args.scale <= 0:
            raise MCANError(f"--scale {args.scale}: must be > 0")
        runner = TorchRunner.create(load_model(args.model), args.device, args.dtype)
        jobs = plan_jobs(args.inputs, args.out, args.suffix)
        cuda = runner.device.type == "cuda"
        cfg = TileConfig(tile=args.tile or (512 if cuda else 256), batch=args.batch or (4 if cuda else 1),
                         ca_stats=args.ca_stats, plan=args.plan)
        done = skipped = failed = 0
        t0 = time.perf_counter()
        with logging_redirect_tqdm():
            for job in tqdm(jobs, desc="images", unit="img", disable=args.no_progress):
                if job.dst.exists() and not args.overwrite:
                    log.info("skip %s: %s exists (use --overwrite)", job.src, job.dst)
                    skipped += 1
                    continue
                try:
                    from ..io import read_image

                    h, w = read_image(job.src).size
                    h, w = max(1, round(h * args.scale)), max(1, round(w * args.scale))
                    with tqdm(total=planned_windows(runner, h, w, cfg), desc=job.src.name, unit="tile",
                              leave=False, disable=args.no_progress) as bar:
                        report = upscale_file(runner, job, cfg, args.scale, progress=bar.update)
                    log.info("%s -> %s (%dx%d): %s", job.src, job.dst, w, h, report.summary())
                    done += 1
                except MCANError as exc:
                    log.error("%s", exc)
                    failed += 1
        print(f"mcan-upscale: {done} written, {skipped} skipped, {failed} failed "
              f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
        return 1 if failed else 0

    return run_main("mcan-upscale", body)


if __name__ == "__main__":
    sys.exit(main())
