"""One experiment end to end: train its runs (or find them), analyse, write results and tables."""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from .analyses import ANALYSES, analyse
from .render import render
from .runs import Data, collect_experiment, data_folders, run_experiment
from .spec import Experiment, load_experiment
from .transfer import analyse_transfer

log = logging.getLogger(__name__)


def _commit(repo: Path) -> str:
    """The checkout's commit (with "+changes" when the tree differs from it), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mcan_deploy": __version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _rel(path: Path) -> str:
    """The path relative to the working directory (the repository root for the committed results)."""
    return os.path.relpath(Path(path).resolve(), Path.cwd().resolve())


def run_study(
    exp: Experiment | str | Path,
    scale: str,
    data: Data,
    runs_root: str | Path,
    out_root: str | Path,
    seeds: list[int] | None = None,
    device: str = "auto",
    progress: bool = True,
    max_iters: int | None = None,
    train: bool = True,
    command: str = "",
    should_stop: Callable[[], bool] = lambda: False,
    pack: int = 1,
) -> dict[str, Any]:
    """Train what is missing (unless ``train`` is False; ``pack`` runs at a time together), then
    write ``OUT/<name>/results.json``, ``table.md`` and the plots; returns the results."""
    exp = exp if isinstance(exp, Experiment) else load_experiment(exp)
    seeds = seeds if seeds is not None else exp.seeds
    if train:
        run_experiment(exp, scale, data, runs_root, seeds, device, progress, max_iters, should_stop, pack)
    runs = collect_experiment(exp, scale, runs_root, seeds, max_iters)
    out = Path(out_root) / exp.name
    t0 = time.perf_counter()
    result = analyse(exp, runs, out, {**ANALYSES, "transfer": functools.partial(analyse_transfer, data=data)})
    first = next(iter(runs.values()))[0]
    folders = data_folders(data)
    result.update(
        {
            "experiment": {
                "name": exp.name,
                "kind": exp.kind,
                "title": exp.title,
                "report": exp.report,
                "claim": exp.claim,
                "baseline": exp.baseline,
                "report_values": exp.report_values,
                "source": _rel(exp.source),
            },
            "scale": scale,
            "max_iters": max_iters,
            "seeds": seeds,
            "plans": {label: _rel(p) for label, p in exp.plan_paths(scale).items()},
            "data": _rel(first.data_root)
            if exp.kind != "transfer"
            else {n: _rel(folders[n]) for n in exp.folder_names()},
            "command": command or f"mcan-study {_rel(exp.source)} --scale {scale}",
            "commit": _commit(Path(__file__).resolve().parent),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": _environment(),
        }
    )
    from ..io import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(result, indent=1).encode())
    atomic_write_bytes(out / "table.md", render(result).encode())
    log.info("%s: results in %s (analysis %.1f s)", exp.name, out, time.perf_counter() - t0)
    return result
