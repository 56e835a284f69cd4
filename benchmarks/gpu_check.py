""" The GPU check of the 'triton' backend: correctness against the reference, then speed against cuDNN.

    bash benchmarks/gpu_check.sh        # or: python benchmarks/gpu_check.py [--out FILE] [--quick]

1. Correctness: the triton backend's outputs and gradients against the float64 reference on the GPU, in
   float32, bfloat16 and float16, NCHW and channels_last, stride 1 and 2, dilation 2, rel_pos, k = 3, 7, 13,
   pixel_filter and cada_filter. Fails (exit 1) beyond the tolerance.
2. Operator level: CADA fwd+bwd (the op alone, and the Cada2d module with its CA generator) against cuDNN's
   depthwise conv of the same k, at ResNet-50's stage shapes, bf16 autocast, channels_last.
   Target: the op at most 2x the depthwise conv at every stage shape.
3. Model level: bench.py's CADA-against-DW pairs (k = 7 and 13) in alternation, inference and a training step
   (SGD, bf16 autocast, channels_last). Target: resnet50_cada_k7 trains at least 0.8x resnet50_dw_k7.

Every ratio is measured side by side in this one process (CUDA events through synchronize, median of
repeats). Markdown goes to stdout and to --out. Needs a CUDA GPU with torch, triton and timm installed.
"""
import argparse
import datetime
import os
import sys
from typing import Dict, List

import torch

import timm_cada  # noqa: F401  (registers the models)
from bench import PAIRS, STAGES, STUDY_PAIR, Runner, bench_pairs, markdown  # benchmarks/bench.py, this script's neighbour
from timm_cada.layers import Cada2d, DwConv2d
from timm_cada.ops import cada_filter, filter_output_size, pixel_filter
from timm_cada.ops.reference import cada_reference, pixel_filter_reference

HEAD_DIM, BASES = 16, 8
OP_TARGET = 2.0  # CADA fwd+bwd / depthwise conv fwd+bwd, at most
MODEL_TARGET = 0.8  # resnet50_cada_k7 / resnet50_dw_k7 training img/s, at least
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}  # of the reference's largest magnitude

# (k, stride, dilation, rel_pos, batch-1 kernel map)
CASES = [(3, 1, 1, False, False), (7, 1, 1, True, False), (7, 2, 1, True, False), (13, 1, 1, False, False),
         (3, 1, 2, True, False), (5, 2, 2, False, True)]


def check_correctness(dev: torch.device, size=(3, 64, 23, 20), cases=CASES) -> List[Dict]:
    """One row per case, dtype and layout: the worst error of the outputs and gradients, and whether it
    is within TOL. (Runs on CPU tensors too, in Triton's interpreter: the test suite does, on small sizes.)"""
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    N, C, H, W = size
    G = C // HEAD_DIM
    for k, s, d, with_rel, batch1 in cases:
        Ho, Wo = filter_output_size(H, k, s, d), filter_output_size(W, k, s, d)
        x = torch.randn(N, C, H, W, device=dev, generator=g)
        alpha = torch.randn(1 if batch1 else N, G, BASES, Ho, Wo, device=dev, generator=g).softmax(2)
        bases = torch.randn(G, BASES, k, k, device=dev, generator=g)
        rel = torch.randn(G, k, k, device=dev, generator=g) if with_rel else None
        attn = torch.randn(1 if batch1 else N, G, k * k, Ho, Wo, device=dev, generator=g)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for cl in (False, True):
                xin = x.to(dtype).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
                leaves = [t.detach().clone().requires_grad_() for t in (xin, alpha, bases, attn)
                          + ((rel,) if rel is not None else ())]
                ref_leaves = [t.detach().double().requires_grad_() for t in leaves]

                def run(ts, ref):
                    r = ts[4] if rel is not None else None
                    if ref:
                        return (cada_reference(ts[0], ts[1], ts[2], r, s, d),
                                pixel_filter_reference(ts[0], ts[3], k, s, d))
                    return (cada_filter(ts[0], ts[1], ts[2], r, s, d, impl='triton'),
                            pixel_filter(ts[0], ts[3], k, s, d, impl='triton'))

                outs, refs = run(leaves, False), run(ref_leaves, True)
                gys = [torch.randn(o.shape, device=dev, generator=g, dtype=torch.float64) for o in refs]
                got = torch.autograd.grad(outs, leaves, [gy.to(o.dtype) for gy, o in zip(gys, outs)])
                want = torch.autograd.grad(refs, ref_leaves, gys)
                errs = {}
                for name, a, b in [('y_cada', outs[0], refs[0]), ('y_pixel', outs[1], refs[1])] + [
                        (f'grad_{n}', a, b) for n, a, b in zip(('x', 'alpha', 'bases', 'attn', 'rel_pos'), got, want)]:
                    errs[name] = ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                worst = max(errs, key=errs.get)
                rows.append(dict(k=k, stride=s, dilation=d, rel_pos=with_rel, batch1=batch1, dtype=str(dtype)[6:],
                                 channels_last=cl, worst=worst, rel_err=errs[worst], ok=errs[worst] <= TOL[dtype]))
    return rows


