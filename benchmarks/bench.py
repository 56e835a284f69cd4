""" Speed and memory of the CADA mixers and models, against depthwise convs and timm's resnet50.

    python benchmarks/bench.py                   # CPU, operator level, chunk study and model level, full run
    python benchmarks/bench.py --quick           # a few minutes: fewer shapes, models and repeats
    python benchmarks/bench.py --device cuda --amp bf16 --channels-last
    python benchmarks/bench.py --level onnx      # onnxruntime against PyTorch eager inference (CPU)

Every figure is the median over `--repeats` timed runs; every comparison (ratios to the depthwise
conv, to timm resnet50) is measured side by side in one process. The pairs level (the model-level targets,
in NCHW and channels_last: `--layout`) runs that in `--processes` fresh processes (3) and checks each target
on their median, since eager timings differ from one process to the next. Markdown tables go to stdout,
CSV files to `--out-dir`.

Peak memory: on CUDA, torch.cuda.max_memory_allocated. On CPU, the high-water mark of the tensor
memory allocated through PyTorch's CPU allocator during one call, from torch.profiler memory events
(inputs and parameters excluded, as they exist before the call; allocator-external scratch of
oneDNN is not seen).
"""
import argparse
import contextlib
import csv
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import yaml

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from timm.models.resnet import Bottleneck

import timm_cada  # noqa: F401  (registers the models)
from timm_cada.layers import Cada2d, DenseConv2d, DwConv2d, Local2d, Position2d
from timm_cada.ops import CADA_IMPLS, cada_filter, choose_backend, dense_pays
from timm_cada.ops import dense, taps
from timm_cada.profile import count_macs, count_params, cpu_name

STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))
KERNELS = (3, 7, 13)
BATCH, HEAD_DIM, BASES = 8, 16, 8
MODELS = (
    'resnet50', 'resnet50_mixerfree', 'resnet50_dw_k7', 'resnet50_cada_k7', 'resnet50_cada_k13',
    'resnet50_cada_k7_free', 'resnet50_position_k7', 'resnet50_local_k7',
)
COMPILE_MODELS = ('resnet50', 'resnet50_cada_k7')


class Pair(NamedTuple):
    """A model-level target: CADA against the depthwise-conv model of its k, timed in alternation."""
    model: str
    against: str
    targets: Tuple[Optional[float], float]  # CADA / DW img/s at inference (None: not measured) and training
    kwargs: Dict = {}  # timm.create_model's
    in_chans: int = 3
    img: Optional[int] = None  # None: the run's image size (224)
    train_batch: Optional[int] = None  # None: the run's


# the study's model as train/study.py trains it: its recipe's model kwargs, image size, channels and batch
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'train', 'configs', 'fashion_mnist.yaml')) as f:
    _STUDY = yaml.safe_load(f)
STUDY_PAIR = Pair('resnet26_cada_k7', 'resnet26_dw_k7', (None, 0.9),
                  dict(_STUDY['model_kwargs'], num_classes=_STUDY['num_classes']), _STUDY['in_chans'], _STUDY['img_size'],
                  _STUDY['batch_size'])
PAIRS = (
    Pair('resnet50_cada_k7', 'resnet50_dw_k7', (0.9, 0.95)),
    Pair('resnet50_cada_k13', 'resnet50_dw_k13', (0.8, 0.95)),
    STUDY_PAIR,
)
LAYOUTS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
PAIR_PROCESSES = 3  # each pair's ratios are measured in this many processes; a target counts on their median
ONNX_MODELS = ('resnet50_dw_k7', 'resnet50_cada_k7')
REFERENCE_MAX_K = 7  # the Python-loop reference with autograd takes seconds per call beyond this
# the environment that changes timings on CPU (see the Makefile's bench target), printed with the results
ENV_VARS = ('OMP_WAIT_POLICY', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')
# the backends that run CPU tensors for real (triton there only in its interpreter, for tests)
CPU_BACKENDS = tuple(b for b in CADA_IMPLS if b not in ('auto', 'reference', 'triton'))
# the setting that bounds each backend's batch chunks, and the values the chunk study tries (default first)
CHUNK_SETTINGS = {
    'taps': (taps, 'MAX_CHUNK_FRACTION', (0.5, 0.4, 0.25)),
    'dense': (dense, 'NUMEL_FACTOR', (1.5, 1.0, 2.0)),
}


# ---------------------------------------------------------------------------------------------- timing

class Runner:
    """Times callables and measures their peak memory on one device."""

    def __init__(self, device: torch.device, repeats: int, min_time: float, amp: Optional[torch.dtype]):
        self.device = device
        self.repeats = repeats
        self.min_time = min_time
        self.amp = amp

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], None]) -> float:
        """Median seconds per call; each timed run repeats fn until it lasts at least min_time."""
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        once = time.perf_counter() - t0
        inner = max(1, int(self.min_time / max(once, 1e-6)))
        runs = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            self.sync()
            runs.append((time.perf_counter() - t0) / inner)
        return statistics.median(runs)

    def peak_mem(self, fn: Callable[[], None]) -> float:
        """Peak bytes allocated during one call beyond what existed before it, in MiB."""
        if self.device.type == 'cuda':
            self.sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            self.sync()
            return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        return _cpu_peak_mem(fn) / 2 ** 20


