#!/usr/bin/env python3
""" Write Fashion-MNIST (70,000 real 28x28 grey product photos, 10 classes, MIT licence) as an ImageFolder.

    python train/fashion_mnist.py OUT [--source DIR] [--val-per-class 1000] [--train-per-class N] [--seed 0]

The idx files come from Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/); when
they are missing and this runs as root, the package is installed with apt-get, else the command stops and
says how to install it. Every file is checked (gzip stream, idx header, length, labels): a truncated or
malformed file is an error naming it, never a short dataset.

Gives OUT/train, OUT/validation (held out of the official train set, stratified: for choosing a recipe) and
OUT/test (the official test set, for the final figures only); --train-per-class keeps a stratified, seeded
subset of the remaining train images (for a smaller training budget), each with one folder per class named
'<index>_<name>' so that sorted folder order is the official label order; grey (L) PNGs. OUT/fashion_mnist.json
holds the parameters and is written last: a complete folder with the same parameters is reused.
"""
import argparse
import gzip
import os
import shutil
import subprocess
import zlib
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from image_data import mark_image_folder_complete, reuse_image_folder  # train/image_data.py

DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEFAULT_SOURCE = '/usr/share/datasets/fashion-mnist'
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
CLASSES = ('tshirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle_boot')
FOLDERS = tuple(f'{i}_{name}' for i, name in enumerate(CLASSES))
SPLITS = ('train', 'validation', 'test')
STAMP = 'fashion_mnist.json'
_UBYTE = 0x08


def read_idx(path: str, ndim: int) -> np.ndarray:
    """The uint8 array of a gzipped idx file with `ndim` dimensions (3 for images, 1 for labels)."""
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f'{path}: not a complete gzip file ({e}); reinstall {DEBIAN_PACKAGE}') from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b'\0\0' or raw[2] != _UBYTE or raw[3] != ndim:
        raise ValueError(f'{path}: not an idx file of {ndim}-d unsigned bytes (header {raw[:4].hex() or "empty"})')
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(f'{path}: the header says {dims} ({expected} bytes), the file holds {len(raw)} bytes: '
                         f'it is truncated or damaged; reinstall {DEBIAN_PACKAGE}')
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_split(source: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28, labels N) of the official 'train' or 'test' split, checked against each other."""
    images_file, labels_file = (os.path.join(source, name) for name in FILES[split])
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f'{images_file}: images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST\'s are 28x28')
    if len(images) != len(labels):
        raise ValueError(f'{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels')
    if labels.max(initial=0) >= len(CLASSES):
        raise ValueError(f'{labels_file}: label {labels.max()} is not one of the {len(CLASSES)} classes')
    return images, labels


def find_source(source: Optional[str] = None, install: bool = True) -> str:
    """The folder with the four idx files: `source`, else Debian's, installed with apt-get when running as root."""
    folder = source or DEFAULT_SOURCE
    missing = lambda: [n for names in FILES.values() for n in names if not os.path.isfile(os.path.join(folder, n))]
    if not missing():
        return folder
    if source is None and install and os.geteuid() == 0 and shutil.which('apt-get'):
        print(f'Installing Debian\'s {DEBIAN_PACKAGE} (Fashion-MNIST) with apt-get ...', flush=True)
        apt = lambda *cmd: subprocess.run(['apt-get', *cmd], capture_output=True, text=True,
                                          env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
        proc = apt('install', '-y', '-q', DEBIAN_PACKAGE)
        if proc.returncode != 0:  # a fresh system may lack the package lists
            apt('update', '-q')
            proc = apt('install', '-y', '-q', DEBIAN_PACKAGE)
        if proc.returncode == 0 and not missing():
            return folder
        raise FileNotFoundError(f'apt-get install {DEBIAN_PACKAGE} failed ({proc.returncode}): '
                                f'{(proc.stderr or proc.stdout).strip()[-500:]}')
    how = (f'install Debian\'s package: sudo apt-get install {DEBIAN_PACKAGE}, which puts them in {DEFAULT_SOURCE}'
           if source is None else f'pass --source a folder that holds {", ".join(missing())}')
    raise FileNotFoundError(f'Fashion-MNIST not found: {folder} lacks {", ".join(missing())}. To get it, {how}.')


def split_validation(labels: np.ndarray, per_class: int, seed: int, train_per_class: Optional[int] = None,
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of the official train set: `per_class` images of each class held out, and of
    the rest `train_per_class` per class kept for training (all of them when None)."""
    rng = np.random.default_rng(seed)
    held, kept = [], []
    for c in range(len(CLASSES)):
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise ValueError(f'--val-per-class {per_class}: class {CLASSES[c]} has only {len(members)} train images')
        val = rng.choice(members, per_class, replace=False)
        rest = np.setdiff1d(members, val)
        if train_per_class is not None:
            if train_per_class > len(rest):
                raise ValueError(f'--train-per-class {train_per_class}: class {CLASSES[c]} has {len(rest)} train '
                                 f'images left after --val-per-class {per_class}')
            rest = rng.choice(rest, train_per_class, replace=False)
        held.append(val)
        kept.append(rest)
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def write_fashion_mnist(root: str, source: Optional[str] = None, val_per_class: int = 1000, seed: int = 0,
                        install: bool = True, train_per_class: Optional[int] = None) -> Dict[str, int]:
    """Write the ImageFolder (see the module docstring); returns the image count per split."""
    folder = find_source(source, install)
    train_images, train_labels = read_split(folder, 'train')
    test_images, test_labels = read_split(folder, 'test')
    idx_train, idx_val = split_validation(train_labels, val_per_class, seed, train_per_class)
    parts = {'train': (train_images[idx_train], train_labels[idx_train], idx_train),
             'validation': (train_images[idx_val], train_labels[idx_val], idx_val),
             'test': (test_images, test_labels, np.arange(len(test_labels)))}
    counts = {split: len(parts[split][1]) for split in SPLITS}
    params = dict(val_per_class=val_per_class, seed=seed, counts=counts)
    if train_per_class is not None:
        params['train_per_class'] = train_per_class
    if reuse_image_folder(root, STAMP, params, SPLITS):
        return counts
    for split in SPLITS:
        for name in FOLDERS:
            os.makedirs(os.path.join(root, split, name))
        images, labels, ids = parts[split]
        for img, label, i in zip(images, labels, ids):  # named by index in the official file
            Image.fromarray(img, 'L').save(os.path.join(root, split, FOLDERS[label], f'{i:05d}.png'))
    mark_image_folder_complete(root, STAMP, params)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='output folder')
    parser.add_argument('--source', default=None, help=f'folder of the idx .gz files (default: {DEFAULT_SOURCE})')
    parser.add_argument('--val-per-class', type=int, default=1000, help='train images per class held out')
    parser.add_argument('--train-per-class', type=int, default=None,
                        help='train images kept per class (default: all that are not held out)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the held-out choice')
    args = parser.parse_args()
    if args.val_per_class < 0:
        parser.error(f'--val-per-class must be >= 0, got {args.val_per_class}')
    if args.train_per_class is not None and args.train_per_class < 1:
        parser.error(f'--train-per-class must be >= 1, got {args.train_per_class}')
    try:
        counts = write_fashion_mnist(args.root, args.source, args.val_per_class, args.seed,
                                     train_per_class=args.train_per_class)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(1, f'fashion_mnist.py: error: {e}\n')
    print(f'Fashion-MNIST ImageFolder in {args.root}: ' + ', '.join(f'{k} {v} images' for k, v in counts.items()))


if __name__ == '__main__':
    main()
