""" Argument checks and the kernel init shared by the spatial mixers: each check names the argument and what it accepts. """
import math
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn


def check_mixer_args(in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int) -> None:
    """Checks common to every mixer; mixers other than the dense conv also need in_chs == out_chs."""
    if in_chs < 1:
        raise ValueError(f'in_chs must be a positive int, got {in_chs}')
    if out_chs != in_chs:
        raise ValueError(f'out_chs must equal in_chs ({in_chs}) for a channel-wise mixer, got {out_chs}')
    check_odd(kernel_size, 'kernel_size')
    if stride < 1:
        raise ValueError(f'stride must be a positive int, got {stride}')
    if dilation < 1:
        raise ValueError(f'dilation must be a positive int, got {dilation}')


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {tuple(choices)}, got {value!r}')


def check_odd(value: int, name: str) -> None:
    if not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f'{name} must be an odd positive int (1, 3, 5, ...), got {value!r}')


def num_heads(chs: int, head_dim: int) -> int:
    """Heads of `head_dim` channels that share one attention map."""
    if head_dim < 1 or chs % head_dim != 0:
        raise ValueError(f'head_dim must be a positive divisor of the {chs} channels, got {head_dim}')
    return chs // head_dim


def check_num_bases(num_bases: int, kernel_size: int) -> None:
    if not 1 <= num_bases <= kernel_size * kernel_size:
        raise ValueError(
            f'num_bases must be in [1, kernel_size**2 = {kernel_size * kernel_size}], got {num_bases}')


def to_feat_size(feat_size: Optional[Union[int, Tuple[int, int]]], layer: str) -> Tuple[int, int]:
    """The output feature-map size a position-dependent mixer is built for."""
    if feat_size is None:
        raise ValueError(f'{layer} needs feat_size, its output feature-map size (H, W) at the reference resolution')
    if isinstance(feat_size, int):
        feat_size = (feat_size, feat_size)
    feat_size = tuple(int(s) for s in feat_size)
    if len(feat_size) != 2 or min(feat_size) < 1:
        raise ValueError(f'feat_size must be a positive int or an (H, W) pair, got {feat_size}')
    return feat_size


def init_kernels(kernels: torch.Tensor) -> None:
    """He-normal over the k*k taps of each kernel (a depthwise kernel's fan-in).

    The one init of every mixer's spatial kernels (DW conv weights, CADA / position bases, local
    kernels), so the arms of an ablation start at the same scale.
    """
    k = kernels.shape[-1]
    nn.init.normal_(kernels, std=math.sqrt(2.0 / (k * k)))
