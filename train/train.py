#!/usr/bin/env python3
""" Train a timm (or timm-cada) image classifier with timm's library, no timm checkout needed.

Arguments are named as in timm's train.py wherever the two share an option, so a recipe
(`-c recipe.yaml`, keys = argument names with underscores) runs in both. Single process:

    python train/train.py --data-dir DATA --model resnet50_cada_k7 -c train/configs/imagenet_100ep.yaml --output OUT

One or several machines (DDP; nccl on GPU, gloo on CPU):

    torchrun --nproc_per_node 8 train/train.py --data-dir DATA ... --output OUT

Writes OUT/last.pth.tar (every epoch), OUT/model_best.pth.tar (best --eval-metric, of the EMA weights with
--model-ema, as timm's train.py selects), OUT/summary.csv, OUT/args.yaml and OUT/results.json (final top-1/top-5).

A run folder holds one run. `--resume OUT/last.pth.tar` continues it exactly (the same weights, bit for bit, as
the run that was never stopped, on the same machine and process count); a new run into a folder that holds a
run is refused (without --output, a new folder output/train/MODEL-N is taken, as timm's train.py does).
last.pth.tar is the run's record: summary.csv and model_best.pth.tar are written after it, and rebuilt from it
when a kill came between.
"""
import argparse
import dataclasses
import difflib
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import timm
from timm import utils
from timm.data import FastCollateMixup, ImageDataset, Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.models import VARIANTS, NoPretrainedWeightsError, uses_mixer_trait
from timm_cada.checkpoint import (
    CHECKPOINT_VERSION, checkpoint_state_dict, plain, read_checkpoint, rng_state, set_rng_state)
from timm_cada.load import check_model_name, import_modules, per_channel
from timm_cada.warm_start import warm_start

from image_data import BadImageError, StrictImageDataset, check_data_dir, image_mode  # train/image_data.py
from options import (  # train/options.py
    AT_LEAST_0, AT_LEAST_1, CLIP_MODE, FRACTION, INTERPOLATION, NON_NEGATIVE, POSITIVE, PROBABILITY, SCHEDULER,
    TRAIN_INTERPOLATION, Options, ParseKwargs, Rule, choice)
from run_folder import LAST, RunError, RunFolder, held_run_files  # train/run_folder.py

_logger = logging.getLogger('train')

