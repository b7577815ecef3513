"""The int8 gate: calibrate on some training pairs, choose the quantization recipe
(``export.quantize.RECIPES``) on others, and judge the chosen int8 model on all the rest, test
pairs included (``verdict.gate_splits``), through the exact tiled path ``mcan-upscale`` runs.

It passes when the lower confidence bound on the share of float32's gain kept is at least the bar
and no image ends below its identity where float32 is above it (``verdict.judge``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import PairedImages
from ..errors import MCANError, OpenVINOError
from ..export.quantize import RECIPES, CalibrationSet, Recipe, calibration_crops, int8_convolutions, quantize
from ..metrics import psnr
from ..model import MCAN
from ..tiling import TileConfig
from .verdict import GateSplits, ImageScore, Verdict, gate_splits, judge

if TYPE_CHECKING:
    import openvino as ov

    from ..runners import Runner

log = logging.getLogger(__name__)


@dataclass
class GateRun:
    """The pairs of each role of ``data`` and float32's outputs on those that judge: what every
    reduced precision (int8, bf16) is measured against, through the exact tiled path."""

    data: Path
    splits: GateSplits
    roles: dict[str, PairedImages]
    reference: dict[str, list[torch.Tensor]]
    cfg: TileConfig

    @classmethod
    def prepare(
        cls, ov_model: ov.Model, meta: dict[str, Any], data: Path, shown: str | Path, max_size: int = 1500
    ) -> GateRun:
        """Load and split the pairs, run float32 on the selection and verdict pairs, and refuse
        (before any quantization is paid for) where float32 gains nothing to keep."""
        from .. import quality
        from ..runners.openvino_runner import OpenVINORunner

        splits, roles = gate_pairs(data, max_size)
        cfg = TileConfig(ca_stats="global")  # whole images where they fit, exact layer steps otherwise
        fp32 = OpenVINORunner(ov_model, meta, "fp32")
        ref = {role: quality.outputs(fp32, roles[role], cfg) for role in ("selection", "verdict")}
        run = cls(data, splits, roles, ref, cfg)
        try:
            judge(image_scores(roles["verdict"], ref["verdict"], ref["verdict"]), 0.0)
        except MCANError as exc:
            raise OpenVINOError(f"{shown}: {exc} ({data})") from None
        return run

    def scores(self, runner: Runner, role: str) -> list[ImageScore]:
        """Each ``role`` pair's PSNR as the identity, float32 and ``runner`` give it."""
        from .. import quality

        pairs = self.roles[role]
        return image_scores(pairs, self.reference[role], quality.outputs(runner, pairs, self.cfg))


def gate_pairs(data: Path, max_size: int = 1500) -> tuple[GateSplits, dict[str, PairedImages]]:
    """The splits of ``data``'s train/ and test/ pairs and the pairs of each role."""
    from ..data import load_images, split_dirs

    train_dir, test_dir = split_dirs(data)
    loaded = {
        "train": load_images(train_dir, max_size=max_size, progress=False),
        "test": load_images(test_dir, max_size=max_size, progress=False),
    }
    pool = {f"{k}/{n}": (x, y) for k, p in loaded.items() for n, x, y in zip(p.names, p.inputs, p.targets)}
    splits = gate_splits(loaded["train"].names, loaded["test"].names)
    roles = {
        role: PairedImages(list(names), [pool[n][0] for n in names], [pool[n][1] for n in names])
        for role, names in splits.as_dict().items()
    }
    return splits, roles


