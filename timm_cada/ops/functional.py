""" The public CADA operators and their dispatch: one backend table, one rule that picks a backend.

`pixel_filter` applies per-pixel kernels shared by the channels of a head; `cada_filter` applies the
context-weighted sum of base kernels. Both take `impl`, a backend name of `BACKENDS`, or 'auto' for
`choose_backend`'s pick. Every backend computes the same function as the plain reference
(`reference.py`, the tests hold them to it), so a faster kernel is one more entry here and never
touches the layers or models. The fast backends are torch.library custom ops that turn autocast off
around their own bodies (`custom_ops.py`); 'combine' and 'reference' are plain differentiable
PyTorch and follow autocast like any other op. ONNX has no translation of the custom ops, so while
torch.onnx exports, every impl but 'reference' runs 'combine' (convs and elementwise ops); TorchScript
cannot run their Python bodies, so a scripted model runs 'combine' for CADA and the reference for
per-pixel kernels. `_backend` makes every one of these choices.
"""
import logging
from typing import Optional, Tuple

import torch

from .combine import cada_combine, pixel_filter_combine
from .dense import cada_dense, pixel_filter_dense
from .native import cada_native, native_available, pixel_filter_native
from .reference import cada_reference, pixel_filter_reference
from .taps import cada_taps, pixel_filter_taps
from .triton_fused import cada_triton, pixel_filter_triton, triton_available

__all__ = ['BACKENDS', 'PIXEL_FILTER_IMPLS', 'CADA_IMPLS', 'cada_filter', 'pixel_filter', 'choose_backend',
           'dense_pays']

_logger = logging.getLogger(__name__)

# backend name -> (pixel_filter implementation, cada_filter implementation); None where it has none
BACKENDS = {
    'reference': (pixel_filter_reference, cada_reference),  # by the definition, autograd does the backward
    'taps': (pixel_filter_taps, cada_taps),  # in-place tap walk over a padded input, hand-written backward
    'dense': (pixel_filter_dense, cada_dense),  # banded dense matrices per head applied by GEMM: small maps
    'combine': (pixel_filter_combine, cada_combine),  # conv-then-combine: library convs, autograd
    'triton': (pixel_filter_triton, cada_triton),  # fused GPU kernels, kernels built on chip; CPU: interpreter
    'native': (pixel_filter_native, cada_native),  # fused CPU kernels in C, compiled on first use
}
PIXEL_FILTER_IMPLS = ('auto',) + tuple(n for n, (pf, _) in BACKENDS.items() if pf is not None)
CADA_IMPLS = ('auto',) + tuple(BACKENDS)


def _check_shapes(x: torch.Tensor, kernels: torch.Tensor, name: str, kernel_dim: int):
    # str.format rather than f-strings with conversions: these run inside torch.jit.script too
    if torch.jit.is_tracing():
        return  # a trace (the TorchScript ONNX exporter) would record the comparisons as constants, and warn
    if x.dim() != 4:
        raise ValueError('x must be (N, C, H, W), got shape {}'.format(x.shape))
    if kernels.dim() != 5 or (kernels.shape[0] != 1 and kernels.shape[0] != x.shape[0]) or kernels.shape[2] != kernel_dim:
        raise ValueError('{} must be (N or 1, G, {}, Ho, Wo), got shape {}'.format(name, kernel_dim, kernels.shape))
    if x.shape[1] % kernels.shape[1] != 0:
        raise ValueError('{} has {} heads, which do not divide the {} channels of x'.format(
            name, kernels.shape[1], x.shape[1]))


def dense_pays(Ho: int, Wo: int, k: int, grad: bool = True) -> bool:
    """Whether the banded matrix product beats the tap walk for an Ho x Wo output, k x k window.

    Measured on the benchmark CPU at ResNet-50's stage shapes, stride 1 and 2, batch 16 (benchmarks/RESULTS.md,
    "Model level: CADA against DW of the same k"): with a gradient it wins up to Ho * Wo = 16 k * k output
    pixels (28 x 28 at k = 7); in inference up to 12 k * k (14 x 14 at k = 7, 28 x 28 at k = 13). Beyond,
    the kernel maps of a single row of a chunk outgrow the chunk and the bands multiply the calls.
    """
    return Ho * Wo <= (16 if grad else 12) * k * k


