""" A model by name, with the weights of a checkpoint, for the library's commands (analysis, export), and a
trained model saved in timm's Hugging Face layout with the preprocessing it was trained with.

Errors are plain ValueErrors (a `ModelLoadError` for the model or its checkpoint): each command names its own
options when it reports them.
"""
import difflib
import importlib
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch

import timm
from timm.data import resolve_data_config

from timm_cada.checkpoint import checkpoint_state_dict, read_checkpoint
from timm_cada.compat import require_timm

__all__ = ['ModelLoadError', 'check_model_name', 'import_modules', 'load_model', 'per_channel', 'save_local_dir']

# The oldest timm whose save_for_hf takes the run's preprocessing (data_config) for config.json; the rest of
# timm-cada runs on older releases (pyproject.toml's lower bound).
SAVE_FOR_HF_TIMM = '1.0.31'
# Model names that load a saved model with its weights (timm's own prefixes).
SAVED_PREFIXES = ('local-dir:', 'hf-hub:')
# The eval preprocessing of a training run that a saved model's pretrained cfg carries.
DATA_CFG = ('input_size', 'crop_pct', 'interpolation', 'mean', 'std')


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
    none: the model's pretrained cfg). `name` may also be a saved model, `local-dir:FOLDER` (save_local_dir) or
    `hf-hub:ID`, which brings its weights and preprocessing. A ModelLoadError names the model or the
    checkpoint."""
    if name.startswith(SAVED_PREFIXES):
        if checkpoint:
            raise ModelLoadError('checkpoint', _literal(f'{checkpoint}: ') + '{model} brings its own weights; give none',
                                 name)
        try:
            return timm.create_model(name, pretrained=True).eval(), {}
        except (OSError, ValueError, RuntimeError) as e:  # a missing folder or file, a config that does not build
            raise ModelLoadError('model', _literal(f'cannot load {name}: {e}'), name) from None
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


def save_local_dir(model: torch.nn.Module, data_args: Mapping[str, Any], model_args: Mapping[str, Any], out: str,
                   feature: str = 'saving a model for local-dir:') -> Dict[str, Any]:
    """Write `model` (eval mode) to the folder `out` in timm's Hugging Face layout (model.safetensors,
    config.json with `model_args` and the training run's eval preprocessing, resolved from its arguments
    `data_args` as the trainer did), so that `timm.create_model('local-dir:OUT', pretrained=True)` rebuilds it
    and timm's resolve_data_config gives that preprocessing; checks the rebuild (same outputs) and returns the
    data config. `feature` names the caller in the error an older timm gets."""
    from timm.models import save_for_hf
    require_timm(SAVE_FOR_HF_TIMM, f"{feature} (save_for_hf's data_config argument)")
    data_config = {k: v for k, v in resolve_data_config(dict(data_args), model=model).items() if k in DATA_CFG}
    registered = model.pretrained_cfg
    model.pretrained_cfg = dict(registered, **data_config)
    if tuple(data_config['input_size'][1:]) != tuple(registered['input_size'][1:]):
        model.pretrained_cfg['pool_size'] = None  # the registered one is that of another size (as timm's export says)
    os.makedirs(out, exist_ok=True)
    save_for_hf(model, out, model_args=dict(model_args), safe_serialization=True, data_config=data_config)
    rebuilt = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn((1, *data_config['input_size']), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(x), rebuilt(x)):
            raise RuntimeError(f'{out} does not rebuild the model (outputs differ)')
    return data_config
