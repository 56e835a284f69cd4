""" Training helpers shared by train/train.py and train/ablate.py: strict image loading, recipes, input checks.

Checkpoints are read and written by `timm_cada.checkpoint`.
"""
import argparse
import ast
import difflib
import importlib
import json
import logging
import multiprocessing
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from PIL import Image

import timm
from timm.data import ImageDataset

from timm_cada.checkpoint import atomic_file, checkpoint_state_dict, read_checkpoint

__all__ = ['BadImageError', 'StrictImageDataset', 'image_mode', 'convert_image', 'ParseKwargs', 'parse_kwarg',
           'check_data_dir', 'check_model_name', 'import_modules', 'load_model', 'per_channel', 'load_recipe', 'reuse_image_folder', 'mark_image_folder_complete']

_logger = logging.getLogger(__name__)

# Folder names timm's create_dataset searches for each split (timm.data.dataset_factory).
_TRAIN_SYNONYMS = ('train', 'training')
_EVAL_SYNONYMS = ('validation', 'val', 'valid', 'eval', 'evaluation')


class BadImageError(RuntimeError):
    """An image file of the dataset could not be decoded."""


# PIL modes with more than 8 bits per sample that PIL's convert() would clip to 0..255 instead of scaling.
_WIDE_INT_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')


def image_mode(in_chans: int, mode: Optional[str] = None) -> str:
    """The PIL mode images are opened in for a model with `in_chans` input channels: `mode` when given (its
    band count must be `in_chans`), else 'L' for 1 channel and 'RGB' for 3; other channel counts need `mode`."""
    if mode is None:
        if in_chans not in (1, 3):
            raise ValueError(f'--input-img-mode: a model with {in_chans} input channels needs the PIL mode to open '
                             f'its images in, e.g. RGBA or CMYK for 4 channels, LA for 2.')
        return 'L' if in_chans == 1 else 'RGB'
    try:
        bands = Image.getmodebands(mode)
    except (KeyError, ValueError):
        raise ValueError(f'--input-img-mode: {mode!r} is not a PIL image mode; accepted: L, LA, RGB, RGBA, CMYK, '
                         f'YCbCr, HSV, LAB (its band count must equal the model\'s input channels).') from None
    if bands != in_chans:
        raise ValueError(f'--input-img-mode: {mode} has {bands} band(s), but the model has {in_chans} input '
                         f'channel(s) (--in-chans / --input-size).')
    return mode


def convert_image(img: Image.Image, mode: str) -> Image.Image:
    """`img` decoded and converted to `mode`. 16- and 32-bit integer images are scaled to 8 bits (65535 -> 255),
    not clipped; palette images go through RGBA so that their transparency is decoded as PIL advises."""
    img.load()
    if img.mode in _WIDE_INT_MODES:
        pixels = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) * (255 / 65535)
        img = Image.fromarray(np.rint(pixels).astype(np.uint8), 'L')
    elif img.mode in ('P', 'PA'):
        img = img.convert('RGBA')
    return img if img.mode == mode else img.convert(mode)


