""" A mixer as a user would write it, in their own module: registered on import (`--device-modules
user_mixers` imports it in train/train.py and train/ablate.py). """
import torch
import torch.nn as nn

import timm_cada


class BoxMixer(nn.Module):
    """A depthwise k x k conv that starts as a box filter, times a learned per-channel gain."""

    def __init__(self, in_chs, out_chs, kernel_size, stride=1, dilation=1, device=None, dtype=None, gain=1.0):
        super().__init__()
        if out_chs != in_chs:
            raise ValueError(f'out_chs must equal in_chs ({in_chs}), got {out_chs}')
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(in_chs, in_chs, kernel_size, stride, dilation * (kernel_size // 2), dilation,
                              groups=in_chs, bias=False, device=device, dtype=dtype)
        self.gain = nn.Parameter(torch.full((in_chs, 1, 1), float(gain), device=device, dtype=dtype))
        nn.init.constant_(self.conv.weight, 1.0 / kernel_size ** 2)

    def forward(self, x):
        return self.conv(x) * self.gain

    def kernels(self, x):
        """What timm_cada.analysis reads: each position's kernel, (1, C, k*k, Ho, Wo), the same everywhere."""
        weight = self.conv.weight.flatten(1) * self.gain.flatten()[:, None]
        ho, wo = self.conv(x).shape[-2:]
        return weight[None, :, :, None, None].expand(1, *weight.shape, ho, wo)


class TimmInitBoxMixer(BoxMixer):
    """The same, registered to take timm's ResNet conv init instead of keeping its own."""


timm_cada.register_mixer('box', BoxMixer, description='a box filter with a gain (a user mixer)')
timm_cada.register_mixer('box_timm_init', TimmInitBoxMixer, init='timm')
