"""The run's report: a per-phase validation table (report sec. 5.2), validation and loss curves
(figs. 7 and 8), and an image strip of every block's output on one test crop (fig. 9)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import Plan
from ..data import PairedImages, center_crop
from ..metrics import psnr
from .rundir import RunPaths, read_metrics

if TYPE_CHECKING:
    from ..model import MCAN

log = logging.getLogger(__name__)


def stage_times(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (phase, stage): iterations, training seconds and data-wait share, from train lines."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict(iters=0, seconds=0.0, data=0.0))
    last_iter: dict[tuple[str, str], int] = {}
    for r in records:
        if r["kind"] != "train":
            continue
        key = (r["phase"], r["stage"])
        n = r["iter"] - last_iter.get(key, 0)
        last_iter[key] = r["iter"]
        out[key]["iters"] += n
        out[key]["seconds"] += n * r["sec_per_iter"]
        out[key]["data"] += n * r["sec_per_iter"] * r["data_share"]
    return dict(out)


def _fmt(v: float) -> str:
    return f"{v:.3f}" if v != float("inf") else "inf"


def _per_folder(info: dict[str, Any], identity: dict[str, Any] | None, phases: list[dict[str, Any]]) -> list[str]:
    """With several data folders (cameras): each one's test PSNR after every phase, against its
    own identity baseline."""
    data = info.get("data")
    folders = ([data] if isinstance(data, str) else list(data or [])) + list(info.get("val_data", []))
    if len(folders) < 2 or identity is None or "psnr_data1" not in identity:
        return []
    names = [Path(f).name for f in folders]
    base = [identity.get(f"psnr_data{k + 1}", float("nan")) for k in range(len(folders))]
    out = [
        "",
        "Test PSNR of each data folder (dB; in brackets, the gain over that folder's identity):",
        "",
        "| phase | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| identity (LR) | " + " | ".join(f"{b:.3f}" for b in base) + " |",
    ]
    for r in phases:
        cells = [
            f"{r.get(f'psnr_data{k + 1}', float('nan')):.3f} ({r.get(f'psnr_data{k + 1}', float('nan')) - b:+.3f})"
            for k, b in enumerate(base)
        ]
        out.append(f"| {r['phase']} | " + " | ".join(cells) + " |")
    return out


def _changes(records: list[dict[str, Any]], key: str) -> list[Any]:
    """The training records' values of ``key`` in order, each change once."""
    used = [r[key] for r in records if r["kind"] == "train" and key in r]
    return [v for i, v in enumerate(used) if i == 0 or used[i - 1] != v]


