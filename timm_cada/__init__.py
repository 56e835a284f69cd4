""" timm-cada: the CADA layer family and the inductive-bias ablation ResNets of arXiv 2210.17141.

Importing this package registers every model in timm's registry:

    import timm, timm_cada
    model = timm.create_model('resnet50_cada_k7', num_classes=10)
"""
from .layers import Cada2d, DenseConv2d, DwConv2d, Local2d, Position2d, create_mixer
from .models import CadaBottleneck, CadaResNet, NoPretrainedWeightsError

__version__ = '0.1.0'
