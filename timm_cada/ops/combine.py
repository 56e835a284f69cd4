""" CADA as conv-then-combine: one grouped depthwise conv with B outputs per channel, then a
per-pixel weighted sum over the B responses. Cost about B depthwise convs; memory B activations.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def cada_combine(
        x: torch.Tensor,
        alpha: torch.Tensor,
        bases: torch.Tensor,
        rel_pos: Optional[torch.Tensor] = None,
        stride: int = 1,
        dilation: int = 1,
) -> torch.Tensor:
    """Exactly `cada_reference`, computed through `F.conv2d` (see that function for the shapes)."""
    N, C, H, W = x.shape
    G, B, k, _ = bases.shape
    hd = C // G
    pad = dilation * (k // 2)
    weight = bases.unsqueeze(1).expand(G, hd, B, k, k).reshape(C * B, 1, k, k)
    z = F.conv2d(x, weight, None, stride, pad, dilation, C)
    Ho, Wo = z.shape[-2], z.shape[-1]
    y = (z.reshape(N, G, hd, B, Ho, Wo) * alpha.reshape(alpha.shape[0], G, 1, B, Ho, Wo)).sum(3)
    y = y.reshape(N, C, Ho, Wo)
    if rel_pos is not None:
        r = rel_pos.unsqueeze(1).expand(G, hd, k, k).reshape(C, 1, k, k)
        y = y + F.conv2d(x, r, None, stride, pad, dilation, C)
    return y
