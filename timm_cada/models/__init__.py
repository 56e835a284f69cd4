from .resnet_cada import CadaBottleneck, CadaResNet, NoPretrainedWeightsError, uses_mixer_trait
from .variants import ABLATION_AXES, VARIANTS, AblationAxis, Variant, ablation_models, get_variant
