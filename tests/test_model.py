"""The network against a plain functional reference, its receptive fields, and its initialisers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcan_deploy.checkpoint import load_model, save_model
from mcan_deploy.errors import CheckpointError
from mcan_deploy.model import (
    MCAN,
    ChannelAttention,
    MCANBlock,
    ModelConfig,
    ToyBlock,
    build_model,
    inherit_block,
    init_block,
    receptive_field,
)


def reference_block(sd: dict[str, torch.Tensor], x: torch.Tensor, n_res: int, clamp: bool) -> torch.Tensor:
    """MCAN block written out with torch.nn.functional, from a state dict: the oracle."""
    conv = lambda t, k: F.conv2d(t, sd[k + ".weight"], sd[k + ".bias"], padding=sd[k + ".weight"].shape[-1] // 2)  # noqa: E731
    feat = conv(x, "head")
    h = feat
    for i in range(n_res):
        p = f"body.{i}"
        r = conv(F.relu(conv(h, p + ".conv1")), p + ".conv2")
        s = torch.sigmoid(conv(F.relu(conv(r.mean((2, 3), keepdim=True), p + ".ca.down")), p + ".ca.up"))
        h = h + r * s
    feat = feat + conv(h, "body_conv")
    out = x + conv(feat, "tail")
    return out.clamp(0, 1) if clamp else out


def test_block_matches_functional_reference_and_keeps_size():
    torch.manual_seed(0)
    cfg = ModelConfig(n_blocks=1, n_resblocks=3, n_feats=16, reduction=4)
    block = MCANBlock(cfg).double()
    for h, w in [(17, 23), (1, 1), (32, 5)]:
        x = torch.rand(2, 3, h, w, dtype=torch.float64)
        got = block(x, clamp=False)
        ref = reference_block({k: v for k, v in block.state_dict().items()}, x, 3, clamp=False)
        assert got.shape == x.shape
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_chain_is_composition_of_blocks_and_clamp_gives_n_plus():
    torch.manual_seed(0)
    cfg = ModelConfig(n_blocks=3, n_resblocks=2, n_feats=8)
    model = build_model(cfg)
    for b in model.blocks:
        init_block(b, "normal")  # large weights: outputs leave [0, 1]
    x = torch.rand(1, 3, 20, 20)
    outs = model.forward_all(x, clamp=False)
    assert len(outs) == 3
    manual = x
    for i, b in enumerate(model.blocks):
        manual = reference_block(b.state_dict(), manual, 2, clamp=False)
        torch.testing.assert_close(outs[i], manual, rtol=1e-4, atol=1e-4)
    assert outs[-1].min() < 0 or outs[-1].max() > 1, "test needs outputs outside [0, 1]"
    clamped = model(x, clamp=True)
    assert clamped.min() >= 0 and clamped.max() <= 1
    assert model(x).equal(clamped), "ModelConfig.clamp=True makes N_i+ the default"
    assert model(x, upto=1, clamp=False).equal(outs[0])


def test_report_structure_of_a_full_block():
    block = MCANBlock(ModelConfig())
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    three = [m for m in convs if m.kernel_size == (3, 3)]
    one = [m for m in convs if m.kernel_size == (1, 1)]
    assert len(three) == 35, "35 convolution layers deep (report sec. 3.2)"
    assert len(one) == 32, "32 1x1 channel-attention layers, not counted in the depth"
    cas = [m for m in block.modules() if isinstance(m, ChannelAttention)]
    assert len(cas) == 16 and cas[0].down.out_channels == 16 and cas[0].up.out_channels == 64
    assert three[0].in_channels == 3 and three[-1].out_channels == 3


def test_receptive_field_numbers():
    assert receptive_field(MCANBlock(ModelConfig())) == 71
    assert receptive_field(build_model(ModelConfig())) == 211
    assert receptive_field(ToyBlock(ModelConfig(kind="toy"))) == 13
    assert receptive_field(build_model(ModelConfig(kind="toy", n_blocks=2))) == 25


class DetachedPool(nn.Module):
    """Channel-attention statistics held constant, leaving only the convolutional paths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True).detach()


def gradient_support(model: nn.Module, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the centre output pixel w.r.t. the input (summed over channels)."""
    x = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    c = size // 2
    model(x, clamp=False)[0, :, c, c].sum().backward()
    return x.grad.abs().sum(1)[0], torch.tensor(c)


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(n_blocks=1, n_feats=16, n_resblocks=16),
        ModelConfig(n_blocks=3, n_feats=8, n_resblocks=16),
        ModelConfig(kind="toy", n_blocks=1, n_feats=16),
    ],
    ids=["block", "N3", "toy"],
)
def test_receptive_field_empirically(cfg):
    """With the pooled statistics held fixed, one output pixel depends on exactly the window."""
    torch.manual_seed(1)
    model = build_model(cfg).double()
    for m in model.modules():
        if isinstance(m, ChannelAttention):
            m.pool = DetachedPool()
    rf = receptive_field(model)
    size = rf + 20
    grad, c = gradient_support(model, size)
    r = rf // 2
    assert _bbox(grad != 0) == (c - r, c + r, c - r, c + r)


def test_channel_attention_makes_the_block_non_local():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=1, n_resblocks=2, n_feats=8)).double()
    grad, _c = gradient_support(model, 41)
    assert grad[0, 0] != 0, "the global pool links every input pixel to every output pixel"


def test_orthogonal_init():
    block = MCANBlock(ModelConfig(n_resblocks=2))
    init_block(block, "orthogonal", torch.Generator().manual_seed(0))
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.flatten(1)
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
            assert m.bias.abs().max() == 0


def test_normal_init_mean_and_std():
    block = ToyBlock(ModelConfig(kind="toy", n_feats=64))
    init_block(block, "normal", torch.Generator().manual_seed(0))
    values = torch.cat([p.flatten() for p in block.parameters()])
    assert values.numel() > 100_000
    assert abs(values.mean().item()) < 0.002
    assert abs(values.std().item() - 0.1) < 0.002


def test_inherit_copies_weights_without_sharing():
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8))
    inherit_block(model.blocks[1], model.blocks[0])
    for a, b in zip(model.blocks[0].parameters(), model.blocks[1].parameters()):
        assert a.equal(b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        next(model.blocks[1].parameters()).add_(1)
    assert not next(model.blocks[0].parameters()).equal(next(model.blocks[1].parameters()))


def test_model_file_round_trip_and_corrupt_file(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8, clamp=False))
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    loaded = load_model(path)
    assert isinstance(loaded, MCAN) and loaded.config == model.config
    x = torch.rand(1, 3, 9, 13)
    assert loaded(x).equal(model(x))
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.safetensors")
