#!/usr/bin/env python3
""" Write scikit-learn's digits (1797 real 8x8 handwritten digits, shipped with the package) as an ImageFolder.

    python train/make_digits.py OUT [--size 32] [--val-fraction 0.2]

gives OUT/train/<digit>/*.png and OUT/validation/<digit>/*.png: RGB PNGs upsampled to size x size,
a stratified split with a fixed seed. The ImageFolder is the same data path an ImageNet run takes.
"""
import argparse
import os

import numpy as np
from PIL import Image


def write_digits(root: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write the ImageFolder; returns the image count per split. Existing complete output is kept."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255. / 16.)).round().astype(np.uint8)
    idx_train, idx_val = train_test_split(
        np.arange(len(images)), test_size=val_fraction, random_state=seed, stratify=digits.target)
    counts = {}
    for split, indices in (('train', idx_train), ('validation', idx_val)):
        for i in indices:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f'{i:04d}.png')
            if not os.path.exists(path):
                img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert('RGB')
                img.save(path)
        counts[split] = len(indices)
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
