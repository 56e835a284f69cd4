#!/usr/bin/env python3
""" Train a timm (or timm-cada) image classifier with timm's library, no timm checkout needed.

Arguments are named as in timm's train.py wherever the two share an option, so a recipe
(`-c recipe.yaml`, keys = argument names with underscores) runs in both. Single process:

    python train/train.py --data-dir DATA --model resnet50_cada_k7 -c train/configs/imagenet_100ep.yaml --output OUT

One or several machines (DDP; nccl on GPU, gloo on CPU):

    torchrun --nproc_per_node 8 train/train.py --data-dir DATA ... --output OUT

Writes OUT/last.pth.tar (every epoch), OUT/model_best.pth.tar (best --eval-metric, of the EMA weights with
--model-ema, as timm's train.py selects), OUT/summary.csv, OUT/args.yaml and OUT/results.json (final top-1/top-5). `--resume OUT/last.pth.tar` continues a run.
"""
import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel

import timm
from timm import utils
from timm.data import FastCollateMixup, ImageDataset, Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.models import VARIANTS, NoPretrainedWeightsError, uses_mixer_trait
from timm_cada.checkpoint import (
    CHECKPOINT_VERSION, checkpoint_state_dict, copy_checkpoint, plain, read_checkpoint, save_checkpoint)
from timm_cada.train_utils import BadImageError, StrictImageDataset, check_data_dir, check_model_name, load_recipe
from timm_cada.warm_start import warm_start

_logger = logging.getLogger('train')

