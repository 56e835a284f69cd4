""" Checkpoints: one module that reads and writes them, for train/, weights/ and the warm start.

Reading: safetensors, or torch.load(weights_only=True) only, so a pickle never runs code. Writing:
atomic (a temporary file, synced, then renamed over the target), so a killed or failed write leaves
the previous file intact.

Checkpoint format (read with `read_checkpoint`):
a dict with 'arch' (model name), 'model_kwargs' (the JSON-friendly kwargs given to timm.create_model),
'epoch' (0-based index of the last completed epoch, as timm's train.py counts), 'state_dict'
(unwrapped from DDP / torch.compile), 'state_dict_ema' (with EMA), 'optimizer', 'scheduler',
'scaler' (with fp16 AMP), 'top1' (eval top-1 of the model weights that epoch), 'ema_top1' (of the EMA
weights, with EMA), 'eval_metric' (the name of the value that selects model_best: --eval-metric, prefixed
'ema_' with EMA) and 'metric' (its value), 'args' (a plain dict) and 'version'.
"""
import contextlib
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, Union

import safetensors.torch
import torch
from timm.models import clean_state_dict

__all__ = ['CHECKPOINT_VERSION', 'plain', 'atomic_file', 'save_checkpoint', 'copy_checkpoint', 'read_checkpoint',
           'checkpoint_state_dict']

# timm's resume_checkpoint reads 'epoch' as the last completed epoch from version 2 on; 3 records the selection
# metric by name ('eval_metric', 'metric') apart from 'top1' / 'ema_top1'.
CHECKPOINT_VERSION = 3


def plain(value: Any) -> Any:
    """`value` as plain Python containers and scalars, so torch.load(weights_only=True) accepts it."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file renamed over it once complete and synced: a killed or failed
    write leaves the previous file intact."""
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """torch.save `state` to `path` atomically."""
    with atomic_file(path) as f:
        torch.save(state, f)


def copy_checkpoint(src: str, dst: str) -> None:
    """Copy a checkpoint file atomically (e.g. last -> best)."""
    with open(src, 'rb') as fi, atomic_file(dst) as fo:
        shutil.copyfileobj(fi, fo, 1 << 22)


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


