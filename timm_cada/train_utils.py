""" Training helpers shared by train/train.py and train/ablate.py: strict image loading, recipes, input checks.

Checkpoints are read and written by `timm_cada.checkpoint`.
"""
import argparse
import difflib
import os
from typing import Any, Dict, Iterable, List, Optional

import yaml
from PIL import Image

import timm
from timm.data import ImageDataset

__all__ = ['BadImageError', 'StrictImageDataset', 'check_data_dir', 'check_model_name', 'load_recipe']

# Folder names timm's create_dataset searches for each split (timm.data.dataset_factory).
_TRAIN_SYNONYMS = ('train', 'training')
_EVAL_SYNONYMS = ('validation', 'val', 'valid', 'eval', 'evaluation')


class BadImageError(RuntimeError):
    """An image file of the dataset could not be decoded."""


class StrictImageDataset(ImageDataset):
    """timm's ImageDataset, except that an unreadable image stops the run with its file name.

    timm skips such samples with a warning; a trainer that compares models should see every sample,
    so the file is named and the user decides (replace it or delete it).
    """

    @classmethod
    def from_dataset(cls, dataset: ImageDataset) -> 'StrictImageDataset':
        return cls(
            root=None, reader=dataset.reader, load_bytes=dataset.load_bytes,
            input_img_mode=dataset.input_img_mode, transform=dataset.transform,
            target_transform=dataset.target_transform)

    def __getitem__(self, index: int):
        img, target = self.reader[index][:2]
        try:
            if self.load_bytes:
                img = img.read()
            else:
                img = Image.open(img)
                if self.input_img_mode:
                    img = img.convert(self.input_img_mode)
        except (IOError, OSError) as e:
            path = self.reader.filename(index, absolute=True)
            raise BadImageError(f'Cannot read image file {path}: {e}. Replace or delete this file.') from e
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def load_recipe(path: str, parser: argparse.ArgumentParser, forbidden: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a YAML recipe of argument defaults; every key must be an argument `dest` of `parser`.

    `forbidden` names destinations a recipe may not set (e.g. paths that belong on the command line).
    """
    if not os.path.isfile(path):
        raise ValueError(f'--config: recipe file {path} does not exist.')
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f'--config: recipe {path} must be a mapping of argument names to values.')
    known = {a.dest for a in parser._actions if a.dest != 'help'}
    allowed = sorted(known - set(forbidden))
    for key in cfg:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=3)
            hint = f' Did you mean {", ".join(hint)}?' if hint else ''
            raise ValueError(
                f'--config: recipe {path} has unknown key {key!r}.{hint} Keys are train.py argument names '
                f'with underscores, e.g. {", ".join(allowed[:6])}, ...')
    return cfg


def check_model_name(name: str) -> None:
    """Raise a ValueError naming close registered models when `name` is not a timm model."""
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f' Close registered names: {", ".join(close)}.' if close else ''
    raise ValueError(
        f'--model: unknown model {name!r}.{hint} List them with timm.list_models("resnet*_cada*") '
        f'after import timm_cada.')


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
