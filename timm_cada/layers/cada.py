""" CADA: context-aware decomposed attention (arXiv 2210.17141), as reconstructed in docs/design.md.

Each pixel's k x k attention map is a context-weighted sum of B trainable base kernels per head,
A_g(p) = sum_b alpha_{g,b}(p) W_{g,b} (+ R_g), with alpha = norm(f(x)) computed from a
`ca_kernel_size` neighbourhood. B = 1 is a depthwise conv; identity bases (B = k*k one-hot
kernels) make alpha itself the attention map: local attention with no spatial invariance.
"""
from typing import Optional, Type

import torch
import torch.nn as nn

from timm.layers import get_act_layer, get_norm_layer
from timm_cada.ops import CADA_IMPLS, cada_filter, pixel_filter, synthesize_attn
from .helpers import check_choice, check_mixer_args, check_num_bases, check_odd, init_kernels, num_heads
from .registry import register_mixer

CA_NORMS = ('softmax', 'sigmoid', 'none')


def normalize_ca(logits: torch.Tensor, ca_norm: str) -> torch.Tensor:
    """CA parameters from logits (N, G, B, H, W): softmax over B, elementwise sigmoid, or as they are."""
    if ca_norm == 'softmax':
        return logits.softmax(dim=2)
    if ca_norm == 'sigmoid':
        return logits.sigmoid()
    return logits


