""" ResNets whose bottleneck 3x3 conv is a spatial mixer of the CADA ablation family.

The inductive-bias ablations of "Studying inductive biases in image classification task"
(Arizumi, arXiv 2210.17141). Everything but the mixer (`conv2` of each bottleneck) is timm's
ResNet with resnet50's module names, so timm resnet weights load into all non-mixer parameters.

Model names: resnet{26,50}_{mixer}_k{k}[_{ablation}], the ablation suffix changing one knob of the
family default: _ca{c} (CA context c x c), _b{B} (bases), _free (identity bases), _rpe (relative
position encoding), _dsconv3 / _dsdw3 (filter of the stride-2 blocks).
"""
import math
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.resnet import Bottleneck, ResNet

from timm_cada.layers import (
    FEAT_SIZE_MIXERS, MIXERS, Cada2d, DwConv2d, Local2d, Position2d, create_mixer, mixer_kwargs)
from timm_cada.pretrained import load_manifest, pretrained_cfgs, readable_weights, verified_pretrained_overlay

__all__ = ['CadaBottleneck', 'CadaResNet', 'NoPretrainedWeightsError']

Size = Tuple[int, int]


class NoPretrainedWeightsError(RuntimeError):
    """pretrained=True for a model that has no published weights."""


class CadaBottleneck(Bottleneck):
    """timm's Bottleneck with `conv2` replaced by the chosen spatial mixer.

    Stride-2 blocks use `ds_mixer` / `ds_kernel_size` when `ds_mixer` is set (the downsampling
    ablation); `feat_sizes` maps a stage's `planes` to its (input, output) feature-map sizes at the
    reference resolution, for the mixers whose parameters depend on it.
    """

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_layer: Optional[Type[nn.Module]] = None,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            mixer: str = 'cada',
            kernel_size: int = 7,
            mixer_args: Optional[Dict[str, Any]] = None,
            ds_mixer: Optional[str] = None,
            ds_kernel_size: int = 3,
            feat_sizes: Optional[Dict[int, Tuple[Size, Size]]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__(
            inplanes, planes, stride=stride, downsample=downsample, cardinality=cardinality,
            base_width=base_width, reduce_first=reduce_first, dilation=dilation, first_dilation=first_dilation,
            act_layer=act_layer, norm_layer=norm_layer, attn_layer=attn_layer, aa_layer=aa_layer,
            drop_block=drop_block, drop_path=drop_path, device=device, dtype=dtype)
        conv2 = self.conv2
        if stride > 1 and ds_mixer is not None:
            name, k, args = ds_mixer, ds_kernel_size, {}
        else:
            name, k, args = mixer, kernel_size, dict(mixer_args or {})
        if name == 'conv':
            args['groups'] = cardinality
        elif cardinality != 1:
            raise ValueError(f'cardinality must be 1 with mixer {name!r}, got {cardinality}')
        feat_size = None
        if name in FEAT_SIZE_MIXERS:
            in_size, out_size = (feat_sizes or {})[planes]
            feat_size = out_size if conv2.stride[0] == stride else in_size
        self.conv2 = create_mixer(
            name, conv2.in_channels, conv2.out_channels, k, stride=conv2.stride[0], dilation=conv2.dilation[0],
            feat_size=feat_size, device=device, dtype=dtype, **args)


def _stage_sizes(
        img_size: Size,
        num_stages: int,
        output_stride: int,
) -> list:
    """(input, output) feature-map size of each stage, following timm's make_blocks strides."""
    size = tuple(math.ceil(s / 4) for s in img_size)  # stem conv and max-pool, both 'same' stride 2
    net_stride = 4
    sizes = []
    for stage_idx in range(num_stages):
        stride = 1 if stage_idx == 0 else 2
        if net_stride >= output_stride:
            stride = 1
        else:
            net_stride *= stride
        out = tuple(math.ceil(s / stride) for s in size)
        sizes.append((size, out))
        size = out
    return sizes


class CadaResNet(ResNet):
    """timm ResNet built from CadaBottleneck blocks.

    Args:
        layers: blocks per stage, e.g. (3, 4, 6, 3) for depth 50.
        mixer: spatial mixer of the bottlenecks, one of timm_cada.layers.MIXERS.
        kernel_size: the mixer's window k.
        mixer_args: extra mixer constructor arguments (JSON-friendly), e.g. dict(num_bases=4).
        ds_mixer: mixer of the stride-2 blocks, None for `mixer` itself.
        ds_kernel_size: window of `ds_mixer`.
        img_size: reference input size; sizes the 'position' logits and fixes the 'local' kernels.
        **kwargs: any other timm ResNet argument (num_classes, drop_path_rate, stem_type, ...).
    """

    def __init__(
            self,
            layers: Tuple[int, ...],
            mixer: str = 'cada',
            kernel_size: int = 7,
            mixer_args: Optional[Dict[str, Any]] = None,
            ds_mixer: Optional[str] = None,
            ds_kernel_size: int = 3,
            img_size: Union[int, Size] = 224,
            block_args: Optional[Dict[str, Any]] = None,
            **kwargs: Any,
    ):
        mixer_args = mixer_kwargs(mixer, mixer_args)
        if ds_mixer is not None and ds_mixer not in MIXERS:
            raise ValueError(f'ds_mixer must be None or one of {MIXERS}, got {ds_mixer!r}')
        img_size = tuple(to_2tuple(img_size))
        channels = tuple(kwargs.get('channels', (64, 128, 256, 512)))
        feat_sizes = None
        if mixer in FEAT_SIZE_MIXERS or ds_mixer in FEAT_SIZE_MIXERS:
            if len(set(channels)) != len(channels):
                raise ValueError(f'channels must be distinct per stage for mixer {mixer!r}, got {channels}')
            sizes = _stage_sizes(img_size, len(channels), kwargs.get('output_stride', 32))
            feat_sizes = dict(zip(channels, sizes))
        block_args = dict(
            block_args or {}, mixer=mixer, kernel_size=kernel_size, mixer_args=mixer_args,
            ds_mixer=ds_mixer, ds_kernel_size=ds_kernel_size, feat_sizes=feat_sizes)
        super().__init__(CadaBottleneck, layers, block_args=block_args, **kwargs)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's ResNet init, then each mixer's own: timm's conv init would overwrite the CA generator's, and
        its fan-out rule (C * k*k for a depthwise conv) would start the DW arm at another scale than the rest."""
        super().init_weights(zero_init_last=zero_init_last)
        for m in self.modules():
            if isinstance(m, (Cada2d, Position2d, Local2d, DwConv2d)):
                m.reset_parameters()


def _create_cada_resnet(variant: str, pretrained: bool = False, **kwargs) -> CadaResNet:
    if kwargs.get('img_size') is not None:
        # img_size is the resolution the model is built for (it sizes 'position' and fixes 'local' kernels):
        # its pretrained cfg, which data configs are resolved from, says so
        h, w = to_2tuple(kwargs['img_size'])
        kwargs['pretrained_cfg_overlay'] = dict(
            kwargs.get('pretrained_cfg_overlay') or {}, input_size=(kwargs.get('in_chans', 3), h, w))
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not (cfg.has_weights or cfg.state_dict):
            raise NoPretrainedWeightsError(
                f'No pretrained weights are published for {variant!r} (timm_cada/weights_manifest.json has no '
                f'entry for it); pretrained=True would give random weights. Train them with '
                f'`python train/train.py --model {variant} ...`, publish them with `python weights/publish.py '
                f'--checkpoint CKPT --model {variant} --repo-id ORG/NAME --out DIR` and add the manifest entry it '
                f'prints (MODEL_CARD.md, "How to train and publish"). Meanwhile create it with pretrained=False, '
                f'or load a checkpoint with checkpoint_path=... or pretrained_cfg_overlay=dict(file=...).')
        kwargs['pretrained_cfg_overlay'] = verified_pretrained_overlay(
            cfg, _MANIFEST, kwargs.get('pretrained_cfg_overlay'), cache_dir=kwargs.get('cache_dir'))
        with readable_weights(variant, cfg):
            return build_model_with_cfg(CadaResNet, variant, pretrained, **kwargs)
    return build_model_with_cfg(CadaResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.95, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2210.17141',
        'paper_name': 'Studying inductive biases in image classification task',
        **kwargs,
    }


def _variants() -> Dict[str, Tuple[Dict[str, Any], str]]:
    """Model name -> (model args, one-line description) for the whole ablation family."""
    ablations = {
        'ca3': (dict(mixer_args=dict(ca_kernel_size=3)), 'CA parameters from a 3x3 context'),
        'ca7': (dict(mixer_args=dict(ca_kernel_size=7)), 'CA parameters from a 7x7 context'),
        'b2': (dict(mixer_args=dict(num_bases=2)), '2 base kernels per head'),
        'b4': (dict(mixer_args=dict(num_bases=4)), '4 base kernels per head'),
        'b16': (dict(mixer_args=dict(num_bases=16)), '16 base kernels per head'),
        'free': (dict(mixer_args=dict(identity_bases=True, num_bases=None)),
                 'identity bases: per-pixel attention from context, no spatial invariance'),
        'rpe': (dict(mixer_args=dict(rel_pos=True)), 'with relative position encoding'),
        'dsconv3': (dict(ds_mixer='conv', ds_kernel_size=3), 'stride-2 blocks use a dense 3x3 conv'),
        'dsdw3': (dict(ds_mixer='dw', ds_kernel_size=3), 'stride-2 blocks use a depthwise 3x3 conv'),
    }
    variants = {}
    for depth, layers in ((26, (2, 2, 2, 2)), (50, (3, 4, 6, 3))):
        for k in (3, 5, 7, 9, 11, 13):
            variants[f'resnet{depth}_dw_k{k}'] = (
                dict(layers=layers, mixer='dw', kernel_size=k), f'depthwise {k}x{k} conv (strict invariance)')
            variants[f'resnet{depth}_cada_k{k}'] = (
                dict(layers=layers, mixer='cada', kernel_size=k), f'CADA {k}x{k}, 8 bases, head_dim 16')
        for suffix, (args, desc) in ablations.items():
            variants[f'resnet{depth}_cada_k7_{suffix}'] = (
                dict(layers=layers, mixer='cada', kernel_size=7, **args), f'CADA 7x7, {desc}')
        variants[f'resnet{depth}_position_k7'] = (
            dict(layers=layers, mixer='position', kernel_size=7),
            '7x7, 8 bases mixed per position (low-rank locally connected, no context)')
        variants[f'resnet{depth}_local_k7'] = (
            dict(layers=layers, mixer='local', kernel_size=7), 'locally connected 7x7 (fixed 224 input)')
    variants['resnet50_cada'] = (variants['resnet50_cada_k7'][0], 'the default CADA ResNet-50 (k7)')
    return variants


_VARIANTS = _variants()

# Published weights: one manifest entry offers 'model.tag' to pretrained=True and timm.list_pretrained().
_MANIFEST = load_manifest()

default_cfgs = generate_default_cfgs(pretrained_cfgs({
    name: _cfg(fixed_input_size=True) if args['mixer'] == 'local' else _cfg()
    for name, (args, _) in _VARIANTS.items()
}, _MANIFEST))


def _entrypoint(name: str, model_args: Dict[str, Any], desc: str) -> Callable[..., CadaResNet]:
    """A timm model entrypoint for `name`; user `mixer_args` update the variant's instead of replacing them."""

    def entrypoint(pretrained: bool = False, **kwargs) -> CadaResNet:
        args = dict(model_args, **kwargs)
        if 'mixer_args' in kwargs and 'mixer_args' in model_args:
            args['mixer_args'] = dict(model_args['mixer_args'], **(kwargs['mixer_args'] or {}))
        return _create_cada_resnet(name, pretrained, **args)

    depth = name.split('_')[0][len('resnet'):]
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'ResNet-{depth}, bottleneck mixer: {desc}.'
    return entrypoint


for _name, (_args, _desc) in _VARIANTS.items():
    globals()[_name] = register_model(_entrypoint(_name, _args, _desc))
