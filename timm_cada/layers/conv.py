""" Spatially invariant, context-free mixers: the dense conv of the ResNet baseline and the
depthwise conv. Both are plain nn.Conv2d (parameter `weight`), so timm resnet weights load into them.
"""
import torch
import torch.nn as nn

from timm_cada.ops import filter_output_size
from .helpers import check_mixer_args, check_odd, init_kernels
from .registry import register_mixer


class DenseConv2d(nn.Conv2d):
    """Dense k x k conv ('conv'), the mixer of timm's ResNet bottleneck at k = 3."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            stride: int = 1,
            dilation: int = 1,
            groups: int = 1,
            device=None,
            dtype=None,
    ):
        check_odd(kernel_size, 'kernel_size')
        if in_chs % groups or out_chs % groups:
            raise ValueError(f'groups must divide in_chs ({in_chs}) and out_chs ({out_chs}), got {groups}')
        super().__init__(
            in_chs, out_chs, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
            dilation=dilation, groups=groups, bias=False, device=device, dtype=dtype)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each output position applies, (1, groups, Cout/groups * Cin/groups * k*k, Ho, Wo):
        the weights of a group as one vector, the same at every position."""
        return _everywhere(self.weight.reshape(self.groups, -1), x, self)


class DwConv2d(nn.Conv2d):
    """Depthwise k x k conv ('dw'): strict spatial invariance, no context, one kernel per channel."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 7,
            stride: int = 1,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        check_mixer_args(in_chs, out_chs, kernel_size, stride, dilation)
        super().__init__(
            in_chs, in_chs, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
            dilation=dilation, groups=in_chs, bias=False, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        init_kernels(self.weight)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each output position applies, (1, C, k*k, Ho, Wo): every channel's weight, everywhere."""
        return _everywhere(self.weight.reshape(self.out_channels, -1), x, self)


def _everywhere(kernels: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(G, D) kernels as the (1, G, D, Ho, Wo) kernels of every output position of `conv` on `x` (a view)."""
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    out = [filter_output_size(n, k, s, d) for n in x.shape[-2:]]
    return kernels[None, :, :, None, None].expand(1, *kernels.shape, *out)


register_mixer('conv', DenseConv2d, init='timm', grouped=True,
               description='dense k x k conv (the ResNet baseline at k = 3): strict invariance, no context')
register_mixer('dw', DwConv2d, init='reset', description='depthwise k x k conv: strict invariance, no context')
