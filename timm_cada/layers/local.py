""" Locally connected mixer: a free k x k kernel per output position and head (no spatial
invariance, no context). Its parameters exist for one feature-map size only.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from timm_cada.ops import filter_output_size, pixel_filter
from .helpers import check_mixer_args, init_kernels, num_heads, to_feat_size
from .registry import register_mixer


class Local2d(nn.Module):
    """Locally connected k x k mixer ('local'), kernels shared by the channels of a head.

    Every position starts from the same He-normal kernel (a depthwise conv), and training lets
    them drift apart.

    Args:
        in_chs, out_chs, kernel_size, stride, dilation, head_dim: as for Cada2d.
        feat_size: the output feature-map size (H, W); other input sizes raise ValueError.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 7,
            stride: int = 1,
            dilation: int = 1,
            head_dim: int = 16,
            feat_size: Optional[Union[int, Tuple[int, int]]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        check_mixer_args(in_chs, out_chs, kernel_size, stride, dilation)
        self.feat_size = to_feat_size(feat_size, 'Local2d')
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.num_heads = num_heads(in_chs, head_dim)
        self.weight = nn.Parameter(torch.empty(
            self.num_heads, kernel_size * kernel_size, self.feat_size[0], self.feat_size[1],
            device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        kernel = torch.empty(
            self.num_heads, self.kernel_size, self.kernel_size, device=self.weight.device, dtype=self.weight.dtype)
        init_kernels(kernel)
        with torch.no_grad():
            self.weight.copy_(kernel.reshape(self.num_heads, -1, 1, 1).expand_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        return pixel_filter(x, self.weight.unsqueeze(0).to(x.dtype), self.kernel_size, self.stride, self.dilation)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each output position applies, (1, G, k*k, Ho, Wo): the weight itself."""
        self._check_size(x)
        return self.weight.unsqueeze(0)

    def _check_size(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return  # a trace would record the comparison as a constant (and warn); the export fixes the size
        out_h = filter_output_size(x.shape[-2], self.kernel_size, self.stride, self.dilation)
        out_w = filter_output_size(x.shape[-1], self.kernel_size, self.stride, self.dilation)
        if out_h != self.feat_size[0] or out_w != self.feat_size[1]:
            raise ValueError(
                'Local2d is built for a {}x{} output (input {}x{} at stride {}), got input {}x{}; '
                'create the model with img_size matching the input'.format(
                    self.feat_size[0], self.feat_size[1], self.feat_size[0] * self.stride,
                    self.feat_size[1] * self.stride, self.stride, x.shape[-2], x.shape[-1]))

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, stride={self.stride}, num_heads={self.num_heads}, feat_size={self.feat_size}'


register_mixer('local', Local2d, feat_size=True, fixed_input_size=True, window_op=True, init='reset',
               description='locally connected: a free kernel per position, no invariance, no context (fixed input size)')