class StrictImageDataset(ImageDataset):
    """timm's ImageDataset, except that every image opens in one mode (16-bit images scaled) and an unreadable
    image stops the run with its file name.

    timm skips such samples with a warning; a trainer that compares models should see every sample,
    so the file is named and the user decides (replace it or delete it). With `skip_bad`, an unreadable image
    is logged and its place taken by the next readable one (so batches keep their size and the run stays
    deterministic); `skipped` counts these, over every loader worker.
    """

    def __init__(self, *args, skip_bad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.input_img_mode:
            raise ValueError('StrictImageDataset needs input_img_mode (see image_mode)')
        self.skip_bad = skip_bad
        self._skipped = multiprocessing.Value('q', 0)

    @classmethod
    def from_dataset(cls, dataset: ImageDataset, input_img_mode: str, skip_bad: bool = False) -> 'StrictImageDataset':
        return cls(
            root=None, reader=dataset.reader, load_bytes=dataset.load_bytes, input_img_mode=input_img_mode,
            transform=dataset.transform, target_transform=dataset.target_transform, skip_bad=skip_bad)

    @property
    def skipped(self) -> int:
        """Unreadable images met so far (each time one is met), summed over the loader workers."""
        return self._skipped.value

    def _load(self, index: int) -> Tuple[Any, Any]:
        img, target = self.reader[index][:2]
        try:
            img = img.read() if self.load_bytes else convert_image(Image.open(img), self.input_img_mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's decode errors
            path = self.reader.filename(index, absolute=True)
            raise BadImageError(f'Cannot read image file {path}: {e}. Replace or delete this file'
                                f'{"" if self.skip_bad else ", or pass --skip-bad-images"}.') from e
        return img, target

    def __getitem__(self, index: int):
        error = None
        for _ in range(len(self.reader)):
            try:
                img, target = self._load(index)
                break
            except BadImageError as e:
                if not self.skip_bad:
                    raise
                error = e
                with self._skipped.get_lock():
                    self._skipped.value += 1
                _logger.warning(f'{e} Skipped (--skip-bad-images).')
                index = (index + 1) % len(self.reader)
        else:
            raise BadImageError(f'--skip-bad-images: no image of the dataset can be read (last error: {error})')
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def parse_kwarg(text: str, option: str = '--model-kwargs') -> Tuple[str, Any]:
    """One KEY=VALUE of a kwargs option: VALUE a Python literal, a `dict(k=v, ...)` of literals, or else a
    plain string (so `mixer=box` needs no quotes)."""
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise ValueError(f'{option}: expected KEY=VALUE with KEY a Python name, got {text!r}; e.g. '
                         f'drop_rate=0.1 mixer=box \'mixer_args=dict(num_bases=4)\' \'channels=(32,64,128,256)\'')
    return key, _literal(value, f'{option} {key}')


def _literal(text: str, where: str) -> Any:
    try:
        node = ast.parse(text.strip(), mode='eval').body
    except SyntaxError:
        return text
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict':
        if node.args or any(k.arg is None for k in node.keywords):
            raise ValueError(f'{where}: dict(...) takes only KEY=VALUE pairs, got {text!r}')
        return {k.arg: _literal(ast.unparse(k.value), f'{where}.{k.arg}') for k in node.keywords}
    try:
        return ast.literal_eval(node)
    except ValueError:
        if not any(isinstance(n, ast.Call) for n in ast.walk(node)):
            return text.strip()  # e.g. a bare word: a string, as timm's ParseKwargs reads it
        raise ValueError(f'{where}: {text!r} calls something; accepted: Python literals (numbers, strings, '
                         f'tuples, lists, dicts, True/False/None), dict(KEY=VALUE, ...) or a plain word') from None


class ParseKwargs(argparse.Action):
    """argparse action for KEY=VALUE options (`parse_kwarg`); a malformed pair is an argparse error."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, dict(parse_kwarg(v, option_string) for v in values if v))
        except ValueError as e:
            parser.error(str(e))


def load_recipe(path: str, parser: argparse.ArgumentParser, forbidden: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a YAML recipe of argument defaults; every key must be an argument `dest` of `parser`.

    `forbidden` names destinations a recipe may not set (e.g. paths that belong on the command line).
    """
    if not os.path.isfile(path):
        raise ValueError(f'--config: recipe file {path} does not exist.')
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f'--config: recipe {path} is not valid YAML: {e}') from None
    if not isinstance(cfg, dict):
        raise ValueError(f'--config: recipe {path} must be a mapping of argument names to values.')
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    allowed = sorted(set(actions) - set(forbidden))
    for key, value in cfg.items():
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=3)
            hint = f' Did you mean {", ".join(hint)}?' if hint else ''
            raise ValueError(
                f'--config: recipe {path} has unknown key {key!r}.{hint} Keys are train.py argument names '
                f'with underscores, e.g. {", ".join(allowed[:6])}, ...')
        expected = _recipe_type_error(actions[key], value)
        if expected:
            raise ValueError(f'--config: recipe {path}: {key}: {value!r} is not {expected}')
    return cfg


def _recipe_type_error(action: argparse.Action, value: Any) -> Optional[str]:
    """What a recipe value for `action` should have been, or None when it fits (None always fits)."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return None if isinstance(value, bool) else 'true or false'
    if isinstance(action, ParseKwargs):
        return None if isinstance(value, dict) else 'a mapping of keyword arguments'
    kind = {int: 'an integer', float: 'a number', str: 'a string'}.get(action.type)
    if kind is None:
        return None
    fits = lambda v: (isinstance(v, action.type) or (action.type is float and isinstance(v, int))) and not isinstance(v, bool)
    if action.nargs in (None, '?'):
        return None if fits(value) else kind
    count = action.nargs if isinstance(action.nargs, int) else None
    fits_all = isinstance(value, list) and all(fits(v) for v in value)
    if fits_all and (len(value) == count if count else action.nargs == '*' or value):
        return None
    return f'a list of {count or "one or more"} {kind.split(" ", 1)[1]}s'


def per_channel(values: Sequence[float], chans: int) -> Tuple[float, ...]:
    """A data config's mean or std with one value per input channel: one value repeated, or for a 1-channel
    model the mean of RGB's."""
    values = tuple(values)
    if len(values) == 1:
        return values * chans
    return (sum(values) / len(values),) if chans == 1 else values


