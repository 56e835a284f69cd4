""" The mixer registry: every spatial mixer a CadaResNet bottleneck can use, with its traits.

A mixer is an nn.Module that mixes each channel over a spatial window and keeps the channels:

    cls(in_chs, out_chs, kernel_size, stride=1, dilation=1, device=None, dtype=None, **options)

with out_chs == in_chs (the dense conv alone may also take `groups`), and forward(x) mapping
(N, C, H, W) to (N, C, ceil(H / stride), ceil(W / stride)). `register_mixer(name, cls, **traits)` makes it
available by name to `create_mixer`, to every model (`timm.create_model(..., mixer=name)`) and to the
tools; its traits, declared once here, tell the model, its init and the MAC counter how to treat it.

Two optional methods open a mixer to `timm_cada.analysis`: `kernels(x)`, the kernel each output position
applies to input `x`, as a (N or 1, G, D, Ho, Wo) tensor (G groups of channels sharing one kernel of D
weights, k*k for a window op; batch 1 when it does not depend on the input), and, for mixers built from learned
base kernels `bases` (G, B, k, k), `base_weights(x)`, the (N or 1, G, B, Ho, Wo) weight of each base.
"""
import dataclasses
import inspect
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from timm.models import register_notrace_module

__all__ = ['MixerSpec', 'register_mixer', 'get_mixer', 'list_mixers', 'spec_of', 'create_mixer', 'mixer_kwargs',
           'set_backend']

# the constructor arguments every mixer takes; `mixer_args` may set none of them
CONTRACT_ARGS = ('in_chs', 'out_chs', 'kernel_size', 'stride', 'dilation', 'feat_size', 'device', 'dtype')
INITS = ('keep', 'reset', 'timm')


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """A registered mixer and its traits.

    Args:
        name: the name models and tools use (`mixer=name`).
        cls: the module class (the constructor of the mixer contract, see the module docstring).
        feat_size: the constructor takes `feat_size`, its output feature-map size (H, W) at the model's
            reference resolution (`img_size`), because its parameters depend on it.
        fixed_input_size: its parameters exist for that one size only; the models' pretrained cfgs say
            `fixed_input_size`. Implies `feat_size`.
        window_op: it applies per-pixel kernels with timm_cada.ops; the MAC counter then counts the
            operator as defined (`timm_cada.profile.window_macs`, which reads `kernel_size`,
            `num_heads` and, when it has learned bases, `bases` and `num_bases`) plus its submodules.
            Otherwise it is counted like any module, op by op.
        init: what the model's init does to it after timm's ResNet init: 'keep' restores the parameters
            its constructor set (the default), 'reset' calls its `reset_parameters()`, 'timm' leaves
            timm's conv init (the resnet baseline's dense conv).
        grouped: it takes `groups`, the bottleneck's cardinality (ResNeXt); other mixers need cardinality 1.
        description: one line for tables and docs.
    """
    name: str
    cls: type
    feat_size: bool = False
    fixed_input_size: bool = False
    window_op: bool = False
    init: str = 'keep'
    grouped: bool = False
    description: str = ''


_REGISTRY: Dict[str, MixerSpec] = {}
_TRAITS = tuple(f.name for f in dataclasses.fields(MixerSpec) if f.name not in ('name', 'cls'))


def register_mixer(name: str, cls: type, **traits: Any) -> MixerSpec:
    """Register mixer class `cls` as `name`, with its traits (see MixerSpec); returns its spec.

    A taken name, or a class registered already, is a ValueError: register your own mixers under names
    of your own, one name per class (its traits belong to the class). The class is also made a leaf of
    timm's FX feature extraction, so any forward works there.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f'register_mixer: name must be an identifier string, got {name!r}')
    if name in _REGISTRY:
        raise ValueError(f'register_mixer: mixer {name!r} is already registered (as {_REGISTRY[name].cls.__name__}); '
                         f'taken names: {", ".join(list_mixers())}')
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f'register_mixer: cls must be an nn.Module subclass, got {cls!r}')
    taken = next((s.name for s in _REGISTRY.values() if s.cls is cls), None)
    if taken is not None:
        raise ValueError(f'register_mixer: {cls.__name__} is already registered as {taken!r}')
    unknown = sorted(set(traits) - set(_TRAITS))
    if unknown:
        raise ValueError(f'register_mixer: unknown traits {unknown}; accepted: {", ".join(_TRAITS)}')
    if traits.get('init', 'keep') not in INITS:
        raise ValueError(f'register_mixer: init must be one of {", ".join(INITS)}, got {traits["init"]!r}')
    spec = MixerSpec(name, cls, **traits)
    if spec.fixed_input_size and not spec.feat_size:
        raise ValueError('register_mixer: fixed_input_size=True needs feat_size=True (the size its parameters are built for)')
    _REGISTRY[name] = spec
    register_notrace_module(cls)
    return spec


def get_mixer(name: str) -> MixerSpec:
    """The spec of registered mixer `name`; a ValueError naming the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f'mixer must be one of {", ".join(list_mixers())} (or a name given to '
                         f'timm_cada.register_mixer), got {name!r}')
    return _REGISTRY[name]


def spec_of(module: nn.Module) -> Optional[MixerSpec]:
    """The spec registered for the class of `module` (exactly its class), None for any other module."""
    return next((s for s in _REGISTRY.values() if type(module) is s.cls), None)


def set_backend(model: nn.Module, impl: str) -> int:
    """Make every window-op mixer of `model` (itself included) that has an ops backend (`impl`) run `impl`, one
    of `timm_cada.ops.CADA_IMPLS`; returns how many it set."""
    from timm_cada.ops import CADA_IMPLS
    if impl not in CADA_IMPLS:
        raise ValueError(f'impl must be one of {", ".join(CADA_IMPLS)}, got {impl!r}')
    mixers = [m for m in model.modules() if getattr(spec_of(m), 'window_op', False) and hasattr(m, 'impl')]
    for m in mixers:
        m.impl = impl
    return len(mixers)


def list_mixers() -> Tuple[str, ...]:
    """Every registered mixer name, in registration order."""
    return tuple(_REGISTRY)


def mixer_kwargs(name: str, kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Validate `mixer_args` keys against the constructor of mixer `name` (any key, if it takes **options)."""
    kwargs = dict(kwargs or {})
    params = inspect.signature(get_mixer(name).cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = None
    else:
        accepted = set(params) - {'self', *CONTRACT_ARGS}
    unknown = sorted(set(kwargs) & set(CONTRACT_ARGS) | (set(kwargs) - accepted if accepted is not None else set()))
    if unknown:
        hint = f'accepted: {sorted(accepted)}' if accepted is not None else f'these are set by the model: {CONTRACT_ARGS}'
        raise ValueError(f'mixer_args {unknown} not accepted by mixer {name!r}; {hint}')
    return kwargs


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
    """Build registered mixer `name` with the contract's (in_chs, out_chs, kernel_size, stride, dilation).

    `feat_size` (the output size at the reference resolution) goes only to the mixers that need it.
    """
    spec = get_mixer(name)
    if spec.feat_size:
        kwargs['feat_size'] = feat_size
    return spec.cls(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, **kwargs)
