"""From run directories to results: one analysis per kind of experiment.

Each analysis returns a JSON-ready dict (the committed ``results.json``) and draws its plots; the
markdown tables are rendered from that dict alone (``render.py``), so every number in them can be
traced to ``results.json`` and from there to the run directories and the command that made them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from ..config import Plan
from ..errors import StudyError
from ..stats import paired, summary, welch
from ..train.report import chain_name, draw_panels, strip_panels
from .budget import block_forward_flops_per_pixel, dataset_pixels, plan_budget, step_flops
from .runs import RunData
from .spec import Experiment

METRICS = ("psnr", "psnr_y", "ssim", "ssim_y")


# ----- shared pieces -------------------------------------------------------------------------
def _identity(runs: dict[str, list[RunData]]) -> dict[str, float]:
    """LR against HR on the validation crops; every run of an experiment must agree on it."""
    first = next(iter(runs.values()))[0].identity
    for rs in runs.values():
        for r in rs:
            if any(abs(r.identity[m] - first[m]) > 1e-9 for m in METRICS):
                raise StudyError(
                    f"{r.path}: its identity baseline differs from {next(iter(runs.values()))[0].path}'s "
                    "(other data or validation crop); the runs cannot share one table"
                )
    return {m: first[m] for m in METRICS}


def _run_record(r: RunData) -> dict[str, Any]:
    return {
        "seed": r.seed,
        "run": str(r.path),
        "final": {m: r.final[m] for m in METRICS},
        "final_phase": r.final["phase"],
        "best_psnr": r.best_psnr(),
        "phase_ends": [{k: p[k] for k in ("phase", "stage", "block", *METRICS)} for p in r.phase_ends],
        "train_seconds": r.train_seconds,
        "generate_seconds": r.generate_seconds,
    }


def _budget(r: RunData) -> dict[str, Any]:
    """The budget of a run's plan on the folders it trained on."""
    plan = r.plan
    pixels = [dataset_pixels(root, plan.data.val_max_size) for root in r.data_roots]
    b = plan_budget(plan, sum(p[0] for p in pixels), sum(p[1] for p in pixels))
    b["pixels_per_update"] = plan.data.batch_size * plan.data.patch_size**2
    return b


def _compared(a: list[float], b: list[float]) -> dict[str, Any]:
    """Welch's comparison of two plans, plus in how many seeds the first was higher (runs with
    one seed start from the same initialisation of N_1 and the same first patches)."""
    return {**welch(a, b), "higher_in": sum(x > y for x, y in zip(a, b)), "seeds": len(a)}


def _finals(rs: list[RunData]) -> dict[str, Any]:
    out: dict[str, Any] = {m: summary([r.final[m] for r in rs]) for m in METRICS}
    out["best_psnr"] = summary([r.best_psnr() for r in rs])
    out["train_seconds"] = summary([r.train_seconds for r in rs])
    out["generate_seconds"] = summary([r.generate_seconds for r in rs])
    out["wall_seconds"] = summary([r.train_seconds + r.generate_seconds for r in rs])
    out["packed"] = max(r.packed for r in rs)  # > 1: the times are shared with other runs
    return out


def _flops_axis(plan: Plan) -> dict[str, tuple[int, float, float]]:
    """Per trained phase: (first global step, FLOPs before the phase, FLOPs per iteration), so a
    validation at global step s of phase p sits at FLOPs before + (s - first) x per iteration."""
    out, step, flops = {}, 0, 0.0
    for p in plan.phases:
        if p.kind == "generate":
            continue  # generation FLOPs are in the budget table, not on the training axis
        per = step_flops(plan.model, p.kind == "train_joint", plan.data.batch_size, plan.data.patch_size)
        out[p.name] = (step, flops, float(per))
        step += p.total_iters
        flops += p.total_iters * per
    return out