def bench_ops(run: Runner, batch: int) -> List[Dict]:
    rows = []
    dev = run.device
    for C, H in STAGES:
        for k in (7, 13):
            for stride in (1, 2):
                G = C // HEAD_DIM
                Ho = filter_output_size(H, k, stride)
                # bf16, as a mixer sees it under autocast (autocast does not cast a custom op's inputs)
                x = torch.randn(batch, C, H, H, device=dev, dtype=torch.bfloat16).contiguous(
                    memory_format=torch.channels_last)
                alpha = torch.randn(batch, G, BASES, Ho, Ho, device=dev).softmax(2)
                bases = torch.randn(G, BASES, k, k, device=dev) * 0.1
                dw = DwConv2d(C, C, k, stride=stride).to(dev, memory_format=torch.channels_last)
                mixer = Cada2d(C, C, k, stride=stride).to(dev, memory_format=torch.channels_last)
                x, alpha, bases = (t.requires_grad_() for t in (x, alpha, bases))
                cases = {'dw_conv (cuDNN)': lambda: dw(x),
                         'cada op (triton)': lambda: cada_filter(x, alpha, bases, None, stride),
                         'Cada2d (triton)': lambda: mixer(x)}
                times = {}
                for name, fn in cases.items():
                    def step(fn=fn):
                        with run.autocast():
                            y = fn()
                        y.backward(torch.ones_like(y))
                    times[name] = run.time(step) * 1e3
                base = times['dw_conv (cuDNN)']
                rows.append(dict(C=C, H=H, k=k, stride=stride, dw_ms=base, op_ms=times['cada op (triton)'],
                                 mixer_ms=times['Cada2d (triton)'], op_x_dw=times['cada op (triton)'] / base,
                                 mixer_x_dw=times['Cada2d (triton)'] / base,
                                 ok=times['cada op (triton)'] / base <= OP_TARGET))
                print('  op {C}@{H} k{k} s{stride}: dw {dw_ms:.3f} ms, op {op_ms:.3f} ms, Cada2d {mixer_ms:.3f} ms'.format(
                    **rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'gpu_check.md'))
    p.add_argument('--quick', action='store_true', help='correctness and one repeat of each timing')
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error('needs a CUDA GPU (torch.cuda.is_available() is False)')
    dev = torch.device('cuda')
    torch.backends.cudnn.benchmark = True
    run = Runner(dev, 1 if args.quick else 5, 0.0 if args.quick else 0.1, torch.bfloat16)
    lines: List[str] = []
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def write(more: List[str]) -> None:
        """Print and append to --out section by section, so that a run cut short keeps what it measured."""
        lines.extend(more)
        print('\n'.join(more), flush=True)
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines))

    write([f'# GPU check of the triton backend: {torch.cuda.get_device_name(dev)}', '',
           f'torch {torch.__version__}, triton {__import__("triton").__version__}, CUDA {torch.version.cuda}, '
           f'cuDNN {torch.backends.cudnn.version()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC',
           ''])
    correct = check_correctness(dev)
    bad = [r for r in correct if not r['ok']]
    write(['## Correctness against the float64 reference (largest error / largest magnitude)', '',
           markdown(correct, list(correct[0])), '',
           f'{len(correct) - len(bad)} of {len(correct)} cases within tolerance ({TOL[torch.float32]:g} fp32, '
           f'{TOL[torch.bfloat16]:g} bf16, {TOL[torch.float16]:g} fp16).', ''])
    if not bad:
        ops = bench_ops(run, batch=64)
        write(['## Operator level: fwd+bwd, batch 64, bf16 input, bf16 autocast, channels_last, '
               f'B={BASES}, head_dim {HEAD_DIM} (target: op_x_dw <= {OP_TARGET})', '',
               markdown(ops, list(ops[0])), '', f'op target met at {sum(r["ok"] for r in ops)} of {len(ops)} shapes.', ''])
        rounds = 1 if args.quick else 3
        models = bench_pairs(run, [p for p in PAIRS if p is not STUDY_PAIR], 64, 64, 224, rounds, channels_last=True)
        cada = next(r for r in models if r['model'] == 'resnet50_cada_k7')
        write([f'## Model level: CADA against DW of the same k in alternation ({rounds} rounds), batch 64 at 224 px, '
               f'bf16 autocast, channels_last, SGD step (target: resnet50_cada_k7 train_ratio >= {MODEL_TARGET})', '',
               markdown(models, [c for c in models[0] if c != 'targets']), '',
               f'model target {"met" if cada["train_ratio"] >= MODEL_TARGET else "missed"} '
               f'({cada["train_ratio"]:.2f}x).', ''])
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
