"""The weights of MCAN blocks as the fused inference path reads them: each 3x3 convolution both
packed for the Triton kernel and as a plain weight for cuDNN, with what float16's bounds need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from ..model import RCAB, MCANBlock

if TYPE_CHECKING:
    from ..kernels.conv3x3 import PackedConv

__all__ = ["BlockWeights", "ConvWeights", "RCABWeights", "block_weights"]


@dataclass(frozen=True)
class ConvWeights:
    """One 3x3 convolution in both forms: packed for the Triton kernel, and the plain weight
    (compute dtype, channels_last on CUDA) with a float32 bias for cuDNN and the epilogue pass."""

    packed: PackedConv
    weight: torch.Tensor
    bias: torch.Tensor  # (C_out,) float32
    bias_c: torch.Tensor  # (C_out,) in the compute dtype, for cuDNN's fused convolution
    abs_taps: torch.Tensor  # (C_out, C_in) float32: sum of |weight| over the taps (float16's bounds)


@dataclass(frozen=True)
class RCABWeights:
    conv1: ConvWeights
    conv2: ConvWeights
    attention: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # W_D, b_D, W_U, b_U


@dataclass(frozen=True)
class BlockWeights:
    head: ConvWeights
    rcabs: tuple[RCABWeights, ...]
    body: ConvWeights
    tail: ConvWeights
    clamp: bool


def _conv_weights(conv: torch.nn.Conv2d, dtype: torch.dtype, device: torch.device) -> ConvWeights:
    from ..kernels.conv3x3 import pack

    w = conv.weight.detach().to(device, dtype)
    if device.type == "cuda":
        w = w.contiguous(memory_format=torch.channels_last)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    return ConvWeights(
        pack(conv.weight, conv.bias, dtype, device),
        w,
        b.to(device, torch.float32),
        b.to(device, dtype),
        w.float().abs().sum((2, 3)),
    )


def block_weights(block: MCANBlock, dtype: torch.dtype, device: torch.device) -> BlockWeights:
    """The weights of an ``MCANBlock`` as the fused kernels read them."""
    rcabs = []
    for module in block.body:
        rcab = cast(RCAB, module)  # nn.Sequential items are typed nn.Module
        ca = rcab.ca
        assert ca.down.bias is not None and ca.up.bias is not None  # nn.Conv2d's default bias=True
        att = cast(
            tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
            tuple(
                t.detach().to(device, torch.float32) for t in (ca.down.weight, ca.down.bias, ca.up.weight, ca.up.bias)
            ),
        )
        rcabs.append(
            RCABWeights(_conv_weights(rcab.conv1, dtype, device), _conv_weights(rcab.conv2, dtype, device), att)
        )
    return BlockWeights(
        _conv_weights(block.head, dtype, device),
        tuple(rcabs),
        _conv_weights(block.body_conv, dtype, device),
        _conv_weights(block.tail, dtype, device),
        bool(block.clamp),
    )
