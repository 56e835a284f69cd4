""" A model by name, with the weights of a checkpoint, for the library's commands (analysis, export).

Errors are plain ValueErrors (a `ModelLoadError` for the model or its checkpoint): each command names its own
options when it reports them.
"""
import difflib
import importlib
import os
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

import timm

from timm_cada.checkpoint import checkpoint_state_dict, read_checkpoint

__all__ = ['ModelLoadError', 'check_model_name', 'import_modules', 'load_model', 'per_channel']


class ModelLoadError(ValueError):
    """A model name or checkpoint that cannot be loaded; `part` is 'model' or 'checkpoint', the one at fault.

    `str()` is the plain message; `named()` the same with a command's option names in it.
    """

    def __init__(self, part: str, template: str, name: str):
        self.part, self.template, self.name = part, template, name
        super().__init__(template.format(model=repr(name)))

    def named(self, model_option: str, checkpoint_option: str) -> str:
        """The message as a command line says it: the option at fault first, the model by its option."""
        option = model_option if self.part == 'model' else checkpoint_option
        return f'{option}: ' + self.template.format(model=f'{model_option} {self.name!r}')


def _literal(text: str) -> str:
    """`text` as a part of a ModelLoadError template (its braces kept)."""
    return text.replace('{', '{{').replace('}', '}}')


def check_model_name(name: str) -> None:
    """A ModelLoadError naming close registered models when `name` is not a timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f' Close registered names: {", ".join(close)}.' if close else ''
    raise ModelLoadError('model', _literal(f'unknown model {name!r}.{hint} List them with '
                                           f'timm.list_models("resnet*_cada*") after import timm_cada.'), name)


def import_modules(modules: Iterable[str]) -> None:
    """Import each module (e.g. one that registers a user's mixer); a ValueError names one that fails."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f'cannot import {module!r} ({e})') from None


def load_model(name: str, checkpoint: Optional[str] = None, pretrained: bool = False,
               ) -> Tuple[torch.nn.Module, Dict[str, object]]:
    """timm model `name` (eval mode) with the weights of `checkpoint` (a train.py checkpoint, whose model
    options are used, or a state dict), and the arguments its data config comes from (the training run's, or
    none: the model's pretrained cfg). A ModelLoadError names the model or the checkpoint."""
    check_model_name(name)
    kwargs, state, data_args = {}, None, {}
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise ModelLoadError('checkpoint', _literal(f'{checkpoint} does not exist'), name)
        try:
            ckpt = read_checkpoint(checkpoint)
        except ValueError as e:
            raise ModelLoadError('checkpoint', _literal(str(e)), name) from None
        arch = ckpt.get('arch')
        if arch is not None and arch != name:
            raise ModelLoadError('checkpoint', _literal(f'{checkpoint} is a checkpoint of {arch!r}, not of ') + '{model}',
                                 name)
        kwargs = dict(ckpt.get('model_kwargs') or {})
        data_args = dict(ckpt.get('args') or {})
        state = checkpoint_state_dict(ckpt)
    kwargs['pretrained'] = pretrained and state is None  # over any recorded value: the checkpoint is loaded
    model = timm.create_model(name, **kwargs)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ModelLoadError('checkpoint', _literal(f'{checkpoint} does not fit ') + '{model}'
                                 + _literal(f' ({first})'), name) from None
    return model.eval(), data_args


def per_channel(values: Sequence[float], chans: int) -> Tuple[float, ...]:
    """A data config's mean or std with one value per input channel: one value repeated, or for a 1-channel
    model the mean of RGB's."""
    values = tuple(values)
    if len(values) == 1:
        return values * chans
    return (sum(values) / len(values),) if chans == 1 else values
