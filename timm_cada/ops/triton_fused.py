""" The 'triton' backend: fused Triton kernels for GPUs (the kernels are in `_triton_kernels.py`).

Forward and backward are one kernel launch each (the backward two: the input's gradient as a gather
over input tiles, the kernels' gradient over output tiles), each program holding a tile of pixels for
all the channels of one head. CADA's per-pixel kernels are built on chip from the CA parameters and the
bases, tap by tap, so neither per-pixel kernels nor k*k copies of the input ever reach memory; the
bases' and rel_pos' gradients are summed from per-tile partials (deterministic, no atomics). float32,
bfloat16 and float16 inputs accumulate in float32, float64 in float64; any stride, dilation and memory
layout of x (channels_last included). Both operators are torch.library custom ops (`custom_ops.py`).

On CPU tensors the kernels run in Triton's interpreter when TRITON_INTERPRET=1 is set before the first
call (slowly: that is how the backend is tested without a GPU); otherwise CPU tensors are an error.
"""
import contextlib
import functools
import importlib.util
import os
from typing import Optional, Tuple

import torch

from .custom_ops import acc_dtype, out_like, register_cada, register_pixel_filter

# pixels per program: with the default head_dim of 16, a 16 x 128 float32 accumulator
BLOCK = 128
NUM_WARPS = 4


_HAS_TRITON = importlib.util.find_spec('triton') is not None


def triton_available() -> bool:
    """Whether Triton is installed (it ships with PyTorch's CUDA wheels on Linux); looked up once, at import."""
    return _HAS_TRITON


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1), which takes CPU tensors."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


@functools.lru_cache(maxsize=None)
def _kernels():
    if not triton_available():
        raise RuntimeError("impl='triton' needs the triton package (pip install triton); "
                           "use impl='auto' or another backend of timm_cada.ops.BACKENDS")
    from . import _triton_kernels
    return _triton_kernels


def _launch_context(x: torch.Tensor):
    if x.device.type == 'cuda':
        return torch.cuda.device(x.device)
    if not interpreting():
        raise RuntimeError(
            f"impl='triton' runs on CUDA tensors, got a {x.device.type} tensor; on CPU tensors it needs Triton's "
            "interpreter (TRITON_INTERPRET=1 set before the first call), or use impl='auto'")
    return contextlib.nullcontext()


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tl_acc(dtype: torch.dtype):
    import triton.language as tl
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


