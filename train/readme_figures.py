""" README's figures of the biases ("Seeing the biases"), redrawn from the study's shipped weights by one command,
so that anyone can regenerate them without training:

    make figures            # PYTHONPATH=train python train/readme_figures.py [--weights DIR] [--out docs]

The first CADA layer of results/fashion_mnist/weights/resnet26_cada_k7 on four Fashion-MNIST test images (the
first test image of each of FIGURE_CLASSES): the base that dominates each pixel; and the effective receptive
fields of that model, resnet26_dw_k7 and resnet26_local_k7 (timm_cada.analysis, each with the preprocessing
its config.json names). Writes OUT/analysis_dominant_base.png and OUT/analysis_erf.png and prints each model's
spatial variation and context sensitivity on those images. Needs the weights (`make study` writes them) and
Debian's dataset-fashion-mnist (installed with apt-get when run as root).
"""
import argparse
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

import fashion_mnist  # train/fashion_mnist.py
from study import RESULTS, WEIGHTS  # train/study.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = 'resnet26_cada_k7'  # the model whose bases are drawn
ERF_MODELS = ('resnet26_dw_k7', 'resnet26_local_k7')  # drawn beside it: full invariance, none
FIGURE_CLASSES = ('tshirt_top', 'trouser', 'sneaker', 'bag')
# README's file -> the analysis' figure it is (its first CADA layer's dominant bases; the receptive fields)
FIGURES = {'analysis_dominant_base.png': 'dominant_base_', 'analysis_erf.png': 'erf.png'}


class NoWeightsError(FileNotFoundError):
    """The weights folder lacks a model that the figures draw."""


def write_images(folder: str, source: Optional[str] = None) -> List[str]:
    """The first official test image of each of FIGURE_CLASSES as a grey PNG in `folder`; their paths."""
    images, labels = fashion_mnist.read_split(fashion_mnist.find_source(source), 'test')
    paths = []
    for name in FIGURE_CLASSES:
        index = int(np.flatnonzero(labels == fashion_mnist.CLASSES.index(name))[0])
        paths.append(os.path.join(folder, f'test{index:05d}_{name}.png'))
        Image.fromarray(images[index], 'L').save(paths[-1])
    return paths


def draw(weights: str, out: str, source: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Draw README's figures from the models in `weights` into `out`; returns each model's bias metrics."""
    from timm_cada import analysis
    missing = [m for m in (MODEL, *ERF_MODELS) if not os.path.isfile(os.path.join(weights, m, 'config.json'))]
    if missing:
        raise NoWeightsError(f'{weights} has no saved {", ".join(missing)}: the study ships them '
                             f'(make study), or pass --weights')
    os.makedirs(out, exist_ok=True)
    metrics = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(tmp, source)
        for model in (MODEL, *ERF_MODELS):
            erf = [f'local-dir:{os.path.join(weights, m)}' for m in ERF_MODELS] if model == MODEL else []
            drawn = os.path.join(tmp, model)
            result = analysis.main(['--model', f'local-dir:{os.path.join(weights, model)}', '--image', *paths,
                                    '--out', drawn, *(['--erf', *erf] if erf else [])])
            metrics[model] = {k: result[k] for k in ('spatial_variation', 'context_sensitivity')}
            if model == MODEL:
                for name, prefix in FIGURES.items():
                    first = next(f for f in result['figures'] if os.path.basename(f).startswith(prefix))
                    shutil.copyfile(os.path.join(drawn, os.path.basename(first)), os.path.join(out, name))
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default=os.path.join(RESULTS, WEIGHTS), help='the shipped models\' folder')
    parser.add_argument('--out', default=os.path.join(REPO, 'docs'), help='where the PNGs go')
    parser.add_argument('--source', default=None, help='the folder of Fashion-MNIST\'s idx files (default: Debian\'s)')
    args = parser.parse_args(argv)
    try:
        metrics = draw(args.weights, args.out, args.source)
    except NoWeightsError as e:
        sys.exit(f'readme_figures.py: error: {e}')
    print(f'Wrote {", ".join(os.path.join(args.out, n) for n in FIGURES)}')
    for model, m in metrics.items():
        print(f'  {model}: spatial variation {m["spatial_variation"]:.4f}, context sensitivity '
              f'{m["context_sensitivity"]:.4f}')
    return metrics


if __name__ == '__main__':
    main()