# Options of this trainer that timm's train.py does not have; shared recipes must not use them.
OURS_ONLY = ('warm_start', 'stop_after')
# Options that belong on the command line, never in a shared recipe.
NOT_IN_RECIPE = ('config', 'data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'warm_start', 'local_rank')

LAST, BEST = 'last.pth.tar', 'model_best.pth.tar'
EVAL_METRICS = ('top1', 'top5', 'loss')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='timm-cada trainer (timm train.py argument names)')
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML recipe of argument defaults')

    group = parser.add_argument_group('Dataset')
    group.add_argument('data', nargs='?', metavar='DIR', const=None, help='dataset root (or --data-dir)')
    group.add_argument('--data-dir', metavar='DIR', help='dataset root')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='timm dataset: "" for an ImageFolder / tar, or torch/, hfds/, wds/, tfds/ prefixes')
    group.add_argument('--train-split', metavar='NAME', default='train')
    group.add_argument('--val-split', metavar='NAME', default='validation')
    group.add_argument('--train-num-samples', type=int, default=None, help='samples per epoch (iterable datasets)')
    group.add_argument('--val-num-samples', type=int, default=None)
    group.add_argument('--dataset-download', action='store_true', default=False)
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME')
    group.add_argument('--input-img-mode', default=None, type=str)
    group.add_argument('--input-key', default=None, type=str)
    group.add_argument('--target-key', default=None, type=str)

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='resnet50_cada_k7', type=str, metavar='MODEL')
    group.add_argument('--pretrained', action='store_true', default=False)
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='start from these weights (EMA weights when the checkpoint has them; read with '
                            'weights_only=True); ignored with --resume')
    group.add_argument('--warm-start', default='', type=str, metavar='SRC',
                       help='initialise matching weights from a checkpoint file or a pretrained timm model name '
                            '(timm_cada.warm_start), e.g. resnet50.a1_in1k; ignored with --resume')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='continue a run from its checkpoint (model, optimizer, scheduler, EMA, scaler, epoch)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='with --resume, restore only the weights and epoch')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='classes (default: from the ImageFolder classes)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL')
    group.add_argument('--img-size', type=int, default=None, metavar='N')
    group.add_argument('--in-chans', type=int, default=None, metavar='N')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    group.add_argument('--crop-pct', default=None, type=float)
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    group.add_argument('--channels-last', action='store_true', default=False)
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    group.add_argument('--grad-checkpointing', action='store_true', default=False)
    group.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs,
                       help='extra timm.create_model kwargs, e.g. mixer_args="dict(num_bases=4)"')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='torch.compile the model with this backend')
    group.add_argument('--torchcompile-mode', type=str, default=None)

    group = parser.add_argument_group('Device & distributed')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    group.add_argument('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    group.add_argument('--amp-dtype', default='float16', type=str, help='float16 (with loss scaling) or bfloat16')
    group.add_argument('--no-ddp-bb', action='store_true', default=False)
    group.add_argument('--sync-bn', action='store_true', default=False)
    group.add_argument('--dist-bn', type=str, default='reduce', help='"broadcast", "reduce" or "" after each epoch')
    group.add_argument('--local_rank', default=0, type=int)
    group.add_argument('--device-modules', default=None, type=str, nargs='+',
                       help='modules to import first (as timm train.py does), e.g. other model plugins')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=2e-5)
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    group.add_argument('--clip-mode', type=str, default='norm')
    group.add_argument('--layer-decay', type=float, default=None)
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs)

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER')
    group.add_argument('--sched-on-updates', action='store_true', default=False)
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate (default: lr_base * global batch / lr_base_size)')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE', help='"linear" or "sqrt"')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N')
    group.add_argument('--lr-k-decay', type=float, default=1.0)
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR')
    group.add_argument('--epochs', type=int, default=300, metavar='N')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N')
    group.add_argument('--warmup-prefix', action='store_true', default=False)
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE')
    group.add_argument('--stop-after', type=int, default=None, metavar='N',
                       help='leave after N epochs of this run (the schedule still spans --epochs); '
                            'continue later with --resume, e.g. under a job time limit')

    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', default=False)
    group.add_argument('--train-crop-mode', type=str, default=None)
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO')
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--vflip', type=float, default=0.)
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT')
    group.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy, e.g. rand-m9-mstd0.5')
    group.add_argument('--aug-repeats', type=float, default=0, help='repeated augmentation count')
    group.add_argument('--bce-loss', action='store_true', default=False)
    group.add_argument('--bce-sum', action='store_true', default=False)
    group.add_argument('--bce-target-thresh', type=float, default=None)
    group.add_argument('--bce-pos-weight', type=float, default=None)
    group.add_argument('--reprob', type=float, default=0., metavar='PCT')
    group.add_argument('--remode', type=str, default='pixel')
    group.add_argument('--recount', type=int, default=1)
    group.add_argument('--mixup', type=float, default=0.0)
    group.add_argument('--cutmix', type=float, default=0.0)
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', type=str, default='batch')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N')
    group.add_argument('--smoothing', type=float, default=0.1)
    group.add_argument('--train-interpolation', type=str, default='random')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT')
    group.add_argument('--bn-momentum', type=float, default=None)
    group.add_argument('--bn-eps', type=float, default=None)
    group.add_argument('--model-ema', action='store_true', default=False)
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False)
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true', default=False)

    group = parser.add_argument_group('Misc')
    group.add_argument('--seed', type=int, default=42, metavar='S')
    group.add_argument('--log-interval', type=int, default=50, metavar='N')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N')
    group.add_argument('--pin-mem', action='store_true', default=False)
    group.add_argument('--no-prefetcher', action='store_true', default=False)
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='run folder for checkpoints, summary.csv and results.json (default: output/train/MODEL)')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help=f'metric that selects model_best: {", ".join(EVAL_METRICS)}')
    return parser


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    """Command line over recipe (`-c`) over defaults; a recipe key that is no argument is an error."""
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.config:
        try:
            parser.set_defaults(**load_recipe(args.config, parser, forbidden=NOT_IN_RECIPE))
        except ValueError as e:
            parser.error(str(e))
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.data
    return args


class InputError(ValueError):
    """Bad user input found before anything is written."""


def _is_folder_dataset(args: argparse.Namespace) -> bool:
    return '/' not in args.dataset and not (args.data_dir or '').endswith('.tar')


