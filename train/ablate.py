#!/usr/bin/env python3
""" Train a list of models with one recipe on one dataset and compare them: the paper's ablation at any scale.

    python train/ablate.py -c train/configs/imagenet_100ep.yaml --ablation locality --data-dir IMAGENET \\
        --output runs/locality --nproc-per-node 8
    python train/ablate.py -c train/configs/digits.yaml --models resnet26_dw_k7 resnet26_cada_k7 \\
        --data-dir .cache/digits --output runs/demo

Each model trains with train/train.py into OUTPUT/MODEL (train/runs.py): a run that finished the recipe's epochs
is kept, any other run with a last.pth.tar (interrupted, or stopped early by --stop-after) is resumed. Arguments
after `--` go to every train.py run. Writes OUTPUT/ablation.md, OUTPUT/ablation.csv and OUTPUT/ablation.png
(top-1 against parameters and GMACs).
"""
import argparse
import csv
import os
import sys
from typing import Dict, List, Optional

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.load import check_model_name, import_modules
from timm_cada.models import ABLATION_AXES, ablation_models
from timm_cada.zoo import markdown_table

import train as trainer  # train/train.py, whose parser reads the shared recipe
from runs import Job, RunFailed, model_size, run_jobs, split_argv  # train/runs.py

COLUMNS = ('model', 'params (M)', 'GMACs', 'input', 'epochs', 'top-1', 'top-5', 'train time (min)')


def describe(model: str, run_dir: str, results: Dict[str, object], wall_minutes: Optional[float]) -> Dict[str, object]:
    """One table row from a finished run: accuracy from results.json, size and MACs of the trained model."""
    size = model_size(model, run_dir)
    return {
        'model': model,
        'params (M)': round(size.params / 1e6, 3),
        'GMACs': round(size.macs / 1e9, 4),
        'input': f'{size.input_size[1]}x{size.input_size[2]}',
        'epochs': results['epochs'],
        'top-1': round(results['top1'], 2),
        'top-5': round(results['top5'], 2),
        'train time (min)': round(wall_minutes, 1) if wall_minutes is not None else '',
    }


def plot(rows: List[Dict[str, object]], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key in zip(axes, ('params (M)', 'GMACs')):
        for r in rows:
            ax.scatter(r[key], r['top-1'])
            ax.annotate(r['model'], (r[key], r['top-1']), fontsize=7, xytext=(3, 3), textcoords='offset points')
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('top-1 (%)')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    argv, extra = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', default='', help='shared recipe (YAML of train.py arguments)')
    parser.add_argument('--data-dir', required=True, help='dataset root, as for train.py')
    parser.add_argument('--output', required=True, help='folder for the runs and the comparison')
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--models', nargs='+', help='models to compare')
    group.add_argument('--ablation', help=f'a predefined row of the paper: {", ".join(ABLATION_AXES)}')
    parser.add_argument('--depth', type=int, default=50, choices=(26, 50), help='ResNet depth for --ablation')
    parser.add_argument('--nproc-per-node', type=int, default=1, help='processes per run (torchrun)')
    args = parser.parse_args(argv)

    try:
        models = args.models or ablation_models(args.ablation, args.depth)
    except ValueError as e:
        parser.error(str(e))
    try:
        for m in models:
            check_model_name(m)
    except ValueError as e:
        parser.error(f'--models: {e}')

    os.makedirs(args.output, exist_ok=True)
    run_args = trainer.parse_args((['-c', args.config] if args.config else []) + extra)
    try:
        import_modules(run_args.device_modules)  # e.g. a module that registers a mixer named in --model-kwargs
    except ValueError as e:
        parser.error(f'--device-modules: {e}')
    options = ('--data-dir', args.data_dir) + (('-c', args.config) if args.config else ())
    jobs = [Job(model, os.path.join(args.output, model), options, tuple(extra)) for model in models]
    try:
        rows = [describe(job.model, job.run_dir, results, wall) for job, results, wall in run_jobs(
            jobs, epochs=run_args.epochs, nproc_per_node=args.nproc_per_node, stopped=True)]
    except RunFailed as e:
        sys.exit(f'ablate.py: error: {e}')

    title = f'{args.ablation or "ablation"} on {os.path.basename(os.path.normpath(args.data_dir))}'
    table = markdown_table(rows)
    with open(os.path.join(args.output, 'ablation.md'), 'w') as f:
        f.write(f'# {title}\n\n{table}\n')
    with open(os.path.join(args.output, 'ablation.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(args.output, 'ablation.png'), title)
    print(table)
    print(f'\nWrote {args.output}/ablation.md, ablation.csv, ablation.png')


if __name__ == '__main__':
    main()
