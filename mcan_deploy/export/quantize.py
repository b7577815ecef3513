"""Accuracy-controlled int8: NNCF post-training quantization that must keep the model's gain.

Plain post-training int8 (NNCF or ONNX Runtime defaults) keeps two thirds of this network's PSNR
gain or less (66% on the demo plan trained on City100 Nikon; none on an earlier checkpoint): NNCF rounds both inputs of every residual add, so the skip side of the feature stream
is re-quantized to 8 bits at every RCAB and the error builds up along the block, while the
restoration it carries is a small correction. So only the convolutions are quantized, every
element-wise op stays in float, and the result is *measured*: recipes are
tried from the fastest to the most careful, each calibrated on crops of the training pairs and
judged on the test pairs through the same exact tiled path ``mcan-upscale`` runs; the first that
keeps ``min_retention`` of the float32 gain over the identity wins. If none does, the export fails
naming the best retention reached, and nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ..errors import OpenVINOError
from ..model import MCAN, RCAB, MCANBlock

if TYPE_CHECKING:
    import openvino as ov

    from ..data import PairedImages

log = logging.getLogger(__name__)

# element-wise and pooling ops stay float: the residual adds carry the image and the features'
# long skips, the multiply is the channel-attention scale
FLOAT_TYPES = ("Add", "Multiply", "ReduceMean", "AvgPool", "AdaptiveAvgPool", "Clamp", "Sigmoid")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: which convolutions stay in float (name patterns of the converted
    model), how activation ranges are set (NNCF's default min/max, or the mean of per-sample
    quantiles, which trims outliers), and NNCF's fast or full bias correction."""

    name: str
    float_patterns: tuple[str, ...] = ()
    quantile_ranges: bool = True
    fast_bias_correction: bool = True
    notes: str = ""


CA_CONVS = r".*\.ca\.(up|down)/.*"  # the 1x1 attention layers run on pooled vectors: no work to save
TAIL_CONVS = r".*\.tail/.*"  # F->3: its output is the restoration added to the image
IMAGE_CONVS = (r".*\.head/.*", TAIL_CONVS)

# From the fastest to the most careful. Measured on the demo plan trained on City100 Nikon (5 full
# test pairs, gain 0.82 dB): NNCF defaults 66%, every 3x3 convolution int8 with the element-wise
# ops float 87% (default ranges) and 92% (quantile ranges, full bias correction), tails float 95%.
RECIPES = (
    Recipe(
        "convs",
        (CA_CONVS,),
        notes="every 3x3 convolution int8 (activation ranges from quantiles); adds, "
        "multiplies, pooling and channel attention float",
    ),
    Recipe(
        "convs, full bias correction",
        (CA_CONVS,),
        fast_bias_correction=False,
        notes="as above, with NNCF's full bias correction",
    ),
    Recipe(
        "convs, tails float",
        (CA_CONVS, TAIL_CONVS),
        fast_bias_correction=False,
        notes="also each block's tail convolution (F->3) float: its output is added to the image",
    ),
    Recipe(
        "convs, heads and tails float",
        (CA_CONVS, *IMAGE_CONVS),
        fast_bias_correction=False,
        notes="also each block's head convolution (3->F) float",
    ),
)


@dataclass
class CalibrationSet:
    """Crops of training LR images and the model whose layer inputs they produce."""

    model: MCAN
    crops: list[torch.Tensor] = field(default_factory=list)  # (1, 3, s, s)
    clamp: bool = True

    @torch.no_grad()
    def feed(self, crop: torch.Tensor) -> dict[str, np.ndarray]:
        """Every input of the OpenVINO model for one crop, as PyTorch computes them: the block
        inputs, every RCAB's input and its residual's channel means, and the body's output."""
        item: dict[str, np.ndarray] = {}
        x = crop
        for i, block in enumerate(self.model.blocks, 1):
            item[f"N{i}.x"] = x.numpy()
            if isinstance(block, MCANBlock):
                h = block.head(x)
                for k, layer in enumerate(block.body):
                    rcab = cast(RCAB, layer)  # nn.Sequential items are typed nn.Module
                    item[f"N{i}.h{k}"] = h.numpy()
                    r = rcab.residual(h)
                    item[f"N{i}.m{k}"] = r.mean((2, 3), keepdim=True).numpy()
                    h = rcab(h)
                item[f"N{i}.h"] = h.numpy()
            x = block(x, clamp=self.clamp)
        return item


