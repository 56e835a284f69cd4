""" timm-cada: the CADA layer family and the inductive-bias ablation ResNets of arXiv 2210.17141.

Importing this package registers every model in timm's registry:

    import timm, timm_cada
    model = timm.create_model('resnet50_cada_k7', num_classes=10)

`register_mixer` adds a mixer of your own, which every model then takes as `mixer=NAME`; `set_backend(model,
impl)` picks the operator backend (timm_cada.ops.BACKENDS) of every mixer of a model.
"""
from .layers import (
    Cada2d, DenseConv2d, DwConv2d, Local2d, MixerSpec, Position2d, create_mixer, get_mixer, list_mixers,
    register_mixer, set_backend)
from .models import (
    ABLATION_AXES, VARIANTS, AblationAxis, CadaBottleneck, CadaResNet, NoPretrainedWeightsError, Variant,
    ablation_models, get_variant)

__version__ = '0.1.0'
