"""Accuracy-controlled int8: NNCF post-training quantization that must keep the model's gain.

Plain post-training int8 (NNCF or ONNX Runtime defaults) keeps two thirds of this network's PSNR
gain or less (66% on the demo plan trained on City100 Nikon; none on an earlier checkpoint): NNCF rounds both inputs of every residual add, so the skip side of the feature stream
is re-quantized to 8 bits at every RCAB and the error builds up along the block, while the
restoration it carries is a small correction. So only the convolutions are quantized, every
element-wise op stays in float, and the result is *measured*: every recipe is calibrated on
crops of some training pairs, ranked on others and the best judged on the rest and the test
pairs, through the same exact tiled path ``mcan-upscale`` runs (``gate.int8``, which runs the
tiler). If it fails, the export fails naming its figures, and nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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


CACHE_BYTES = 1 << 30  # the layer inputs of every crop are kept for the next recipe up to this size


@dataclass
class CalibrationSet:
    """Crops of training LR images and the model whose layer inputs they produce. Each recipe
    feeds every crop: the inputs are computed once and kept where they fit in ``CACHE_BYTES``."""

    model: MCAN
    crops: list[torch.Tensor] = field(default_factory=list)  # (1, 3, s, s)
    clamp: bool = True
    _cache: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    _cached_bytes: int = 0

    def feed(self, crop: torch.Tensor) -> dict[str, np.ndarray]:
        """``inputs`` for one crop, from the cache where it has been computed before."""
        key = id(crop)
        if key in self._cache:
            return self._cache[key]
        item = self.inputs(crop)
        size = sum(a.nbytes for a in item.values())
        if self._cached_bytes + size <= CACHE_BYTES and any(c is crop for c in self.crops):
            self._cache[key] = item
            self._cached_bytes += size
        return item

    @torch.no_grad()
    def inputs(self, crop: torch.Tensor) -> dict[str, np.ndarray]:
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


# What speed benchmarks quantize with (random weights have no gain to rank recipes by)
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
