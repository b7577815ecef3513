"""``mcan-study EXPERIMENT.toml ... --data DIR``: reproduce the report's experiments with error bars.

Each experiment file (``configs/study/``) names a claim of the report, the plans that test it and
the seeds. Every (plan, seed) trains into ``RUNS/<scale>/<plan>/seed<k>`` (resumable; experiments
that share a plan share its runs; a transfer experiment's runs go to ``RUNS/<scale>/<name>/<label>/seed<k>``
and train on the folders it names: ``--data nikon=DIR --data iphone=DIR``), then
``OUT/<experiment>/results.json``, ``table.md`` and the plots are written. ``--aggregate-only`` remakes them from finished runs without training;
``--max-iters 2`` is a smoke run of every plan (spans of 2 iterations, batches of 4; kept apart
from real runs).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .common import EXIT_INTERRUPTED, cli_main, positive_int, seed_list


def _data(text: str) -> tuple[str, str]:
    """``DIR`` or ``NAME=DIR`` (a name is a word: letters, digits, _ and -)."""
    name, sep, folder = text.partition("=")
    if sep and name.replace("_", "").replace("-", "").isalnum() and folder:
        return name, folder
    return "", text


def _folders(pairs: list[tuple[str, str]]) -> dict[str, str]:
    from ..errors import MCANError

    folders: dict[str, str] = {}
    for name, folder in pairs:
        if name in folders:
            what = f"--data {name}=DIR" if name else "an unnamed --data DIR"
            raise MCANError(f"{what} given twice ({folders[name]} and {folder}); give each once")
        folders[name] = folder
    return folders


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcan-study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("experiments", nargs="+", help="experiment files, e.g. configs/study/*.toml")
    p.add_argument(
        "--data",
        required=True,
        action="append",
        type=_data,
        metavar="[NAME=]DIR",
        help="dataset folder with train/ and test/ (City100: ../shared/data/city100_nikon); repeat as NAME=DIR "
        "for the folders a transfer experiment names (configs/study/camera.toml: nikon=..., iphone=...)",
    )
    p.add_argument(
        "--scale",
        default="cpu",
        help="which plans of each experiment: cpu (scaled down: about 2.3 "
        "hours on one thread for all, from scratch) or full (the report's configuration, for a GPU)",
    )
    p.add_argument("--runs", default="runs/study", help="where the run directories go (default runs/study)")
    p.add_argument(
        "--out",
        help="where results.json, table.md and plots go (default docs/experiments/<scale>, "
        "or <scale>-max<N> for a smoke run, so a smoke run never overwrites real results)",
    )
    p.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default: each experiment's own)")
    p.add_argument(
        "--max-iters",
        type=positive_int,
        help="cut every span of iterations to this many and each batch to 4 pairs: a smoke run of every plan",
    )
    p.add_argument("--aggregate-only", action="store_true", help="no training: tables and plots from finished runs")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch (timings are comparable only at equal threads; the committed CPU results used 1)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--pack",
        type=positive_int,
        help="runs trained together on the device, each on its own CUDA stream, taking turns step by "
        "step (each gives what it gives alone; default 3 on CUDA, 1 on a CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    parser.set_defaults(command="mcan-study " + shlex.join(argv))  # recorded in results.json
    return cli_main(parser, _run, argv)


def _run(args: argparse.Namespace) -> int:
    from ..study import load_experiment, run_study
    from ..study.runs import scale_dir, training_folders
    from ..train import TrainingInterrupted
    from ..train.packed import resolve_pack
    from .train import StopFlag

    experiments = [load_experiment(p) for p in args.experiments]  # every file checked before any training
    data = _folders(args.data)
    for exp in experiments:
        for label in exp.plan_paths(args.scale):
            training_folders(exp, label, data)  # a missing --data fails before any training
    out = args.out or f"docs/experiments/{scale_dir(args.scale, args.max_iters)}"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stop = StopFlag()
    stop.install()
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            for exp in experiments:
                r = run_study(
                    exp,
                    args.scale,
                    data if exp.kind == "transfer" else data[""],
                    args.runs,
                    out,
                    args.seeds,
                    args.device,
                    not args.no_progress,
                    args.max_iters,
                    train=not args.aggregate_only,
                    command=args.command,
                    should_stop=stop,
                    pack=resolve_pack(args.pack, args.device),
                )
                print(f"mcan-study: {exp.name}: {out}/{exp.name}/results.json, table.md, " + ", ".join(r["plots"]))
    except TrainingInterrupted as exc:
        print(f"mcan-study: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