class CaGenerator(nn.Sequential):
    """f: the CA-parameter generator, G*B logits per output pixel from a ca_kernel_size context.

    With `reduction` set: conv(k_ca) C -> C/r, norm, act, conv1x1 -> G*B (as involution's kernel
    generator); without: one conv(k_ca) C -> G*B. The last conv starts at zero, so a fresh CADA
    layer computes exactly the depthwise conv of the mean of its bases.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            stride: int = 1,
            reduction: Optional[int] = 4,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        pad = kernel_size // 2
        if reduction:
            mid = max(in_chs // reduction, 8)
            layers = [
                nn.Conv2d(in_chs, mid, kernel_size, stride, pad, bias=False, **dd),
                norm_layer(mid, **dd),
                act_layer(inplace=True),
                nn.Conv2d(mid, out_chs, 1, bias=True, **dd),
            ]
        else:
            layers = [nn.Conv2d(in_chs, out_chs, kernel_size, stride, pad, bias=True, **dd)]
        super().__init__(*layers)

    def reset_parameters(self) -> None:
        for m in self:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif hasattr(m, 'reset_parameters'):
                m.reset_parameters()
        last = self[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


class Cada2d(nn.Module):
    """Context-aware decomposed attention over a k x k window ('cada').

    Args:
        in_chs: input channels C.
        out_chs: must equal in_chs (the mixer is channel-wise).
        kernel_size: window k (odd).
        stride: 1, or 2 in downsampling blocks.
        dilation: window tap spacing.
        num_bases: B, base kernels per head, 1 <= B <= k*k (1 = a depthwise conv).
        head_dim: channels sharing one attention map; G = C / head_dim heads.
        ca_kernel_size: context size for the CA parameters (1 = the pixel alone).
        ca_reduction: bottleneck ratio r of the CA generator, None for a single conv.
        ca_norm: 'softmax' over the bases (default), 'sigmoid' or 'none'.
        rel_pos: add a static learned k x k kernel per head (relative position encoding).
        identity_bases: use the k*k fixed one-hot bases, so alpha is the attention map
            (no spatial invariance); num_bases must then be None or k*k.
        impl: operator backend, one of timm_cada.ops.CADA_IMPLS.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 7,
            stride: int = 1,
            dilation: int = 1,
            num_bases: Optional[int] = 8,
            head_dim: int = 16,
            ca_kernel_size: int = 1,
            ca_reduction: Optional[int] = 4,
            ca_norm: str = 'softmax',
            rel_pos: bool = False,
            identity_bases: bool = False,
            impl: str = 'auto',
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_mixer_args(in_chs, out_chs, kernel_size, stride, dilation)
        check_odd(ca_kernel_size, 'ca_kernel_size')
        kk = kernel_size * kernel_size
        if identity_bases:
            if num_bases not in (None, kk):
                raise ValueError(
                    f'num_bases must be None or kernel_size**2 = {kk} with identity_bases, got {num_bases}')
            num_bases = kk
        elif num_bases is None:
            raise ValueError('num_bases must be an int in [1, kernel_size**2] unless identity_bases=True')
        check_num_bases(num_bases, kernel_size)
        check_choice(ca_norm, 'ca_norm', CA_NORMS)
        if ca_reduction is not None and ca_reduction < 1:
            raise ValueError(f'ca_reduction must be None or a positive int, got {ca_reduction}')
        check_choice(impl, 'impl', CADA_IMPLS)

        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.num_heads = num_heads(in_chs, head_dim)
        self.num_bases = num_bases
        self.ca_norm = ca_norm
        self.identity_bases = identity_bases
        self.impl = impl

        self.ca = CaGenerator(
            in_chs, self.num_heads * num_bases, ca_kernel_size, stride, ca_reduction,
            act_layer=get_act_layer(act_layer), norm_layer=get_norm_layer(norm_layer), **dd)
        if identity_bases:
            self.register_parameter('bases', None)
        else:
            self.bases = nn.Parameter(torch.empty(self.num_heads, num_bases, kernel_size, kernel_size, **dd))
        if rel_pos:
            self.rel_pos = nn.Parameter(torch.empty(self.num_heads, kernel_size, kernel_size, **dd))
        else:
            self.register_parameter('rel_pos', None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.ca.reset_parameters()
        if self.bases is not None:
            init_kernels(self.bases)
        if self.rel_pos is not None:
            nn.init.zeros_(self.rel_pos)

    def ca_params(self, x: torch.Tensor) -> torch.Tensor:
        """alpha, the CA parameters (N, G, B, Ho, Wo)."""
        logits = self.ca(x)
        logits = logits.reshape(logits.shape[0], self.num_heads, self.num_bases, logits.shape[-2], logits.shape[-1])
        return normalize_ca(logits, self.ca_norm)

    def _identity_attn(self, alpha: torch.Tensor) -> torch.Tensor:
        """With identity bases, alpha (plus rel_pos) is the attention map."""
        if self.rel_pos is None:
            return alpha
        kk = self.kernel_size * self.kernel_size
        return alpha + self.rel_pos.reshape(1, self.num_heads, kk, 1, 1).to(alpha.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.ca_params(x)
        bases = self.bases
        if bases is None:
            return pixel_filter(x, self._identity_attn(alpha), self.kernel_size, self.stride, self.dilation, self.impl)
        return cada_filter(x, alpha, bases, self.rel_pos, self.stride, self.dilation, self.impl)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map each output pixel applies, (N, G, k*k, Ho, Wo): sum_b alpha_b W_b (+ R)."""
        alpha = self.ca_params(x)
        if self.bases is None:
            return self._identity_attn(alpha)
        return synthesize_attn(alpha, self.bases, self.rel_pos)

    def base_weights(self, x: torch.Tensor) -> torch.Tensor:
        """alpha, the weight of each base at each output pixel, (N, G, B, Ho, Wo); the bases are `bases`."""
        if self.bases is None:
            raise ValueError('base_weights: a Cada2d with identity bases has no learned bases (alpha is the kernel)')
        return self.ca_params(x)

    def extra_repr(self) -> str:
        return (
            f'kernel_size={self.kernel_size}, stride={self.stride}, num_heads={self.num_heads}, '
            f'num_bases={self.num_bases}, ca_norm={self.ca_norm}, identity_bases={self.identity_bases}, '
            f'rel_pos={self.rel_pos is not None}, impl={self.impl}')


register_mixer('cada', Cada2d, window_op=True, init='reset',
               description='context-aware decomposed attention: relaxed invariance (B bases per head), context-aware')