def create_datasets(args: argparse.Namespace) -> Tuple[Any, Any]:
    """timm datasets for the train and eval splits; ImageFolders load strictly (a bad image is an error)."""
    if _is_folder_dataset(args):
        check_data_dir(args.data_dir, [args.train_split, args.val_split])
    common = dict(
        root=args.data_dir, class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
        seed=args.seed, input_img_mode=args.input_img_mode, input_key=args.input_key, target_key=args.target_key)
    train = create_dataset(
        args.dataset, split=args.train_split, is_training=True, num_samples=args.train_num_samples, **common)
    val = create_dataset(
        args.dataset, split=args.val_split, is_training=False, num_samples=args.val_num_samples, **common)
    train, val = [StrictImageDataset.from_dataset(d) if type(d) is ImageDataset else d for d in (train, val)]
    return train, val


def _num_classes(args: argparse.Namespace, dataset: Any) -> Optional[int]:
    if args.num_classes is not None:
        return args.num_classes
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return len(class_to_idx) if class_to_idx else None


def model_kwargs(args: argparse.Namespace, num_classes: Optional[int]) -> Dict[str, Any]:
    """The JSON-friendly timm.create_model kwargs of this run (recorded in every checkpoint)."""
    kwargs = dict(
        num_classes=num_classes, in_chans=args.in_chans, drop_rate=args.drop or None,
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


def train_one_epoch(
        epoch: int, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
        args: argparse.Namespace, device: torch.device, lr_scheduler: Any, autocast: Any,
        loss_scaler: Optional[utils.NativeScaler], model_ema: Optional[utils.ModelEmaV3],
        mixup_fn: Optional[Mixup]) -> Dict[str, float]:
    """One pass over the training loader; logs loss, lr and throughput every --log-interval steps."""
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
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        sync = nullcontext() if need_update or not args.distributed else model.no_sync()
        with sync:
            with autocast():
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
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)
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


def _checkpoint(args, model, kwargs, epoch, optimizer, lr_scheduler, loss_scaler, model_ema,
                eval_metrics: Dict[str, float], selected: str) -> Dict:
    """The checkpoint of `epoch`: training state, top-1 of each set of weights, and the selection metric by name."""
    state = {
        'arch': args.model,
        'model_kwargs': kwargs,
        'epoch': epoch,
        'state_dict': utils.unwrap_model(model).state_dict(),
        'optimizer': optimizer.state_dict(),
        'scheduler': plain(lr_scheduler.state_dict()) if lr_scheduler is not None else None,
        'top1': eval_metrics['top1'],
        'eval_metric': selected,
        'metric': eval_metrics[selected],
        'args': plain(vars(args)),
        'version': CHECKPOINT_VERSION,
    }
    if model_ema is not None:
        state['state_dict_ema'] = utils.unwrap_model(model_ema).state_dict()
        state['ema_top1'] = eval_metrics['ema_top1']
    if loss_scaler is not None:
        state['scaler'] = loss_scaler.state_dict()
    return state


@dataclasses.dataclass
class TrainingRun:
    """What the steps of `run` build and share: the model and its training state, the data, the output."""
    args: argparse.Namespace
    device: torch.device
    autocast: Callable[[], Any]
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    resume_state: Optional[Dict[str, Any]] = None
    model: Optional[nn.Module] = None
    model_ema: Optional[utils.ModelEmaV3] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    loss_scaler: Optional[utils.NativeScaler] = None
    lr_scheduler: Any = None
    start_epoch: int = 0
    num_epochs: int = 0
    selected: str = 'top1'
    output_dir: str = ''
    best_metric: Optional[float] = None