def write_report(paths: RunPaths, plan: Plan, model: MCAN, val: PairedImages | None) -> None:
    """Write ``report.md``, ``curves.png`` and (when test images are given) ``strip.png``."""
    records = read_metrics(paths.metrics)
    identity = next((r for r in records if r["kind"] == "identity"), None)
    phases = [r for r in records if r["kind"] == "phase"]
    times = stage_times(records)
    lines = [f"# MCAN training report: {paths.root.name}", ""]
    if plan.description:
        lines += [plan.description.strip(), ""]
    info = json.loads(paths.run_info.read_text()) if paths.run_info.exists() else {}
    for src in info.get("init_from", []):  # fine-tuning: which trained weights each phase started from
        lines += [f"Phase {src['phase']} starts from `{src['path']}` (SHA-256 {src['sha256']}).", ""]
    m = plan.model
    lines += [
        f"Model: {m.kind}, {m.n_blocks} blocks x {m.n_resblocks} RCAB, {m.n_feats} features, "
        f"reduction {m.reduction}; patches {plan.data.patch_size}x{plan.data.patch_size}, "
        f"batch {plan.data.batch_size}.",
        "",
        "## Validation after each phase",
        "",
        "PSNR/SSIM on the test pairs (float outputs clamped to [0, 1]; Y is BT.601 luma; "
        f"border shave {plan.data.shave} px). Delta is against the identity baseline (LR vs HR).",
        "",
        "| phase | output | PSNR RGB (dB) | PSNR Y (dB) | SSIM RGB | SSIM Y | delta RGB (dB) | train time (s) | s/iter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if identity:
        lines.append(
            f"| identity | LR | {_fmt(identity['psnr'])} | {_fmt(identity['psnr_y'])} | "
            f"{identity['ssim']:.4f} | {identity['ssim_y']:.4f} | 0.000 | - | - |"
        )
    base = identity["psnr"] if identity else float("nan")
    for r in phases:
        st = [v for (p, _), v in times.items() if p == r["phase"]]
        secs, iters = sum(v["seconds"] for v in st), sum(v["iters"] for v in st)
        timing = f"{secs:.1f} | {secs / iters:.3f}" if iters else "- | -"
        lines.append(
            f"| {r['phase']} | {_output_name(plan, r)} | {_fmt(r['psnr'])} | {_fmt(r['psnr_y'])} | "
            f"{r['ssim']:.4f} | {r['ssim_y']:.4f} | {r['psnr'] - base:+.3f} | {timing} |"
        )
    lines += _per_folder(info, identity, phases)
    total_s = sum(v["seconds"] for v in times.values())
    data_s = sum(v["data"] for v in times.values())
    lines += [
        "",
        f"Training time {total_s:.1f} s over {sum(v['iters'] for v in times.values())} "
        f"iterations; {100 * data_s / total_s if total_s else 0:.1f}% of it waiting for data.",
        "",
    ]
    # train.precision and train.cuda_graphs, resolved on the device (a resumed run may change them)
    precisions = _changes(records, "precision")
    if precisions:
        lines += [f"Training steps ran in {' then '.join(precisions)} (train.precision).", ""]
    graphs = _changes(records, "cuda_graphs_why")
    if graphs:
        lines += [f"CUDA graphs: {' then '.join(graphs)}.", ""]
    val_s = sum(r.get("val_seconds", 0.0) for r in records if r["kind"] in ("identity", "val", "phase"))
    wall_s = sum(r.get("seconds", 0.0) for r in phases) + (identity or {}).get("val_seconds", 0.0)
    if val_s and wall_s:
        lines += [f"Validation took {val_s:.1f} s of the wall time {wall_s:.1f} s ({100 * val_s / wall_s:.1f}%).", ""]
    gen_s = sum(r.get("seconds", 0.0) for r in phases if r.get("stage") == "generate")
    if gen_s and wall_s:
        lines += [f"Generate phases took {gen_s:.1f} s of it ({100 * gen_s / wall_s:.1f}%).", ""]
    if paths.events.exists():  # NaN/inf restarts (train.on_nonfinite): say so beside the numbers
        events = read_metrics(paths.events)
        lines += (
            ["## Events", ""]
            + [
                f"- phase {e['phase']}: {e['detail']}; restarted at stage {e['restart']['stage']}, "
                f"iteration {e['restart']['iter']} with learning rates x{e['lr_scale']:g}"
                for e in events
            ]
            + [""]
        )
    _plot_curves(paths, records)
    lines += ["## Curves", "", "![validation and training curves](curves.png)", ""]
    if val is not None and len(val):
        strip_lines = _write_strip(paths, plan, model, val)
        lines += [
            "## Every block's output (inverse analysis, report sec. 5.3)",
            "",
            *strip_lines,
            "",
            "![image strip](strip.png)",
            "",
        ]
    from ..io import atomic_write_bytes

    atomic_write_bytes(paths.report, "\n".join(lines).encode())
    log.info("report written to %s", paths.report)


def chain_name(k: int, inner: str = "LR") -> str:
    """The output of the first ``k`` blocks as a formula: N2(N1(LR)) for k = 2, or N2(N1) with
    no ``inner``."""
    for i in range(1, k + 1):
        inner = f"N{i}({inner})" if inner else f"N{i}"
    return inner


def _output_name(plan: Plan, r: dict[str, Any]) -> str:
    phase = next(p for p in plan.phases if p.name == r["phase"])
    if phase.kind == "train_joint":
        return "N(LR)"
    return chain_name(phase.block) + (f" = LR_{phase.block}" if phase.kind == "generate" else "")


def _plot_curves(paths: RunPaths, records: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["kind"] in ("val", "phase") and r.get("stage") != "generate":
            by_phase[r["phase"]].append(r)
    for name, rs in by_phase.items():
        ax_v.plot([r["step"] for r in rs], [r["psnr"] for r in rs], marker="o", ms=3, label=name)
    identity = next((r for r in records if r["kind"] == "identity"), None)
    if identity:
        ax_v.axhline(identity["psnr"], color="gray", ls="--", label="identity (LR)")
    ax_v.set(xlabel="iteration (all phases)", ylabel="validation PSNR RGB (dB)", title="Validation")
    ax_v.legend(fontsize=8)
    train_by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["kind"] == "train":
            train_by_phase[r["phase"]].append(r)
    for name, rs in train_by_phase.items():
        ax_l.plot([r["step"] for r in rs], [r["loss"] for r in rs], label=name)
    ax_l.set(xlabel="iteration (all phases)", ylabel="training loss", title="Training loss", yscale="log")
    ax_l.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths.curves, dpi=110)
    plt.close(fig)


@torch.no_grad()
def strip_panels(model: MCAN, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """LR, N1, N2(N1), ... of ``model`` on the crop ``x``, then HR: the panels of fig. 9."""
    outs = model.forward_all(x[None], clamp=True)
    return [("LR", x), *((chain_name(k + 1, ""), o[0]) for k, o in enumerate(outs)), ("HR", y)]


def draw_panels(axes, panels: list[tuple[str, torch.Tensor]], y: torch.Tensor) -> list[str]:
    """One image a panel, titled with its PSNR against ``y``; returns the table rows."""
    rows = []
    for ax, (name, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy())
        ax.set_title(name if name == "HR" else f"{name}\n{psnr(img, y):.2f} dB", fontsize=9)
        ax.axis("off")
        if name != "HR":
            rows.append(f"| {name} | {psnr(img, y):.3f} |")
    return rows


@torch.no_grad()
def _write_strip(paths: RunPaths, plan: Plan, model: MCAN, val: PairedImages) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = plan.train.strip_size
    x, y = center_crop(val.inputs[0], size), center_crop(val.targets[0], size)
    panels = strip_panels(model, x, y)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2))
    rows = draw_panels(axes, panels, y)
    fig.tight_layout(pad=0.4)
    fig.savefig(paths.strip, dpi=90)
    plt.close(fig)
    return [
        f"Centre crop {x.shape[-1]}x{x.shape[-2]} of test image '{val.names[0]}', every block "
        "of the final N applied in turn (computed on the crop).",
        "",
        "| output | PSNR RGB on the crop (dB) |",
        "|---|---|",
        *rows,
    ]
