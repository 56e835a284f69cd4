""" The Fashion-MNIST study's training throughput, two ways measured in one run: as main trained the study
before (one run at a time on every core, NCHW, every image decoded from its PNG at every epoch) and as
train/study.py trains the converged protocol now (one run per core side by side, channels_last, every image
decoded once, glibc's allocator keeping freed memory: runs.KEEP_FREED_MEMORY), over the study's models.

    make bench-study                                            # the 16 models, 512 images per class
    PYTHONPATH=train python benchmarks/study_speed.py --models resnet26_dw_k7 --images-per-class 128

Each model trains one epoch of the study's recipe (batch 128, 28 px, small stem, quarter width) on a stratified
subset of Fashion-MNIST's training split (Debian's dataset-fashion-mnist; installed with apt-get when run as
root), seed 0, in a fresh train.py process per run: start-up and the validation pass count, as they do in the
study. Prints the images/s of the machine in each way (training images over wall time) and their ratio. Run
it alone: the two cores are shared by everything that runs.
"""
import argparse
import os
import tempfile
import time
from typing import Dict, Sequence, Tuple

import fashion_mnist  # train/ (PYTHONPATH=train)
from runs import KEEP_FREED_MEMORY, Job, cores, run_jobs
from study import FAST, RECIPE
from study_findings import CONVERGED_OPTIONS, MODELS

# way -> (runs side by side, train.py options on top of the recipe, environment variables of the runs)
WAYS: Dict[str, Tuple[int, Tuple[str, ...], Dict[str, str]]] = {
    'before': (1, (), {}),
    'study': (cores(), (*CONVERGED_OPTIONS, *FAST), KEEP_FREED_MEMORY),
}


def measure(way: str, models: Sequence[str], data_dir: str, work: str) -> Tuple[float, float]:
    """(wall seconds to train one run of each of `models` the `way` says, the seconds of their training loops
    over the runs side by side: the machine's share of each run's train.py-measured training time)."""
    at_once, options, env = WAYS[way]
    jobs = [Job(m, os.path.join(work, way, m), ('-c', RECIPE, '--data-dir', data_dir, *options), seed=0)
            for m in models]
    tic = time.time()
    train_minutes = sum(results['train_minutes'] for _, results, _ in run_jobs(jobs, at_once=at_once, env=env))
    return time.time() - tic, train_minutes * 60 / at_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(MODELS), help='models (default: the study\'s 16)')
    parser.add_argument('--images-per-class', type=int, default=512, help='training images per class (10 classes)')
    parser.add_argument('--data-dir', default=os.path.join('.cache', 'fashion_mnist-speed'),
                        help='the subset ImageFolder to write and train on')
    args = parser.parse_args()
    if args.images_per_class < 1:
        parser.error(f'--images-per-class must be >= 1, got {args.images_per_class}')
    counts = fashion_mnist.write_fashion_mnist(args.data_dir, None, val_per_class=20, seed=0,
                                               train_per_class=args.images_per_class)
    images = counts['train'] * len(args.models)
    from timm_cada.profile import machine
    seconds = {}
    with tempfile.TemporaryDirectory() as work:
        for way in WAYS:
            seconds[way] = measure(way, args.models, args.data_dir, work)
    print(f'\nThe study\'s training throughput on {machine()}: {len(args.models)} models x {counts["train"]} images, '
          f'one epoch each; images/s of the machine over the wall time (start-up and validation included) and '
          f'over the training loops alone (train.py\'s train minutes, shared by the runs side by side)\n')
    print('| way | runs side by side | options | environment | wall s | images/s | training s | images/s in training |\n'
          '|---|---|---|---|---|---|---|---|')
    for way, (at_once, options, env) in WAYS.items():
        wall, train = seconds[way]
        variables = ' '.join(f'{k}={v}' for k, v in env.items()) or '-'
        print(f'| {way} | {at_once} | {" ".join(options) or "-"} | {variables} | {wall:.0f} | {images / wall:.0f} '
              f'| {train:.0f} | {images / train:.0f} |')
    (wall_a, train_a), (wall_b, train_b) = seconds['before'], seconds['study']
    print(f'\nstudy / before: {wall_a / wall_b:.2f}x the images/s over the wall time, {train_a / train_b:.2f}x in '
          f'training')


if __name__ == '__main__':
    main()
