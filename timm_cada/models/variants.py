""" The model family of the ablation, one table: name -> model args, description, ablation axis.

Every registered model (`resnet_cada.py`), the zoo table (`timm_cada.zoo`), the model card
(weights/model_card.py), the ablation rows (train/ablate.py) and the published weights
(weights/publish.py) read this table, so a variant is added here and nowhere else.

Names are resnet{26,50}_{mixer}_k{k}[_{suffix}], the suffix changing one knob of the CADA default
(k7, 8 bases, head_dim 16, CA from the pixel alone, softmax over bases).
"""
import dataclasses
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

__all__ = ['AblationAxis', 'ABLATION_AXES', 'Variant', 'VARIANTS', 'get_variant', 'ablation_models']


class AblationAxis(NamedTuple):
    """One row of the paper's ablation: what it varies, and the models of other rows it compares with."""
    title: str
    knob: str
    finding: str  # the abstract's finding (docs/design.md)
    references: Tuple[str, ...]  # model name templates, {d} the depth; 'resnet{d}' is timm's dense 3x3 resnet


ABLATION_AXES: Dict[str, AblationAxis] = {
    'locality': AblationAxis(
        'locality', 'window size k', 'DW accuracy saturates as k grows; CADA follows', ('resnet{d}',)),
    'context_awareness': AblationAxis(
        'context awareness', 'alpha from the input, per position only, or none', 'the crucial property',
        ('resnet{d}_dw_k7', 'resnet{d}_cada_k7')),
    'ca_context': AblationAxis(
        'context for CA parameters', 'ca_kernel_size (1 = the pixel alone)', 'large local information is not needed',
        ('resnet{d}_cada_k7',)),
    'spatial_invariance': AblationAxis(
        'spatial invariance', 'num_bases B (1 = strict ... k*k = none)',
        'none makes training hard; relaxed beats strict',
        ('resnet{d}_dw_k7', 'resnet{d}_cada_k7', 'resnet{d}_position_k7')),
    'rel_pos': AblationAxis(
        'relative position encoding', 'rel_pos', 'extra strong invariance helps', ('resnet{d}_cada_k7',)),
    'downsampling': AblationAxis(
        'downsampling filter', 'the filter of the stride-2 blocks',
        'locality matters more there; relaxed invariance can replace it', ('resnet{d}_cada_k7',)),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One registered model.

    Args:
        name: the timm model name.
        args: CadaResNet arguments (layers, mixer, kernel_size, mixer_args, ds_mixer, ds_kernel_size).
        description: one line, e.g. 'CADA 7x7, 4 base kernels per head'.
        axis: the key of the ABLATION_AXES row that introduces it.
        setting: its value of that row's knob, e.g. 'B=4 bases'.
        alias_of: for another name of the same model, that model (kept out of the ablation rows).
    """
    name: str
    args: Mapping[str, Any]
    description: str
    axis: str
    setting: str
    alias_of: Optional[str] = None

    @property
    def depth(self) -> int:
        return int(self.name.split('_')[0][len('resnet'):])

    @property
    def axis_label(self) -> str:
        """e.g. 'spatial invariance (B=4 bases)'."""
        return f'{ABLATION_AXES[self.axis].title} ({self.setting})'

    def model_args(self, **kwargs: Any) -> Dict[str, Any]:
        """The variant's args updated by `kwargs`; user `mixer_args` update the variant's, not replace them."""
        args = dict(self.args, **kwargs)
        if 'mixer_args' in kwargs and 'mixer_args' in self.args:
            args['mixer_args'] = dict(self.args['mixer_args'], **(kwargs['mixer_args'] or {}))
        return args


# suffix -> (args, description, axis, setting) of the one-knob changes of the CADA k7 default
_SUFFIXES = {
    'ca3': (dict(mixer_args=dict(ca_kernel_size=3)), 'CA parameters from a 3x3 context', 'ca_context', '3x3'),
    'ca7': (dict(mixer_args=dict(ca_kernel_size=7)), 'CA parameters from a 7x7 context', 'ca_context', '7x7'),
    'b2': (dict(mixer_args=dict(num_bases=2)), '2 base kernels per head', 'spatial_invariance', 'B=2 bases'),
    'b4': (dict(mixer_args=dict(num_bases=4)), '4 base kernels per head', 'spatial_invariance', 'B=4 bases'),
    'b16': (dict(mixer_args=dict(num_bases=16)), '16 base kernels per head', 'spatial_invariance', 'B=16 bases'),
    'free': (dict(mixer_args=dict(identity_bases=True, num_bases=None)),
             'identity bases: per-pixel attention from context, no spatial invariance', 'spatial_invariance',
             'none: identity bases'),
    'rpe': (dict(mixer_args=dict(rel_pos=True)), 'with relative position encoding', 'rel_pos', 'on'),
    'dsconv3': (dict(ds_mixer='conv', ds_kernel_size=3), 'stride-2 blocks use a dense 3x3 conv', 'downsampling',
                'dense 3x3'),
    'dsdw3': (dict(ds_mixer='dw', ds_kernel_size=3), 'stride-2 blocks use a depthwise 3x3 conv', 'downsampling',
              'DW 3x3'),
}
_DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3)}
_KERNELS = (3, 5, 7, 9, 11, 13)


def _variants() -> Dict[str, Variant]:
    table: List[Variant] = []
    for depth, layers in _DEPTHS.items():
        base = f'resnet{depth}'
        for k in _KERNELS:
            table.append(Variant(f'{base}_dw_k{k}', dict(layers=layers, mixer='dw', kernel_size=k),
                                 f'depthwise {k}x{k} conv (strict invariance)', 'locality', f'k={k}, DW'))
        for k in _KERNELS:
            table.append(Variant(f'{base}_cada_k{k}', dict(layers=layers, mixer='cada', kernel_size=k),
                                 f'CADA {k}x{k}, 8 bases, head_dim 16', 'locality', f'k={k}'))
        for suffix, (args, desc, axis, setting) in _SUFFIXES.items():
            table.append(Variant(f'{base}_cada_k7_{suffix}', dict(layers=layers, mixer='cada', kernel_size=7, **args),
                                 f'CADA 7x7, {desc}', axis, setting))
        table.append(Variant(f'{base}_position_k7', dict(layers=layers, mixer='position', kernel_size=7),
                             '7x7, 8 bases mixed per position (low-rank locally connected, no context)',
                             'context_awareness', 'off: position-only alpha'))
        table.append(Variant(f'{base}_local_k7', dict(layers=layers, mixer='local', kernel_size=7),
                             'locally connected 7x7 (fixed 224 input)', 'spatial_invariance',
                             'none: locally connected, no context'))
    k7 = next(v for v in table if v.name == 'resnet50_cada_k7')
    table.append(Variant('resnet50_cada', k7.args, 'the default CADA ResNet-50 (k7)', 'locality',
                         'k=7, the default', alias_of=k7.name))
    return {v.name: v for v in table}


VARIANTS: Mapping[str, Variant] = _variants()


def get_variant(name: str) -> Variant:
    """The variant `name`; a ValueError naming how to list them otherwise."""
    if name not in VARIANTS:
        raise ValueError(f'{name!r} is not a timm_cada model; accepted: a name of timm_cada.VARIANTS '
                         f'(`python -m timm_cada.zoo` lists them, e.g. resnet50_cada_k7)')
    return VARIANTS[name]


def ablation_models(axis: str, depth: int = 50) -> List[str]:
    """The models of one ablation row at `depth`: the row's references, then the variants it introduces."""
    if axis not in ABLATION_AXES:
        raise ValueError(f'--ablation must be one of {sorted(ABLATION_AXES)}, got {axis!r}')
    if depth not in _DEPTHS:
        raise ValueError(f'--depth must be one of {sorted(_DEPTHS)}, got {depth}')
    own = [v.name for v in VARIANTS.values() if v.axis == axis and v.depth == depth and v.alias_of is None]
    return [t.format(d=depth) for t in ABLATION_AXES[axis].references] + own
