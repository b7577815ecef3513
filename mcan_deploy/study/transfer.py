"""Transfer experiments: models trained on some cameras, scored on every camera's test pairs.

A user's question is not "how good is the run on its own validation set" but "what does each way
of training buy on the camera I care about": so every final model is scored afterwards on each
evaluation folder's test pairs, against that folder's own identity baseline (LR against HR), and
the contrasts the experiment names get Welch's test in every folder. Scores are cached beside
each run (keyed by the model's hash, the folder and the crop), so remaking the tables is cheap.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import StudyError
from ..io import atomic_write_bytes
from ..stats import summary
from .analyses import METRICS, _budget, _compared, _dots, _plt, chain_scores, image_scores
from .runs import Data, RunData, named_folders
from .spec import Experiment

log = logging.getLogger(__name__)

CACHE = "study-eval.json"  # in each run directory


def _test_pairs(root: Path, max_size: int, max_pixels: int):
    from ..data import load_images, split_dirs

    return load_images(split_dirs(root)[1], max_size=max_size, progress=False, max_pixels=max_pixels)


def identity_scores(pairs, shave: int) -> dict[str, float]:
    """LR against HR on the test pairs: what every model has to beat on that camera."""
    scores = [image_scores(x[None], y[None], shave) for x, y in zip(pairs.inputs, pairs.targets)]
    return {m: sum(s[m] for s in scores) / len(scores) for m in METRICS}


def run_scores(r: RunData, test: dict[str, tuple[Path, Any]], max_size: int) -> dict[str, dict[str, float]]:
    """The run's final N on each folder's test pairs (``test``: name -> (folder, pairs)), cached in
    the run directory by folder, crop and model hash; the model is read once, and only when a
    folder is not cached yet."""
    from ..checkpoint import load_model
    from ..io import file_sha256

    model_path = r.path / "model.safetensors"
    sha = file_sha256(model_path)
    cache_path = r.path / CACHE
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    keys = {name: f"{root.resolve()}|{max_size}|{sha}" for name, (root, _) in test.items()}
    todo = [name for name, key in keys.items() if key not in cache]
    if todo:
        model = load_model(model_path).eval()
        for name in todo:
            log.info("scoring %s on %s (%d test pairs)", r.path, name, len(test[name][1]))
            cache[keys[name]] = chain_scores(model, test[name][1], r.plan.data.shave)[-1]
        atomic_write_bytes(cache_path, json.dumps(cache, indent=1).encode())
    return {name: cache[key] for name, key in keys.items()}


def analyse_transfer(exp: Experiment, runs: dict[str, list[RunData]], out: Path, data: Data) -> dict[str, Any]:
    """Every label's final models on every evaluation folder: mean +- std, gain over that folder's
    identity, and the named contrasts."""
    folders = named_folders(exp, data)
    first = next(iter(runs.values()))[0].plan.data
    if any(r.plan.data.shave != first.shave for rs in runs.values() for r in rs):
        raise StudyError(f"{exp.source}: the plans shave different borders (data.shave); the scores would not compare")
    test = {
        name: (folders[name], _test_pairs(folders[name], exp.eval_max_size, first.max_pixels)) for name in exp.evaluate
    }
    for root, pairs in test.values():
        if not len(pairs):
            raise StudyError(f"{root}: no test pairs to score the models on")
    per_run = {label: [run_scores(r, test, exp.eval_max_size) for r in rs] for label, rs in runs.items()}
    identity, finals, gains, diffs = {}, {}, {}, {}
    for name, (_, pairs) in test.items():
        identity[name] = identity_scores(pairs, first.shave)
        scores = {label: [s[name] for s in ss] for label, ss in per_run.items()}
        finals[name] = {label: {m: summary([s[m] for s in ss]) for m in METRICS} for label, ss in scores.items()}
        gains[name] = {label: summary([s["psnr"] - identity[name]["psnr"] for s in ss]) for label, ss in scores.items()}
        diffs[name] = {
            f"{a} - {b}": {m: _compared(finals[name][a][m]["values"], finals[name][b][m]["values"]) for m in METRICS}
            for a, b in exp.contrasts
        }
    _plot(out / "transfer.png", exp, finals, identity)
    return {
        "folders": {name: str(folders[name]) for name in exp.folder_names()},
        "conditions": {
            label: {"train_on": c.train_on, "start_from": c.start_from} for label, c in exp.conditions.items()
        },
        "eval_max_size": exp.eval_max_size,
        "identity": identity,
        "finals": finals,
        "gains": gains,
        "diffs": diffs,
        "budgets": {label: _budget(rs[0]) for label, rs in runs.items()},
        "times": {
            label: {
                **{k: summary([getattr(r, k) for r in rs]) for k in ("train_seconds", "generate_seconds")},
                "packed": max(r.packed for r in rs),
            }
            for label, rs in runs.items()
        },
        "plots": ["transfer.png"],
    }


def _plot(path: Path, exp: Experiment, finals: dict[str, Any], identity: dict[str, Any]) -> None:
    """One panel per evaluation folder: every seed's final PSNR, mean +- std, the identity line."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(exp.evaluate), figsize=(5.5 * len(exp.evaluate), 4.5), squeeze=False)
    for ax, name in zip(axes[0], exp.evaluate):
        labels = list(finals[name])
        _dots(ax, labels, finals[name], identity[name]["psnr"])
        ax.set_title(f"{name} test pairs: per seed (dots), mean +- std", fontsize=10)
        ax.set_ylabel(f"PSNR RGB on the {name} test crops (dB)")
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