def _curves(rs: list[RunData], x: str) -> list[dict[str, Any]]:
    """Validation curve of one plan over seeds: one point per validation, PSNR mean and std.
    ``x`` is ``step`` (global iteration) or ``flops`` (training FLOPs so far)."""
    axis = _flops_axis(rs[0].plan)
    points = []
    for i, rec in enumerate(rs[0].curve):
        vals = [r.curve[i]["psnr"] for r in rs if i < len(r.curve)]
        first, before, per = axis[rec["phase"]]
        xv = rec["step"] if x == "step" else before + (rec["step"] - first) * per
        points.append({"phase": rec["phase"], "step": rec["step"], "x": xv, **summary(vals)})
    return points


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, points: list[dict[str, Any]], label: str, color: str | None = None, scale: float = 1.0) -> None:
    xs = [p["x"] * scale for p in points]
    mean = [p["mean"] for p in points]
    lo = [p["mean"] - p["std"] for p in points]
    hi = [p["mean"] + p["std"] for p in points]
    (line,) = ax.plot(xs, mean, marker="o", ms=3, label=label, color=color)
    ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())


def _dots(ax, labels: list[str], finals: dict[str, dict[str, Any]], identity: float, metric: str = "psnr") -> None:
    """Every seed's final value as a dot, the mean +- std as an error bar, the identity line."""
    for i, label in enumerate(labels):
        s = finals[label][metric]
        ax.scatter([i] * len(s["values"]), s["values"], s=14, alpha=0.6)
        ax.errorbar([i + 0.15], [s["mean"]], yerr=[s["std"]], fmt="s", color="black", capsize=4)
    ax.axhline(identity, color="gray", ls="--", label="identity (LR)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel="final validation PSNR RGB (dB)", title="Per seed (dots), mean +- std")
    ax.legend(fontsize=8)


def _curves_and_dots(
    path: Path,
    curves: dict[str, list[dict[str, Any]]],
    names: dict[str, str],
    finals: dict[str, dict[str, Any]],
    identity: float,
    xlabel: str,
    scale: float = 1.0,
) -> None:
    """Validation curves with std bands (left) and every seed's final value (right)."""
    plt = _plt()
    fig, (ax_c, ax_d) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for label, name in names.items():
        _band(ax_c, curves[label], name, scale=scale)
    ax_c.axhline(identity, color="gray", ls="--", label="identity (LR)")
    n = next(iter(finals.values()))["psnr"]["n"]
    ax_c.set(xlabel=xlabel, ylabel="validation PSNR RGB (dB)", title=f"Validation, mean +- std over {n} seeds")
    ax_c.legend(fontsize=8)
    _dots(ax_d, list(names), finals, identity)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----- compare: two plans at an equal budget (report sec. 3.1 and 4) ----------------------------
def analyse_compare(exp: Experiment, runs: dict[str, list[RunData]], out: Path) -> dict[str, Any]:
    identity = _identity(runs)
    labels = list(runs)
    finals = {label: _finals(rs) for label, rs in runs.items()}
    diffs = {
        label: {
            m: _compared(finals[label][m]["values"], finals[exp.baseline][m]["values"]) for m in (*METRICS, "best_psnr")
        }
        for label in labels
        if label != exp.baseline
    }
    budgets = {label: _budget(rs[0]) for label, rs in runs.items()}
    curves = {label: _curves(rs, "flops") for label, rs in runs.items()}
    _curves_and_dots(
        out / "curves.png",
        curves,
        {label: label for label in labels},
        finals,
        identity["psnr"],
        "training TFLOPs so far (generation not included)",
        1e-12,
    )
    return {
        "identity": identity,
        "finals": finals,
        "diffs": diffs,
        "budgets": budgets,
        "curves": curves,
        "plots": ["curves.png"],
    }


# ----- phases: validation after each phase (report sec. 5.2, fig. 8) ---------------------------
def analyse_phases(exp: Experiment, runs: dict[str, list[RunData]], out: Path) -> dict[str, Any]:
    identity = _identity(runs)
    rs = runs["phased"]
    names = [p["phase"] for p in rs[0].phase_ends if p["stage"] != "generate"]
    per_phase = {}
    prev_vals = {m: [identity[m]] * len(rs) for m in METRICS}
    for name in names:
        recs = [next(p for p in r.phase_ends if p["phase"] == name and p["stage"] != "generate") for r in rs]
        vals = {m: [rec[m] for rec in recs] for m in METRICS}
        block = recs[0]["block"]
        per_phase[name] = {
            "block": block,
            "output": "N(LR)" if block == "N" else chain_name(int(block[1:])),
            **{m: summary(vals[m]) for m in METRICS},
            "gain": {m: paired(vals[m], prev_vals[m]) for m in METRICS},
        }
        prev_vals = vals
    curves = _curves(rs, "step")
    plt = _plt()
    fig, (ax_c, ax_p) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for name in names:
        _band(ax_c, [p for p in curves if p["phase"] == name], f"phase {name}")
    ax_c.axhline(identity["psnr"], color="gray", ls="--", label="identity (LR)")
    ax_c.set(
        xlabel="iteration (all phases)",
        ylabel="validation PSNR RGB (dB)",
        title=f"Validation during each phase: mean +- std over {len(rs)} seeds",
    )
    ax_c.legend(fontsize=8)
    xs = ["LR", *names]
    for r in rs:
        ys = [identity["psnr"]] + [
            next(p["psnr"] for p in r.phase_ends if p["phase"] == n and p["stage"] != "generate") for n in names
        ]
        ax_p.plot(xs, ys, marker="o", alpha=0.6, label=f"seed {r.seed}")
    ax_p.set(xlabel="after phase", ylabel="validation PSNR RGB (dB)", title="Each seed after each phase")
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phases.png", dpi=110)
    plt.close(fig)
    return {
        "identity": identity,
        "phases": per_phase,
        "curves": curves,
        "plots": ["phases.png"],
        "budgets": {"phased": _budget(rs[0])},
    }


# ----- patch: patch sizes (report sec. 5.1) --------------------------------------------------
def analyse_patch(exp: Experiment, runs: dict[str, list[RunData]], out: Path) -> dict[str, Any]:
    identity = _identity(runs)
    labels = sorted(runs, key=lambda k: runs[k][0].plan.data.patch_size)
    finals = {label: _finals(runs[label]) for label in labels}
    diffs = {
        f"{b} - {a}": {m: _compared(finals[b][m]["values"], finals[a][m]["values"]) for m in METRICS}
        for a, b in pairwise(labels)
    }
    budgets = {label: _budget(runs[label][0]) for label in labels}
    curves = {label: _curves(runs[label], "step") for label in labels}
    names = {label: f"{label} ({runs[label][0].plan.data.patch_size} px)" for label in labels}
    _curves_and_dots(out / "patch.png", curves, names, finals, identity["psnr"], "iteration")
    return {
        "identity": identity,
        "finals": finals,
        "diffs": diffs,
        "budgets": budgets,
        "curves": curves,
        "plots": ["patch.png"],
    }


# ----- inverse: every block of the final N in turn (report sec. 5.3, fig. 9) -----------------
def _prefix_scores(r: RunData, val) -> list[dict[str, float]]:
    """Metrics of N_1, N_2(N_1), ... of the run's final N on the validation images (their mean)."""
    from ..checkpoint import load_model

    return chain_scores(load_model(r.path / "model.safetensors").eval(), val, r.plan.data.shave)


def image_scores(out: torch.Tensor, target: torch.Tensor, shave: int) -> dict[str, float]:
    """The ``METRICS`` of one (1, C, H, W) output against its target."""
    from ..metrics import psnr, ssim

    return {
        "psnr": psnr(out, target, shave),
        "psnr_y": psnr(out, target, shave, y=True),
        "ssim": ssim(out, target, shave),
        "ssim_y": ssim(out, target, shave, y=True),
    }


@torch.no_grad()
def chain_scores(model, val, shave: int) -> list[dict[str, float]]:
    """Metrics of N_1, N_2(N_1), ... of ``model`` on the image pairs ``val`` (the mean over them)."""
    sums = [dict.fromkeys(METRICS, 0.0) for _ in model.blocks]
    for x, y in zip(val.inputs, val.targets):
        for k, o in enumerate(model.forward_all(x[None], clamp=True)):
            for m, v in image_scores(o, y[None], shave).items():
                sums[k][m] += v
    return [{m: v / len(val) for m, v in s.items()} for s in sums]


def analyse_inverse(exp: Experiment, runs: dict[str, list[RunData]], out: Path) -> dict[str, Any]:
    from ..data import load_images, split_dirs

    identity = _identity(runs)
    first = runs["phased"][0]
    val = load_images(
        split_dirs(first.data_root)[1],
        max_size=first.plan.data.val_max_size,
        progress=False,
        max_pixels=first.plan.data.max_pixels,
    )
    prefixes: dict[str, list[dict[str, Any]]] = {}
    raw: dict[str, list[list[dict[str, float]]]] = {}
    for label, rs in runs.items():
        raw[label] = [_prefix_scores(r, val) for r in rs]  # [seed][k][metric]
        n = len(raw[label][0])
        rows = []
        for k in range(n):
            vals = {m: [s[k][m] for s in raw[label]] for m in METRICS}
            before = {m: [s[k - 1][m] for s in raw[label]] if k else [identity[m]] * len(rs) for m in METRICS}
            rows.append(
                {
                    "output": chain_name(k + 1),
                    **{m: summary(vals[m]) for m in METRICS},
                    "gain": {m: paired(vals[m], before[m]) for m in METRICS},
                }
            )
        prefixes[label] = rows
    contrast = {}
    if "single" in raw:
        contrast = {
            chain_name(k + 1): welch([s[k]["psnr"] for s in raw["phased"]], [s[k]["psnr"] for s in raw["single"]])
            for k in range(len(raw["phased"][0]))
        }
    _strip(runs, val, out)
    _prefix_plot(prefixes, identity, out)
    return {
        "identity": identity,
        "prefixes": prefixes,
        "phased_minus_single": contrast,
        "validation_images": val.names,
        "plots": ["prefixes.png", "strip.png"],
    }


def _prefix_plot(prefixes: dict[str, list[dict[str, Any]]], identity: dict[str, float], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, rows in prefixes.items():
        xs = list(range(1, len(rows) + 1))
        ax.errorbar(
            xs,
            [r["psnr"]["mean"] for r in rows],
            yerr=[r["psnr"]["std"] for r in rows],
            marker="o",
            capsize=4,
            label=f"{label} N, its blocks in turn",
        )
    ax.axhline(identity["psnr"], color="gray", ls="--", label="identity (LR)")
    ax.set_xticks(
        range(1, len(next(iter(prefixes.values()))) + 1),
        [chain_name(k, "") for k in range(1, len(next(iter(prefixes.values()))) + 1)],
    )
    ax.set(
        xlabel="blocks of the final N applied",
        ylabel="validation PSNR RGB (dB)",
        title="Inverse analysis: mean +- std over seeds",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prefixes.png", dpi=110)
    plt.close(fig)


@torch.no_grad()
def _strip(runs: dict[str, list[RunData]], val, out: Path) -> None:
    """Fig. 9: LR, N_1, N_2(N_1), ..., HR on a test crop, one row per plan (seed of the first run)."""
    from ..checkpoint import load_model
    from ..data import center_crop

    plt = _plt()
    rows = list(runs)
    size = runs["phased"][0].plan.train.strip_size
    x, y = center_crop(val.inputs[0], size), center_crop(val.targets[0], size)
    n_blocks = runs["phased"][0].plan.model.n_blocks
    fig, axes = plt.subplots(len(rows), n_blocks + 2, figsize=(2.6 * (n_blocks + 2), 2.9 * len(rows)), squeeze=False)
    for row, label in zip(axes, rows):
        r = runs[label][0]
        draw_panels(row, strip_panels(load_model(r.path / "model.safetensors").eval(), x, y), y)
        row[0].text(
            -0.08, 0.5, f"{label} N\n(seed {r.seed})", transform=row[0].transAxes, ha="right", va="center", fontsize=9
        )
    fig.suptitle(
        f"Centre {x.shape[-1]}x{x.shape[-2]} crop of test image {val.names[0]}: each block of the final N in turn",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "strip.png", dpi=90)
    plt.close(fig)


ANALYSES = {"compare": analyse_compare, "phases": analyse_phases, "patch": analyse_patch, "inverse": analyse_inverse}


Analysis = Callable[[Experiment, dict[str, list[RunData]], Path], dict[str, Any]]


def analyse(
    exp: Experiment, runs: dict[str, list[RunData]], out: Path, analyses: Mapping[str, Analysis] = ANALYSES
) -> dict[str, Any]:
    """The experiment's results (plots written into ``out``), with every run's raw numbers;
    ``analyses`` maps each kind to its analysis (kinds defined in other modules add theirs)."""
    out.mkdir(parents=True, exist_ok=True)
    result = analyses[exp.kind](exp, runs, out)
    result["runs"] = {label: [_run_record(r) for r in rs] for label, rs in runs.items()}
    result["flops_per_pixel_block_forward"] = block_forward_flops_per_pixel(next(iter(runs.values()))[0].plan.model)
    return result