def calibration_crops(train: PairedImages, n: int = 32, side: int = 128, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random crops of the training LR images (the inputs N sees), spread over the images."""
    g = torch.Generator().manual_seed(seed)
    crops = []
    for j in range(n):
        img = train.inputs[j % len(train)]
        h, w = img.shape[-2:]
        s = min(side, h, w)
        top = int(torch.randint(0, h - s + 1, (1,), generator=g))
        left = int(torch.randint(0, w - s + 1, (1,), generator=g))
        crops.append(img[None, :, top : top + s, left : left + s].contiguous())
    return crops


def quantize(ov_model: ov.Model, calib: CalibrationSet, recipe: Recipe) -> ov.Model:
    """The model with int8 convolutions per ``recipe``, calibrated on ``calib``."""
    from ..telemetry import import_nncf

    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    scope = nncf.IgnoredScope(types=list(FLOAT_TYPES), patterns=list(recipe.float_patterns), validate=False)
    advanced = (
        AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE)
        if recipe.quantile_ranges
        else None
    )
    quiet = logging.getLogger("nncf")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # NNCF logs every statistics pass at INFO
    try:
        return nncf.quantize(
            ov_model,
            nncf.Dataset(calib.crops, calib.feed),
            subset_size=len(calib.crops),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            ignored_scope=scope,
            fast_bias_correction=recipe.fast_bias_correction,
            advanced_parameters=advanced,
        )
    except Exception as exc:  # noqa: BLE001 - NNCF raises many kinds
        raise OpenVINOError(f"NNCF quantization ({recipe.name}) failed: {type(exc).__name__}: {exc}"[:500]) from None
    finally:
        quiet.setLevel(level)


# The recipe that kept the gain on City100 Nikon (90.6%): what speed benchmarks quantize with
SPEED_RECIPE = RECIPES[1]


def quantized_for_speed(
    model: MCAN, crops: list[torch.Tensor], source_hash: str = ""
) -> tuple[ov.Model, dict[str, Any]]:
    """``model`` converted and quantized with ``SPEED_RECIPE`` on ``crops``, with int8 metadata
    and no quality gate: for timing (random weights have no gain to keep)."""
    from .openvino import get_metadata, set_metadata, to_openvino

    ov_model = to_openvino(model, source_hash=source_hash)
    meta = {**get_metadata(ov_model, "model"), "precision": "int8"}
    q_model = quantize(ov_model, CalibrationSet(model, crops), SPEED_RECIPE)
    set_metadata(q_model, meta)
    return q_model, meta


def int8_convolutions(ov_model: ov.Model, n_blocks: int) -> tuple[int, int]:
    """(int8, all) 3x3 convolutions of the whole-block graphs N1..Nn: a quantized one reads its
    weights through NNCF's dequantization (or a FakeQuantize) instead of a float constant."""
    from ..telemetry import import_openvino

    ov = import_openvino()
    results = [r for r in ov_model.get_results() if r.get_friendly_name() in {f"N{i}" for i in range(1, n_blocks + 1)}]
    params = [
        p for p in ov_model.get_parameters() if p.get_friendly_name() in {f"N{i}.x" for i in range(1, n_blocks + 1)}
    ]
    blocks = ov.Model(results, params, "blocks")
    convs = [
        op
        for op in blocks.get_ops()
        if op.get_type_name() == "Convolution"
        and op.get_input_partial_shape(1).is_static
        and list(op.get_input_shape(1))[-2:] == [3, 3]
    ]
    quantized = sum(op.input_value(1).get_node().get_type_name() != "Constant" for op in convs)
    return quantized, len(convs)


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
