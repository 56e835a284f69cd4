#!/usr/bin/env python3
""" Write scikit-learn's digits (1797 real 8x8 handwritten digits, shipped with the package) as an ImageFolder.

    python train/make_digits.py OUT [--size 32] [--val-fraction 0.2]

gives OUT/train/<digit>/*.png and OUT/validation/<digit>/*.png: RGB PNGs upsampled to size x size,
a stratified split with a fixed seed, and OUT/digits.json (the parameters; other parameters rewrite OUT).
The ImageFolder is the same data path an ImageNet run takes.
"""
import argparse
import os

import numpy as np
from PIL import Image

from image_data import mark_image_folder_complete, reuse_image_folder  # train/image_data.py

SPLITS = ('train', 'validation')
STAMP = 'digits.json'  # the generation parameters, written last: its presence means the folder is complete


def _save_atomic(img: Image.Image, path: str) -> None:
    """Save a PNG under a temporary name, then rename: a kill never leaves a truncated image at `path`."""
    tmp = f'{path}.tmp'
    img.save(tmp, format='PNG')
    os.replace(tmp, path)


def write_digits(root: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write the ImageFolder; returns the image count per split.

    A complete folder written with the same parameters is kept; anything else (other parameters, or an
    interrupted run, which leaves no stamp) is deleted and written again.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    params = dict(size=size, val_fraction=val_fraction, seed=seed)
    digits = load_digits()
    idx_train, idx_val = train_test_split(
        np.arange(len(digits.images)), test_size=val_fraction, random_state=seed, stratify=digits.target)
    counts = {'train': len(idx_train), 'validation': len(idx_val)}
    if reuse_image_folder(root, STAMP, params, SPLITS):
        return counts
    images = (digits.images * (255. / 16.)).round().astype(np.uint8)
    for split, indices in zip(SPLITS, (idx_train, idx_val)):
        for i in indices:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert('RGB')
            _save_atomic(img, os.path.join(folder, f'{i:04d}.png'))
    mark_image_folder_complete(root, STAMP, params)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='output folder')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--val-fraction', type=float, default=0.2)
    args = parser.parse_args()
    counts = write_digits(args.root, args.size, args.val_fraction)
    print(f'digits ImageFolder in {args.root}: ' + ', '.join(f'{k} {v} images' for k, v in counts.items()))


if __name__ == '__main__':
    main()
