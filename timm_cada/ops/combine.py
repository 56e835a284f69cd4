""" CADA as conv-then-combine: B depthwise convs, one per base, each weighted per pixel by its CA
parameter and accumulated in place. Cost about B depthwise convs, each a single fast library call
(oneDNN / cuDNN); memory two activations, whatever B. Autograd differentiates it through the convs.
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
    y = torch.empty(0)
    for b in range(B):
        # a plain depthwise conv (C groups, one output each): the library's fast path
        weight = bases[:, b].unsqueeze(1).expand(G, hd, k, k).reshape(C, 1, k, k)
        z = F.conv2d(x, weight, None, stride, pad, dilation, C)
        Ho, Wo = z.shape[-2], z.shape[-1]
        z = z.view(N, G, hd, Ho, Wo)
        a = alpha[:, :, b:b + 1].to(z.dtype)
        # in place is autograd-safe: the product's backward needs z and a, not y
        y = z * a if b == 0 else y.addcmul_(z, a)
    y = y.view(N, C, y.shape[-2], y.shape[-1])
    if rel_pos is not None:
        r = rel_pos.unsqueeze(1).expand(G, hd, k, k).reshape(C, 1, k, k)
        y = y + F.conv2d(x, r, None, stride, pad, dilation, C)
    return y
