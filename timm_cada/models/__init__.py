from .resnet_cada import CadaBottleneck, CadaResNet, NoPretrainedWeightsError
