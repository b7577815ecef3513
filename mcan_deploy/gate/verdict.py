"""Whether a reduced precision keeps float32's gain on images it was not tuned on.

A gate that calibrates, chooses its recipe and judges on the same few pairs passes by luck: the
first int8 recipe above 90% on the 5 City100 test pairs kept 60% on held-out crops of the same
camera. So the pairs are split into three disjoint roles (``gate_splits``): a few training pairs
calibrate, a few others choose the recipe, and the verdict comes from all the rest, test pairs
included. The verdict (``judge``) is a lower confidence bound on the share of the gain kept, not
the mean, plus the worst single image; no image may end below its identity where float32 is
above it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import MCANError
from ..stats import t_critical

MAX_CALIBRATION = 8  # training pairs whose LR crops calibrate (32 crops of 128 pixels from them)
MAX_SELECTION = 8  # training pairs that choose the recipe
CONFIDENCE = "one-sided 97.5%"  # the bound: Student's t at the two-sided 5% level


@dataclass(frozen=True)
class GateSplits:
    """Disjoint roles of the pairs, each named ``train/NAME`` or ``test/NAME``."""

    calibration: tuple[str, ...]
    selection: tuple[str, ...]
    verdict: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in asdict(self).items()}


def gate_splits(train: Sequence[str], test: Sequence[str]) -> GateSplits:
    """Every fourth training pair (sorted by name, from the first) calibrates and every fourth
    from the second chooses the recipe, at most 8 each, so that both spread over the scenes; the
    other training pairs and every test pair give the verdict."""
    names = sorted(train)
    if len(names) < 2:
        raise MCANError(
            f"the gate needs at least 2 training pairs (one to calibrate, one to choose the recipe), "
            f"found {len(names)}; add pairs to the calibration folder's train/"
        )
    calibration = names[0::4][:MAX_CALIBRATION]
    selection = names[1::4][:MAX_SELECTION]
    used = set(calibration) | set(selection)
    verdict = [f"train/{n}" for n in names if n not in used] + [f"test/{n}" for n in sorted(test)]
    if len(verdict) < 2:
        raise MCANError(
            f"the gate needs at least 2 pairs to judge on besides the {len(used)} that calibrate and "
            f"choose the recipe, found {len(verdict)}; add pairs to the calibration folder's train/ or test/"
        )
    return GateSplits(tuple(f"train/{n}" for n in calibration), tuple(f"train/{n}" for n in selection), tuple(verdict))


@dataclass(frozen=True)
class ImageScore:
    """One pair's PSNR (dB, RGB) as the identity, the float32 reference and the candidate give it."""

    name: str
    identity: float
    reference: float
    candidate: float

    @property
    def reference_gain(self) -> float:
        return self.reference - self.identity

    @property
    def gain(self) -> float:
        return self.candidate - self.identity


@dataclass(frozen=True)
class Verdict:
    """What a candidate keeps of the reference's gain on a set of pairs, and whether that passes:
    the lower bound on the share kept at least ``min_retention``, and no image below its identity
    where the reference is above it."""

    pairs: int
    retention: float  # mean gain kept over mean reference gain
    bound: float  # its lower confidence bound (CONFIDENCE), from the spread of the per-image loss
    worst_image: str
    worst_retention: float  # the lowest per-image share kept (images the reference improves)
    below_identity: tuple[str, ...]
    min_retention: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "below_identity": list(self.below_identity), "confidence": CONFIDENCE}

    def describe(self) -> str:
        """One line: mean, bound and worst image, and what failed."""
        text = (
            f"keeps {100 * self.retention:.1f}% of the gain on {self.pairs} pairs (lower bound "
            f"{100 * self.bound:.1f}%; worst image {self.worst_image}: {100 * self.worst_retention:.1f}%)"
        )
        if self.below_identity:
            text += f"; below the identity on {', '.join(self.below_identity)}"
        return text


def judge(scores: Sequence[ImageScore], min_retention: float) -> Verdict:
    """The verdict on ``scores``: retention = mean(candidate gain) / mean(reference gain); its
    bound subtracts Student's t times the standard error of the per-image loss (reference gain
    minus candidate gain), so one image that loses much pulls the bound down even when the mean
    passes. Raises when the reference does not improve on the identity (nothing to keep)."""
    n = len(scores)
    if n == 0:
        raise MCANError("the gate has no pairs to judge on")
    ref_gain = sum(s.reference_gain for s in scores) / n
    if ref_gain <= 0:
        raise MCANError(
            f"the float32 model does not improve on the identity on these {n} pairs ({ref_gain:+.3f} dB), "
            "so what a reduced precision keeps cannot be judged there; use pairs the model was trained for"
        )
    losses = [s.reference_gain - s.gain for s in scores]
    mean_loss = sum(losses) / n
    if n > 1:
        sd = math.sqrt(sum((d - mean_loss) ** 2 for d in losses) / (n - 1))
        bound = 1 - (mean_loss + t_critical(n - 1) * sd / math.sqrt(n)) / ref_gain
    else:
        bound = -math.inf  # one image bounds nothing
    improved = [s for s in scores if s.reference_gain > 0]
    worst = min(improved, key=lambda s: s.gain / s.reference_gain)
    below = tuple(s.name for s in improved if s.gain < 0)
    bound = max(bound, -1e9)  # finite in JSON
    return Verdict(
        pairs=n,
        retention=1 - mean_loss / ref_gain,
        bound=bound,
        worst_image=worst.name,
        worst_retention=worst.gain / worst.reference_gain,
        below_identity=below,
        min_retention=min_retention,
        passed=bound >= min_retention and not below,
    )
