from .registry import (
    MixerSpec, create_mixer, get_mixer, list_mixers, mixer_kwargs, register_mixer, set_backend, spec_of)
# each file registers its mixers (in this order: conv, dw, cada, position, local)
from .conv import DenseConv2d, DwConv2d
from .cada import CA_NORMS, Cada2d, CaGenerator, normalize_ca
from .position import Position2d
from .local import Local2d

# the mixers this package ships; list_mixers() adds those registered since
MIXERS = list_mixers()
