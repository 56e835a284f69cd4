""" ResNets whose bottleneck 3x3 conv is a spatial mixer of the CADA ablation family.

The inductive-bias ablations of "Studying inductive biases in image classification task"
(Arizumi, arXiv 2210.17141). Everything but the mixer (`conv2` of each bottleneck) is timm's
ResNet with resnet50's module names, so timm resnet weights load into all non-mixer parameters.

The variants registered here are the table of `variants.py`; the mixers, the registry of
`timm_cada.layers` (any mixer registered with `timm_cada.register_mixer` works in every model).
"""
import copy
import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import resolve_pretrained_cfg
from timm.models.resnet import Bottleneck, ResNet, make_blocks

from timm_cada.layers import create_mixer, get_mixer, mixer_kwargs, spec_of
from timm_cada.pretrained import load_manifest, pretrained_cfgs, readable_weights, verified_pretrained_overlay
from .variants import VARIANTS, Variant

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
        spec = get_mixer(name)
        if spec.grouped:
            args['groups'] = cardinality
        elif cardinality != 1:
            raise ValueError(f'cardinality must be 1 with mixer {name!r}, got {cardinality}')
        feat_size = None
        if spec.feat_size:
            in_size, out_size = (feat_sizes or {})[planes]
            feat_size = out_size if conv2.stride[0] == stride else in_size
        self.conv2 = create_mixer(
            name, conv2.in_channels, conv2.out_channels, k, stride=conv2.stride[0], dilation=conv2.dilation[0],
            feat_size=feat_size, device=device, dtype=dtype, **args)


# timm's stem (7x7 stride-2 conv, then a stride-2 max-pool) and the small-input stem (3x3 stride-1 conv, no pool)
_STEM_REDUCTION = 4
_SMALL_STEM_REDUCTION = 1


def _stage_reduction(timm_reduction: int, small_stem: bool) -> int:
    """A stage's reduction of the input with the chosen stem, from timm's (which counts its stride-4 stem)."""
    return timm_reduction * (_SMALL_STEM_REDUCTION if small_stem else _STEM_REDUCTION) // _STEM_REDUCTION


def _stage_sizes(img_size: Size, channels: Tuple[int, ...], output_stride: int,
                 small_stem: bool = False) -> List[Tuple[Size, Size]]:
    """(input, output) feature-map size of each stage at `img_size`, from the reductions of timm's own
    stages (make_blocks' feature_info, built on the meta device); 'same' padding rounds each size up."""
    _, info = make_blocks((Bottleneck,) * len(channels), channels, (1,) * len(channels), 64,
                          output_stride=output_stride, device='meta')
    reductions = [_stage_reduction(f['reduction'], small_stem) for f in info]
    size = lambda r: tuple(math.ceil(s / r) for s in img_size)
    return [(size(r_in), size(r)) for r_in, r in zip(reductions[:1] + reductions[:-1], reductions)]


def uses_mixer_trait(model_args: Dict[str, Any], trait: str) -> bool:
    """Whether the mixer or the downsampling mixer of these CadaResNet args has `trait` (see MixerSpec)."""
    names = [model_args.get('mixer', 'cada'), model_args.get('ds_mixer')]
    return any(getattr(get_mixer(n), trait) for n in names if n is not None)


