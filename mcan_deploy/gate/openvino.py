"""``mcan-export --format openvino``: convert N, check it against PyTorch, quantize to int8 under
the retention gate, and write the IR only when every check passed.

Apart from ``export/openvino.py`` (conversion, IR files, metadata) because the checks run the
model the way ``mcan-upscale`` does, through ``OpenVINORunner`` and the tiler: this package sits
above both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import OpenVINOError
from ..export.openvino import get_metadata, require_openvino, set_metadata, to_openvino, write_ir
from ..model import MCAN

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)


VERIFY_SIZES = ((37, 53), (64, 48))  # odd sizes included, as for ONNX
TOLERANCE = 1e-4  # float32, OpenVINO against PyTorch, max abs


def verify_fp32(ov_model: ov.Model, meta: dict[str, Any], model: MCAN, clamp: bool, shown: str | Path) -> float:
    """OpenVINO float32 against PyTorch at two sizes, whole blocks and the exact layer-step path
    (global statistics, several tiles); returns the worst max abs error, or raises naming it."""
    from ..runners.openvino_runner import OpenVINORunner
    from ..tiling import TileConfig, upscale_tensor

    runner = OpenVINORunner(ov_model, meta, "fp32")
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in VERIFY_SIZES:
        x = torch.rand(2, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x, clamp=clamp)
            ref_last = model.blocks[-1](x, clamp=clamp)
        checks = [
            ("all blocks", runner.run_blocks(x, 0, runner.n_blocks), ref),
            (f"block N{runner.n_blocks} alone", runner.run_blocks(x, runner.n_blocks - 1, runner.n_blocks), ref_last),
        ]
        if runner.has_channel_attention:  # the first image, cut into 16-pixel tiles
            got, _ = upscale_tensor(runner, x[0], TileConfig(16, ca_stats="global", plan="layers"))
            checks.append(("global statistics, tiled", got, ref[0]))
        for what, got, want in checks:
            err = float((got - want).abs().max())
            worst = max(worst, err)
            if not err <= TOLERANCE:
                raise OpenVINOError(
                    f"{shown}: OpenVINO ({what}) differs from PyTorch at {w}x{h}: max abs error "
                    f"{err:.3g} > {TOLERANCE:g}; nothing was written"
                )
    return worst


@dataclass(frozen=True)
class ExportedIR:
    """A written and checked IR file and what its check measured."""

    path: Path
    precision: str
    max_abs_error: float | None  # float32: against PyTorch
    quality: dict[str, Any] | None  # int8: PSNR of float32 and int8, retention of the gain
    why: str = ""  # --precision auto: the precision chosen and why


def export_openvino(
    model: MCAN,
    out: str | Path,
    precision: str = "fp32",
    calibration: str | Path | None = None,
    clamp: bool = True,
    source_hash: str = "",
    min_retention: float | None = 0.9,
    calibration_size: int = 0,
) -> ExportedIR:
    """Write N as an OpenVINO IR file (``out``.xml + .bin) after checking it: float32 against
    PyTorch; int8 (calibrated on ``calibration``'s training pairs) must keep ``min_retention`` of
    float32's PSNR gain over the identity on its test pairs, else nothing is written
    (``min_retention=None``: written whatever it keeps, the quality still measured and recorded)."""
    require_openvino("mcan-export --format openvino")
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise OpenVINOError(f"-o {out}: an OpenVINO IR file ends in .xml")
    if precision not in ("fp32", "int8", "auto"):
        raise OpenVINOError(
            f"--precision {precision}: an IR file is fp32 or int8, or auto to choose by speed and quality "
            "(bf16 is a run-time choice: mcan-upscale model.xml --precision bf16)"
        )
    if precision in ("int8", "auto") and calibration is None:
        raise OpenVINOError(
            f"--precision {precision} needs --calibration DATA: a folder of LR/HR pairs with train/ "
            "and test/ (some training pairs calibrate, others choose the recipe, the rest and the "
            "test pairs judge the quality)"
        )
    if precision == "fp32" and calibration is not None:
        raise OpenVINOError("--calibration applies to --precision int8 only")
    import copy

    from ..model import set_rcab_impl

    model = set_rcab_impl(copy.deepcopy(model).float().eval(), "torch")  # the caller's model is left as it is
    ov_model = to_openvino(model, clamp, source_hash)
    meta = get_metadata(ov_model, out)
    err = verify_fp32(ov_model, meta, model, clamp, out)
    quality, why = None, ""
    if precision == "auto":
        assert calibration is not None  # checked above
        ov_model, meta, quality, why = choose_auto(
            ov_model, meta, model, Path(calibration), clamp, min_retention, out, calibration_size
        )
        precision = str(meta["precision"])
        set_metadata(ov_model, meta)
    elif precision == "int8":
        from .int8 import quantize_int8

        assert calibration is not None  # checked above: int8 needs --calibration
        ov_model, quality = quantize_int8(
            ov_model,
            meta,
            model,
            Path(calibration),
            clamp,
            min_retention=min_retention,
            shown=out,
            n_crops=calibration_size,
        )
        meta = {**meta, "precision": "int8", "int8": quality}
        set_metadata(ov_model, meta)
    write_ir(ov_model, out)
    log.info("wrote %s (%s, blocks 1..%d)", out, precision, meta["n_blocks"])
    return ExportedIR(out, precision, err, quality, why)


def choose_auto(
    ov_model: ov.Model,
    meta: dict[str, Any],
    model: MCAN,
    data: Path,
    clamp: bool,
    min_retention: float | None,
    shown: str | Path,
    n_crops: int = 0,
) -> tuple[ov.Model, dict[str, Any], dict[str, Any] | None, str]:
    """``--precision auto``: bf16 (where the CPU computes it natively) and int8 judged by the same
    gate, each precision timed on one verdict image on this CPU, and the rule of
    ``precision.choose_cpu_precision``. An int8 choice is an int8 file; fp32 and bf16 are a
    float32 file whose metadata says how ``--precision auto`` runs it (``auto_precision``)."""
    from ..hardware import native_bf16
    from ..runners.openvino_runner import OpenVINORunner, cpu_capabilities
    from .int8 import GateRun, int8_candidate
    from .precision import BF16_BAR, choose_cpu_precision
    from .verdict import Verdict, judge

    gate = GateRun.prepare(ov_model, meta, data, shown)
    native, how = native_bf16(torch.device("cpu"))
    if native and "BF16" not in cpu_capabilities():
        native, how = False, f"{how}, but OpenVINO's CPU plugin offers no BF16 here"
    runners = {"fp32": OpenVINORunner(ov_model, meta, "fp32")}
    verdicts: dict[str, Verdict] = {}
    if native:
        runners["bf16"] = OpenVINORunner(ov_model, meta, "bf16")
        verdicts["bf16"] = judge(gate.scores(runners["bf16"], "verdict"), BF16_BAR)
        log.info("bf16 on the %d verdict pairs: %s", verdicts["bf16"].pairs, verdicts["bf16"].describe())
    bar = 0.9 if min_retention is None else min_retention
    q_model, q_result, verdicts["int8"] = int8_candidate(gate, ov_model, meta, model, clamp, bar, n_crops)
    runners["int8"] = OpenVINORunner(q_model, {**meta, "precision": "int8"}, "int8")
    probe = gate.roles["verdict"].inputs[0]
    seconds = {p: seconds_per_image(r, probe, gate.cfg) for p, r in runners.items()}
    choice = choose_cpu_precision((native, how), seconds, verdicts)
    log.info("--precision auto: %s", choice.why)
    auto = {
        "precision": choice.precision,
        "why": choice.why,
        "seconds": seconds,
        "probe": f"{probe.shape[2]}x{probe.shape[1]}",
        "verdicts": {p: v.as_dict() for p, v in verdicts.items()},
    }
    if choice.precision == "int8":
        return q_model, {**meta, "precision": "int8", "int8": q_result, "auto": auto}, q_result, choice.why
    return ov_model, {**meta, "auto_precision": choice.precision, "auto": auto}, None, choice.why


def seconds_per_image(runner: Any, x: torch.Tensor, cfg: Any, repeat: int = 3) -> float:
    """Median seconds of the tiled path on ``x`` after a warm-up run."""
    import statistics
    import time

    from ..tiling import upscale_tensor

    upscale_tensor(runner, x, cfg)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        upscale_tensor(runner, x, cfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
