"""How much of a model's gain a back-end or precision keeps, on real test pairs.

The gain is PSNR over the identity (LR against HR); a lower precision is judged by its
*retention*, the share of the float32 gain it keeps: (PSNR - identity) / (PSNR_fp32 - identity).
Every back-end runs through the tiling engine exactly as ``mcan-upscale`` runs it, so the
number is the one users get.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .data import PairedImages
from .errors import MCANError
from .metrics import psnr
from .runners import Runner
from .tiling import TileConfig, upscale_tensor


@dataclass(frozen=True)
class Quality:
    """Mean PSNR (RGB and luma Y) of one back-end over test pairs, and its share of the gain."""

    name: str
    psnr: float
    psnr_y: float
    gain: float  # dB over the identity, RGB
    gain_y: float
    retention: float | None  # share of the reference's RGB gain (None for the reference itself)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def identity_psnr(pairs: PairedImages) -> tuple[float, float]:
    """Mean PSNR of the LR images against HR: the baseline a model has to beat."""
    n = len(pairs)
    return (
        sum(psnr(x, y) for x, y in zip(pairs.inputs, pairs.targets)) / n,
        sum(psnr(x, y, y=True) for x, y in zip(pairs.inputs, pairs.targets)) / n,
    )


def outputs(runner: Runner, pairs: PairedImages, cfg: TileConfig = TileConfig()) -> list[torch.Tensor]:
    """The runner's output for every LR image of ``pairs``, through the tiling engine."""
    return [upscale_tensor(runner, x, cfg)[0] for x in pairs.inputs]


def measure(named: dict[str, list[torch.Tensor]], pairs: PairedImages, reference: str) -> list[Quality]:
    """Quality rows for named outputs (one list of images per name), retention against
    ``reference``'s gain; the identity comes first."""
    if not len(pairs):
        raise MCANError("no test pairs to measure quality on")
    ident, ident_y = identity_psnr(pairs)
    means = {}
    for name, outs in named.items():
        means[name] = (
            sum(psnr(o, y) for o, y in zip(outs, pairs.targets)) / len(pairs),
            sum(psnr(o, y, y=True) for o, y in zip(outs, pairs.targets)) / len(pairs),
        )
    ref_gain = means[reference][0] - ident
    rows = [Quality("identity", ident, ident_y, 0.0, 0.0, None)]
    for name, (p, py) in means.items():
        retention = None if name == reference or ref_gain <= 0 else (p - ident) / ref_gain
        rows.append(Quality(name, p, py, p - ident, py - ident_y, retention))
    return rows


def render(rows: list[Quality], reference: str) -> str:
    """A markdown table of quality rows."""
    lines = [
        f"| back-end / precision | PSNR RGB | PSNR Y | gain RGB | gain Y | share of the {reference} gain kept |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        kept = "-" if r.retention is None else f"{100 * r.retention:.1f}%"
        gain = "-" if r.name == "identity" else f"{r.gain:+.3f} dB"
        gain_y = "-" if r.name == "identity" else f"{r.gain_y:+.3f} dB"
        lines.append(f"| {r.name} | {r.psnr:.3f} dB | {r.psnr_y:.3f} dB | {gain} | {gain_y} | {kept} |")
    return "\n".join(lines)