class CadaResNet(ResNet):
    """timm ResNet built from CadaBottleneck blocks.

    Args:
        layers: blocks per stage, e.g. (3, 4, 6, 3) for depth 50.
        mixer: spatial mixer of the bottlenecks, a registered name (timm_cada.list_mixers()).
        kernel_size: the mixer's window k.
        mixer_args: extra mixer constructor arguments (JSON-friendly), e.g. dict(num_bases=4).
        ds_mixer: mixer of the stride-2 blocks, None for `mixer` itself.
        ds_kernel_size: window of `ds_mixer`.
        img_size: reference input size; sizes the 'position' logits and fixes the 'local' kernels.
        small_stem: a 3x3 stride-1 stem conv (64 channels) and no max-pool instead of timm's 7x7 stride-2 conv
            and max-pool, for small inputs: the stages see 1/1, 1/2, 1/4, 1/8 of the input (28 px gives
            28/14/7/4, the geometry 224 px gives timm's stem, 56/28/14/7). Needs stem_type '' and
            output_stride 32.
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
            small_stem: bool = False,
            block_args: Optional[Dict[str, Any]] = None,
            **kwargs: Any,
    ):
        if small_stem and (kwargs.get('stem_type', '') != '' or kwargs.get('output_stride', 32) != 32):
            raise ValueError(f'small_stem=True needs stem_type=\'\' and output_stride=32, got stem_type='
                             f'{kwargs.get("stem_type", "")!r}, output_stride={kwargs.get("output_stride", 32)}')
        mixer_args = mixer_kwargs(mixer, mixer_args)
        if ds_mixer is not None:
            try:
                get_mixer(ds_mixer)
            except ValueError as e:
                raise ValueError(f'ds_mixer must be None or a registered mixer: {e}') from None
        img_size = tuple(to_2tuple(img_size))
        channels = tuple(kwargs.get('channels', (64, 128, 256, 512)))
        feat_sizes = None
        if uses_mixer_trait(dict(mixer=mixer, ds_mixer=ds_mixer), 'feat_size'):
            if len(set(channels)) != len(channels):
                raise ValueError(f'channels must be distinct per stage for mixer {mixer!r}, got {channels}')
            feat_sizes = dict(zip(channels, _stage_sizes(
                img_size, channels, kwargs.get('output_stride', 32), small_stem)))
        block_args = dict(
            block_args or {}, mixer=mixer, kernel_size=kernel_size, mixer_args=mixer_args,
            ds_mixer=ds_mixer, ds_kernel_size=ds_kernel_size, feat_sizes=feat_sizes)
        super().__init__(CadaBottleneck, layers, block_args=block_args, **kwargs)
        if small_stem:
            self._use_small_stem(kwargs.get('in_chans', 3), device=kwargs.get('device'), dtype=kwargs.get('dtype'))

    def _use_small_stem(self, in_chans: int, device=None, dtype=None) -> None:
        """The stem conv replaced by a 3x3 stride-1 conv (timm's init: He-normal, fan-out) and the max-pool
        dropped; feature_info's reductions follow."""
        out_chs = self.conv1.out_channels
        self.conv1 = nn.Conv2d(in_chans, out_chs, kernel_size=3, stride=1, padding=1, bias=False,
                               device=device, dtype=dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()
        for info in self.feature_info:
            stage = info['module'] != 'act1'
            info['reduction'] = _stage_reduction(info['reduction'], True) if stage else _SMALL_STEM_REDUCTION

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's ResNet init, then each mixer's as its `init` trait says: timm's conv init would overwrite a
        mixer's own (the CA generator's, or any conv inside a user's mixer), and its fan-out rule (C * k*k for a
        depthwise conv) would start the DW arm at another scale than the rest."""
        specs = [(m, spec_of(m)) for m in self.modules()]
        mixers = [(m, spec.init) for m, spec in specs if spec is not None]
        kept = [copy.deepcopy(m.state_dict()) if init == 'keep' else None for m, init in mixers]
        super().init_weights(zero_init_last=zero_init_last)
        for (m, init), state in zip(mixers, kept):
            if state is not None:
                m.load_state_dict(state)
            elif init == 'reset':
                m.reset_parameters()


# Feature levels of features_only models: the stem, then the four stages.
_NUM_FEATURES = 5


def _check_out_indices(out_indices: Any) -> None:
    """features_only's out_indices: a count of last levels (1..5), or level indices in -5..4."""
    accepted = (f'accepted: an int n (the last n of the {_NUM_FEATURES} feature levels, 1..{_NUM_FEATURES}) or '
                f'level indices from {-_NUM_FEATURES} to {_NUM_FEATURES - 1} (0 = stem, 1..4 = stages)')
    if isinstance(out_indices, bool):
        raise ValueError(f'out_indices={out_indices!r} is invalid; {accepted}')
    if isinstance(out_indices, int):
        if not 1 <= out_indices <= _NUM_FEATURES:
            raise ValueError(f'out_indices={out_indices!r} is out of range; {accepted}')
        return
    if not isinstance(out_indices, (list, tuple)) or not out_indices or not all(
            isinstance(i, int) and not isinstance(i, bool) and -_NUM_FEATURES <= i < _NUM_FEATURES for i in out_indices):
        raise ValueError(f'out_indices={out_indices!r} is out of range; {accepted}')


def _given_cfg_size(cfg) -> Optional[Tuple[int, int]]:
    """(H, W) of a pretrained cfg given to create_model as a dict or PretrainedCfg, if it names an input size."""
    size = cfg.get('input_size') if isinstance(cfg, dict) else getattr(cfg, 'input_size', None)
    return tuple(size[-2:]) if size else None


def _create_cada_resnet(variant: str, pretrained: bool = False, **kwargs) -> CadaResNet:
    if kwargs.get('features_only') and 'out_indices' in kwargs:
        _check_out_indices(kwargs['out_indices'])
    if kwargs.get('img_size') is not None or kwargs.get('small_stem'):
        # img_size is the resolution the model is built for (it sizes 'position' and fixes 'local' kernels):
        # its pretrained cfg, which data configs are resolved from, says so, and the final map's size. Without
        # img_size, a given pretrained cfg's size (config.json's, for hf-hub: and local-dir:) stands.
        h, w = to_2tuple(kwargs.get('img_size') or _given_cfg_size(kwargs.get('pretrained_cfg')) or
                         _cfg()['input_size'][1:])
        stride = _stage_reduction(32, bool(kwargs.get('small_stem')))
        kwargs['pretrained_cfg_overlay'] = dict(
            kwargs.get('pretrained_cfg_overlay') or {}, input_size=(kwargs.get('in_chans', 3), h, w),
            pool_size=(math.ceil(h / stride), math.ceil(w / stride)))
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


# Published weights: one manifest entry offers 'model.tag' to pretrained=True and timm.list_pretrained().
_MANIFEST = load_manifest()

default_cfgs = generate_default_cfgs(pretrained_cfgs({
    name: _cfg(fixed_input_size=True) if uses_mixer_trait(v.args, 'fixed_input_size') else _cfg()
    for name, v in VARIANTS.items()
}, _MANIFEST))


def _entrypoint(variant: Variant) -> Callable[..., CadaResNet]:
    """A timm model entrypoint for `variant`; user `mixer_args` update the variant's instead of replacing them."""

    def entrypoint(pretrained: bool = False, **kwargs) -> CadaResNet:
        return _create_cada_resnet(variant.name, pretrained, **variant.model_args(**kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = variant.name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'ResNet-{variant.depth}, bottleneck mixer: {variant.description}.'
    return entrypoint


for _variant in VARIANTS.values():
    globals()[_variant.name] = register_model(_entrypoint(_variant))
