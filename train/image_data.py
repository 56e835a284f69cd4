""" The trainer's image folders: strict loading (every image in one mode, an unreadable one named), the check
of a folder dataset's layout, and the completion stamp of the folders the dataset scripts write. """
import json
import logging
import multiprocessing
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

from timm.data import ImageDataset

from timm_cada.checkpoint import atomic_file

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
    deterministic); `skipped` counts these, over every loader worker. With `preload`, every image is read and
    decoded once, here, and kept in memory (for small datasets such as Fashion-MNIST: an epoch then decodes no
    file); the samples, and so the run, are the same as without it.
    """

    def __init__(self, *args, skip_bad: bool = False, preload: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.input_img_mode:
            raise ValueError('StrictImageDataset needs input_img_mode (see image_mode)')
        self.skip_bad = skip_bad
        self._skipped = multiprocessing.Value('q', 0)
        # index -> (decoded image, target), or the message of its file's BadImageError
        self._decoded = [self._read(i) for i in range(len(self.reader))] if preload else None

    @classmethod
    def from_dataset(cls, dataset: ImageDataset, input_img_mode: str, skip_bad: bool = False,
                     preload: bool = False) -> 'StrictImageDataset':
        return cls(
            root=None, reader=dataset.reader, load_bytes=dataset.load_bytes, input_img_mode=input_img_mode,
            transform=dataset.transform, target_transform=dataset.target_transform, skip_bad=skip_bad,
            preload=preload)

    @property
    def skipped(self) -> int:
        """Unreadable images met so far (each time one is met), summed over the loader workers."""
        return self._skipped.value

    def _read(self, index: int) -> Any:
        """(image, target) of `index` read from its file, or the message of a BadImageError that names the file."""
        file, target = self.reader[index][:2]
        try:
            with file:
                return (file.read() if self.load_bytes else convert_image(Image.open(file), self.input_img_mode),
                        target)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's decode errors
            path = self.reader.filename(index, absolute=True)
            return (f'Cannot read image file {path}: {e}. Replace or delete this file'
                    f'{"" if self.skip_bad else ", or pass --skip-bad-images"}.')

    def _load(self, index: int) -> Tuple[Any, Any]:
        sample = self._read(index) if self._decoded is None else self._decoded[index]
        if isinstance(sample, str):
            raise BadImageError(sample)
        return sample

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