# Options of this trainer that timm's train.py does not have; shared recipes must not use them.
OURS_ONLY = ('warm_start', 'stop_after', 'skip_bad_images', 'preload_images', 'test_split')
# Options that belong on the command line, never in a shared recipe.
NOT_IN_RECIPE = ('config', 'data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'warm_start', 'local_rank')

EVAL_METRICS = ('top1', 'top5', 'loss')


def build_options() -> Options:
    """The trainer's options (timm train.py's names), each with the rule its values follow."""
    parser = argparse.ArgumentParser(description='timm-cada trainer (timm train.py argument names)')
    options = Options(parser)
    options.add(parser, '-c', '--config', default='', metavar='FILE', help='YAML recipe of argument defaults')

    group = parser.add_argument_group('Dataset')
    options.add(group, 'data', nargs='?', metavar='DIR', const=None, help='dataset root (or --data-dir)')
    options.add(group, '--data-dir', metavar='DIR', help='dataset root')
    options.add(group, '--dataset', metavar='NAME', default='',
                help='timm dataset: "" for an ImageFolder / tar, or torch/, hfds/, wds/, tfds/ prefixes')
    options.add(group, '--train-split', metavar='NAME', default='train')
    options.add(group, '--val-split', metavar='NAME', default='validation')
    options.add(group, '--test-split', metavar='NAME', default=None,
                help='split evaluated once with the final weights after the last epoch, written to '
                     'results.json as test_top1 / test_top5 / test_loss; it selects nothing')
    options.add(group, '--train-num-samples', type=int, default=None, help='samples per epoch (iterable datasets)')
    options.add(group, '--val-num-samples', type=int, default=None)
    options.add(group, '--dataset-download', action='store_true', default=False)
    options.add(group, '--class-map', default='', type=str, metavar='FILENAME')
    options.add(group, '--input-img-mode', default=None, type=str, metavar='MODE',
                help='PIL mode every image is opened in (default: L for 1 input channel, RGB for 3); '
                     '16-bit images are scaled to 8 bits')
    options.add(group, '--skip-bad-images', action='store_true', default=False,
                help='skip (log and count) images that cannot be decoded, instead of stopping the run')
    options.add(group, '--preload-images', action='store_true', default=False,
                help='read and decode every image of a folder dataset once, at the start, and keep it in memory '
                     '(small datasets: no file is decoded per sample); the run is the same as without it')
    options.add(group, '--input-key', default=None, type=str)
    options.add(group, '--target-key', default=None, type=str)

    group = parser.add_argument_group('Model')
    options.add(group, '--model', default='resnet50_cada_k7', type=str, metavar='MODEL')
    options.add(group, '--pretrained', action='store_true', default=False)
    options.add(group, '--initial-checkpoint', default='', type=str, metavar='PATH',
                help='start from these weights (EMA weights when the checkpoint has them; read with '
                     'weights_only=True); ignored with --resume')
    options.add(group, '--warm-start', default='', type=str, metavar='SRC',
                help='initialise matching weights from a checkpoint file or a pretrained timm model name '
                     '(timm_cada.warm_start), e.g. resnet50.a1_in1k; ignored with --resume')
    options.add(group, '--resume', default='', type=str, metavar='PATH',
                help='continue a run from its checkpoint (model, optimizer, scheduler, EMA, scaler, epoch)')
    options.add(group, '--no-resume-opt', action='store_true', default=False,
                help='with --resume, restore only the weights and epoch')
    options.add(group, '--num-classes', rule=AT_LEAST_1, type=int, default=None, metavar='N',
                help='classes (default: from the ImageFolder classes)')
    options.add(group, '--gp', default=None, type=str, metavar='POOL')
    options.add(group, '--img-size', rule=AT_LEAST_1, type=int, default=None, metavar='N')
    options.add(group, '--in-chans', rule=AT_LEAST_1, type=int, default=None, metavar='N')
    options.add(group, '--input-size', rule=Rule('three integers >= 1 (C H W)', lambda v: min(v) >= 1),
                default=None, nargs=3, type=int, metavar='N')
    options.add(group, '--crop-pct', rule=Rule('a number in (0, 1]', lambda v: 0 < v <= 1), default=None, type=float)
    options.add(group, '--mean', type=float, nargs='+', default=None, metavar='MEAN')
    options.add(group, '--std', type=float, nargs='+', default=None, metavar='STD')
    options.add(group, '--interpolation', rule=INTERPOLATION, default='', type=str, metavar='NAME')
    options.add(group, '-b', '--batch-size', rule=AT_LEAST_1, type=int, default=128, metavar='N',
                help='batch size per process')
    options.add(group, '-vb', '--validation-batch-size', rule=AT_LEAST_1, type=int, default=None, metavar='N')
    options.add(group, '--channels-last', action='store_true', default=False)
    options.add(group, '--grad-accum-steps', rule=AT_LEAST_1, type=int, default=1, metavar='N')
    options.add(group, '--grad-checkpointing', action='store_true', default=False)
    options.add(group, '--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                help='extra timm.create_model kwargs KEY=VALUE, e.g. kernel_size=5 mixer=box '
                     '"mixer_args=dict(num_bases=4)" "channels=(32,64,128,256)"')
    options.add(group, '--torchcompile', nargs='?', type=str, default=None, const='inductor',
                help='torch.compile the model with this backend')
    options.add(group, '--torchcompile-mode', type=str, default=None)

    group = parser.add_argument_group('Device & distributed')
    options.add(group, '--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    options.add(group, '--amp', action='store_true', default=False, help='mixed precision (autocast)')
    options.add(group, '--amp-dtype', rule=choice('float16', 'bfloat16'), default='float16', type=str,
                help='float16 (with loss scaling) or bfloat16')
    options.add(group, '--no-ddp-bb', action='store_true', default=False)
    options.add(group, '--sync-bn', action='store_true', default=False)
    options.add(group, '--dist-bn', rule=choice('', 'broadcast', 'reduce'), type=str, default='reduce',
                help='"broadcast", "reduce" or "" after each epoch')
    options.add(group, '--local_rank', default=0, type=int)
    options.add(group, '--device-modules', default=None, type=str, nargs='+',
                help='modules to import first (as timm train.py does), e.g. other model plugins')

    group = parser.add_argument_group('Optimizer')
    options.add(group, '--opt', default='sgd', type=str, metavar='OPTIMIZER')
    options.add(group, '--opt-eps', default=None, type=float, metavar='EPSILON')
    options.add(group, '--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    options.add(group, '--momentum', rule=NON_NEGATIVE, type=float, default=0.9, metavar='M')
    options.add(group, '--weight-decay', rule=NON_NEGATIVE, type=float, default=2e-5)
    options.add(group, '--clip-grad', rule=POSITIVE, type=float, default=None, metavar='NORM')
    options.add(group, '--clip-mode', rule=CLIP_MODE, type=str, default='norm')
    options.add(group, '--layer-decay', type=float, default=None)
    options.add(group, '--opt-kwargs', nargs='*', default={}, action=ParseKwargs)

    group = parser.add_argument_group('Learning rate schedule')
    options.add(group, '--sched', rule=SCHEDULER, type=str, default='cosine', metavar='SCHEDULER')
    options.add(group, '--sched-on-updates', action='store_true', default=False)
    options.add(group, '--lr', rule=POSITIVE, type=float, default=None, metavar='LR',
                help='learning rate (default: lr_base * global batch / lr_base_size)')
    options.add(group, '--lr-base', rule=POSITIVE, type=float, default=0.1, metavar='LR')
    options.add(group, '--lr-base-size', rule=AT_LEAST_1, type=int, default=256, metavar='DIV')
    options.add(group, '--lr-base-scale', rule=choice('', 'linear', 'sqrt'), type=str, default='', metavar='SCALE',
                help='"linear" or "sqrt"')
    options.add(group, '--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    options.add(group, '--lr-noise-pct', type=float, default=0.67, metavar='PERCENT')
    options.add(group, '--lr-noise-std', type=float, default=1.0, metavar='STDDEV')
    options.add(group, '--lr-cycle-mul', type=float, default=1.0, metavar='MULT')
    options.add(group, '--lr-cycle-decay', type=float, default=0.5, metavar='MULT')
    options.add(group, '--lr-cycle-limit', rule=AT_LEAST_1, type=int, default=1, metavar='N')
    options.add(group, '--lr-k-decay', type=float, default=1.0)
    options.add(group, '--warmup-lr', rule=POSITIVE, type=float, default=1e-5, metavar='LR')
    options.add(group, '--min-lr', rule=NON_NEGATIVE, type=float, default=0, metavar='LR')
    options.add(group, '--epochs', rule=AT_LEAST_1, type=int, default=300, metavar='N')
    options.add(group, '--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES')
    options.add(group, '--decay-epochs', rule=NON_NEGATIVE, type=float, default=90, metavar='N')
    options.add(group, '--warmup-epochs', rule=AT_LEAST_0, type=int, default=5, metavar='N')
    options.add(group, '--warmup-prefix', action='store_true', default=False)
    options.add(group, '--cooldown-epochs', rule=AT_LEAST_0, type=int, default=0, metavar='N')
    options.add(group, '--patience-epochs', rule=AT_LEAST_0, type=int, default=10, metavar='N')
    options.add(group, '--decay-rate', '--dr', rule=POSITIVE, type=float, default=0.1, metavar='RATE')
    options.add(group, '--stop-after', rule=AT_LEAST_0, type=int, default=None, metavar='N',
                help='leave after N epochs of this run (the schedule still spans --epochs); '
                     'continue later with --resume, e.g. under a job time limit')

    group = parser.add_argument_group('Augmentation and regularization')
    options.add(group, '--no-aug', action='store_true', default=False)
    options.add(group, '--train-crop-mode', rule=choice(None, 'rrc', 'rkrc', 'rkrr'), type=str, default=None)
    options.add(group, '--scale', rule=Rule('two numbers 0 < MIN <= MAX <= 1', lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1),
                type=float, nargs='+', default=[0.08, 1.0], metavar='PCT')
    options.add(group, '--ratio', rule=Rule('two numbers 0 < MIN <= MAX', lambda v: len(v) == 2 and 0 < v[0] <= v[1]),
                type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO')
    options.add(group, '--hflip', rule=PROBABILITY, type=float, default=0.5)
    options.add(group, '--vflip', rule=PROBABILITY, type=float, default=0.)
    options.add(group, '--color-jitter', rule=NON_NEGATIVE, type=float, default=0.4, metavar='PCT')
    options.add(group, '--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy, e.g. rand-m9-mstd0.5')
    options.add(group, '--aug-repeats', type=float, default=0, help='repeated augmentation count')
    options.add(group, '--bce-loss', action='store_true', default=False)
    options.add(group, '--bce-sum', action='store_true', default=False)
    options.add(group, '--bce-target-thresh', type=float, default=None)
    options.add(group, '--bce-pos-weight', type=float, default=None)
    options.add(group, '--reprob', rule=NON_NEGATIVE, type=float, default=0., metavar='PCT')
    options.add(group, '--remode', rule=choice('const', 'rand', 'pixel'), type=str, default='pixel')
    options.add(group, '--recount', type=int, default=1)
    options.add(group, '--mixup', rule=NON_NEGATIVE, type=float, default=0.0)
    options.add(group, '--cutmix', rule=NON_NEGATIVE, type=float, default=0.0)
    options.add(group, '--cutmix-minmax', type=float, nargs='+', default=None)
    options.add(group, '--mixup-prob', rule=PROBABILITY, type=float, default=1.0)
    options.add(group, '--mixup-switch-prob', rule=PROBABILITY, type=float, default=0.5)
    options.add(group, '--mixup-mode', rule=choice('batch', 'pair', 'elem'), type=str, default='batch')
    options.add(group, '--mixup-off-epoch', rule=AT_LEAST_0, default=0, type=int, metavar='N')
    options.add(group, '--smoothing', rule=FRACTION, type=float, default=0.1)
    options.add(group, '--train-interpolation', rule=TRAIN_INTERPOLATION, type=str, default='random')
    options.add(group, '--drop', rule=FRACTION, type=float, default=0.0, metavar='PCT')
    options.add(group, '--drop-path', rule=FRACTION, type=float, default=None, metavar='PCT')
    options.add(group, '--drop-block', rule=FRACTION, type=float, default=None, metavar='PCT')
    options.add(group, '--bn-momentum', type=float, default=None)
    options.add(group, '--bn-eps', type=float, default=None)
    options.add(group, '--model-ema', action='store_true', default=False)
    options.add(group, '--model-ema-force-cpu', action='store_true', default=False)
    options.add(group, '--model-ema-decay', rule=POSITIVE, type=float, default=0.9998)
    options.add(group, '--model-ema-warmup', action='store_true', default=False)

    group = parser.add_argument_group('Misc')
    options.add(group, '--seed', type=int, default=42, metavar='S')
    options.add(group, '--log-interval', rule=AT_LEAST_1, type=int, default=50, metavar='N')
    options.add(group, '-j', '--workers', rule=AT_LEAST_0, type=int, default=4, metavar='N')
    options.add(group, '--pin-mem', action='store_true', default=False)
    options.add(group, '--no-prefetcher', action='store_true', default=False)
    options.add(group, '--output', default='', type=str, metavar='PATH',
                help='run folder for checkpoints, summary.csv and results.json (default: the --resume '
                     'checkpoint\'s folder, else output/train/MODEL, or MODEL-1, -2, ... when that holds a run)')
    options.add(group, '--eval-metric', rule=choice(*EVAL_METRICS), default='top1', type=str, metavar='EVAL_METRIC',
                help=f'metric that selects model_best: {", ".join(EVAL_METRICS)}')
    return options


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    """Command line over recipe (`-c`) over defaults; a recipe key that is no argument is an error."""
    options = build_options()
    parser = options.parser
    args, _ = parser.parse_known_args(argv)
    if args.config:
        try:
            parser.set_defaults(**options.load_recipe(args.config, forbidden=NOT_IN_RECIPE))
        except ValueError as e:
            parser.error(str(e))
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.data
    return args


class InputError(ValueError):
    """Bad user input found before anything is written."""


def input_chans(args: argparse.Namespace) -> int:
    """The model's input channels: --in-chans, else --input-size's first value, else 3."""
    return args.in_chans or (args.input_size[0] if args.input_size else 3)


def check_args(args: argparse.Namespace) -> None:
    """Every option checked (before anything is read or written): each against its rule in the options table,
    then the rules that tie several together; raises InputError naming the option and what it accepts."""
    try:
        build_options().check(args)
    except ValueError as e:
        raise InputError(str(e)) from None
    opt = args.opt.lower()
    opt = opt[len('lookahead_'):] if opt.startswith('lookahead_') else opt
    if opt not in list_optimizers():
        close = difflib.get_close_matches(opt, list_optimizers(), n=3)
        raise InputError(f'--opt: unknown optimizer {args.opt!r}' + (f'; close names: {", ".join(close)}' if close else '')
                         + '. Accepted: timm.optim.list_optimizers(), optionally prefixed lookahead_.')
    if args.in_chans and args.input_size and args.in_chans != args.input_size[0]:
        raise InputError(f'--in-chans {args.in_chans} and --input-size {" ".join(map(str, args.input_size))} disagree '
                         f'on the input channels; give one of them.')
    in_chans = input_chans(args)
    for name, value in (('--mean', args.mean), ('--std', args.std)):
        if value is not None and len(value) not in (1, in_chans):
            raise InputError(f'{name} must be 1 or {in_chans} numbers (one per input channel), got {value!r}')
    if args.std is not None and min(args.std) <= 0:
        raise InputError(f'--std must be numbers > 0, got {args.std!r}')
    if in_chans not in (1, 3) and args.mean is None:
        raise InputError(f'--mean / --std: a model with {in_chans} input channels needs them, one per channel.')
    try:
        image_mode(in_chans, args.input_img_mode)
        torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        raise InputError(str(e) if str(e).startswith('--') else f'--device: {e}') from None
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise InputError(f'--output: {args.output} is a file; give the run folder (new, or the one of the run to resume).')
    if args.resume and not os.path.isfile(args.resume):
        raise InputError(f'--resume: checkpoint {args.resume} does not exist (give the run\'s last.pth.tar).')
    if args.initial_checkpoint and not args.resume and not os.path.isfile(args.initial_checkpoint):
        raise InputError(f'--initial-checkpoint: {args.initial_checkpoint} does not exist.')
    if args.preload_images and not _is_folder_dataset(args):
        raise InputError(f'--preload-images: applies to a folder dataset (an ImageFolder in --data-dir), not to '
                         f'--dataset {args.dataset}{" with a tar file" if args.data_dir else ""}.')


def _is_folder_dataset(args: argparse.Namespace) -> bool:
    return '/' not in args.dataset and not (args.data_dir or '').endswith('.tar')


def create_datasets(args: argparse.Namespace) -> Tuple[Any, Any, Optional[Any]]:
    """timm datasets for the train, eval and (with --test-split) test splits; ImageFolders load strictly (a bad
    image is an error)."""
    if _is_folder_dataset(args):
        check_data_dir(args.data_dir, [args.train_split, args.val_split] + ([args.test_split] if args.test_split else []))
    common = dict(
        root=args.data_dir, class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
        seed=args.seed, input_img_mode=args.input_img_mode, input_key=args.input_key, target_key=args.target_key)
    train = create_dataset(
        args.dataset, split=args.train_split, is_training=True, num_samples=args.train_num_samples, **common)
    val = create_dataset(
        args.dataset, split=args.val_split, is_training=False, num_samples=args.val_num_samples, **common)
    test = create_dataset(args.dataset, split=args.test_split, is_training=False, **common) if args.test_split else None
    return tuple(StrictImageDataset.from_dataset(d, args.input_img_mode, args.skip_bad_images, args.preload_images)
                 if type(d) is ImageDataset else d for d in (train, val, test))


def class_names(dataset: Any) -> Optional[list]:
    """The class names of a folder dataset in label order (None for datasets without a class index)."""
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return [str(c) for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])] if class_to_idx else None


def check_classes(args: argparse.Namespace, dataset_train: Any, dataset_eval: Any, split: str = '') -> None:
    """An eval split (`split`, default --val-split) must have the train split's classes, by name: else its
    labels would silently shift."""
    split = split or args.val_split
    train, val = class_names(dataset_train), class_names(dataset_eval)
    if train is None or val is None or train == val:
        return
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    raise InputError(
        f'--data-dir: the {split!r} split\'s classes differ from the {args.train_split!r} split\'s'
        + (f'; missing in {split!r}: {", ".join(missing[:10])}' if missing else '')
        + (f'; not in {args.train_split!r}: {", ".join(extra[:10])}' if extra else '')
        + '. Both splits need the same class folders (or one --class-map).')


def _num_classes(args: argparse.Namespace, dataset: Any) -> Optional[int]:
    if args.num_classes is not None:
        return args.num_classes
    names = class_names(dataset)
    return len(names) if names else None


def model_kwargs(args: argparse.Namespace, num_classes: Optional[int]) -> Dict[str, Any]:
    """The JSON-friendly timm.create_model kwargs of this run (recorded in every checkpoint)."""
    kwargs = dict(
        num_classes=num_classes, in_chans=input_chans(args) if input_chans(args) != 3 else None, drop_rate=args.drop or None,
        drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps)
    img_size = list(args.input_size[-2:]) if args.input_size else args.img_size  # (H, W) or N
    variant = VARIANTS.get(args.model)
    if img_size and variant is not None and uses_mixer_trait(variant.model_args(**args.model_kwargs), 'feat_size'):
        kwargs['img_size'] = img_size  # sizes the position / local mixers (the others work at any size)
    kwargs.update(args.model_kwargs)
    return plain({k: v for k, v in kwargs.items() if v is not None})


def _setup_lr(args: argparse.Namespace) -> None:
    """timm train.py's rule: lr = lr_base * global batch / lr_base_size (sqrt scaling for adaptive optimizers)."""
    if args.lr is not None:
        return
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)


def _make_loss(args: argparse.Namespace, mixup_active: bool) -> Tuple[nn.Module, nn.Module]:
    if mixup_active:
        train_loss = BinaryCrossEntropy(
            target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight,
        ) if args.bce_loss else SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss = BinaryCrossEntropy(
            smoothing=args.smoothing, target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum,
            pos_weight=args.bce_pos_weight,
        ) if args.bce_loss else LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    elif args.bce_loss:
        train_loss = BinaryCrossEntropy(
            target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
    else:
        train_loss = nn.CrossEntropyLoss()
    return train_loss, nn.CrossEntropyLoss()


@dataclasses.dataclass
class Learner:
    """The model and what updates it (optimizer, scheduler, fp16 loss scaler, EMA), with the device and the
    autocast context its steps run in."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: Callable[[], Any]
    loss_scaler: Optional[utils.NativeScaler] = None
    model_ema: Optional[utils.ModelEmaV3] = None
    lr_scheduler: Any = None


def train_one_epoch(learner: Learner, epoch: int, loader: Any, loss_fn: nn.Module, args: argparse.Namespace,
                    mixup_fn: Optional[Mixup] = None) -> Dict[str, float]:
    """One pass over the training loader; logs loss, lr and throughput every --log-interval steps."""
    model, optimizer, loss_scaler = learner.model, learner.optimizer, learner.loss_scaler
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False
    model.train()
    accum = args.grad_accum_steps
    num_batches = len(loader)
    num_updates = epoch * math.ceil(num_batches / accum)
    losses, seen, tic = utils.AverageMeter(), 0, time.time()
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == num_batches - 1
        need_update = last_batch or (batch_idx + 1) % accum == 0
        if not args.prefetcher:
            input, target = input.to(learner.device), target.to(learner.device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        sync = nullcontext() if need_update or not args.distributed else model.no_sync()
        with sync:
            with learner.autocast():
                loss = loss_fn(model(input), target)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch} step {batch_idx}; lower --lr.')
            if loss_scaler is not None:
                loss_scaler(loss / accum, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=model.parameters(), need_update=need_update)
            else:
                (loss / accum).backward()
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        losses.update(loss.item(), input.size(0))
        seen += input.size(0)
        if not need_update:
            continue
        optimizer.zero_grad()
        num_updates += 1
        if learner.model_ema is not None:
            learner.model_ema.update(model, step=num_updates)
        if learner.lr_scheduler is not None:
            learner.lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)
        if args.rank == 0 and (last_batch or (batch_idx // accum) % args.log_interval == 0):
            rate = seen * args.world_size / max(time.time() - tic, 1e-9)
            lr = optimizer.param_groups[0]['lr']
            _logger.info(
                f'Train: {epoch} [{batch_idx + 1:>4d}/{num_batches} ({100. * (batch_idx + 1) / num_batches:>3.0f}%)]  '
                f'Loss: {losses.val:#.3g} ({losses.avg:#.3g})  LR: {lr:.3e}  {rate:>7.1f} img/s')
    return {'loss': losses.avg}


@torch.no_grad()
def validate(model: nn.Module, loader: Any, loss_fn: nn.Module, args: argparse.Namespace, device: torch.device,
             autocast: Any, log_suffix: str = '') -> Dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the eval loader, averaged over all ranks."""
    model.eval()
    losses, top1, top5 = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    tic = time.time()
    for input, target in loader:
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with autocast():
            output = model(input)
        loss = loss_fn(output.float(), target)
        acc1, acc5 = utils.accuracy(output, target, topk=(1, min(5, output.shape[-1])))
        if args.distributed:
            loss, acc1, acc5 = (utils.reduce_tensor(t, args.world_size) for t in (loss, acc1, acc5))
        n = input.size(0)
        losses.update(loss.item(), n)
        top1.update(acc1.item(), n)
        top5.update(acc5.item(), n)
    metrics = {'loss': losses.avg, 'top1': top1.avg, 'top5': top5.avg}
    if args.rank == 0:
        rate = top1.count * args.world_size / max(time.time() - tic, 1e-9)
        _logger.info(f'Eval{log_suffix}: Loss {losses.avg:.4f}  Acc@1 {top1.avg:.3f}  Acc@5 {top5.avg:.3f}  '
                     f'{rate:.1f} img/s')
    return metrics


def _checkpoint(args: argparse.Namespace, learner: Learner, kwargs: Dict[str, Any], epoch: int,
                eval_metrics: Dict[str, float], selected: str) -> Dict[str, Any]:
    """The checkpoint of `epoch`: training state, top-1 of each set of weights, and the selection metric by name
    (the run's record, 'history' and 'best', is added by `RunFolder.commit_epoch`)."""
    state = {
        'arch': args.model,
        'model_kwargs': kwargs,
        'epoch': epoch,
        'state_dict': utils.unwrap_model(learner.model).state_dict(),
        'optimizer': learner.optimizer.state_dict(),
        'scheduler': plain(learner.lr_scheduler.state_dict()) if learner.lr_scheduler is not None else None,
        'top1': eval_metrics['top1'],
        'eval_metric': selected,
        'metric': eval_metrics[selected],
        'args': plain(vars(args)),
        'version': CHECKPOINT_VERSION,
    }
    if learner.model_ema is not None:
        state['state_dict_ema'] = utils.unwrap_model(learner.model_ema).state_dict()
        state['ema_top1'] = eval_metrics['ema_top1']
    if learner.loss_scaler is not None:
        state['scaler'] = learner.loss_scaler.state_dict()
    return state


def _setup(args: argparse.Namespace) -> Tuple[torch.device, Callable[[], Any]]:
    """Plugins, the device and process group, the seed, and the checks of the options alone; returns the
    device and the autocast context of the run."""
    try:
        import_modules(args.device_modules)
    except ValueError as e:
        raise InputError(f'--device-modules: {e}') from None
    check_args(args)
    # What the options leave open, decided as timm's train.py does, in `args` (recorded with the run)
    args.input_img_mode = image_mode(input_chans(args), args.input_img_mode)
    args.prefetcher = not args.no_prefetcher
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Process {args.rank} of {args.world_size} on {device} '
                     f'(backend {torch.distributed.get_backend()}).')
    utils.random_seed(args.seed, args.rank)
    autocast = (lambda: torch.autocast(device.type, dtype=_amp_dtype(args))) if args.amp else nullcontext
    return device, autocast


def _amp_dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What `_read_inputs` checked: the train, eval and test (None without --test-split) datasets, the train
    split's classes, the model kwargs, the checkpoint to resume (None for a new run) and the run folder."""
    datasets: Tuple[Any, Any, Optional[Any]]
    classes: Optional[list]
    kwargs: Dict[str, Any]
    resume_state: Optional[Dict[str, Any]]
    folder: RunFolder

    @property
    def start_epoch(self) -> int:
        return 0 if self.resume_state is None else self.resume_state['epoch'] + 1


def _read_inputs(args: argparse.Namespace) -> Inputs:
    """Everything the user can get wrong, checked before the model is built or a file is written: the model
    name, the checkpoint to resume, the run folder, the datasets and the model kwargs."""
    state = None
    try:
        try:
            check_model_name(args.model)
        except ValueError as e:
            raise InputError(f'--model: {e}') from None
        if args.resume:
            try:
                state = read_checkpoint(args.resume)
            except ValueError as e:
                raise InputError(f'--resume: {e}') from e
            _check_resume(args, state)
        folder = RunFolder(_output_dir(args), training_selected(args), lower_is_better=args.eval_metric == 'loss')
        datasets = create_datasets(args)
        check_classes(args, datasets[0], datasets[1])
        if datasets[2] is not None:
            check_classes(args, datasets[0], datasets[2], args.test_split)
        classes = class_names(datasets[0])
        kwargs = model_kwargs(args, _num_classes(args, datasets[0]))
        if state is not None:
            kwargs = _resumed_kwargs(args, state, kwargs, classes)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from e
    return Inputs(datasets, classes, kwargs, state, folder)


def _output_dir(args: argparse.Namespace) -> str:
    """The run folder: --output, else the --resume checkpoint's folder, else the first of output/train/MODEL,
    MODEL-1, MODEL-2, ... that holds no run. A folder that holds a run is written into only to resume its last
    checkpoint."""
    if args.output:
        out = args.output
    elif args.resume:
        out = os.path.dirname(os.path.abspath(args.resume))
    else:
        base = out = os.path.join('output', 'train', args.model)
        suffix = 0
        while held_run_files(out):
            suffix += 1
            out = f'{base}-{suffix}'
    held = held_run_files(out)
    if held and not args.resume:
        raise InputError(
            f'--output: {out} already holds a run ({", ".join(held)}). Continue it with --resume '
            f'{os.path.join(out, LAST)}, or give another --output (or delete the folder) for a new run.')
    if held and not (os.path.isfile(os.path.join(out, LAST)) and os.path.samefile(args.resume, os.path.join(out, LAST))):
        raise InputError(
            f'--output: {out} holds another run ({", ".join(held)}) than --resume {args.resume}. A run folder is '
            f'resumed from its own {LAST}; to continue {args.resume} elsewhere, give a new --output.')
    parent = next(p for p in (out, *_parents(out)) if os.path.exists(p))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f'--output: cannot create or write the run folder {out} ({parent} is not a writable folder).')
    return out


def _parents(path: str) -> list:
    path = os.path.abspath(path)
    parents = []
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        parents.append(path)
    return parents


def _check_resume(args: argparse.Namespace, state: Dict[str, Any]) -> None:
    """The checkpoint to resume is a training checkpoint of this model, at an epoch of this schedule, trained
    with this run's global batch."""
    where = f'--resume: {args.resume}'
    if 'state_dict' not in state or 'optimizer' not in state or not isinstance(state.get('args'), dict):
        raise InputError(f'{where} is not a train.py checkpoint (it has no state_dict / optimizer / args); '
                         f'start from it with --initial-checkpoint instead.')
    if state.get('arch') != args.model:
        raise InputError(f'{where} is a {state.get("arch")!r} checkpoint, not {args.model!r}')
    epoch = state.get('epoch')
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise InputError(f'{where} records epoch {epoch!r}, not the index (>= 0) of a finished epoch.')
    if epoch + 1 > args.epochs:
        raise InputError(f'{where} has finished {epoch + 1} epochs, more than --epochs {args.epochs}; '
                         f'pass --epochs {epoch + 1} or more.')
    history = state.get('history')
    if history is not None and [row.get('epoch') for row in history] != list(range(epoch + 1)):
        raise InputError(f'{where}: its history does not list epochs 0..{epoch}; the file is not a checkpoint '
                         f'this trainer wrote.')
    old = state['args']
    old_batch = [old.get(k, 1) for k in ('world_size', 'batch_size', 'grad_accum_steps')]
    new_batch = [args.world_size, args.batch_size, args.grad_accum_steps]
    if math.prod(old_batch) != math.prod(new_batch):
        per_process = math.prod(old_batch) / (args.world_size * args.grad_accum_steps)
        hint = f' (-b {int(per_process)} with {args.world_size} process(es))' if per_process.is_integer() else ''
        raise InputError(
            f'{where} was trained with a global batch of {math.prod(old_batch)} ({old_batch[0]} process(es) x '
            f'-b {old_batch[1]} x --grad-accum-steps {old_batch[2]}); this run would use {math.prod(new_batch)} '
            f'({new_batch[0]} x {new_batch[1]} x {new_batch[2]}). Keep the global batch{hint}, or start a new run.')


def _resumed_kwargs(args: argparse.Namespace, state: Dict[str, Any], kwargs: Dict[str, Any],
                    classes: Optional[list]) -> Dict[str, Any]:
    """The checkpoint's model kwargs; a model option of this command that differs from them is an error (the
    model of a run cannot change), and so are other classes than the run was trained on."""
    recorded = state.get('model_kwargs') or {}
    differ = {k: (recorded.get(k), v) for k, v in kwargs.items() if recorded.get(k) != v}
    if differ:
        said = '; '.join(f'{k}: {old!r} in the checkpoint, {new!r} now' for k, (old, new) in differ.items())
        raise InputError(f'--resume: the run\'s model was built with other options ({said}). Resume with the '
                         f'run\'s options (or leave them out), or start a new run (--model-kwargs, --num-classes, '
                         f'--img-size / --input-size, --in-chans, --drop*, --gp, --bn-*).')
    if state.get('classes') is not None and classes is not None and state['classes'] != classes:
        raise InputError(f'--resume: the run was trained on other classes than {args.data_dir} has '
                         f'({len(state["classes"])} then, {len(classes)} now); resume on the same dataset.')
    return recorded


def _create_model(args: argparse.Namespace, inputs: Inputs, device: torch.device) -> nn.Module:
    """The model with its first weights: pretrained, --initial-checkpoint or --warm-start (not on resume)."""
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **inputs.kwargs)
    except NoPretrainedWeightsError as e:
        raise InputError(f'--pretrained: {e}') from e
    except (TypeError, ValueError, KeyError) as e:
        raise InputError(f'--model-kwargs / model options: {args.model} cannot be built with {inputs.kwargs}: {e}') from e
    if inputs.resume_state is not None:
        if (args.initial_checkpoint or args.warm_start) and args.rank == 0:
            _logger.info('--resume: the run continues from its checkpoint; --initial-checkpoint / --warm-start ignored.')
    elif args.initial_checkpoint:
        try:
            model.load_state_dict(checkpoint_state_dict(read_checkpoint(args.initial_checkpoint)))
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise InputError(f'--initial-checkpoint: {e}') from e
    elif args.warm_start:
        try:
            warm_start(model, args.warm_start)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise InputError(f'--warm-start: {e}') from e
    if args.rank == 0:
        _logger.info(f'Model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), '
                     f'kwargs {inputs.kwargs}')
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def training_selected(args: argparse.Namespace) -> str:
    """The metric that selects model_best: the EMA weights' when there is an EMA (as timm's train.py does)."""
    return f'ema_{args.eval_metric}' if args.model_ema else args.eval_metric


