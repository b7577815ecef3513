"""Where float16 overflows: contexts that say whether any convolution's output left the range.

A deep residual network such as N can push a feature past float16's 65504 on some images; the
inf then turns into NaN or, after a ReLU, into a silently wrong zero. Checking each convolution's
output catches it where it appears, including the values a ReLU would hide.

- ``OverflowGuard`` (the torch path) hooks every ``nn.Conv2d`` and reduces its output to its
  minimum and maximum on the device: one read, no map-sized temporaries;
- ``FlagGuard`` (the fused path) reads the flag that the fused kernels set in their epilogue,
  so the check costs no pass at all.
"""

from __future__ import annotations

import threading
from types import TracebackType

import torch
from torch import nn


class OverflowGuard:
    """``with OverflowGuard(model) as g: ...`` then ``g.tripped``: whether any convolution of
    ``model`` produced a non-finite value in this thread inside the block. The checks queue on
    the device; ``tripped`` waits for them once."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._thread = threading.get_ident()
        self._flag: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: object, out: torch.Tensor) -> None:
        if threading.get_ident() == self._thread:
            # the extremes carry any inf and propagate NaN: no bool map of the output's size
            lo, hi = torch.aminmax(out)
            bad = (torch.isfinite(lo) & torch.isfinite(hi)).logical_not()
            self._flag = bad if self._flag is None else self._flag.logical_or(bad)

    def __enter__(self) -> OverflowGuard:
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def tripped(self) -> bool:
        return bool(self._flag) if self._flag is not None else False


class FlagGuard:
    """``with FlagGuard(flag) as g: ...`` then ``g.tripped``: whether the fused kernels set
    their overflow flag (an int32 on the device) inside the block. Zeroed on entry."""

    def __init__(self, flag: torch.Tensor) -> None:
        self.flag = flag

    def __enter__(self) -> FlagGuard:
        self.flag.zero_()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def tripped(self) -> bool:
        return bool(self.flag.item())
