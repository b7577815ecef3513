"""The MCAN network: channel attention, RCAB, the block N_i, the chain N, and the toy block.

A block maps an image to an image of the same size, so blocks chain: N = N_m(...N_2(N_1(x))).
Each block ends with "+ input", and N_i+ clamps that sum to [0, 1] (report sec. 4.3).
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import torch
from torch import nn

from .config import InitScheme, ModelConfig, RcabImpl
from .errors import ConfigError

__all__ = [
    "MCAN",
    "RCAB",
    "ChannelAttention",
    "MCANBlock",
    "ModelConfig",
    "ToyBlock",
    "build_model",
    "inherit_block",
    "init_block",
    "receptive_field",
    "set_rcab_impl",
]


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """3x3 convolution, stride 1, zero padding 1: keeps the image size."""
    return nn.Conv2d(cin, cout, 3, padding=1)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention: x * sigmoid(W_U relu(W_D mean(x))).

    The global average pool makes this layer non-local: its scale depends on the whole image
    (see ARCHITECTURE.md, "Channel attention and tiling"). ``pool`` is a separate module so that
    callers can inspect or replace how the statistics are gathered.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.down = nn.Conv2d(channels, channels // reduction, 1)  # W_D: 64 -> 16
        self.up = nn.Conv2d(channels // reduction, channels, 1)  # W_U: 16 -> 64

    def scale(self, mean: torch.Tensor) -> torch.Tensor:
        """Per-channel gate in (0, 1) from pooled means of shape (B, C, 1, 1)."""
        return torch.sigmoid(self.up(torch.relu(self.down(mean))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(self.pool(x))


class RCAB(nn.Module):
    """Residual channel-attention block: x + CA(conv(relu(conv(x)))).

    With ``impl="triton"`` the attention tail (pool, MLP, sigmoid, scale, skip) runs as the fused
    kernels of ``mcan_deploy.kernels.rcab`` wherever they can run on the input's device; the
    parameters and the result are the same as the torch path's (to float rounding).
    """

    def __init__(self, n_feats: int, reduction: int, impl: RcabImpl = "torch") -> None:
        super().__init__()
        self.conv1 = conv3x3(n_feats, n_feats)
        self.conv2 = conv3x3(n_feats, n_feats)
        self.ca = ChannelAttention(n_feats, reduction)
        self.impl = impl

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """conv2(relu(conv1(x))): what the channel attention pools and scales (the exact tiled
        mode computes it over the whole image before it can pool)."""
        return self.conv2(torch.relu(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.residual(x)
        if self.impl == "triton":
            from .kernels import fused_available

            if fused_available(x.device):
                from .kernels.rcab import fused_channel_attention

                ca = self.ca
                assert ca.down.bias is not None and ca.up.bias is not None  # nn.Conv2d's default bias=True
                return fused_channel_attention(x, r, ca.down.weight, ca.down.bias, ca.up.weight, ca.up.bias)
        return x + self.ca(r)


class MCANBlock(nn.Module):
    """One block N_i: head conv, RCABs, body conv with a long skip, tail conv, plus the input.

    35 convolutions of 3x3 deep with the default 16 RCABs: a 71x71 receptive field. With
    ``clamp`` the output is clamped to [0, 1], which makes it N_i+.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head = conv3x3(cfg.n_colors, cfg.n_feats)
        self.body = nn.Sequential(*(RCAB(cfg.n_feats, cfg.reduction, cfg.rcab_impl) for _ in range(cfg.n_resblocks)))
        self.body_conv = conv3x3(cfg.n_feats, cfg.n_feats)
        self.tail = conv3x3(cfg.n_feats, cfg.n_colors)
        self.clamp = cfg.clamp

    def finish(self, x: torch.Tensor, h: torch.Tensor, clamp: bool | None = None) -> torch.Tensor:
        """The block's output from its input ``x`` and its last RCAB's output ``h``: body conv,
        long skip, tail, plus the input (clamped for N_i+)."""
        out = x + self.tail(self.head(x) + self.body_conv(h))
        return out.clamp(0.0, 1.0) if (self.clamp if clamp is None else clamp) else out

    def forward(self, x: torch.Tensor, clamp: bool | None = None) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.body_conv(self.body(feat))
        out = x + self.tail(feat)
        return out.clamp(0.0, 1.0) if (self.clamp if clamp is None else clamp) else out


