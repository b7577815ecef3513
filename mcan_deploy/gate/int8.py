"""The int8 gate: the first quantization recipe (``export.quantize.RECIPES``) whose int8 model
keeps enough of float32's gain over the identity, measured on test pairs through the exact tiled
path ``mcan-upscale`` runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OpenVINOError
from ..export.quantize import RECIPES, CalibrationSet, Recipe, calibration_crops, int8_convolutions, quantize
from ..model import MCAN

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)


def quantize_int8(
    ov_model: ov.Model,
    meta: dict[str, Any],
    model: MCAN,
    data: Path,
    clamp: bool,
    min_retention: float | None = 0.9,
    shown: str | Path = "model",
    n_crops: int = 0,
    recipes: tuple[Recipe, ...] = RECIPES,
    max_size: int = 1500,
) -> tuple[ov.Model, dict[str, Any]]:
    """The first recipe whose int8 model keeps ``min_retention`` of the float32 gain on
    ``data``'s test pairs, and the quality it measured; ``min_retention=None`` takes the first
    recipe whatever it keeps (a forced export, still measured)."""
    from .. import quality
    from ..data import load_images, split_dirs
    from ..runners.openvino_runner import OpenVINORunner
    from ..tiling import TileConfig

    train_dir, test_dir = split_dirs(data)
    train = load_images(train_dir, progress=False)
    test = load_images(test_dir, max_size=max_size, progress=False)
    calib = CalibrationSet(model, calibration_crops(train, n_crops or 32), clamp)
    cfg = TileConfig(ca_stats="global")  # whole images where they fit, exact layer steps otherwise
    fp32 = quality.outputs(OpenVINORunner(ov_model, meta, "fp32"), test, cfg)
    gain = quality.measure({"fp32": fp32}, test, "fp32")[1].gain
    if gain <= 0:  # judged before any quantization is paid for
        raise OpenVINOError(
            f"{shown}: the float32 model does not improve on the identity on {test_dir} "
            f"({gain:+.3f} dB), so int8 accuracy cannot be judged there; calibrate with "
            "pairs the model was trained for"
        )
    tried: list[dict[str, Any]] = []
    best: tuple[float, ov.Model, dict[str, Any]] | None = None
    for recipe in recipes:
        q_model = quantize(ov_model, calib, recipe)
        runner = OpenVINORunner(q_model, {**meta, "precision": "int8"}, "int8")
        rows = quality.measure({"fp32": fp32, "int8": quality.outputs(runner, test, cfg)}, test, "fp32")
        by = {r.name: r for r in rows}
        q, total = int8_convolutions(q_model, int(meta["n_blocks"]))
        retention = by["int8"].retention
        assert retention is not None  # int8 is not the reference, and the fp32 gain is > 0 (checked above)
        result: dict[str, Any] = {
            "recipe": recipe.name,
            "recipe_notes": recipe.notes,
            "retention": by["int8"].retention,
            "psnr_identity": by["identity"].psnr,
            "psnr_fp32": by["fp32"].psnr,
            "psnr_int8": by["int8"].psnr,
            "psnr_y_identity": by["identity"].psnr_y,
            "psnr_y_fp32": by["fp32"].psnr_y,
            "psnr_y_int8": by["int8"].psnr_y,
            "int8_convolutions": q,
            "convolutions": total,
            "pairs": len(test),
            "calibration_crops": len(calib.crops),
            "calibration": str(data),
            "min_retention": min_retention,
        }
        tried.append({"recipe": recipe.name, "retention": by["int8"].retention})
        log.info(
            "int8 recipe '%s': PSNR %.3f dB (fp32 %.3f, identity %.3f): keeps %.1f%% of the gain",
            recipe.name,
            by["int8"].psnr,
            by["fp32"].psnr,
            by["identity"].psnr,
            100 * retention,
        )
        if min_retention is None or retention >= min_retention:
            return q_model, {**result, "tried": tried}
        if best is None or retention > best[0]:
            best = (retention, q_model, result)
    assert best is not None
    raise OpenVINOError(
        f"{shown}: int8 keeps at most {100 * best[0]:.1f}% of the float32 gain over the identity "
        f"(recipe '{best[2]['recipe']}', {best[2]['psnr_int8']:.3f} dB against {best[2]['psnr_fp32']:.3f} "
        f"dB fp32 and {best[2]['psnr_identity']:.3f} dB identity on {len(test)} test pairs), below "
        f"--min-retention {min_retention:g}; nothing was written (run fp32 or bf16, or pass "
        "--force to write it anyway)"
    )
