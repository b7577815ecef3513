"""The channel sums of a 3x3 convolution's output, from its input's sums and borders.

Channel attention pools conv2's output over the whole image before it scales it. Pooling that
output takes a pass over a 64-channel map (0.47 ms at 12 MP on an H200), and scaling it
another (1.1 ms, with the residual add), because the pool must be complete before the scale.
A convolution is linear, so its output's sum over the image needs only its input's:

    sum_p conv(t)[p, o] = sum_(tap, i) W[o, i, tap] * S_tap[i] + H W b[o],

where S_tap[i] sums channel i of t over the pixels that tap reads: all of them, less the row
or column a shift of one pushes out of the image (the zero padding reads none there), with the
corner that both remove added back once. So from t's channel sums (which conv1's kernel takes
as it stores t) and its two outer rows and columns (a thin read), the gate is known before
conv2 runs, and conv2 applies it, the bias and the residual in its epilogue: the RCAB is two
convolutions and no pass of its own.

The sums are those of conv2's float32 accumulations, not of a rounded stored map; in float64
the identity is exact (``tests/test_conv_sums.py``).
"""

from __future__ import annotations

import torch

__all__ = ["conv3x3_sums"]


def conv3x3_sums(t: torch.Tensor, t_sums: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, C_out) channel sums over the image of ``conv3x3(t, weight) + bias`` with zero
    padding, from t (B, C_in, H, W), its channel sums ``t_sums`` (B, C_in) and the (C_out, C_in,
    3, 3) ``weight``; reads only t's outer rows and columns. float32 (float64 for a float64 t)."""
    # basic indexing and fills only: an index or constant tensor from the host would be a
    # synchronising copy on a GPU, once per RCAB
    b, c, h, w = t.shape
    f = torch.float64 if t.dtype == torch.float64 else torch.float32
    top, bottom = t[:, :, 0].sum(-1, dtype=f), t[:, :, h - 1].sum(-1, dtype=f)
    left, right = t[:, :, :, 0].sum(-1, dtype=f), t[:, :, :, w - 1].sum(-1, dtype=f)
    zero = torch.zeros_like(top)
    # tap ky = 0 reads row p - 1, so never the bottom row; ky = 2 never the top one (kx alike)
    rows, cols = torch.stack((bottom, zero, top), -1), torch.stack((right, zero, left), -1)
    corners = torch.zeros(b, c, 3, 3, dtype=f, device=t.device)  # counted twice where both apply
    for ky, y in ((0, h - 1), (2, 0)):
        for kx, x in ((0, w - 1), (2, 0)):
            corners[:, :, ky, kx] = t[:, :, y, x]
    taps = t_sums.to(f)[:, :, None, None] - rows[..., :, None] - cols[..., None, :] + corners
    return torch.einsum("oikl,bikl->bo", weight.to(f), taps) + h * w * bias.to(f)
