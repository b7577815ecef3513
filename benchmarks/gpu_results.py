"""Where ``benchmarks/gpu_check.sh``'s steps put what they measure, and the summary they make.

Every step writes its section into one JSON file per device and date
(``gpu-<device>-<date>.json``, ``smoke`` on a CPU) as soon as it has a row, and re-renders the
Markdown beside it: first the issue's targets (met, missed, or not measured), each judged
against anchors measured in the same run, then every section's table. A step cut off by its
time limit keeps what it wrote.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


class Results:
    """One JSON file per device and date, each section its own key, saved after every row."""

    def __init__(self, out: Path, device: torch.device, smoke: bool) -> None:
        from mcan_deploy.bench import machine_info

        kind = "smoke" if smoke else device.type
        self.path = out / f"gpu-{kind}-{time.strftime('%Y%m%d')}.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data["machine"] = {
            **machine_info(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "tf32_conv": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }

    def put(self, section: str, value: Any) -> None:
        self.data[section] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)
        self.path.with_suffix(".md").write_text(render(self.data))


def start(script: str, args: Any) -> tuple[torch.device, Results]:
    """A GPU script's common start: logging, the device (the CPU with ``--smoke``, else CUDA or
    a one-line exit), the output folder, seed 0, and its Results file."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(f"{script}: no CUDA device visible (use --smoke on a CPU)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return device, Results(out, device, args.smoke)


