"""The ``mcan-bench`` run and its report: ``results.json``, ``report.md`` and the two plots."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from .config import BenchConfig
from .inference import bench_inference
from .measure import machine_info, matmul_peak_gflops
from .training import bench_training

log = logging.getLogger("mcan_deploy.bench")


def run_bench(cfg: BenchConfig, out: Path, sample_dir: Path | None = None) -> dict[str, Any]:
    """Measure everything, write ``results.json``, ``report.md``, ``throughput.png``, ``memory.png``."""
    from ..runners import resolve_device

    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak_gflops(device)
    log.info("matrix-multiply peak on %s: %.1f GFLOP/s", device, peak)
    # training in its own process: its memory would otherwise stay in this process's RSS and
    # hide the inference peaks; it also runs before ONNX Runtime's spinning thread pool starts
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        training = pool.submit(bench_training, cfg, device, sample_dir).result()
    results = {
        "machine": machine_info(device),
        "config": dataclasses.asdict(cfg),
        "matmul_peak_gflops": peak,
        "inference": bench_inference(cfg, device, peak, sample_dir),
        "training": training,
    }
    if cfg.quality_model:
        from ..backend_quality import compare_backends

        results["quality"] = compare_backends(cfg.quality_model, cfg.quality_data or sample_dir or ".")
    from ..io import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out / "report.md", render_report(results).encode())
    plot(results, out)
    return results


def render_report(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# mcan-bench report ({m['date']})",
        "",
        f"{m.get('gpu') or m.get('cpu')}, {m['cores']} cores, torch {m['torch']}, "
        f"onnxruntime {m.get('onnxruntime')}, {m['threads']} threads; matrix-multiply peak "
        f"{res['matmul_peak_gflops']:.1f} GFLOP/s.",
        "",
        f"Model: {res['config']['model']}",
        "",
        "## Inference",
        "",
        "| backend | size | mode | MP/s (median) | min-max s | peak MB | x eager | GFLOP/s | share of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["inference"]:
        ratio = f"{r['ratio_to_eager']:.2f}" if r["ratio_to_eager"] else "-"
        lines.append(
            f"| {r['backend']} | {r['size']}x{r['size']} | {r['mode']} | {r['mp_per_s']:.4f} | "
            f"{r['min_s']:.3f}-{r['max_s']:.3f} | {r['peak_mb']:.0f} | {ratio} | {r['gflops']:.1f} | "
            f"{100 * r['peak_share']:.1f}% |"
        )
    cfg = res["config"]
    lines += [
        "",
        f"## Training (batch {cfg.get('train_batch', 16)} at {cfg.get('train_patch', 48)}x{cfg.get('train_patch', 48)}, L1, Adam)",
        "",
        "Each option's step is the trainer's own; the speed-up is over today's float32 eager step "
        "(NCHW, for-loop Adam) of the same model in this run. `default` is `[train]`'s defaults "
        "resolved on this machine.",
        "",
        "| model | trains | RCAB tail | options | computed as | s/step (median) | min-max s | x fp32 | data wait share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["training"]:
        ratio = f"{r['speedup_vs_fp32']:.2f}" if r.get("speedup_vs_fp32") else "-"
        lines.append(
            f"| {r['model']} | {r['what']} | {r.get('rcab', 'torch')} | {r.get('options', 'fp32')} | "
            f"{r.get('describe', '-')} | {r['step_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {ratio} | "
            f"{100 * r['data_share']:.1f}% |"
        )
    if res.get("quality"):
        q = res["quality"]
        lines += [
            "",
            f"## Quality ({q['model']} on {q['pairs']} test pairs of {q['data']})",
            "",
            "Exact global statistics except where noted; retention is the share of PyTorch float32's "
            "PSNR gain over the identity.",
            "",
            q["table"],
            *[f"- {n}" for n in q["notes"]],
        ]
    lines += ["", "![throughput](throughput.png)", "", "![memory](memory.png)", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, ylabel, fname in (
        ("mp_per_s", "megapixels per second", "throughput.png"),
        ("peak_mb", "peak memory (MB)", "memory.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict[str, list[tuple[float, float]]] = {}
        for r in res["inference"]:
            series.setdefault(f"{r['backend']} {r['mode']}", []).append((r["size"] ** 2 / 1e6, r[key]))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set(xlabel="image size (megapixels)", ylabel=ylabel, xscale="log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