def check_model_name(name: str, option: str = '--model') -> None:
    """Raise a ValueError naming `option` and close registered models when `name` is not a timm model."""
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f' Close registered names: {", ".join(close)}.' if close else ''
    raise ValueError(
        f'{option}: unknown model {name!r}.{hint} List them with timm.list_models("resnet*_cada*") '
        f'after import timm_cada.')


def import_modules(modules: Iterable[str], option: str = '--device-modules') -> None:
    """Import each module (e.g. one that registers a user's mixer); a ValueError names `option` for one that fails."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f'{option}: cannot import {module!r} ({e})') from None


def load_model(name: str, checkpoint: Optional[str] = None, option: str = '--model', pretrained: bool = False,
               ) -> Tuple[torch.nn.Module, Dict[str, object]]:
    """timm model `name` (eval mode) with the weights of `checkpoint` (a train.py checkpoint, whose model
    options are used, or a state dict), and the arguments its data config comes from (the training run's, or
    none: the model's pretrained cfg); errors name `option` (the argument that gave the model), the model and
    the checkpoint."""
    check_model_name(name, option)
    where = '--checkpoint' if option == '--model' else option
    kwargs, state, data_args = {}, None, {}
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise ValueError(f'{where}: {checkpoint} does not exist')
        try:
            ckpt = read_checkpoint(checkpoint)
        except ValueError as e:
            raise ValueError(f'{where}: {e}') from None
        arch = ckpt.get('arch')
        if arch is not None and arch != name:
            raise ValueError(f'{where}: {checkpoint} is a checkpoint of {arch!r}, not of {option} {name!r}')
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
            raise ValueError(f'{where}: {checkpoint} does not fit {option} {name!r} ({first})') from None
    return model.eval(), data_args


def _has_images(root: str) -> bool:
    from timm.data.readers.img_extensions import get_img_extensions
    exts = get_img_extensions(as_set=True)
    for _, _, files in os.walk(root, followlinks=True):
        if any(os.path.splitext(f)[1].lower() in exts for f in files):
            return True
    return False


def check_data_dir(root: Optional[str], splits: List[str]) -> None:
    """Check a folder dataset: `root` exists and each split has its folder (a name timm searches) with images.

    timm itself falls back to `root` when a split's folder is missing, which would silently evaluate on the
    training images; here that is an error.
    """
    if not root:
        raise ValueError('--data-dir (or the positional DIR) is required for a folder dataset.')
    if not os.path.isdir(root):
        raise ValueError(f'--data-dir: {root} does not exist or is not a folder.')
    for split in splits:
        name = split.split('[')[0]
        synonyms = _TRAIN_SYNONYMS if name in _TRAIN_SYNONYMS else _EVAL_SYNONYMS if name in _EVAL_SYNONYMS else ()
        tried = list(dict.fromkeys((name, *synonyms)))
        folder = next((os.path.join(root, s) for s in tried if os.path.isdir(os.path.join(root, s))), None)
        if folder is None:
            raise ValueError(
                f'--data-dir: {root} has no folder for split {split!r} (looked for {", ".join(tried)}). '
                f'Expected an ImageFolder layout: {root}/{name}/<class name>/<image files>.')
        if not _has_images(folder):
            raise ValueError(
                f'--data-dir: no images for split {split!r} in {folder}. Expected an ImageFolder layout: '
                f'{root}/{name}/<class name>/<image files>.')


def reuse_image_folder(root: str, stamp: str, params: Dict[str, Any], splits: Iterable[str]) -> bool:
    """Whether `root` holds a complete ImageFolder written with `params` (its `stamp` file, written last, says so).
    If not, the stamp and the split folders are removed, for the folder to be written again whole."""
    path = os.path.join(root, stamp)
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f) == params:
                return True
        os.remove(path)
    for split in splits:
        shutil.rmtree(os.path.join(root, split), ignore_errors=True)
    return False


def mark_image_folder_complete(root: str, stamp: str, params: Dict[str, Any]) -> None:
    """Write the `stamp` of `reuse_image_folder`, atomically, once every image is written."""
    with atomic_file(os.path.join(root, stamp)) as f:
        f.write(json.dumps(params).encode())
