""" Conv-then-combine: convolve with the bases, then weight the results per pixel. Only convs and
elementwise ops, so every runtime has them: ONNX export runs this backend (TorchScript its CADA).

CADA: B depthwise convs, one per base, each weighted per pixel by its CA parameter and accumulated in
place. Cost about B depthwise convs, each a single fast library call (oneDNN / cuDNN); memory two
activations, whatever B. Per-pixel kernels (pixel_filter): the bases are the k*k one-hot kernels, all in
one conv that gathers each pixel's window (im2col as a conv), then the weighted sum over the
window; memory k*k activations. Autograd differentiates both through the convs.
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


def pixel_filter_combine(
        x: torch.Tensor,
        attn: torch.Tensor,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
) -> torch.Tensor:
    """Exactly `pixel_filter_reference`, computed through one `F.conv2d` (see that function for the shapes)."""
    N, C, H, W = x.shape
    G = attn.shape[1]
    k = kernel_size
    kk = k * k
    # every channel as an image of its own (the kernel's shape then depends on k only, as ONNX export
    # needs): output channel d of the conv is the channel shifted by window offset d
    onehot = torch.eye(kk, dtype=x.dtype, device=x.device).reshape(kk, 1, k, k)
    cols = F.conv2d(x.reshape(N * C, 1, H, W), onehot, None, stride, dilation * (k // 2), dilation)
    Ho, Wo = cols.shape[-2], cols.shape[-1]
    y = (cols.view(N, G, C // G, kk, Ho, Wo) * attn.unsqueeze(2)).sum(3).reshape(N, C, Ho, Wo)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)  # the reshapes above lost it
    return y