def _create_learner(args: argparse.Namespace, model: nn.Module, state: Optional[Dict[str, Any]],
                    device: torch.device, autocast: Callable[[], Any]) -> Learner:
    """Optimizer, loss scaler and EMA, restored from the checkpoint `state` on resume; then the model is
    wrapped for DDP and torch.compile."""
    _setup_lr(args)
    try:
        optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    except (TypeError, ValueError) as e:
        raise InputError(f'--opt {args.opt} / --opt-kwargs {args.opt_kwargs}: {e}') from e
    loss_scaler = utils.NativeScaler(device=device.type) if args.amp and _amp_dtype(args) == torch.float16 else None
    if state is not None:
        try:
            model.load_state_dict(state['state_dict'])
            if not args.no_resume_opt:
                optimizer.load_state_dict(state['optimizer'])
                if loss_scaler is not None and state.get('scaler') is not None:
                    loss_scaler.load_state_dict(state['scaler'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise InputError(f'--resume: {args.resume} does not fit this run ({e}); resume with the run\'s '
                             f'--opt and model options.') from e
    model_ema = None
    if args.model_ema:
        model_ema = utils.ModelEmaV3(
            model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
            device='cpu' if args.model_ema_force_cpu else None)
        if state is not None and state.get('state_dict_ema') is not None:
            model_ema.module.load_state_dict(state['state_dict_ema'])
    if args.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, broadcast_buffers=not args.no_ddp_bb)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    return Learner(model, optimizer, device, autocast, loss_scaler, model_ema)


def _create_loaders(args: argparse.Namespace, learner: Learner, inputs: Inputs,
                    ) -> Tuple[Any, Any, Optional[Any], Optional[Mixup]]:
    """The train, eval and test (None without a test dataset) loaders with the model's data config, and the
    mixup function (None without mixup, or when the prefetcher's collate does it)."""
    dataset_train, dataset_eval, dataset_test = inputs.datasets
    data_config = resolve_data_config(vars(args), model=utils.unwrap_model(learner.model), verbose=args.rank == 0)
    in_chans = data_config['input_size'][0]
    for key in ('mean', 'std'):
        data_config[key] = per_channel(data_config[key], in_chans)
    collate_fn = mixup_fn = None
    if _mixup_active(args):
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=inputs.kwargs.get('num_classes', 1000))
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    loader_common = dict(
        input_size=data_config['input_size'], interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], num_workers=args.workers, distributed=args.distributed,
        pin_memory=args.pin_mem, device=learner.device, use_prefetcher=args.prefetcher,
        # Workers started anew each epoch are seeded from the main process's generator, which checkpoints
        # save: so a resumed run augments exactly as the run it continues (persistent workers would not).
        persistent_workers=False)
    loader_train = create_loader(
        dataset_train, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, train_crop_mode=args.train_crop_mode, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, num_aug_repeats=int(args.aug_repeats), collate_fn=collate_fn,
        **{**loader_common, 'interpolation': train_interpolation})
    loader_eval, loader_test = (None if d is None else create_loader(
        d, batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        crop_pct=data_config['crop_pct'], **loader_common) for d in (dataset_eval, dataset_test))
    return loader_train, loader_eval, loader_test, mixup_fn


