"""Every int8 recipe of the gate on a trained model, judged the way the gate judges, and on pairs
the gate never saw; with the int8, bf16 and fp32 times on this CPU.

    python benchmarks/int8_gate.py MODEL --calibration DATA [--unseen DIR ...] --out OUT

``DATA`` is split as ``mcan-export --precision int8`` splits it (calibration, recipe selection,
verdict). Each recipe gets its selection bound (what the gate ranks on) and its verdict (mean,
lower bound, worst image), though the gate only judges the best-ranked one: the figures show
whether the ranking picked well. ``--unseen`` folders (their train/ and test/ pairs alike) are
scored as a check that no role of the gate saw. Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from mcan_deploy.checkpoint import load_model
from mcan_deploy.data import PairedImages, load_images, split_dirs
from mcan_deploy.errors import MCANError, OpenVINOError
from mcan_deploy.export.openvino import get_metadata, to_openvino
from mcan_deploy.export.quantize import RECIPES, CalibrationSet, calibration_crops, quantize
from mcan_deploy.gate.int8 import GateRun, image_scores
from mcan_deploy.gate.openvino import seconds_per_image
from mcan_deploy.gate.verdict import judge
from mcan_deploy.hardware import native_bf16
from mcan_deploy.io import file_sha256
from mcan_deploy.quality import outputs
from mcan_deploy.runners.openvino_runner import OpenVINORunner, cpu_capabilities

log = logging.getLogger("int8_gate")


def unseen_pairs(folders: list[str]) -> PairedImages:
    names, inputs, targets = [], [], []
    for f in folders:
        for part in split_dirs(f):
            p = load_images(part, max_size=1500, progress=False)
            names += [f"{Path(f).name}/{part.name}/{n}" for n in p.names]
            inputs += p.inputs
            targets += p.targets
    return PairedImages(names, inputs, targets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--unseen", nargs="*", default=[])
    ap.add_argument("--bar", type=float, default=0.9)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    model = load_model(args.model).float().eval()
    ov_model = to_openvino(model, True, file_sha256(args.model))
    meta = get_metadata(ov_model, "model")
    gate = GateRun.prepare(ov_model, meta, Path(args.calibration), args.model)
    unseen = unseen_pairs(args.unseen) if args.unseen else None
    fp32 = OpenVINORunner(ov_model, meta, "fp32")
    ref_unseen = outputs(fp32, unseen, gate.cfg) if unseen else None
    calib = CalibrationSet(model, calibration_crops(gate.roles["calibration"], 32), True)
    rows: list[dict[str, Any]] = []
    runners: dict[str, Any] = {"fp32": fp32}
    native, how = native_bf16(torch.device("cpu"))
    if native and "BF16" in cpu_capabilities():
        runners["bf16"] = OpenVINORunner(ov_model, meta, "bf16")
        rows.append(_row("bf16 (run time)", runners["bf16"], gate, unseen, ref_unseen, args.bar, None))
    for recipe in RECIPES:
        t0 = time.perf_counter()
        try:
            q = quantize(ov_model, calib, recipe)
        except OpenVINOError as exc:
            rows.append({"name": recipe.name, "error": str(exc)})
            continue
        runner = OpenVINORunner(q, {**meta, "precision": "int8"}, "int8")
        rows.append(_row(recipe.name, runner, gate, unseen, ref_unseen, args.bar, time.perf_counter() - t0))
        runners[recipe.name] = runner
        log.info("%s", rows[-1])
    chosen = max(
        (r for r in rows if "selection_bound" in r and not r["name"].startswith("bf16")),
        key=lambda r: r["selection_bound"],
    )
    chosen["chosen"] = True
    probe = gate.roles["verdict"].inputs[0]
    seconds = {"fp32": seconds_per_image(fp32, probe, gate.cfg)}
    if "bf16" in runners:
        seconds["bf16"] = seconds_per_image(runners["bf16"], probe, gate.cfg)
    seconds[f"int8 ({chosen['name']})"] = seconds_per_image(runners[chosen["name"]], probe, gate.cfg)
    res = {
        "model": args.model,
        "calibration": args.calibration,
        "unseen": args.unseen,
        "splits": gate.splits.as_dict(),
        "bf16_native": [native, how],
        "capabilities": cpu_capabilities(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "probe": f"{probe.shape[2]}x{probe.shape[1]}",
        "seconds": seconds,
        "rows": rows,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(render(res))


def _row(name, runner, gate, unseen, ref_unseen, bar, quantize_s) -> dict[str, Any]:
    sel = judge(gate.scores(runner, "selection"), 0.0)
    ver = judge(gate.scores(runner, "verdict"), bar)
    row = {
        "name": name,
        "quantize_s": quantize_s,
        "selection_bound": sel.bound,
        "selection_retention": sel.retention,
        "verdict": ver.as_dict(),
    }
    if unseen is not None:  # float32 may not gain there (another camera): then nothing to judge
        try:
            row["unseen"] = judge(image_scores(unseen, ref_unseen, outputs(runner, unseen, gate.cfg)), 0.85).as_dict()
        except MCANError as exc:
            row["unseen_error"] = str(exc)
    return row


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(res: dict[str, Any]) -> str:
    s = res["splits"]
    lines = [
        f"# int8 gate: {res['model']}",
        "",
        f"Calibration data {res['calibration']}: {len(s['calibration'])} pairs calibrate, "
        f"{len(s['selection'])} choose the recipe, {len(s['verdict'])} judge. Unseen: "
        f"{', '.join(res['unseen']) or 'none'}. torch {res['torch']}, {res['threads']} threads; "
        f"bf16 native: {res['bf16_native']}; OpenVINO capabilities {', '.join(res['capabilities'])}.",
        "",
        "| method | selection bound | verdict: mean kept | bound | worst image | below identity | passes 90% | "
        "unseen: mean kept | bound | worst image | below identity |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:120]} |" + " |" * 9)
            continue
        v, u = r["verdict"], r.get("unseen")
        cells = [
            r["name"] + (" (chosen)" if r.get("chosen") else ""),
            _pct(r["selection_bound"]),
            _pct(v["retention"]),
            _pct(v["bound"]),
            f"{v['worst_image']} {_pct(v['worst_retention'])}",
            ", ".join(v["below_identity"]) or "none",
            "yes" if v["passed"] else "no",
        ]
        if u:
            cells += [
                _pct(u["retention"]),
                _pct(u["bound"]),
                f"{u['worst_image']} {_pct(u['worst_retention'])}",
                ", ".join(u["below_identity"]) or "none",
            ]
        else:
            cells += ["-"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Seconds for one {res['probe']} image through the exact tiled path (median of 3):", ""]
    lines += [f"- {k}: {v:.3f} s" for k, v in res["seconds"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