def _setup(args: argparse.Namespace) -> TrainingRun:
    """Plugins, the device and process group, the seed, and the checks of the options alone."""
    for module in args.device_modules or ():
        importlib.import_module(module)
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Process {args.rank} of {args.world_size} on {device} '
                     f'(backend {torch.distributed.get_backend()}).')
    utils.random_seed(args.seed, args.rank)
    if args.amp and args.amp_dtype not in ('float16', 'bfloat16'):
        raise InputError(f'--amp-dtype must be float16 or bfloat16, got {args.amp_dtype!r}')
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    if args.eval_metric not in EVAL_METRICS:
        raise InputError(f'--eval-metric must be one of {", ".join(EVAL_METRICS)}, got {args.eval_metric!r}')
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else nullcontext
    training = TrainingRun(args, device, autocast)
    if args.amp and amp_dtype == torch.float16:
        training.loss_scaler = utils.NativeScaler(device=device.type)
    return training


def _read_inputs(training: TrainingRun) -> Tuple[Any, Any]:
    """Everything the user can get wrong, checked before the model is built or a file is written: the model
    name, the checkpoint to resume, the datasets and the model kwargs. Returns the train and eval datasets."""
    args = training.args
    try:
        check_model_name(args.model)
        training.resume_state = read_checkpoint(args.resume) if args.resume else None
        if training.resume_state is not None and training.resume_state.get('arch') != args.model:
            raise InputError(
                f'--resume: {args.resume} is a {training.resume_state.get("arch")!r} checkpoint, not {args.model!r}')
        dataset_train, dataset_eval = create_datasets(args)
        training.kwargs = training.resume_state['model_kwargs'] if training.resume_state is not None else model_kwargs(
            args, _num_classes(args, dataset_train))
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from e
    return dataset_train, dataset_eval


def _create_model(training: TrainingRun) -> None:
    """The model with its first weights: pretrained, --initial-checkpoint or --warm-start (not on resume)."""
    args = training.args
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **training.kwargs)
    except NoPretrainedWeightsError as e:
        raise InputError(f'--pretrained: {e}') from e
    if training.resume_state is not None:
        if (args.initial_checkpoint or args.warm_start) and args.rank == 0:
            _logger.info('--resume: the run continues from its checkpoint; --initial-checkpoint / --warm-start ignored.')
    elif args.initial_checkpoint:
        try:
            model.load_state_dict(checkpoint_state_dict(read_checkpoint(args.initial_checkpoint)))
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise InputError(f'--initial-checkpoint: {e}') from e
    elif args.warm_start:
        warm_start(model, args.warm_start)
    if args.rank == 0:
        _logger.info(f'Model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), '
                     f'kwargs {training.kwargs}')
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    model.to(training.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    training.model = model


def _create_training_state(training: TrainingRun) -> None:
    """Optimizer, EMA and the epoch to start from, restored from the checkpoint on resume; then the model is
    wrapped for DDP and torch.compile."""
    args, state = training.args, training.resume_state
    _setup_lr(args)
    training.optimizer = create_optimizer_v2(training.model, **optimizer_kwargs(cfg=args))
    if state is not None:
        training.model.load_state_dict(state['state_dict'])
        if not args.no_resume_opt:
            training.optimizer.load_state_dict(state['optimizer'])
            if training.loss_scaler is not None and state.get('scaler') is not None:
                training.loss_scaler.load_state_dict(state['scaler'])
        training.start_epoch = state['epoch'] + 1
    if args.model_ema:
        training.model_ema = utils.ModelEmaV3(
            training.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
            device='cpu' if args.model_ema_force_cpu else None)
        if state is not None and state.get('state_dict_ema') is not None:
            training.model_ema.module.load_state_dict(state['state_dict_ema'])
    # model_best is chosen by the EMA weights' metric when there is an EMA (as timm's train.py does).
    training.selected = f'ema_{args.eval_metric}' if training.model_ema is not None else args.eval_metric
    if args.distributed:
        training.model = DistributedDataParallel(
            training.model, device_ids=[training.device.index] if training.device.type == 'cuda' else None,
            broadcast_buffers=not args.no_ddp_bb)
    if args.torchcompile:
        training.model = torch.compile(training.model, backend=args.torchcompile, mode=args.torchcompile_mode)


def _create_loaders(training: TrainingRun, dataset_train: Any, dataset_eval: Any) -> Tuple[Any, Any, Optional[Mixup]]:
    """The train and eval loaders with the model's data config, and the mixup function (None without mixup,
    or when the prefetcher's collate does it)."""
    args = training.args
    data_config = resolve_data_config(vars(args), model=utils.unwrap_model(training.model), verbose=args.rank == 0)
    collate_fn = mixup_fn = None
    if _mixup_active(args):
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=training.kwargs.get('num_classes', 1000))
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
        pin_memory=args.pin_mem, device=training.device, use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, train_crop_mode=args.train_crop_mode, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, num_aug_repeats=int(args.aug_repeats), collate_fn=collate_fn,
        **{**loader_common, 'interpolation': train_interpolation})
    loader_eval = create_loader(
        dataset_eval, batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        crop_pct=data_config['crop_pct'], **loader_common)
    return loader_train, loader_eval, mixup_fn