def choose_backend(Ho: int, Wo: int, k: int, grad: bool, device: str = 'cpu') -> Tuple[str, str]:
    """(backend, why) that 'auto' runs, for both operators, on an Ho x Wo output on `device` (a device type).

    On CUDA, 'triton' wherever Triton is installed: one fused kernel, where the PyTorch backends launch
    about k*k kernels per chunk. On CPU, 'native' wherever its C kernels build (`native_available`): on the
    benchmark CPU the fastest backend, or within 10 % of it, in every cell measured at k = 7 and 13 (inference
    at each mixer shape of ResNet-50, fwd+bwd at each stage shape; benchmarks/RESULTS.md). Without a C compiler, the PyTorch backends that were fastest before it:
    'dense' on small output maps (`dense_pays`), 'taps' beyond. Conv-then-combine ('combine') is never
    faster: its B library depthwise convs cost more than the tap walk at k = 7, and at k = 13 oneDNN's
    depthwise conv alone is slower than the whole tap walk.
    """
    if device == 'cuda' and triton_available():
        return 'triton', 'CUDA: fused Triton kernel'
    if device == 'cpu' and native_available():
        return 'native', 'CPU: fused C kernel'
    mode = 'gradient' if grad else 'inference'
    if dense_pays(Ho, Wo, k, grad):
        return 'dense', f'{Ho}x{Wo} output, k={k}, {mode}: small map'
    return 'taps', f'{Ho}x{Wo} output, k={k}, {mode}: large map'


def _backend(op: str, impl: str, x: torch.Tensor, Ho: int, Wo: int, k: int, grad: bool) -> str:
    """The backend that runs `op` ('pixel_filter' or 'cada') for `impl`: every special case of the choice.

    TorchScript runs the PyTorch backends only: the reference for per-pixel kernels (it holds no k*k copies of
    the input, as combine's per-pixel path does) and for impl 'reference', else 'combine'. While torch.onnx
    exports, every impl but 'reference' runs 'combine' (ONNX has no translation of the custom ops). Under
    torch.export, 'auto' runs 'taps': the size rule on a dynamic height or width would put its comparisons into
    the program as guards. Otherwise 'auto' is `choose_backend`'s pick, logged at debug level with the reason.
    """
    # The names of CADA_IMPLS as a literal (TorchScript reads no globals); a test ties the two.
    names = ['auto', 'reference', 'taps', 'dense', 'combine', 'triton', 'native']
    if impl not in names:
        raise ValueError('impl must be one of {}; got {}'.format(', '.join(names), impl))
    if torch.jit.is_scripting():
        return 'reference' if op == 'pixel_filter' or impl == 'reference' else 'combine'
    else:
        if torch.onnx.is_in_onnx_export():
            return 'reference' if impl == 'reference' else 'combine'
        if impl != 'auto':
            return impl
        if torch.compiler.is_exporting():
            return 'taps'
        impl, why = choose_backend(Ho, Wo, k, grad, x.device.type)
        if not torch.compiler.is_compiling() and _logger.isEnabledFor(logging.DEBUG):
            _logger.debug('%s: auto chose %r (%s)', op, impl, why)
        return impl


def _needs_grad(x: torch.Tensor, kernels: torch.Tensor, bases: Optional[torch.Tensor] = None,
                rel_pos: Optional[torch.Tensor] = None) -> bool:
    """Whether autograd will ask for a gradient of any input (TorchScript takes no *args)."""
    return torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad
                                        or (bases is not None and bases.requires_grad)
                                        or (rel_pos is not None and rel_pos.requires_grad))


def pixel_filter(
        x: torch.Tensor,
        attn: torch.Tensor,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        impl: str = 'auto',
) -> torch.Tensor:
    """y[n, c, p] = sum_d attn[n, g(c), d, p] * x[n, c, s * p + d]; attn is (N or 1, G, k * k, Ho, Wo).

    impl: one of PIXEL_FILTER_IMPLS ('auto': see `choose_backend`).
    """
    _check_shapes(x, attn, 'attn', kernel_size * kernel_size)
    impl = _backend('pixel_filter', impl, x, attn.shape[-2], attn.shape[-1], kernel_size, _needs_grad(x, attn))
    if torch.jit.is_scripting():
        return pixel_filter_reference(x, attn, kernel_size, stride, dilation)
    else:
        return BACKENDS[impl][0](x, attn, kernel_size, stride, dilation)


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
        impl: one of CADA_IMPLS ('auto': see `choose_backend`).
    """
    _check_shapes(x, alpha, 'alpha', bases.shape[1])
    impl = _backend('cada', impl, x, alpha.shape[-2], alpha.shape[-1], bases.shape[-1],
                    _needs_grad(x, alpha, bases, rel_pos))
    if torch.jit.is_scripting():
        if impl == 'reference':
            return cada_reference(x, alpha, bases, rel_pos, stride, dilation)
        return cada_combine(x, alpha, bases, rel_pos, stride, dilation)
    else:
        return BACKENDS[impl][1](x, alpha, bases, rel_pos, stride, dilation)
