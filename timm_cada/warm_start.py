""" Warm start: initialise a model from another checkpoint wherever parameter names and shapes match.

Our ResNets keep timm resnet's module names everywhere but in the bottleneck mixers (`conv2`), so a timm
resnet checkpoint initialises the stem, the 1x1 convs, every norm, the shortcuts and the head, and the
mixers stay at their own init.
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, Union

import timm
import torch
import torch.nn as nn

from timm_cada.checkpoint import checkpoint_state_dict, read_checkpoint

__all__ = ['warm_start']

_logger = logging.getLogger(__name__)


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