def _mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


def _create_scheduler(training: TrainingRun, updates_per_epoch: int) -> None:
    """timm's scheduler for --epochs, its state restored on resume unless the schedule's length changed."""
    args, state = training.args, training.resume_state
    training.lr_scheduler, training.num_epochs = create_scheduler_v2(
        training.optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    if state is not None and not args.no_resume_opt and state.get('scheduler'):
        if state['args'].get('epochs') == args.epochs:
            training.lr_scheduler.load_state_dict(state['scheduler'])
        elif args.rank == 0:
            _logger.info(f'--epochs changed from {state["args"].get("epochs")} to {args.epochs}: '
                         f'the schedule is rebuilt for the new length.')
    if training.start_epoch > 0:
        if args.sched_on_updates:
            training.lr_scheduler.step_update(training.start_epoch * updates_per_epoch)
        else:
            training.lr_scheduler.step(training.start_epoch)


def _prepare_output(training: TrainingRun, num_images: int) -> None:
    """The run folder with args.yaml; on resume, the metric of the model_best already there."""
    args = training.args
    training.output_dir = args.output or os.path.join('output', 'train', args.model)
    if args.rank != 0:
        return
    os.makedirs(training.output_dir, exist_ok=True)
    with open(os.path.join(training.output_dir, 'args.yaml'), 'w') as f:
        yaml.safe_dump(plain(vars(args)), f, sort_keys=False)
    best_path = os.path.join(training.output_dir, BEST)
    if training.resume_state is not None and os.path.isfile(best_path):
        best = read_checkpoint(best_path)
        if best.get('eval_metric') == training.selected:
            training.best_metric = best['metric']
        else:
            _logger.info(f'{BEST} was selected by {best.get("eval_metric")!r}, this run selects by '
                         f'{training.selected!r}: the next epoch replaces it.')
    _logger.info(f'Training {args.model} for epochs {training.start_epoch}..{training.num_epochs - 1} on {num_images} '
                 f'images ({args.world_size} process(es), global batch '
                 f'{args.batch_size * args.world_size * args.grad_accum_steps}, lr {args.lr:.3g}), '
                 f'output {training.output_dir}')


def _save_epoch(training: TrainingRun, epoch: int, train_metrics: Dict[str, float], eval_metrics: Dict[str, float]) -> None:
    """summary.csv, last.pth.tar, and model_best.pth.tar when the epoch's selection metric is the best yet."""
    args, out = training.args, training.output_dir
    lrs = [g['lr'] for g in training.optimizer.param_groups]
    utils.update_summary(epoch, train_metrics, eval_metrics, os.path.join(out, 'summary.csv'), lr=sum(lrs) / len(lrs))
    metric = eval_metrics[training.selected]
    last = os.path.join(out, LAST)
    save_checkpoint(_checkpoint(
        args, training.model, training.kwargs, epoch, training.optimizer, training.lr_scheduler, training.loss_scaler, training.model_ema,
        eval_metrics, training.selected), last)
    lower_is_better = args.eval_metric == 'loss'
    better = training.best_metric is None or (metric < training.best_metric if lower_is_better else metric > training.best_metric)
    if better:
        training.best_metric = metric
        copy_checkpoint(last, os.path.join(out, BEST))
    _logger.info(f'Epoch {epoch}: saved {last}' + (f' and {BEST} ({training.selected} {metric:.3f})' if better else ''))


def _train_epochs(training: TrainingRun, dataset_train: Any, loader_train: Any, loader_eval: Any,
                  mixup_fn: Optional[Mixup]) -> Tuple[int, Dict[str, float]]:
    """Epochs start_epoch.. (--stop-after of them at most): train, validate, save. Returns the end epoch and
    the last eval metrics (empty when no epoch ran)."""
    args = training.args
    train_loss_fn, eval_loss_fn = (f.to(training.device) for f in _make_loss(args, _mixup_active(args)))
    end_epoch = training.num_epochs if args.stop_after is None else min(training.num_epochs, training.start_epoch + args.stop_after)
    eval_metrics: Dict[str, float] = {}
    for epoch in range(training.start_epoch, end_epoch):
        if hasattr(dataset_train, 'set_epoch'):
            dataset_train.set_epoch(epoch)
        elif args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        train_metrics = train_one_epoch(
            epoch, training.model, loader_train, training.optimizer, train_loss_fn, args, training.device, training.lr_scheduler,
            training.autocast, training.loss_scaler, training.model_ema, mixup_fn)
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(training.model, args.world_size, args.dist_bn == 'reduce')
        eval_metrics = validate(training.model, loader_eval, eval_loss_fn, args, training.device, training.autocast)
        if training.model_ema is not None:
            ema_metrics = validate(training.model_ema, loader_eval, eval_loss_fn, args, training.device, training.autocast, ' (EMA)')
            eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
        training.lr_scheduler.step(epoch + 1, eval_metrics[training.selected])
        if args.rank == 0:
            _save_epoch(training, epoch, train_metrics, eval_metrics)
    if not eval_metrics:
        eval_metrics = validate(training.model, loader_eval, eval_loss_fn, args, training.device, training.autocast, ' (final)')
    return end_epoch, eval_metrics


def _write_results(training: TrainingRun, end_epoch: int, final: Dict[str, float]) -> None:
    """results.json: the final eval metrics and how many epochs of the schedule ran."""
    args = training.args
    results = {'model': args.model, 'epochs': end_epoch, 'num_epochs': training.num_epochs, 'top1': final['top1'],
               'top5': final['top5'], 'loss': final['loss'], 'best_metric': training.best_metric,
               'eval_metric': training.selected, 'model_kwargs': training.kwargs}
    if training.model_ema is not None and 'ema_top1' in final:
        results.update(ema_top1=final['ema_top1'], ema_top5=final['ema_top5'])
    with open(os.path.join(training.output_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    _logger.info(f'Final eval of {args.model}: top-1 {final["top1"]:.2f}%  top-5 {final["top5"]:.2f}%')


def run(args: argparse.Namespace) -> Tuple[nn.Module, Dict[str, float]]:
    """Train and evaluate as `args` say; returns the unwrapped model and its final eval metrics."""
    training = _setup(args)
    dataset_train, dataset_eval = _read_inputs(training)
    _create_model(training)
    _create_training_state(training)
    loader_train, loader_eval, mixup_fn = _create_loaders(training, dataset_train, dataset_eval)
    _create_scheduler(training, math.ceil(len(loader_train) / args.grad_accum_steps))
    _prepare_output(training, len(dataset_train))
    end_epoch, final = _train_epochs(training, dataset_train, loader_train, loader_eval, mixup_fn)
    if args.rank == 0:
        _write_results(training, end_epoch, final)
    return utils.unwrap_model(training.model), final


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
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