def _cpu_peak_mem(fn: Callable[[], None]) -> int:
    from torch._C._profiler import _ExtraFields_Allocation
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if isinstance(node.extra_fields, _ExtraFields_Allocation):
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
        stack.extend(node.children)
    if not events:
        return 0
    # the allocator's running total (frees of blocks older than the call are not reported): peak over
    # the call, relative to the total just before its first allocation
    events.sort()
    base = events[0][2] - events[0][1]
    return max(e[2] for e in events) - base


# --------------------------------------------------------------------------------------- operator level

def unfold_cada(x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """The textbook local-attention implementation: every window materialised with F.unfold."""
    N, C, H, W = x.shape
    G, B, k, _ = bases.shape
    Ho, Wo = alpha.shape[-2:]
    attn = torch.einsum('ngbhw,gbd->ngdhw', alpha, bases.reshape(G, B, k * k))
    cols = F.unfold(x, k, padding=k // 2, stride=stride).view(N, G, C // G, k * k, Ho, Wo)
    return (cols * attn.unsqueeze(2)).sum(3).view(N, C, Ho, Wo)


def _op_inputs(C: int, H: int, k: int, device: torch.device):
    """x, alpha and bases of the CADA operator at one shape."""
    G = C // HEAD_DIM
    x = torch.randn(BATCH, C, H, H, device=device)
    alpha = torch.randn(BATCH, G, BASES, H, H, device=device).softmax(2)
    bases = torch.randn(G, BASES, k, k, device=device) * 0.1
    return x, alpha, bases


def _op_cases(C: int, H: int, k: int, device: torch.device, with_reference: bool) -> Dict[str, tuple]:
    """name -> (module or function, inputs) for every mixer and CADA backend at one shape."""
    x, alpha, bases = _op_inputs(C, H, k, device)
    cases: Dict[str, tuple] = {'dw_conv': (DwConv2d(C, C, k).to(device), (x,))}
    if k == 3:
        cases['dense_conv'] = (DenseConv2d(C, C, k).to(device), (x,))
    cases['unfold_ref'] = (unfold_cada, (x, alpha, bases))
    for impl in CADA_IMPLS:
        if impl == 'reference' and (not with_reference or k > REFERENCE_MAX_K):
            continue
        if impl == 'dense' and not dense_pays(H, H, k):
            continue  # never picked there: on 56 x 56 its many bands make it slower than the tap walk
        if impl == 'triton' and device.type != 'cuda':
            continue  # on CPU it runs in Triton's interpreter only (for tests)
        cases[f'cada_op_{impl}'] = (lambda a, b, c, impl=impl: cada_filter(a, b, c, impl=impl), (x, alpha, bases))
    cases['Cada2d'] = (Cada2d(C, C, k).to(device), (x,))
    cases['Cada2d_free'] = (Cada2d(C, C, k, identity_bases=True, num_bases=None).to(device), (x,))
    cases['Position2d'] = (Position2d(C, C, k, feat_size=H).to(device), (x,))
    cases['Local2d'] = (Local2d(C, C, k, feat_size=H).to(device), (x,))
    return cases


def bench_ops(run: Runner, stages, kernels, with_reference: bool, channels_last: bool) -> List[Dict]:
    rows = []
    for C, H in stages:
        for k in kernels:
            cases = _op_cases(C, H, k, run.device, with_reference)
            base = None
            for name, (fn, inputs) in cases.items():
                inputs = [t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t
                          for t in inputs]
                inputs = [t.detach().requires_grad_() for t in inputs]
                gy = torch.randn_like(fn(*inputs))

                def fwd():
                    with torch.no_grad(), run.autocast():
                        fn(*inputs)

                def fwd_bwd():
                    with run.autocast():
                        y = fn(*inputs)
                    y.backward(gy.to(y.dtype))

                row = dict(C=C, H=H, k=k, case=name, fwd_ms=run.time(fwd) * 1e3, fwd_bwd_ms=run.time(fwd_bwd) * 1e3,
                           peak_mib=run.peak_mem(fwd_bwd))
                if name == 'dw_conv':
                    base = row
                for key in ('fwd_ms', 'fwd_bwd_ms', 'peak_mib'):
                    row[key.split('_m')[0] + '_x_dw'] = row[key] / base[key] if base[key] else float('nan')
                rows.append(row)
                print('  op {C}@{H} k{k} {case}: fwd {fwd_ms:.2f} ms, fwd+bwd {fwd_bwd_ms:.2f} ms, '
                      'peak {peak_mib:.1f} MiB'.format(**row), file=sys.stderr, flush=True)
    return rows


# ResNet-50's mixers at 224 px: (C, input size, stride), the stride-2 ones opening layers 2 to 4
MIXER_SHAPES = ((64, 56, 1), (128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2), (512, 7, 1))


def bench_infer_backends(run: Runner, shapes, kernels, batch: int) -> List[Dict]:
    """Inference of every CPU backend of the CADA op at each of ResNet-50's mixer shapes, beside the depthwise
    conv and the CA generator of a Cada2d (what `choose_backend`'s CPU rule is set from)."""
    rows = []
    for C, H, stride in shapes:
        for k in kernels:
            x = torch.randn(batch, C, H, H, device=run.device)
            mixer = Cada2d(C, C, k, stride=stride).to(run.device).eval()
            dw = DwConv2d(C, C, k, stride=stride).to(run.device).eval()
            with torch.no_grad():
                alpha = mixer.ca_params(x)
            Ho = alpha.shape[-1]
            cases = {'dw_conv': lambda: dw(x), 'ca_generator': lambda: mixer.ca_params(x)}
            for impl in CPU_BACKENDS:
                cases[impl] = lambda impl=impl: cada_filter(x, alpha, mixer.bases, None, stride, 1, impl)
            row = dict(C=C, H=H, stride=stride, k=k, auto=choose_backend(Ho, Ho, k, grad=False)[0])
            with torch.no_grad(), run.autocast():
                for name, fn in cases.items():
                    row[f'{name}_ms'] = run.time(fn) * 1e3
            row['fastest'] = min(CPU_BACKENDS, key=lambda n: row[f'{n}_ms'])
            row['auto_x_dw'] = row[f"{row['auto']}_ms"] / row['dw_conv_ms']
            rows.append(row)
            print('  infer {C}@{H}/{stride} k{k}: auto {auto}, fastest {fastest}'.format(**row), file=sys.stderr, flush=True)
    return rows


def bench_chunks(run: Runner, shapes) -> List[Dict]:
    """Memory against time of the batch chunks of the PyTorch backends: CADA fwd+bwd with each value of the
    setting that bounds the chunks (CHUNK_SETTINGS) of the backend that 'auto' runs at the shape without the
    native kernels (which hold one head of one sample at a time, and have no chunks), against the depthwise
    conv, side by side."""
    rows = []
    for C, H, k in shapes:
        dw_mod = DwConv2d(C, C, k).to(run.device)
        x, alpha, bases = (t.requires_grad_() for t in _op_inputs(C, H, k, run.device))
        backend = 'dense' if dense_pays(H, H, k) else 'taps'
        module, name, values = CHUNK_SETTINGS[backend]
        default = getattr(module, name)
        gy = torch.randn_like(x)

        def dw():
            dw_mod(x).backward(gy)

        def op():
            cada_filter(x, alpha, bases, impl=backend).backward(gy)

        dw_ms, dw_mib = run.time(dw) * 1e3, run.peak_mem(dw)
        for value in values:
            setattr(module, name, value)
            try:
                ms, mib = run.time(op) * 1e3, run.peak_mem(op)
            finally:
                setattr(module, name, default)
            rows.append(dict(C=C, H=H, k=k, backend=backend, setting=name, value=value, fwd_bwd_ms=ms,
                             peak_mib=mib, fwd_bwd_x_dw=ms / dw_ms, peak_x_dw=mib / dw_mib if dw_mib else float('nan')))
            print('  chunks {C}@{H} k{k} {backend} {setting} {value}: fwd+bwd {fwd_bwd_ms:.2f} ms, '
                  'peak {peak_mib:.1f} MiB'.format(**rows[-1]), file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------ model level

class _NoMixer(nn.Module):
    """Stands in for a bottleneck's spatial mixer: identity, or 2x2 average pooling to keep stride 2."""

    def __init__(self, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


def create(name: str, **kwargs) -> nn.Module:
    """A model of the zoo, timm resnet50, or `resnet50_mixerfree` (resnet50 without its 3x3 convs)."""
    if name == 'resnet50_mixerfree':
        model = timm.create_model('resnet50', **kwargs)
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.conv2 = _NoMixer(m.conv2.stride[0])
        return model
    return timm.create_model(name, **kwargs)


def bench_models(run: Runner, names, compile_names, infer_batch: int, train_batch: int, img: int) -> List[Dict]:
    rows = []
    dev = run.device
    for name in names:
        model = create(name).to(dev)
        row = dict(model=name, params_m=count_params(model) / 1e6, gmacs=count_macs(model, (3, img, img)) / 1e9)
        modes = ['eager', 'channels_last'] + (['compile'] if name in compile_names else [])
        for mode in modes:
            m = model.to(memory_format=torch.channels_last if mode == 'channels_last' else torch.contiguous_format)
            fmt = torch.channels_last if mode == 'channels_last' else torch.contiguous_format
            xi = torch.randn(infer_batch, 3, img, img, device=dev).contiguous(memory_format=fmt)
            xt = torch.randn(train_batch, 3, img, img, device=dev).contiguous(memory_format=fmt)
            target = torch.randint(0, 1000, (train_batch,), device=dev)
            fwd = torch.compile(m) if mode == 'compile' else m
            opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)

            def infer():
                with torch.no_grad(), run.autocast():
                    fwd(xi)

            def train():
                opt.zero_grad(set_to_none=True)
                with run.autocast():
                    loss = F.cross_entropy(fwd(xt), target)
                loss.backward()
                opt.step()

            m.eval()
            t_inf = run.time(infer)
            row[f'infer_img_s_{mode}'] = infer_batch / t_inf
            if mode == 'eager':
                row['infer_peak_mib'] = run.peak_mem(infer)
            m.train()
            t_train = run.time(train)
            row[f'train_img_s_{mode}'] = train_batch / t_train
            if mode == 'eager':
                row['train_peak_mib'] = run.peak_mem(train)
            print(f'  model {name} {mode}: infer {infer_batch / t_inf:.2f} img/s, train {train_batch / t_train:.2f} img/s',
                  file=sys.stderr, flush=True)
        rows.append(row)
        del model
    ref = next((r for r in rows if r['model'] == 'resnet50'), None)
    for r in rows:
        if 'infer_img_s_compile' in r:
            r['infer_compile_x_eager'] = r['infer_img_s_compile'] / r['infer_img_s_eager']
            r['train_compile_x_eager'] = r['train_img_s_compile'] / r['train_img_s_eager']
        for key in ('infer_img_s_eager', 'train_img_s_eager'):
            if ref is not None:
                r[key.replace('_img_s_eager', '_x_resnet50')] = r[key] / ref[key]
    return rows


class _FreeOperator(torch.autograd.Function):
    """A stand-in for the CADA operator that does only what any kernel must: write y (x at the output's pixels)
    and, backward, x's gradient and alpha's (zero). A model run with it in place of the operator is as fast as
    the fastest kernel could make it: the rest is the model's own (its CA generators above all)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.stride, ctx.x_shape, ctx.channels_last = stride, x.shape, x.is_contiguous(memory_format=torch.channels_last)
        ctx.alpha_shape = alpha.shape
        return x[:, :, ::stride, ::stride].clone(memory_format=torch.preserve_format)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        if ctx.stride == 1:
            gx = gy
        else:
            fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
            gx = gy.new_zeros(ctx.x_shape).contiguous(memory_format=fmt)
            gx[:, :, ::ctx.stride, ::ctx.stride] = gy
        return gx, gy.new_zeros(ctx.alpha_shape), None


def free_operator(model: nn.Module) -> nn.Module:
    """`model` with the operator of every Cada2d replaced by _FreeOperator (its CA generator still runs)."""
    mixers = [m for m in model.modules() if isinstance(m, Cada2d)]
    if not mixers:
        raise ValueError(f'free_operator: {type(model).__name__} has no Cada2d mixer')
    for m in mixers:
        m.forward = functools.partial(lambda mod, x: _FreeOperator.apply(x, mod.ca_params(x), mod.stride), m)
    return model


def bench_pairs(run: Runner, pairs, infer_batch: int, train_batch: int, img: int, rounds: int,
                channels_last: bool = False) -> List[Dict]:
    """CADA against the depthwise-conv model of the same k, as a user runs them (eager; NCHW unless
    `channels_last`): `rounds` rounds, each timing A then B (inference, then a training step with SGD), so both
    see the same machine state; the ratio of each round, and their median, min and max. A pair's own image size
    and training batch replace img and train_batch; it skips inference where it sets no target for it. Each
    round also times A with a free operator (`free_operator`): its ratio to B (`*_ratio_free`) bounds what
    faster CADA kernels could give."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for pair in pairs:
        a_name, b_name = pair.model, pair.against
        size, tbatch = pair.img or img, pair.train_batch or train_batch
        models = {n: create(n, in_chans=pair.in_chans, **pair.kwargs).to(run.device, memory_format=fmt)
                  for n in (a_name, b_name)}
        free = f'{a_name} (free operator)'
        models[free] = free_operator(create(a_name, in_chans=pair.in_chans, **pair.kwargs).to(run.device, memory_format=fmt))
        xi = torch.randn(infer_batch, pair.in_chans, size, size, device=run.device).contiguous(memory_format=fmt)
        xt = torch.randn(tbatch, pair.in_chans, size, size, device=run.device).contiguous(memory_format=fmt)
        target = torch.randint(0, models[a_name].num_classes, (tbatch,), device=run.device)
        opts = {n: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for n, m in models.items()}

        def infer(m):
            with torch.no_grad(), run.autocast():
                m(xi)

        def train(m, opt):
            opt.zero_grad(set_to_none=True)
            with run.autocast():
                loss = F.cross_entropy(m(xt), target)
            loss.backward()
            opt.step()

        row = dict(model=a_name, against=b_name, layout='channels_last' if channels_last else 'nchw')
        for mode, batch in (('infer', infer_batch), ('train', tbatch)):
            if mode == 'infer' and pair.targets[0] is None:
                continue
            speeds = {n: [] for n in models}
            for _ in range(rounds):
                for n, m in models.items():
                    m.train(mode == 'train')
                    step = functools.partial(infer, m) if mode == 'infer' else functools.partial(train, m, opts[n])
                    speeds[n].append(batch / run.time(step))
            ratios = [a / b for a, b in zip(speeds[a_name], speeds[b_name])]
            row.update({f'{mode}_img_s': statistics.median(speeds[a_name]),
                        f'{mode}_img_s_against': statistics.median(speeds[b_name]),
                        f'{mode}_ratio': statistics.median(ratios), f'{mode}_ratio_min': min(ratios),
                        f'{mode}_ratio_max': max(ratios),
                        f'{mode}_ratio_free': statistics.median(a / b for a, b in zip(speeds[free], speeds[b_name]))})
            print(f'  pair {a_name} / {b_name} {mode}: ' + ' '.join(f'{r:.2f}' for r in ratios), file=sys.stderr, flush=True)
        rows.append(row)
        del models, opts
    return rows


def pairs_in_processes(argv: List[str], processes: int) -> List[List[Dict]]:
    """The pairs level run `processes` times, each in a fresh process (bench.py argv --level pairs), one after
    another: each process's rows. Eager timings differ from one process to the next (allocator and oneDNN
    state), more than from one round to the next."""
    runs = []
    for i in range(processes):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'pairs.json')
            cmd = [sys.executable, os.path.abspath(__file__), *argv, '--level', 'pairs', '--processes', '1',
                   '--pairs-json', out]
            print(f'  pairs: process {i + 1} of {processes}', file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                runs.append(json.load(f))
    return runs


def pair_summary(runs: List[List[Dict]]) -> List[Dict]:
    """One row per pair and layout from each process's rows: the median over the processes of each figure (of
    each process's median over its rounds), each process's ratio, and whether each target is met on the median."""
    targets = {p.model: p.targets for p in PAIRS}
    rows = []
    for rs in zip(*runs):
        row = {k: rs[0][k] for k in ('model', 'against', 'layout')}
        checks = []
        for mode, target in zip(('infer', 'train'), targets[row['model']]):
            if target is None:
                continue
            for key in (f'{mode}_img_s', f'{mode}_img_s_against', f'{mode}_ratio', f'{mode}_ratio_free'):
                row[key] = statistics.median(r[key] for r in rs)
            row[f'{mode}_ratio_each'] = ' '.join(f'{r[f"{mode}_ratio"]:.2f}' for r in rs)
            checks.append(f'{mode} >= {target}: {"met" if row[f"{mode}_ratio"] >= target else "missed"}')
        row['targets'] = '; '.join(checks)
        rows.append(row)
    return rows


def bench_onnx(run: Runner, names, batch: int, img: int, exporter: str, out_dir: str) -> List[Dict]:
    """Inference in onnxruntime (CPU, its default threads) against PyTorch eager, side by side, on the ONNX
    file timm_cada.export writes (dynamic batch, height and width), with the two outputs' difference."""
    from timm_cada.export import export_onnx, onnx_runner, parity
    rows = []
    for name in names:
        model = create(name).eval()
        x = torch.randn(batch, 3, img, img)
        path = os.path.join(out_dir, f'{name}.onnx')
        t0 = time.perf_counter()
        export_onnx(model, path, x, exporter)
        export_s = time.perf_counter() - t0
        ort_run = onnx_runner(path)  # zero-copy in and out: the timing is onnxruntime's

        def eager():
            with torch.no_grad():
                model(x)

        t_eager = run.time(eager)
        t_ort = run.time(lambda: ort_run(x))
        err = parity(model, ort_run, [x])[0]['rel_err']
        rows.append(dict(model=name, exporter=exporter, export_s=export_s, eager_img_s=batch / t_eager,
                         onnxruntime_img_s=batch / t_ort, onnxruntime_x_eager=t_eager / t_ort, rel_err=err))
        print(f'  onnx {name}: eager {batch / t_eager:.2f} img/s, onnxruntime {batch / t_ort:.2f} img/s',
              file=sys.stderr, flush=True)
        os.remove(path)
    return rows


# -------------------------------------------------------------------------------------------- reporting

def op_targets(rows: List[Dict]) -> List[Dict]:
    """Per shape and k: CADA (operator with 'auto', and the whole Cada2d mixer) against the depthwise
    conv (fwd+bwd time, peak memory) and the unfold reference's fwd+bwd time against CADA's."""
    by = {(r['C'], r['H'], r['k'], r['case']): r for r in rows}
    out = []
    for (C, H, k, case), dw in by.items():
        if case != 'dw_conv' or (C, H, k, 'cada_op_auto') not in by:
            continue
        op, mixer, unfold = by[(C, H, k, 'cada_op_auto')], by[(C, H, k, 'Cada2d')], by[(C, H, k, 'unfold_ref')]
        out.append(dict(
            C=C, H=H, k=k, dw_fwd_bwd_ms=dw['fwd_bwd_ms'], op_fwd_bwd_x_dw=op['fwd_bwd_x_dw'],
            mixer_fwd_bwd_x_dw=mixer['fwd_bwd_x_dw'], op_peak_x_dw=op['peak_x_dw'], mixer_peak_x_dw=mixer['peak_x_dw'],
            unfold_fwd_bwd_x_op=unfold['fwd_bwd_ms'] / op['fwd_bwd_ms'], op_fwd_x_dw=op['fwd_x_dw']))
    return out



def markdown(rows: List[Dict], cols: List[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f'{v:.3g}' if abs(v) < 100 else f'{v:.0f}'
        return '' if v is None else str(v)
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(r.get(c)) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def write_csv(rows: List[Dict], path: str) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)


def environment(args, run: Runner) -> str:
    dev = torch.cuda.get_device_name() if run.device.type == 'cuda' else cpu_name()
    load = '{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())
    return (f'date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device {dev}; '
            f'{os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; '
            + ', '.join(f'{v}={os.environ.get(v, "(unset)")}' for v in ENV_VARS)
            + f'; torch {torch.__version__}, '
            f'timm {timm.__version__}; amp {args.amp}; channels_last {args.channels_last}; '
            f'repeats {args.repeats}; load average {load}')


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'), help='autocast dtype')
    p.add_argument('--channels-last', action='store_true', help='operator level: channels_last inputs')
    p.add_argument('--level', default='all', choices=('op', 'infer', 'chunks', 'model', 'pairs', 'onnx', 'all'))
    p.add_argument('--rounds', type=int, default=None, help='pairs level: alternating rounds (default 4)')
    p.add_argument('--layout', default='both', choices=('nchw', 'channels_last', 'both'),
                   help='pairs level: the models\' and inputs\' memory format')
    p.add_argument('--processes', type=int, default=None,
                   help=f'pairs level: processes per measurement, the target on their median (default {PAIR_PROCESSES}, '
                        'dry run 1)')
    p.add_argument('--pairs-json', default=None, help=argparse.SUPPRESS)  # a pairs process's rows, for its parent
    p.add_argument('--quick', action='store_true', help='a short run: fewer shapes, models and repeats')
    p.add_argument('--dry-run', action='store_true', help='run every code path on tiny shapes (for tests)')
    p.add_argument('--repeats', type=int, default=None, help='timed runs per figure (median reported)')
    p.add_argument('--models', nargs='*', default=None, help='model names (default: the suite)')
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile column')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    p.add_argument('--out-dir', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.device not in ('cpu', 'cuda'):
        p.error(f'--device must be cpu or cuda, got {args.device!r}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: no CUDA device is available')
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.dry_run:
        # every code path on tiny shapes, for the tests: numbers meaningless
        args.repeats, min_time, stages, kernels, img, batches = 1, 0.0, ((32, 8),), (3,), 64, (2, 2)
        names, compile_names = args.models or ('resnet50', 'resnet50_mixerfree', 'resnet50_cada_k7'), ()
        onnx_names, exporter = args.models or ('resnet26_cada_k7',), 'torchscript'  # the quick exporter: same code path after it
    elif args.quick:
        args.repeats, min_time, stages, kernels, img, batches = args.repeats or 3, 0.02, STAGES[1:3], (7, 13), 224, (16, 8)
        names, compile_names = args.models or ('resnet50', 'resnet50_mixerfree', 'resnet50_dw_k7', 'resnet50_cada_k7'), ()
        onnx_names, exporter = args.models or ONNX_MODELS, 'dynamo'
    else:
        args.repeats, min_time, stages, kernels, img, batches = args.repeats or 5, 0.05, STAGES, KERNELS, 224, (16, 8)
        names, compile_names = args.models or MODELS, COMPILE_MODELS
        onnx_names, exporter = args.models or ONNX_MODELS, 'dynamo'
    if args.no_compile:
        compile_names = ()
    amp = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]
    run = Runner(torch.device(args.device), args.repeats, min_time, amp)
    tag = args.device + ('' if amp is None else '_' + args.amp) + ('_cl' if args.channels_last else '')
    os.makedirs(args.out_dir, exist_ok=True)

    print(f'# timm-cada benchmarks ({tag})\n\n{environment(args, run)}\n')
    if args.level in ('op', 'all'):
        rows = bench_ops(run, stages, kernels, with_reference=not args.quick, channels_last=args.channels_last)
        write_csv(rows, os.path.join(args.out_dir, f'ops_{tag}.csv'))
        print('## Operator level (batch {}, head_dim {}, {} bases; times in ms, peak in MiB)\n'.format(
            BATCH, HEAD_DIM, BASES))
        print(markdown(rows, ['C', 'H', 'k', 'case', 'fwd_ms', 'fwd_bwd_ms', 'peak_mib', 'fwd_x_dw', 'fwd_bwd_x_dw',
                              'peak_x_dw']) + '\n')
        print('### CADA (B {}, head_dim {}) against the depthwise conv and the unfold reference\n'.format(
            BASES, HEAD_DIM))
        targets = op_targets(rows)
        print(markdown(targets, list(targets[0]) if targets else []) + '\n')
    if args.level in ('infer', 'all') and args.device == 'cpu':  # the CPU backends' rule
        shapes = MIXER_SHAPES[-1:] if args.dry_run else MIXER_SHAPES
        rows = bench_infer_backends(run, shapes, kernels if args.dry_run else (7, 13), batches[0])
        write_csv(rows, os.path.join(args.out_dir, f'infer_{tag}.csv'))
        print('## Inference: the backends at each mixer shape of ResNet-50 (batch {}, B {}, head_dim 16; ms)\n'.format(
            batches[0], 8))
        print(markdown(rows, list(rows[0])) + '\n')
    if args.level in ('chunks', 'all'):
        # the dry run's stage map is dense: it adds a 16 x 16 one for the tap walk
        shapes = [(C, H, k) for C, H in stages for k in kernels if k > 3 or args.dry_run]
        rows = bench_chunks(run, shapes + [(32, 16, 3)] if args.dry_run else shapes)
        write_csv(rows, os.path.join(args.out_dir, f'chunks_{tag}.csv'))
        print('## Memory against time: the batch chunks of each backend\n')
        print(markdown(rows, list(rows[0])) + '\n')
    if args.level in ('model', 'all'):
        rows = bench_models(run, names, compile_names, batches[0], batches[1], img)
        write_csv(rows, os.path.join(args.out_dir, f'models_{tag}.csv'))
        print('## Model level (inference batch {}, training batch {} with an SGD step, {} x {})\n'.format(
            batches[0], batches[1], img, img))
        print(markdown(rows, ['model', 'params_m', 'gmacs', 'infer_img_s_eager', 'infer_x_resnet50',
                              'infer_img_s_channels_last', 'infer_img_s_compile', 'train_img_s_eager',
                              'train_x_resnet50', 'train_img_s_channels_last', 'train_img_s_compile',
                              'infer_compile_x_eager', 'train_compile_x_eager', 'infer_peak_mib',
                              'train_peak_mib']) + '\n')
    if args.level in ('pairs', 'all'):
        rounds = args.rounds or (1 if args.dry_run else 2 if args.quick else 4)
        processes = args.processes or (1 if args.dry_run else PAIR_PROCESSES)
        layouts = list(LAYOUTS) if args.layout == 'both' else [args.layout]
        pairs = [p._replace(img=None, train_batch=None) for p in PAIRS] if args.dry_run else PAIRS  # tiny shapes
        if processes > 1:
            runs = pairs_in_processes(argv, processes)
        else:
            runs = [[r for lay in layouts for r in bench_pairs(run, pairs, batches[0], batches[1], img, rounds,
                                                                channels_last=lay == 'channels_last')]]
        if args.pairs_json:
            with open(args.pairs_json, 'w') as f:
                json.dump(runs[0], f)
        rows = pair_summary(runs)
        write_csv(rows, os.path.join(args.out_dir, f'pairs_{tag}.csv'))
        study = pairs[PAIRS.index(STUDY_PAIR)]
        print('## Model level: CADA against DW of the same k, in alternation ({} rounds in each of {} processes; '
              'inference batch {}, training batch {} with an SGD step, {} x {}; the study\'s resnet26 pair in its recipe: '
              'training batch {}, {} x {}, {} channel; ratio = CADA img/s / DW img/s: the median over the processes of '
              'each one\'s median over its rounds; ratio_free: the same with CADA\'s operator replaced by a stand-in '
              'that only writes its outputs, the most that faster CADA kernels could give)\n'.format(rounds, processes, batches[0], batches[1], img, img,
                                                              study.train_batch or batches[1], study.img or img,
                                                              study.img or img, study.in_chans))
        print(markdown(rows, ['model', 'against', 'layout', 'infer_img_s', 'infer_img_s_against', 'infer_ratio',
                              'infer_ratio_each', 'infer_ratio_free', 'train_img_s', 'train_img_s_against',
                              'train_ratio', 'train_ratio_each', 'train_ratio_free', 'targets']) + '\n')
    import importlib.util
    onnx_ready = importlib.util.find_spec('onnxruntime') is not None
    if args.level in ('onnx', 'all') and args.device == 'cpu' and amp is None and onnx_ready:
        rows = bench_onnx(run, onnx_names, batches[0], img, exporter, args.out_dir)
        write_csv(rows, os.path.join(args.out_dir, f'onnx_{tag}.csv'))
        print('## ONNX: onnxruntime against PyTorch eager inference (batch {}, {} x {}, float32)\n'.format(
            batches[0], img, img))
        print(markdown(rows, list(rows[0])) + '\n')
    elif args.level == 'onnx':
        why = 'pip install "timm-cada[export]"' if not onnx_ready else 'onnxruntime is benchmarked on CPU in float32 only'
        print(f'## ONNX: skipped ({why})\n')
    print('end: {:%Y-%m-%d %H:%M} UTC, load average {:.2f} {:.2f} {:.2f}'.format(
        datetime.datetime.now(datetime.timezone.utc), *os.getloadavg()))


if __name__ == '__main__':
    main()