def gb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if "seconds" in r and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def targets(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each of the GPU issue's targets that this run can judge."""
    rows = d.get("engine", {}).get("rows", [])
    whole = _row(rows, plan="whole", dtype="bfloat16", rcab="fused", conv="auto")
    w = whole["seconds"] if whole else None
    out: list[tuple[str, str, str]] = []

    def judge(name: str, measured: str | None, ok: bool | None) -> None:
        verdict = "-" if ok is None else "met" if ok else "**missed**"
        out.append((name, measured if ok is not None and measured else "not measured", verdict))

    def ratio(r: dict[str, Any] | None) -> float | None:
        return r["seconds"] / w if r and w else None

    compiled = d.get("anchors", {}).get("compile_s")
    judge(
        "whole 12 MP bf16 model time <= 0.25 s (stretch 0.2 s)", f"{w:.3f} s" if w else None, w <= 0.25 if w else None
    )
    vs = w / compiled if w and compiled else None
    judge(
        "whole bf16 <= 0.8x the bare model under torch.compile",
        f"{vs:.2f}x ({w:.3f} / {compiled:.3f} s)" if vs and w and compiled else None,
        vs <= 0.8 if vs else None,
    )
    lay = ratio(_row(rows, plan="layers", dtype="bfloat16", rcab="fused", conv="auto"))
    judge("exact layer plan within 1.25x of whole", f"{lay:.2f}x" if lay else None, lay <= 1.25 if lay else None)
    half = ratio(_row(rows, plan="whole", dtype="float16", rcab="fused", conv="auto"))
    judge("float16 whole within 1.1x of bf16", f"{half:.2f}x" if half else None, half <= 1.1 if half else None)
    api = d.get("api", {}).get("second_s")
    judge(
        "API on a uint8 12 MP array within model time + 0.1 s",
        f"{api:.3f} s (model {w:.3f} s)" if api and w else None,
        api <= w + 0.1 if api and w else None,
    )
    folder = d.get("folder")
    fr = folder["wall_s"] / folder["model_s"] if folder else None
    judge(
        "folder of four 12 MP PNGs within 1.3x of the model time",
        f"{fr:.2f}x" if fr else None,
        fr <= 1.3 if fr else None,
    )
    q = {r["name"]: r for r in d.get("quality", {}).get("rows", [])}
    for dt in ("bfloat16", "float16"):
        kept = (q.get(f"fused {dt} whole") or {}).get("retention")
        judge(
            f"{dt} keeps >= 99% of float32's gain (GPU-trained demo model)",
            f"{100 * kept:.2f}%" if kept is not None else None,
            kept >= 0.99 if kept is not None else None,
        )
    pk = next((r for r in d.get("packed", []) if r["runs"] == 3), None)
    judge(
        "three paper-size runs packed in <= 1.5x the time of one (train.packed)",
        f"{pk['ratio_to_one']:.2f}x" if pk else None,
        pk["ratio_to_one"] <= 1.5 if pk else None,
    )
    return out


def render(d: dict[str, Any]) -> str:
    m = d.get("machine", {})
    lines = [
        f"# GPU check: {m.get('gpu') or m.get('cpu')}",
        "",
        f"{m.get('date')}; torch {m.get('torch')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, "
        f"triton {m.get('triton')}; TF32 convolutions {'on' if m.get('tf32_conv') else 'off'}.",
        "",
        "## Targets (each against anchors measured in this run)",
        "",
        *(
            [
                "A CPU smoke run (Triton's interpreter, tiny sizes): it checks the code paths; the numbers mean nothing.",
                "",
            ]
            if not m.get("gpu")
            else []
        ),
        "| target | measured | verdict |",
        "|---|---|---|",
        *[f"| {t} | {v} | {ok} |" for t, v, ok in targets(d)],
        "",
    ]
    for section, fn in (
        ("anchors", _anchors),
        ("engine", _engine),
        ("api", _api),
        ("startup", lambda s: _startup(s, d.get("api"))),
        ("folder", _folder),
        ("quality", _quality),
        ("train", _train),
        ("packed", _packed),
    ):
        if section in d:
            lines += [*fn(d[section]), ""]
    return "\n".join(lines)


def _anchors(a: dict[str, Any]) -> list[str]:
    lines = [f"## Anchors on a {a['size']} image ({a['dtype']}, channels_last)", ""]
    lines += ["| what | s | note |", "|---|---:|---|"]
    for r in a["rows"]:
        s = f"{r['seconds']:.4f}" if "seconds" in r else ""
        lines.append(f"| {r['what']} | {s} | {r.get('note') or r.get('skipped') or r.get('error', '')} |")
    return lines


def _engine(e: dict[str, Any]) -> list[str]:
    lines = [
        f"## Paper-size N on a {e['size']} image (model seconds; the second of two runs)",
        "",
        "| plan asked | ran | dtype | RCAB | conv | s | peak GB | model GB | max diff vs fp32 | overflows | case wall s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in e["rows"]:
        head = f"| {r['plan']} | {r.get('plan_run', '')} | {r['dtype']} | {r['rcab']} | {r.get('conv_run') or r.get('conv', '')} |"
        if "seconds" not in r:
            lines.append(f"{head} | | | | | | {r.get('skipped') or r.get('error')} |")
            continue
        lines.append(
            f"{head} {r['seconds']:.3f} | {gb(r.get('peak_bytes'))} | {gb(r.get('model_bytes'))} | "
            f"{r['max_diff']:.2e} | {r['overflows']} | {r.get('wall_s', 0):.1f} |"
        )
    return lines


def _api(a: dict[str, Any]) -> list[str]:
    return [
        f"## The API on a uint8 {a['size']} array (`mcan_deploy.load(...).upscale(arr)`)",
        "",
        f"- first call {a['first_s']:.3f} s (convolution choice, kernel compiles, cuDNN plans), second "
        f"{a['second_s']:.3f} s; output equals the host conversions: {a.get('equal_to_host')}",
    ]


def _startup(s: dict[str, Any], api: dict[str, Any] | None = None) -> list[str]:
    lines = [f"## One {s['size']} photo through `mcan-upscale` (a fresh process)", ""]
    lines += [
        "| Triton cache | wall s | model ready s | decode s | model s | encode s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['cache']} | {r['wall_s']:.2f} | {r.get('ready_s', 0):.2f} | {r.get('decode_s', 0):.2f} | "
            f"{r.get('model_s', 0):.2f} | {r.get('encode_s', 0):.2f} |"
        )
    lines.append("")
    lines.append(
        "The first file is read while the model gets ready, so decode and model ready overlap; imports, "
        "interpreter start-up and the process's exit are the wall time less the rest."
    )
    if "imports_s" in s:
        cuda = f", the CUDA context {s['cuda_context_s']:.2f} s" if "cuda_context_s" in s else ""
        lines.append(
            f"In a fresh process: the interpreter's start {s['interpreter_s']:.2f} s, the imports "
            f"{s['imports_s']:.2f} s{cuda}."
        )
    if api is not None and s["rows"] and "model_s" in s["rows"][-1] and api.get("size") == s["size"]:
        extra = s["rows"][-1]["model_s"] - api["second_s"]
        lines.append(
            f"The first image's model time less a warm call's (the API's second): {extra:.2f} s of cuDNN plans "
            "for the new size, kernel loads and the convolution choice's look-up."
        )
    return lines


def _floor(f: dict[str, Any]) -> float:
    """A pipelined folder's least wall time where the other images' decodes and encodes overlap
    the model: the first decode, the model over every image, the last encode."""
    return f["decode_one_s"] + f["model_s"] + f["encode_one_s"]


def _folder(f: dict[str, Any]) -> list[str]:
    return [
        f"## mcan-upscale on a folder of {f['images']} {f['size']} photos",
        "",
        f"- wall time {f['wall_s']:.2f} s, model time alone {f['model_s']:.2f} s: "
        f"**{f['wall_s'] / f['model_s']:.2f}x** (target <= 1.3x on an H100/H200)",
        *(
            [
                f"- one PNG decodes in {f['decode_one_s']:.2f} s and encodes in {f['encode_one_s']:.2f} s "
                + (
                    f"(the pipeline's read, and its writer on {f['encode_threads']} threads; OpenCV alone "
                    f"{f['opencv_decode_one_s']:.2f} s and {f['opencv_encode_one_s']:.2f} s on one thread)"
                    if "encode_threads" in f
                    else "(OpenCV, one thread each)"
                )
                + "; nothing can overlap the first decode or the last encode, so "
                f"the pipeline's floor is {_floor(f):.2f} s, {_floor(f) / f['model_s']:.2f}x the model time, "
                f"and the wall time is {f['wall_s'] / _floor(f):.2f}x that floor"
            ]
            if "decode_one_s" in f
            else []
        ),
        f"- command: `{f['command']}`",
    ]


def _quality(q: dict[str, Any]) -> list[str]:
    lines = [
        f"## Quality of the demo model trained on this GPU ({q.get('train_s', 0):.0f} s to train; "
        f"{q['pairs']} sample test pairs)",
        "",
        "| runner, dtype, plan | PSNR dB | gain dB | share of the float32 gain | lower bound (97% bar) | worst image |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in q["rows"]:
        kept = "-" if r.get("retention") is None else f"{100 * r['retention']:.2f}%"
        bound = f"{100 * r['bound']:.2f}%" if "bound" in r else "-"
        worst = f"{r['worst_image']} {100 * r['worst_retention']:.1f}%" if "bound" in r else "-"
        lines.append(f"| {r['name']} | {r['psnr']:.3f} | {r['gain']:+.3f} | {kept} | {bound} | {worst} |")
    return lines


def _train(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Training step (the trainer's step: L1, Adam, batch 16 of 48x48)",
        "",
        "| what | options | computed as | ms/step (median) | x fp32 | paper plan (hours) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| - | {r['options']} | {r['skipped']} | | | |")
            continue
        hours = f"{r['paper_plan_hours']:.1f}" if "paper_plan_hours" in r else ""
        lines.append(
            f"| {r['what']} | {r['options']} | {r['describe']} | {1000 * r['step_s']:.1f} | "
            f"{r['speedup_vs_fp32']:.2f} | {hours} |"
        )
    return lines


def _packed(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Runs trained together (one paper-size block phase, batch 16 of 48x48, [train] defaults)",
        "",
        "| runs | iterations each | ms/iteration (last window, slowest run) | x one run | wall s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['ratio_to_one']:.2f}" if "ratio_to_one" in r else "1.00"
        lines.append(f"| {r['runs']} | {r['iters']} | {1000 * r['s_per_iter']:.2f} | {ratio} | {r['wall_s']:.1f} |")
    return lines
