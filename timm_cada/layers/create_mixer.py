""" Mixer factory: builds any spatial mixer of the ablation family by name. """
import inspect
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from .cada import Cada2d
from .conv import DenseConv2d, DwConv2d
from .local import Local2d
from .position import Position2d

_MIXERS = {
    'conv': DenseConv2d,
    'dw': DwConv2d,
    'cada': Cada2d,
    'position': Position2d,
    'local': Local2d,
}
MIXERS = tuple(_MIXERS)
# mixers whose parameters depend on the feature-map size
FEAT_SIZE_MIXERS = ('position', 'local')


def create_mixer(
        name: str,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        feat_size: Optional[Tuple[int, int]] = None,
        **kwargs: Any,
) -> nn.Module:
    """Build mixer `name` (one of MIXERS) with the shared (in_chs, out_chs, kernel_size, stride) signature.

    `feat_size` (the output size at the reference resolution) goes only to the mixers that need it.
    """
    if name not in _MIXERS:
        raise ValueError(f'mixer must be one of {MIXERS}, got {name!r}')
    if name in FEAT_SIZE_MIXERS:
        kwargs['feat_size'] = feat_size
    return _MIXERS[name](in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, **kwargs)


def mixer_kwargs(name: str, kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Validate `mixer_args` keys against the constructor of mixer `name`."""
    kwargs = dict(kwargs or {})
    if name not in _MIXERS:
        raise ValueError(f'mixer must be one of {MIXERS}, got {name!r}')
    accepted = set(inspect.signature(_MIXERS[name].__init__).parameters) - {
        'self', 'in_chs', 'out_chs', 'kernel_size', 'stride', 'dilation', 'feat_size', 'device', 'dtype'}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f'mixer_args {unknown} not accepted by mixer {name!r}; accepted: {sorted(accepted)}')
    return kwargs
