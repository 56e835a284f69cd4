#!/usr/bin/env python3
""" Train a list of models with one recipe on one dataset and compare them: the paper's ablation at any scale.

    python train/ablate.py -c train/configs/imagenet_100ep.yaml --ablation locality --data-dir IMAGENET \\
        --output runs/locality --nproc-per-node 8
    python train/ablate.py -c train/configs/digits.yaml --models resnet26_dw_k7 resnet26_cada_k7 \\
        --data-dir .cache/digits --output runs/demo

Each model trains with train/train.py into OUTPUT/MODEL: a run that finished the recipe's epochs is kept,
any other run with a last.pth.tar (interrupted, or stopped early by --stop-after) is resumed. Arguments after `--` go to every train.py run. Writes OUTPUT/ablation.md,
OUTPUT/ablation.csv and OUTPUT/ablation.png (top-1 against parameters and GMACs).
"""
import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import timm

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.checkpoint import read_checkpoint
from timm_cada.profile import count_macs, count_params
from timm_cada.train_utils import check_model_name, import_modules
from timm_cada.models import ABLATION_AXES, ablation_models
from timm_cada.zoo import markdown_table

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')

COLUMNS = ('model', 'params (M)', 'GMACs', 'input', 'epochs', 'top-1', 'top-5', 'train time (min)')


def train_args(config: str, extra: List[str]) -> argparse.Namespace:
    """The arguments of a train.py run with this recipe and these extra arguments (train.py's own parser)."""
    spec = importlib.util.spec_from_file_location('timm_cada_train_script', TRAIN)
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    return trainer.parse_args((['-c', config] if config else []) + extra)


def finished(run_dir: str, epochs: int) -> bool:
    """Whether the run in `run_dir` completed its schedule of `epochs` epochs (not just stopped with results)."""
    path = os.path.join(run_dir, 'results.json')
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        results = json.load(f)
    return results['epochs'] >= max(epochs, results.get('num_epochs', 0))


def train_command(model: str, run_dir: str, args: argparse.Namespace, extra: List[str]) -> List[str]:
    cmd = [sys.executable, TRAIN]
    if args.nproc_per_node > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(args.nproc_per_node), TRAIN]
    cmd += ['--model', model, '--data-dir', args.data_dir, '--output', run_dir]
    if args.config:
        cmd += ['-c', args.config]
    last = os.path.join(run_dir, 'last.pth.tar')
    if os.path.isfile(last):
        cmd += ['--resume', last]
    return cmd + extra


def describe(model: str, run_dir: str, wall_s: Optional[float]) -> Dict[str, object]:
    """One table row from a finished run: accuracy from results.json, size and MACs of the trained model."""
    with open(os.path.join(run_dir, 'results.json')) as f:
        results = json.load(f)
    ckpt = read_checkpoint(os.path.join(run_dir, 'last.pth.tar'))
    net = timm.create_model(model, **ckpt['model_kwargs'])
    input_size = tuple(timm.data.resolve_data_config(ckpt['args'], model=net)['input_size'])
    return {
        'model': model,
        'params (M)': round(count_params(net) / 1e6, 3),
        'GMACs': round(count_macs(net, input_size) / 1e9, 4),
        'input': f'{input_size[1]}x{input_size[2]}',
        'epochs': results['epochs'],
        'top-1': round(results['top1'], 2),
        'top-5': round(results['top5'], 2),
        'train time (min)': round(wall_s / 60, 1) if wall_s is not None else '',
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
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
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
        for m in models:
            check_model_name(m)
    except ValueError as e:
        parser.error(str(e))

    os.makedirs(args.output, exist_ok=True)
    run_args = train_args(args.config, extra)
    try:
        import_modules(run_args.device_modules)  # e.g. a module that registers a mixer named in --model-kwargs
    except ValueError as e:
        parser.error(str(e))
    epochs = run_args.epochs
    rows = []
    for model in models:
        run_dir = os.path.join(args.output, model)
        wall_s = None
        if not finished(run_dir, epochs):
            cmd = train_command(model, run_dir, args, extra)
            print(f'==> {model}: {" ".join(cmd)}', flush=True)
            tic = time.time()
            subprocess.run(cmd, check=True)
            wall_s = time.time() - tic
        else:
            print(f'==> {model}: finished run in {run_dir} reused (delete it to train again)', flush=True)
        rows.append(describe(model, run_dir, wall_s))

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
