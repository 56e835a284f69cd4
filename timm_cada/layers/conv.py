""" Spatially invariant, context-free mixers: the dense conv of the ResNet baseline and the
depthwise conv. Both are plain nn.Conv2d (parameter `weight`), so timm resnet weights load into them.
"""
import torch.nn as nn

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


register_mixer('conv', DenseConv2d, init='timm', grouped=True,
               description='dense k x k conv (the ResNet baseline at k = 3): strict invariance, no context')
register_mixer('dw', DwConv2d, init='reset', description='depthwise k x k conv: strict invariance, no context')