def _mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


def _create_scheduler(args: argparse.Namespace, learner: Learner, state: Optional[Dict[str, Any]], start_epoch: int,
                      updates_per_epoch: int) -> int:
    """timm's scheduler for --epochs (set on `learner`), its state restored on resume unless the schedule's length
    changed; returns the schedule's number of epochs."""
    learner.lr_scheduler, num_epochs = create_scheduler_v2(
        learner.optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    if state is not None and not args.no_resume_opt and state.get('scheduler'):
        if state['args'].get('epochs') == args.epochs:
            learner.lr_scheduler.load_state_dict(state['scheduler'])
        elif args.rank == 0:
            _logger.info(f'--epochs changed from {state["args"].get("epochs")} to {args.epochs}: '
                         f'the schedule is rebuilt for the new length.')
    if start_epoch > 0:
        if args.sched_on_updates:
            learner.lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            learner.lr_scheduler.step(start_epoch)
    return num_epochs


def _open_folder(args: argparse.Namespace, inputs: Inputs, num_epochs: int) -> None:
    """The run folder with args.yaml, rebuilt from the checkpoint on resume (rank 0)."""
    inputs.folder.open(plain(vars(args)), args.resume, inputs.resume_state)
    _logger.info(f'Training {args.model} for epochs {inputs.start_epoch}..{num_epochs - 1} on '
                 f'{len(inputs.datasets[0])} images ({args.world_size} process(es), global batch '
                 f'{args.batch_size * args.world_size * args.grad_accum_steps}, lr {args.lr:.3g}), output '
                 f'{inputs.folder.path}')


def _on_rank0(args: argparse.Namespace, fn: Callable[[], None]) -> None:
    """Run `fn` on rank 0; a RunError it raises stops every rank (else the others would wait for it forever)."""
    error = None
    if args.rank == 0:
        try:
            fn()
        except RunError as e:
            error = str(e)
    if args.distributed:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise RunError(error)


def _gather(args: argparse.Namespace, value: Any) -> list:
    """`value` of every rank, by rank."""
    if not args.distributed:
        return [value]
    values = [None] * args.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def _skipped_images(datasets: Tuple[Any, ...]) -> int:
    return sum(getattr(d, 'skipped', 0) for d in datasets)


def _restore_rng(args: argparse.Namespace, state: Optional[Dict[str, Any]]) -> None:
    """Before the first resumed epoch: every generator as the run left it, so it goes on as if never stopped."""
    states = (state or {}).get('rng_state')
    if states is None:
        return
    if len(states) == args.world_size:
        set_rng_state(states[args.rank])
    elif args.rank == 0:
        _logger.warning(f'--resume: the run had {len(states)} process(es), this one has {args.world_size}: the global '
                        f'batch is kept, but the random streams differ from the run\'s (not bit-exact).')


@dataclasses.dataclass(frozen=True)
class Trained:
    """What `_train_epochs` ends with: the end epoch, the last eval metrics, the unreadable images skipped and
    the training time, both over the whole run."""
    end_epoch: int
    metrics: Dict[str, float]
    skipped_images: int
    train_seconds: float


def _train_epochs(args: argparse.Namespace, learner: Learner, inputs: Inputs, loader_train: Any, loader_eval: Any,
                  mixup_fn: Optional[Mixup], num_epochs: int) -> Trained:
    """Epochs start_epoch.. (--stop-after of them at most): train, validate, commit to the run folder."""
    dataset_train, state, selected = inputs.datasets[0], inputs.resume_state or {}, inputs.folder.selected
    train_loss_fn, eval_loss_fn = (f.to(learner.device) for f in _make_loss(args, _mixup_active(args)))
    start_epoch = inputs.start_epoch
    end_epoch = num_epochs if args.stop_after is None else min(num_epochs, start_epoch + args.stop_after)
    skipped_before, train_seconds = state.get('skipped_images', 0), float(state.get('train_seconds', 0.0))
    datasets = inputs.datasets[:2]
    eval_metrics: Dict[str, float] = {}
    _restore_rng(args, inputs.resume_state)
    for epoch in range(start_epoch, end_epoch):
        tic = time.time()
        if hasattr(dataset_train, 'set_epoch'):
            dataset_train.set_epoch(epoch)
        elif args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        train_metrics = train_one_epoch(learner, epoch, loader_train, train_loss_fn, args, mixup_fn)
        lrs = [g['lr'] for g in learner.optimizer.param_groups]  # the epoch's lr, before the scheduler's step
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(learner.model, args.world_size, args.dist_bn == 'reduce')
        eval_metrics = validate(learner.model, loader_eval, eval_loss_fn, args, learner.device, learner.autocast)
        if learner.model_ema is not None:
            ema_metrics = validate(learner.model_ema, loader_eval, eval_loss_fn, args, learner.device,
                                   learner.autocast, ' (EMA)')
            eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
        learner.lr_scheduler.step(epoch + 1, eval_metrics[selected])
        train_seconds += time.time() - tic
        row = {'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()},
               **{f'eval_{k}': v for k, v in eval_metrics.items()}, 'lr': sum(lrs) / len(lrs)}
        # Gathered after the last draw of the epoch: what the next epoch (or a resumed run) starts from.
        gathered = _gather(args, (rng_state(), _skipped_images(datasets)))
        skipped = skipped_before + sum(s for _, s in gathered)
        if skipped and args.rank == 0:
            _logger.warning(f'{skipped} unreadable image(s) skipped so far (--skip-bad-images).')

        def commit() -> None:  # run at once, on rank 0
            ckpt = _checkpoint(args, learner, inputs.kwargs, epoch, eval_metrics, selected)
            ckpt.update(rng_state=[s for s, _ in gathered], classes=inputs.classes, skipped_images=skipped,
                        train_seconds=train_seconds)
            inputs.folder.commit_epoch(epoch, row, eval_metrics[selected], ckpt)
        _on_rank0(args, commit)
    if not eval_metrics:
        eval_metrics = validate(learner.model, loader_eval, eval_loss_fn, args, learner.device, learner.autocast,
                                ' (final)')
    skipped = skipped_before + sum(_gather(args, _skipped_images(datasets)))
    return Trained(end_epoch, eval_metrics, skipped, train_seconds)


def _test(args: argparse.Namespace, learner: Learner, loader_test: Any) -> Tuple[Dict[str, float], int]:
    """The final weights on the --test-split, as test_top1 / test_top5 / test_loss (empty without one), and the
    unreadable images skipped there."""
    if loader_test is None:
        return {}, 0
    eval_loss_fn = _make_loss(args, _mixup_active(args))[1].to(learner.device)
    metrics = validate(learner.model, loader_test, eval_loss_fn, args, learner.device, learner.autocast,
                       f' ({args.test_split})')
    skipped = sum(_gather(args, getattr(loader_test.dataset, 'skipped', 0)))
    return {f'test_{k}': v for k, v in metrics.items()}, skipped


def _write_results(args: argparse.Namespace, inputs: Inputs, num_epochs: int, trained: Trained,
                   test: Dict[str, float], test_skipped: int, has_ema: bool) -> None:
    """results.json: the final eval (and test) metrics, how many epochs of the schedule ran and how long they
    took."""
    final = trained.metrics
    results = {'model': args.model, 'epochs': trained.end_epoch, 'num_epochs': num_epochs, 'top1': final['top1'],
               'top5': final['top5'], 'loss': final['loss'], **test, 'model_kwargs': inputs.kwargs,
               'skipped_images': trained.skipped_images + test_skipped,
               'train_minutes': round(trained.train_seconds / 60, 3)}
    if has_ema and 'ema_top1' in final:
        results.update(ema_top1=final['ema_top1'], ema_top5=final['ema_top5'])
    inputs.folder.write_results(results)
    _logger.info(f'Final eval of {args.model}: top-1 {final["top1"]:.2f}%  top-5 {final["top5"]:.2f}%')


def run(args: argparse.Namespace) -> Tuple[nn.Module, Dict[str, float]]:
    """Train and evaluate as `args` say; returns the unwrapped model and its final eval metrics. Each step hands
    its products to the next."""
    device, autocast = _setup(args)
    inputs = _read_inputs(args)
    model = _create_model(args, inputs, device)
    learner = _create_learner(args, model, inputs.resume_state, device, autocast)
    loader_train, loader_eval, loader_test, mixup_fn = _create_loaders(args, learner, inputs)
    num_epochs = _create_scheduler(args, learner, inputs.resume_state, inputs.start_epoch,
                                   math.ceil(len(loader_train) / args.grad_accum_steps))
    _on_rank0(args, lambda: _open_folder(args, inputs, num_epochs))
    trained = _train_epochs(args, learner, inputs, loader_train, loader_eval, mixup_fn, num_epochs)
    test, test_skipped = _test(args, learner, loader_test)
    _on_rank0(args, lambda: _write_results(args, inputs, num_epochs, trained, test, test_skipped,
                                           learner.model_ema is not None))
    return utils.unwrap_model(learner.model), trained.metrics


def main(argv: Optional[list] = None) -> None:
    utils.setup_default_logging()
    args = parse_args(argv)
    try:
        run(args)
    except InputError as e:
        # Raised before training starts, so nothing was written: report it like an argparse error.
        print(f'train.py: error: {e}', file=sys.stderr)
        sys.exit(2)
    except BadImageError as e:
        # Raised by a loader worker mid-epoch; the checkpoints of finished epochs are untouched.
        print(f'train.py: error: {str(e).strip().splitlines()[-1]}', file=sys.stderr)
        sys.exit(1)
    except RunError as e:
        print(f'train.py: error: {e}', file=sys.stderr)
        sys.exit(1)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
