""" Position-only mixer: CADA's decomposition with CA parameters learned per position instead of
computed from the input, i.e. a low-rank locally connected layer (relaxed invariance, no context).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_cada.ops import CADA_IMPLS, cada_filter, filter_output_size, synthesize_attn
from .cada import CA_NORMS, normalize_ca
from .helpers import check_choice, check_mixer_args, check_num_bases, init_kernels, num_heads, to_feat_size
from .registry import register_mixer


class Position2d(nn.Module):
    """CADA with alpha_{g,b}(i, j) = norm(row_{g,b}(i) + col_{g,b}(j)) ('position').

    The row and column logits are stored at `feat_size` (the output size at the reference
    resolution) and linearly resized to the actual output size, so any input resolution works.

    Args:
        in_chs, out_chs, kernel_size, stride, dilation, num_bases, head_dim, ca_norm, rel_pos, impl:
            as for Cada2d.
        feat_size: output feature-map size (H, W) at the reference resolution.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 7,
            stride: int = 1,
            dilation: int = 1,
            num_bases: int = 8,
            head_dim: int = 16,
            ca_norm: str = 'softmax',
            rel_pos: bool = False,
            feat_size: Optional[Union[int, Tuple[int, int]]] = None,
            impl: str = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_mixer_args(in_chs, out_chs, kernel_size, stride, dilation)
        check_num_bases(num_bases, kernel_size)
        check_choice(ca_norm, 'ca_norm', CA_NORMS)
        check_choice(impl, 'impl', CADA_IMPLS)
        self.feat_size = to_feat_size(feat_size, 'Position2d')
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.num_heads = num_heads(in_chs, head_dim)
        self.num_bases = num_bases
        self.ca_norm = ca_norm
        self.impl = impl
        self.bases = nn.Parameter(torch.empty(self.num_heads, num_bases, kernel_size, kernel_size, **dd))
        self.row_logits = nn.Parameter(torch.empty(self.num_heads, num_bases, self.feat_size[0], **dd))
        self.col_logits = nn.Parameter(torch.empty(self.num_heads, num_bases, self.feat_size[1], **dd))
        if rel_pos:
            self.rel_pos = nn.Parameter(torch.empty(self.num_heads, kernel_size, kernel_size, **dd))
        else:
            self.register_parameter('rel_pos', None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_kernels(self.bases)
        nn.init.zeros_(self.row_logits)
        nn.init.zeros_(self.col_logits)
        if self.rel_pos is not None:
            nn.init.zeros_(self.rel_pos)

    def ca_params(self, out_h: int, out_w: int) -> torch.Tensor:
        """alpha for an out_h x out_w output, (1, G, B, out_h, out_w)."""
        # always resampled, even to the stored size (where linear interpolation is exactly the
        # identity): a traced or exported graph then holds for every input size, not only the traced one
        row = F.interpolate(self.row_logits, size=out_h, mode='linear', align_corners=False)
        col = F.interpolate(self.col_logits, size=out_w, mode='linear', align_corners=False)
        logits = row.unsqueeze(-1) + col.unsqueeze(-2)
        return normalize_ca(logits.unsqueeze(0), self.ca_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cada_filter(x, self.base_weights(x), self.bases, self.rel_pos, self.stride, self.dilation, self.impl)

    def base_weights(self, x: torch.Tensor) -> torch.Tensor:
        """alpha at the output size of `x`, (1, G, B, Ho, Wo): the same for every input."""
        out_h = filter_output_size(x.shape[-2], self.kernel_size, self.stride, self.dilation)
        out_w = filter_output_size(x.shape[-1], self.kernel_size, self.stride, self.dilation)
        return self.ca_params(out_h, out_w).to(x.dtype)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each output pixel applies, (1, G, k*k, Ho, Wo): sum_b alpha_b(i, j) W_b (+ R)."""
        return synthesize_attn(self.base_weights(x), self.bases, self.rel_pos)

    def extra_repr(self) -> str:
        return (
            f'kernel_size={self.kernel_size}, stride={self.stride}, num_heads={self.num_heads}, '
            f'num_bases={self.num_bases}, feat_size={self.feat_size}, rel_pos={self.rel_pos is not None}')


register_mixer('position', Position2d, feat_size=True, window_op=True, init='reset',
               description='CADA with alpha learned per position: relaxed invariance, no context (any input size)')
