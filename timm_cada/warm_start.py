""" Warm start: initialise a model from another checkpoint wherever parameter names and shapes match.

Our ResNets keep timm resnet's module names everywhere but in the bottleneck mixers (`conv2`), so a timm
resnet checkpoint initialises the stem, the 1x1 convs, every norm, the shortcuts and the head, and the
mixers stay at their own init.
"""
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Union

import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.models import clean_state_dict

__all__ = ['read_checkpoint', 'checkpoint_state_dict', 'warm_start']

_logger = logging.getLogger(__name__)


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """A checkpoint file's contents: safetensors, or a torch.save'd object read with weights_only=True only.

    A pickle that would need anything beyond tensors and plain containers (code to run) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        return safetensors.torch.load_file(path, device='cpu')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f'Refusing to read {path}: it is not a plain tensor checkpoint, and it is only read with '
            f'torch.load(weights_only=True), which never runs code from a pickle ({e})') from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path}: expected a state dict or a training checkpoint dict, got {type(checkpoint).__name__}')
    return checkpoint


def checkpoint_state_dict(checkpoint: Dict[str, Any], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The model state dict of a training checkpoint ('state_dict_ema' when present and `use_ema`), or the
    checkpoint itself when it is a bare state dict; DDP / torch.compile prefixes removed."""
    if use_ema and checkpoint.get('state_dict_ema') is not None:
        state_dict = checkpoint['state_dict_ema']
    elif 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    else:
        state_dict = checkpoint
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f'not a state dict: entries {not_tensors[:5]} are not tensors')
    return clean_state_dict(state_dict)


def _source_state_dict(source: Union[str, Path]) -> Dict[str, torch.Tensor]:
    if os.path.exists(source):
        return checkpoint_state_dict(read_checkpoint(source))
    name = str(source)
    if any(c in name for c in ('/', '\\')) or name.endswith(('.safetensors', '.pth', '.pt', '.bin', '.tar')):
        raise FileNotFoundError(f'warm_start source checkpoint not found: {name}')
    if not timm.is_model(timm.models.split_model_name_tag(name)[0]):
        raise ValueError(
            f'warm_start source={name!r} is neither an existing checkpoint file nor a timm model name; '
            f'accepted: a .safetensors / .pth file path, or a timm model with pretrained weights, e.g. '
            f'"resnet50.a1_in1k"')
    return timm.create_model(name, pretrained=True).state_dict()


def warm_start(model: nn.Module, source: Union[str, Path]) -> Dict[str, Any]:
    """Load every parameter and buffer of `source` whose name and shape match `model`; leave the rest at init.

    Args:
        model: the model to initialise (in place).
        source: a checkpoint file (.safetensors, or a .pth state dict or training checkpoint, read with
            weights_only=True; EMA weights when it has them), or a timm model name with pretrained weights
            (e.g. 'resnet50.a1_in1k'; downloaded through timm like any pretrained model).

    Returns:
        A report: 'source', 'loaded' (keys copied), 'missing' (model keys left at init), 'mismatched'
        (key -> (source shape, model shape)), 'unexpected' (source keys the model does not have).
    """
    src = _source_state_dict(source)
    target = model.state_dict()
    loaded = sorted(k for k, v in src.items() if k in target and v.shape == target[k].shape)
    report = dict(
        source=str(source),
        loaded=loaded,
        missing=sorted(set(target) - set(loaded)),
        mismatched={k: (tuple(v.shape), tuple(target[k].shape)) for k, v in sorted(src.items())
                    if k in target and v.shape != target[k].shape},
        unexpected=sorted(set(src) - set(target)),
    )
    model.load_state_dict({k: src[k] for k in loaded}, strict=False)
    _logger.info(
        f'warm start from {source}: loaded {len(loaded)}/{len(target)} tensors of the model; left at init '
        f'{len(report["missing"])} ({len(report["mismatched"])} of them shape mismatches); '
        f'{len(report["unexpected"])} source tensors unused')
    for k, (s, t) in report['mismatched'].items():
        _logger.info(f'  shape mismatch, left at init: {k} source {s} model {t}')
    return report
