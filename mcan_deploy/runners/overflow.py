"""Where float16 overflows: a context that watches every convolution's output.

A deep residual network such as N can push a feature past float16's 65504 on some images; the
inf then turns into NaN or, after a ReLU, into a silently wrong zero. Checking each convolution's
output catches it where it appears, including the values a ReLU would hide.
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
            bad = torch.isfinite(out).all().logical_not()
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
