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
'ema_' with EMA) and 'metric' (its value), 'args' (a plain dict) and 'version'. From version 4 on, training
checkpoints also hold 'history' (summary.csv's rows, one per epoch 0..epoch), 'best' ({'epoch', 'metric'} of
model_best) and 'rng_state' (`rng_state()` of each process, by rank), so that a resumed run is the run it
continues, bit for bit, and the run folder's other files can be rebuilt from its last checkpoint.
"""
import contextlib
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Union

import numpy as np
import safetensors
import safetensors.torch
import torch
from timm.models import clean_state_dict

__all__ = ['CHECKPOINT_VERSION', 'TMP_SUFFIX', 'plain', 'atomic_files', 'atomic_file', 'link_or_copy',
           'save_checkpoint', 'copy_checkpoint', 'read_checkpoint', 'checkpoint_state_dict', 'rng_state', 'set_rng_state']

# timm's resume_checkpoint reads 'epoch' as the last completed epoch from version 2 on; 3 records the selection
# metric by name ('eval_metric', 'metric') apart from 'top1' / 'ema_top1'; 4 adds 'history', 'best', 'rng_state'.
CHECKPOINT_VERSION = 4
# What `atomic_file` appends to the name of the file it writes until that file is complete.
TMP_SUFFIX = '.tmp'


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
def atomic_files(*paths: str) -> Iterator[List[str]]:
    """Write several files as one: yields their temporary names (`path` + TMP_SUFFIX) for the caller to write,
    then syncs them and renames each over its path, in order. A failed write leaves every previous file intact
    and no temporary file; a kill leaves the previous files, or (in the renames' microseconds) the first new
    ones, with the temporary files of the others still there to tell."""
    tmps = [f'{path}{TMP_SUFFIX}' for path in paths]
    try:
        yield tmps
        for tmp in tmps:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file renamed over it once complete and synced: a killed or failed
    write leaves the previous file intact."""
    with atomic_files(path) as (tmp,), open(tmp, 'wb') as f:
        yield f


def link_or_copy(src: str, dst: str) -> None:
    """`dst` as a hard link to `src` (no second copy on disk), or a copy where the filesystem has no links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


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
        try:
            return safetensors.torch.load_file(path, device='cpu')
        except safetensors.SafetensorError as e:
            raise ValueError(f'cannot read {path}: the safetensors file is truncated or corrupted ({e})') from e
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f'Refusing to read {path}: it is not a plain tensor checkpoint, and it is only read with '
            f'torch.load(weights_only=True), which never runs code from a pickle ({e})') from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f'cannot read {path}: the file is truncated or not a torch checkpoint ({e})') from e
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


def rng_state() -> Dict[str, Any]:
    """The state of every random generator a training process draws from (Python's, NumPy's global, torch's CPU
    and CUDA generators), in a form torch.load(weights_only=True) reads back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        'python': plain(random.getstate()),
        'numpy': [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators from `rng_state()`'s result."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if state['cuda']:
        torch.cuda.set_rng_state_all(state['cuda'])