class _Launch:
    """Grid, block sizes and the arguments every kernel shares, for one call. `a` is the CA parameters
    (N or 1, G, B, Ho, Wo) with `synth` (CADA), else the kernel map (N or 1, G, k*k, Ho, Wo): its third
    dimension is the kernels' count either way."""

    def __init__(self, x: torch.Tensor, a: torch.Tensor, k: int, stride: int, dilation: int, synth: bool):
        N, C, H, W = x.shape
        _, G, nb, Ho, Wo = a.shape
        self.N, self.G, self.H, self.W, self.Ho, self.Wo, self.hd, self.nb = N, G, H, W, Ho, Wo, C // G, nb
        self.a_batch_stride = 0 if a.shape[0] == 1 else G * nb * Ho * Wo
        self.consts = dict(K=k, STRIDE=stride, DIL=dilation, SYNTH=synth, HD_PAD=_pow2(self.hd),
                           B_PAD=_pow2(nb) if synth else 1, ACC=_tl_acc(x.dtype), num_warps=NUM_WARPS)

    def dims(self) -> tuple:
        return self.G, self.H, self.W, self.Ho, self.Wo, self.hd, self.nb

    def grid(self, pixels: int) -> Tuple[Tuple[int, int], int]:
        """The grid ((sample, head) pairs, tiles) over `pixels` per map, and the tile's size."""
        block = min(BLOCK, max(16, _pow2(pixels)))
        return (self.N * self.G, -(-pixels // block)), block


def _forward(x, a, k, stride, dilation, w=None, r=None):
    """pixel_filter (a: the kernel map), or CADA with the bases w (a: alpha) and rel_pos r."""
    launch = _Launch(x, a, k, stride, dilation, synth=w is not None)
    y = out_like(x, launch.Ho, launch.Wo)
    if y.numel() == 0:
        return y
    grid, blk = launch.grid(launch.Ho * launch.Wo)
    with _launch_context(x):
        _kernels().filter_fwd_kernel[grid](
            x, a.contiguous(), w, r, y, *launch.dims(), *x.stride(), *y.stride(), launch.a_batch_stride,
            HAS_REL=r is not None, BLOCK=blk, **launch.consts)
    return y


def _backward(gy, x, a, k, stride, dilation, w, r, need_x, need_a, need_w, need_r):
    """(grad_x, grad_a, grad_w, grad_r), None for each not asked for; w and r as in `_forward`."""
    launch = _Launch(x, a, k, stride, dilation, synth=w is not None)
    a = a.contiguous()
    acc = acc_dtype(x.dtype)
    grad_x = grad_a = grad_w = grad_r = None
    with _launch_context(x):
        kernels = _kernels()
        if need_x:
            grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
            grid, blk = launch.grid(launch.H * launch.W)
            kernels.filter_bwd_x_kernel[grid](
                gy, a, w, r, grad_x, *launch.dims(), *gy.stride(), *grad_x.stride(), launch.a_batch_stride,
                HAS_REL=r is not None, BLOCK=blk, **launch.consts)
        need_w = need_w and w is not None
        need_r = need_r and r is not None
        if need_a or need_w or need_r:
            grid, blk = launch.grid(launch.Ho * launch.Wo)
            tiles = grid[0] * grid[1]
            # per sample (a batch-1 map's gradient is summed over the batch below)
            ga = x.new_empty((launch.N, launch.G, launch.nb, launch.Ho, launch.Wo) if need_a else (1,), dtype=acc)
            pw = x.new_empty((tiles, launch.nb, k * k) if need_w else (1,), dtype=acc)
            pr = x.new_empty((tiles, k * k) if need_r else (1,), dtype=acc)
            kernels.filter_bwd_kernels_kernel[grid](
                x, gy, a, w, ga, pw, pr, *launch.dims(), *x.stride(), *gy.stride(), launch.a_batch_stride,
                NEED_A=need_a, NEED_W=need_w, NEED_R=need_r, BLOCK=blk, **launch.consts)
            if need_a:
                grad_a = (ga.sum(0, keepdim=True) if a.shape[0] == 1 else ga).to(a.dtype)
            # tile t of (sample n, head g) is row (n * G + g) * tiles_per_map + t
            if need_w:
                grad_w = pw.view(launch.N, launch.G, grid[1], launch.nb, k, k).sum((0, 2)).to(w.dtype)
            if need_r:
                grad_r = pr.view(launch.N, launch.G, grid[1], k, k).sum((0, 2)).to(r.dtype)
    return grad_x, grad_a, grad_w, grad_r


def _pixel_filter_fwd(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    return _forward(x, attn, k, stride, dilation)


def _pixel_filter_bwd(gy, x, attn, k, stride, dilation, need_x, need_attn):
    gx, ga, _, _ = _backward(gy, x, attn, k, stride, dilation, None, None, need_x, need_attn, False, False)
    return gx, ga


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t.contiguous() if t is not None else None


def _cada_fwd(x, alpha, bases, rel_pos, stride, dilation):
    return _forward(x, alpha, bases.shape[-1], stride, dilation, bases.contiguous(), _contiguous(rel_pos))


def _cada_bwd(gy, x, alpha, bases, rel_pos, stride, dilation, need_x, need_alpha, need_bases, need_rel):
    return _backward(gy, x, alpha, bases.shape[-1], stride, dilation, bases.contiguous(), _contiguous(rel_pos),
                     need_x, need_alpha, need_bases, need_rel)


pixel_filter_triton = register_pixel_filter(
    'pixel_filter_triton', _pixel_filter_fwd, _pixel_filter_bwd,
    """`pixel_filter_reference` as one fused Triton kernel, with a fused backward (first order).""")
cada_triton = register_cada(
    'cada_triton', _cada_fwd, _cada_bwd,
    """`cada_reference` as one fused Triton kernel that builds each pixel's kernel on chip, with a fused
    backward (first order).""")
