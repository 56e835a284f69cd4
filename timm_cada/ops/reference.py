""" Plain PyTorch reference implementations of the CADA operators.

These are the definitions the faster backends are tested against. They use only differentiable
tensor ops (autograd does the backward) and never materialise a (k*k, C, H, W) tensor: the k*k
window is walked as shifted views of the padded input, accumulating one product at a time.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def filter_output_size(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Output length of a 'same'-padded (pad = dilation * (k // 2)) sliding window."""
    pad = dilation * (kernel_size // 2)
    return (size + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1


def pixel_filter_reference(
        x: torch.Tensor,
        attn: torch.Tensor,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
) -> torch.Tensor:
    """Apply a per-pixel k x k kernel, shared by the channels of each head.

    y[n, c, p] = sum_d attn[n, g(c), d, p] * x[n, c, s * p + dilation * (d - k // 2)]

    Args:
        x: input (N, C, H, W).
        attn: kernels (N or 1, G, k * k, Ho, Wo); the window offset d is row-major.
        kernel_size: k, odd.
        stride: s.
        dilation: spacing of the window taps.
    """
    N, C, H, W = x.shape
    G = attn.shape[1]
    k = kernel_size
    Ho = filter_output_size(H, k, stride, dilation)
    Wo = filter_output_size(W, k, stride, dilation)
    pad = dilation * (k // 2)
    xp = F.pad(x, [pad, pad, pad, pad]).reshape(N, G, C // G, H + 2 * pad, W + 2 * pad)
    a = attn.reshape(attn.shape[0], G, 1, k * k, Ho, Wo)
    out = torch.zeros(0)
    for i in range(k):
        for j in range(k):
            hi = i * dilation
            wj = j * dilation
            xs = xp[:, :, :, hi:hi + (Ho - 1) * stride + 1:stride, wj:wj + (Wo - 1) * stride + 1:stride]
            term = a[:, :, :, i * k + j] * xs
            out = term if i == 0 and j == 0 else out + term
    return out.reshape(N, C, Ho, Wo)


def synthesize_attn(
        alpha: torch.Tensor,
        bases: torch.Tensor,
        rel_pos: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention maps from CA parameters: A_g(p) = sum_b alpha_{g,b}(p) W_{g,b} (+ R_g).

    Args:
        alpha: (N or 1, G, B, Ho, Wo).
        bases: (G, B, k, k).
        rel_pos: optional (G, k, k).

    Returns:
        (N or 1, G, k * k, Ho, Wo)
    """
    G, B, k, _ = bases.shape
    attn = torch.einsum('ngbhw,gbd->ngdhw', alpha, bases.reshape(G, B, k * k))
    if rel_pos is not None:
        attn = attn + rel_pos.reshape(1, G, k * k, 1, 1).to(attn.dtype)
    return attn


def cada_reference(
        x: torch.Tensor,
        alpha: torch.Tensor,
        bases: torch.Tensor,
        rel_pos: Optional[torch.Tensor] = None,
        stride: int = 1,
        dilation: int = 1,
) -> torch.Tensor:
    """CADA by its definition: synthesise each pixel's kernel, then apply it."""
    attn = synthesize_attn(alpha, bases, rel_pos)
    return pixel_filter_reference(x, attn, bases.shape[-1], stride, dilation)
