from .cada import CA_NORMS, Cada2d, CaGenerator, normalize_ca
from .conv import DenseConv2d, DwConv2d
from .create_mixer import FEAT_SIZE_MIXERS, MIXERS, create_mixer, mixer_kwargs
from .local import Local2d
from .position import Position2d