def image_scores(pairs: PairedImages, reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> list[ImageScore]:
    """Each pair's PSNR as the identity, the reference outputs and the candidate's give it."""
    return [
        ImageScore(name, psnr(x, y), psnr(r, y), psnr(c, y))
        for name, x, y, r, c in zip(pairs.names, pairs.inputs, pairs.targets, reference, candidate, strict=True)
    ]


def _rank(scores: list[ImageScore]) -> float:
    """A recipe's standing on the selection pairs: the bound of its verdict (the mean loss where
    float32 gains nothing there)."""
    try:
        return judge(scores, 0.0).bound
    except MCANError:
        return -sum(s.reference_gain - s.gain for s in scores)


def int8_candidate(
    gate: GateRun,
    ov_model: ov.Model,
    meta: dict[str, Any],
    model: MCAN,
    clamp: bool,
    min_retention: float | None,
    n_crops: int = 0,
    recipes: tuple[Recipe, ...] = RECIPES,
) -> tuple[ov.Model, dict[str, Any], Verdict]:
    """The int8 model of the recipe that ranks best on the selection pairs, what the export
    stores of it, and its verdict on the verdict pairs (passed or not)."""
    from ..runners.openvino_runner import OpenVINORunner

    calib = CalibrationSet(model, calibration_crops(gate.roles["calibration"], n_crops or 32), clamp)
    n_sel = len(gate.roles["selection"])
    tried: list[dict[str, Any]] = []
    best: tuple[float, Recipe, ov.Model] | None = None
    for recipe in recipes:  # every recipe, ranked on the selection pairs alone
        try:
            q_model = quantize(ov_model, calib, recipe)
        except OpenVINOError as exc:  # NNCF fails on some graphs (nncf 3.4: heads and tails float)
            log.warning("int8 recipe '%s' not ranked: %s", recipe.name, exc)
            tried.append({"recipe": recipe.name, "error": str(exc)})
            continue
        rank = _rank(gate.scores(OpenVINORunner(q_model, {**meta, "precision": "int8"}, "int8"), "selection"))
        tried.append({"recipe": recipe.name, "selection_bound": rank})
        log.info("int8 recipe '%s': lower bound %.1f%% on the %d selection pairs", recipe.name, 100 * rank, n_sel)
        if best is None or rank > best[0]:
            best = (rank, recipe, q_model)
    if best is None:
        raise OpenVINOError(f"no int8 recipe could be quantized: {'; '.join(t['error'] for t in tried)}")
    _, recipe, q_model = best
    scores = gate.scores(OpenVINORunner(q_model, {**meta, "precision": "int8"}, "int8"), "verdict")
    verdict = judge(scores, 0.0 if min_retention is None else min_retention)
    log.info("int8 recipe '%s' on the %d verdict pairs: %s", recipe.name, verdict.pairs, verdict.describe())
    result = _result(verdict, scores, recipe, q_model, meta, gate, calib, min_retention, tried)
    return q_model, result, verdict


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
    """``int8_candidate`` on ``data``, raising (naming the figures) when its verdict fails.
    ``min_retention=None`` is a forced export: written whatever the verdict, which is still
    measured and recorded."""
    gate = GateRun.prepare(ov_model, meta, data, shown, max_size)
    q_model, result, verdict = int8_candidate(gate, ov_model, meta, model, clamp, min_retention, n_crops, recipes)
    if min_retention is None or verdict.passed:
        return q_model, result
    raise OpenVINOError(
        f"{shown}: int8 (recipe '{result['recipe']}', the best of {len(recipes)} on "
        f"{len(gate.roles['selection'])} selection pairs) {verdict.describe()} on pairs it was not tuned on; "
        f"the gate needs a lower bound of at least {100 * min_retention:.0f}% (--min-retention "
        f"{min_retention:g}) and no image below its identity; nothing was written (run fp32 or bf16, "
        "or pass --force to write it anyway)"
    )


def _result(
    verdict: Verdict,
    scores: list[ImageScore],
    recipe: Recipe,
    q_model: ov.Model,
    meta: dict[str, Any],
    gate: GateRun,
    calib: CalibrationSet,
    min_retention: float | None,
    tried: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the export stores and prints: the verdict, the mean PSNRs on the verdict pairs, each
    image's scores, the splits and every recipe's standing."""
    q, total = int8_convolutions(q_model, int(meta["n_blocks"]))
    n = len(scores)
    return {
        **verdict.as_dict(),
        "min_retention": min_retention,
        "recipe": recipe.name,
        "recipe_notes": recipe.notes,
        "psnr_identity": sum(s.identity for s in scores) / n,
        "psnr_fp32": sum(s.reference for s in scores) / n,
        "psnr_int8": sum(s.candidate for s in scores) / n,
        "images": [{"name": s.name, "identity": s.identity, "fp32": s.reference, "int8": s.candidate} for s in scores],
        "int8_convolutions": q,
        "convolutions": total,
        "calibration_crops": len(calib.crops),
        "calibration": str(gate.data),
        "splits": gate.splits.as_dict(),
        "tried": tried,
    }
