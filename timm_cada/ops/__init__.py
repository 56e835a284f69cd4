""" CADA operators, apart from the modules that use them.

`pixel_filter` applies per-pixel kernels shared by the channels of a head; `cada_filter` applies
the context-weighted sum of base kernels. Each takes `impl` to pick a backend; every backend
computes the same function as the plain reference in `reference.py` (the tests hold them to it),
so a faster kernel drops in here without touching the layers or models.
"""
from typing import Optional

import torch

from .combine import cada_combine
from .dense import cada_dense, dense_pays, pixel_filter_dense
from .reference import cada_reference, filter_output_size, pixel_filter_reference, synthesize_attn  # noqa: F401
from .taps import cada_taps, pixel_filter_taps

PIXEL_FILTER_IMPLS = ('auto', 'reference', 'taps', 'dense')
CADA_IMPLS = ('auto', 'reference', 'combine', 'synthesize', 'dense')


def _check_shapes(x: torch.Tensor, kernels: torch.Tensor, name: str, kernel_dim: int):
    # str.format rather than f-strings with conversions: these run inside torch.jit.script too
    if x.dim() != 4:
        raise ValueError('x must be (N, C, H, W), got shape {}'.format(x.shape))
    if kernels.dim() != 5 or (kernels.shape[0] != 1 and kernels.shape[0] != x.shape[0]) or kernels.shape[2] != kernel_dim:
        raise ValueError('{} must be (N or 1, G, {}, Ho, Wo), got shape {}'.format(name, kernel_dim, kernels.shape))
    if x.shape[1] % kernels.shape[1] != 0:
        raise ValueError('{} has {} heads, which do not divide the {} channels of x'.format(
            name, kernels.shape[1], x.shape[1]))


def pixel_filter(
        x: torch.Tensor,
        attn: torch.Tensor,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        impl: str = 'auto',
) -> torch.Tensor:
    """y[n, c, p] = sum_d attn[n, g(c), d, p] * x[n, c, s * p + d]; attn is (N or 1, G, k * k, Ho, Wo).

    impl: 'auto' ('dense' on small output maps, see `dense_pays`, else 'taps'), 'reference', 'taps'
    (in-place tap accumulation) or 'dense' (each head's kernels as banded dense matrices, by GEMM).
    """
    _check_shapes(x, attn, 'attn', kernel_size * kernel_size)
    if impl not in ('auto', 'reference', 'taps', 'dense'):  # literal: TorchScript cannot read globals
        raise ValueError('impl must be one of auto, reference, taps, dense; got {}'.format(impl))
    if not torch.jit.is_scripting():
        # TorchScript cannot run custom ops' Python bodies: scripted models use the reference
        if impl == 'auto':
            impl = 'dense' if dense_pays(attn.shape[-2], attn.shape[-1], kernel_size) else 'taps'
        if impl == 'dense':
            return pixel_filter_dense(x, attn, kernel_size, stride, dilation)
        if impl == 'taps':
            return pixel_filter_taps(x, attn, kernel_size, stride, dilation)
    return pixel_filter_reference(x, attn, kernel_size, stride, dilation)


def _auto_cada_impl(x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor]) -> str:
    """The backend 'auto' runs, chosen from the shapes by what was fastest on the benchmark CPU
    (benchmarks/RESULTS.md).

    'dense' on small output maps (see `dense_pays`). Otherwise 'synthesize' whenever a gradient is needed
    (its backward avoids the slow depthwise-conv weight gradient), and for inference whichever
    streams less memory: 'synthesize' makes about k*k passes over the output, each (Wo + k - 1) / Wo
    longer than a row (the row pitch); 'combine' makes B passes plus B library depthwise convs, and
    wins once the first exceeds the second about 9 times: large kernels on small maps.
    """
    grads = (x.requires_grad or alpha.requires_grad or bases.requires_grad
             or (rel_pos is not None and rel_pos.requires_grad))
    grad = torch.is_grad_enabled() and grads
    k, num_bases, wo = bases.shape[-1], bases.shape[1], alpha.shape[-1]
    if dense_pays(alpha.shape[-2], wo, k, vs_combine=not grad):
        return 'dense'
    if grad:
        return 'synthesize'
    return 'combine' if k * k * (wo + k - 1) >= 9 * num_bases * wo else 'synthesize'


def cada_filter(
        x: torch.Tensor,
        alpha: torch.Tensor,
        bases: torch.Tensor,
        rel_pos: Optional[torch.Tensor] = None,
        stride: int = 1,
        dilation: int = 1,
        impl: str = 'auto',
) -> torch.Tensor:
    """CADA: y_c(p) = sum_d (sum_b alpha_{g,b}(p) W_{g,b}[d] + R_g[d]) x_c(s * p + d).

    Args:
        x: (N, C, H, W).
        alpha: CA parameters (N or 1, G, B, Ho, Wo).
        bases: base kernels (G, B, k, k).
        rel_pos: optional static kernel per head (G, k, k).
        impl: 'auto' (see `_auto_cada_impl`), 'reference', 'combine' (conv-then-combine, B library
            depthwise convs), 'synthesize' (synthesise-then-apply one window row at a time, in-place tap
            accumulation, hand-written backward) or 'dense' (each head's kernels as banded dense
            matrices, applied by GEMM; for small output maps).
    """
    _check_shapes(x, alpha, 'alpha', bases.shape[1])
    if impl not in ('auto', 'reference', 'combine', 'synthesize', 'dense'):
        raise ValueError('impl must be one of auto, reference, combine, synthesize, dense; got {}'.format(impl))
    if not torch.jit.is_scripting():
        if impl == 'auto':
            impl = _auto_cada_impl(x, alpha, bases, rel_pos)
        if impl == 'synthesize':
            return cada_taps(x, alpha, bases, rel_pos, stride, dilation)
        if impl == 'dense':
            return cada_dense(x, alpha, bases, rel_pos, stride, dilation)
    if impl == 'reference':
        return cada_reference(x, alpha, bases, rel_pos, stride, dilation)
    # 'combine', and in TorchScript (no custom ops' Python bodies) 'auto', 'synthesize' and 'dense'
    return cada_combine(x, alpha, bases, rel_pos, stride, dilation)
