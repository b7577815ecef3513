"""The RCAB and its channel-attention tail in plain torch.nn.functional: the oracle for the
Triton kernels in ``rcab.py``. Written apart from ``model.py`` on purpose, so that a test that
compares the two compares two implementations, not one with itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["channel_attention_tail", "conv3x3_epilogue", "rcab"]


def channel_attention_tail(
    x: torch.Tensor, r: torch.Tensor, wd: torch.Tensor, bd: torch.Tensor, wu: torch.Tensor, bu: torch.Tensor
) -> torch.Tensor:
    """y = x + r * sigmoid(W_U relu(W_D mean_hw(r) + b_D) + b_U), weights as 1x1 convolutions."""
    mean = r.mean(dim=(2, 3), keepdim=True)
    s = torch.sigmoid(F.conv2d(F.relu(F.conv2d(mean, wd, bd)), wu, bu))
    return x + r * s


def rcab(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """One residual channel-attention block from an RCAB state dict (conv1, conv2, ca.down, ca.up)."""
    r = F.conv2d(
        F.relu(F.conv2d(x, params["conv1.weight"], params["conv1.bias"], padding=1)),
        params["conv2.weight"],
        params["conv2.bias"],
        padding=1,
    )
    return channel_attention_tail(
        x, r, params["ca.down.weight"], params["ca.down.bias"], params["ca.up.weight"], params["ca.up.bias"]
    )


def conv3x3_epilogue(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    relu: bool = False,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    clamp: bool = False,
    origin: tuple[int, int] = (0, 0),
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """What ``conv3x3.conv3x3`` computes, in plain torch: the 3x3 convolution of ``x`` with zero
    padding, cut to the region at ``origin`` of ``size``, plus bias, then ReLU, times ``scale``
    (B, C_out), + residual, clamp."""
    oy, ox = origin
    h, w = size if size is not None else x.shape[2:]
    y = F.conv2d(x, weight, bias, padding=1)[:, :, oy : oy + h, ox : ox + w]
    if relu:
        y = F.relu(y)
    if scale is not None:
        y = y * scale.to(y.dtype)[:, :, None, None]
    if residual is not None:
        y = y + residual
    return y.clamp(0.0, 1.0) if clamp else y