class ToyBlock(nn.Module):
    """The report's toy block (sec. 3.1): six 3x3 convolutions with ReLUs, plus the input."""

    n_convs = 6

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        chans = [cfg.n_colors] + [cfg.n_feats] * (self.n_convs - 1) + [cfg.n_colors]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(pairwise(chans)):
            layers.append(conv3x3(cin, cout))
            if i < self.n_convs - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.clamp = cfg.clamp

    def forward(self, x: torch.Tensor, clamp: bool | None = None) -> torch.Tensor:
        out = x + self.body(x)
        return out.clamp(0.0, 1.0) if (self.clamp if clamp is None else clamp) else out


class MCAN(nn.Module):
    """N = N_m(...N_2(N_1(x))): a chain of blocks, each an image-to-image map."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        block_cls = {"mcan": MCANBlock, "toy": ToyBlock}[cfg.kind]
        self.blocks = nn.ModuleList(block_cls(cfg) for _ in range(cfg.n_blocks))

    def forward(self, x: torch.Tensor, clamp: bool | None = None, upto: int | None = None) -> torch.Tensor:
        """Run blocks N_1..N_upto (all by default); ``clamp`` overrides the config's N_i+."""
        for block in self.blocks[: upto or len(self.blocks)]:
            x = block(x, clamp=clamp)
        return x

    def forward_all(self, x: torch.Tensor, clamp: bool | None = None) -> list[torch.Tensor]:
        """Every block's output: [N_1(x), N_2(N_1(x)), ...], for per-phase validation and the
        report's inverse analysis (sec. 5.3)."""
        outs = []
        for block in self.blocks:
            x = block(x, clamp=clamp)
            outs.append(x)
        return outs


def build_model(cfg: ModelConfig) -> MCAN:
    """The network N described by ``cfg`` with PyTorch's default initialisation."""
    return MCAN(cfg)


def set_rcab_impl(model: MCAN, impl: RcabImpl) -> MCAN:
    """Switch every RCAB of ``model`` to the torch or the fused Triton tail, in place; the
    weights are shared by both paths, so a model trained with one runs with the other."""
    cfg = dataclasses.replace(model.config, rcab_impl=impl)  # validates impl
    for m in model.modules():
        if isinstance(m, RCAB):
            m.impl = impl
    model.config = cfg
    return model


def receptive_field(module: nn.Module) -> int:
    """Side of the square input window that one output pixel depends on through convolutions.

    Computed from the layers: every 3x3 convolution of a block lies on one chain (the skips are
    shorter paths), so the radius is the sum of the convolutions' radii. The channel-attention
    pools are global statistics, not spatial layers, and are left out, as the report does
    (71 for one 16-RCAB block, 211 for N of three, 13 for the toy block).
    """
    radius = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride != (1, 1) or m.kernel_size[0] != m.kernel_size[1]:
                raise ConfigError(
                    f"receptive_field: {m} has stride {m.stride} / kernel {m.kernel_size}; "
                    "only square stride-1 convolutions are supported"
                )
            radius += (m.kernel_size[0] - 1) // 2 * m.dilation[0]
    return 2 * radius + 1


@torch.no_grad()
def init_block(block: nn.Module, scheme: InitScheme, generator: torch.Generator | None = None) -> None:
    """Initialise every convolution of ``block`` in place.

    ``orthogonal``: orthogonal weights, zero biases (report sec. 4.1, for N_1);
    ``normal``: weights and biases from N(0, 0.1) (the toy model, sec. 3.1);
    ``default``: PyTorch's own initialisation; ``keep``: leave the weights as they are.
    """
    if scheme == "keep":
        return
    for m in block.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        # drawn on the CPU and copied: a CPU generator cannot fill CUDA tensors
        if scheme == "orthogonal":
            m.weight.copy_(nn.init.orthogonal_(torch.empty(m.weight.shape), generator=generator))
            if m.bias is not None:
                m.bias.zero_()
        elif scheme == "normal":
            m.weight.copy_(torch.empty(m.weight.shape).normal_(0.0, 0.1, generator=generator))
            if m.bias is not None:
                m.bias.copy_(torch.empty(m.bias.shape).normal_(0.0, 0.1, generator=generator))
        elif scheme == "default":
            m.reset_parameters()
        else:
            raise ConfigError(f"init scheme '{scheme}' does not apply to a single block")


@torch.no_grad()
def inherit_block(dst: nn.Module, src: nn.Module) -> None:
    """Inheriting initialisation (report sec. 4.2): N_(i+1) starts as a copy of N_i."""
    dst.load_state_dict(src.state_dict())
