""" Registration of the fast backends as torch.library custom ops, and the helpers they share.

Each backend supplies a forward and a hand-written backward as plain functions; this wraps them as
custom ops (the backward a custom op too) with fake kernels and autograd, so autograd, autocast,
torch.compile (one opaque op: no graph break, no tracing of the loops inside) and torch.export see
one op per call. Autocast is off inside every forward and backward body (`_no_autocast`): the
backends accumulate half-precision inputs in float32 themselves (`acc_dtype`). Gradients are first
order only.
"""
import functools
from typing import Callable, Optional, Tuple

import torch

from .reference import filter_output_size


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half-precision inputs in float32 (sums run over k*k taps and head_dim channels)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """x's layout: channels_last where x is channels_last and not also NCHW-contiguous, else NCHW."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def out_like(x: torch.Tensor, Ho: int, Wo: int) -> torch.Tensor:
    """The (N, C, Ho, Wo) output buffer, in x's dtype and memory format."""
    return torch.empty(x.shape[0], x.shape[1], Ho, Wo, dtype=x.dtype, device=x.device, memory_format=memory_format(x))


def _no_autocast(fn: Callable) -> Callable:
    """fn with autocast off for the device of its first tensor argument: a custom op called under
    autocast receives its inputs as they are, and the backend's own ops must not be recast."""

    @functools.wraps(fn)
    def wrapped(x: torch.Tensor, *args):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args)
    return wrapped


def _fake_out(x: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    H, W = x.shape[-2], x.shape[-1]
    return out_like(x, filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation))


def _grad_or_empty(g: torch.Tensor, t: torch.Tensor, need: bool) -> torch.Tensor:
    """The gradient for input t, contiguous in t's memory format (x's gradient channels_last for a
    channels_last x); for one not asked for, an empty tensor of t's dtype (the fake kernels promise
    exactly that)."""
    return g.contiguous(memory_format=memory_format(t)) if need else t.new_empty(0)


def _fake_grad(t: torch.Tensor, need: bool) -> torch.Tensor:
    return torch.empty_like(t, memory_format=memory_format(t)) if need else t.new_empty(0)


def _public(fn: Callable, name: str, doc: str, like: Callable) -> Callable:
    """fn as the backend's public function: its name, docstring and module (the forward's)."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    fn.__module__ = like.__module__
    return fn


def register_pixel_filter(name: str, fwd: Callable, bwd: Callable, doc: str) -> Callable:
    """timm_cada::{name}(x, attn, k, stride, dilation); bwd(gy, x, attn, k, stride, dilation, need_x,
    need_attn) returns (grad_x, grad_attn), an empty tensor for a gradient not asked for. Returns the
    backend's `pixel_filter` function, `name`(x, attn, kernel_size, stride=1, dilation=1), documented by doc."""
    fwd, bwd = _no_autocast(fwd), _no_autocast(bwd)

    @torch.library.custom_op(f'timm_cada::{name}', mutates_args=())
    def op(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
        return fwd(x, attn, k, stride, dilation)

    @torch.library.custom_op(f'timm_cada::{name}_backward', mutates_args=())
    def bwd_op(
            gy: torch.Tensor, x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int,
            need_x: bool, need_attn: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        gx, ga = bwd(gy, x, attn, k, stride, dilation, need_x, need_attn)
        return _grad_or_empty(gx, x, need_x), _grad_or_empty(ga, attn, need_attn)

    @op.register_fake
    def _(x, attn, k, stride, dilation):
        return _fake_out(x, k, stride, dilation)

    @bwd_op.register_fake
    def _(gy, x, attn, k, stride, dilation, need_x, need_attn):
        return _fake_grad(x, need_x), _fake_grad(attn, need_attn)

    def setup_context(ctx, inputs, output):
        x, attn, k, stride, dilation = inputs
        ctx.save_for_backward(x, attn)
        ctx.args = (k, stride, dilation)

    def backward(ctx, gy):
        x, attn = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, ga = bwd_op(gy, x, attn, *ctx.args, need[0], need[1])
        return gx if need[0] else None, ga if need[1] else None, None, None, None

    op.register_autograd(backward, setup_context=setup_context)

    def pixel_filter(x: torch.Tensor, attn: torch.Tensor, kernel_size: int, stride: int = 1,
                     dilation: int = 1) -> torch.Tensor:
        return op(x, attn, kernel_size, stride, dilation)
    return _public(pixel_filter, name, doc, fwd)


def register_cada(name: str, fwd: Callable, bwd: Callable, doc: str) -> Callable:
    """timm_cada::{name}(x, alpha, bases, rel_pos, stride, dilation); bwd(gy, x, alpha, bases, rel_pos,
    stride, dilation, need_x, need_alpha, need_bases, need_rel) returns the four gradients, an empty
    tensor for each not asked for. Returns the backend's `cada_filter` function, `name`(x, alpha, bases,
    rel_pos=None, stride=1, dilation=1), documented by doc."""
    fwd, bwd = _no_autocast(fwd), _no_autocast(bwd)

    @torch.library.custom_op(f'timm_cada::{name}', mutates_args=())
    def op(
            x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
            stride: int, dilation: int,
    ) -> torch.Tensor:
        return fwd(x, alpha, bases, rel_pos, stride, dilation)

    @torch.library.custom_op(f'timm_cada::{name}_backward', mutates_args=())
    def bwd_op(
            gy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor,
            rel_pos: Optional[torch.Tensor], stride: int, dilation: int,
            need_x: bool, need_alpha: bool, need_bases: bool, need_rel: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        grads = bwd(gy, x, alpha, bases, rel_pos, stride, dilation, need_x, need_alpha, need_bases, need_rel)
        rel, need_rel = (rel_pos, need_rel) if rel_pos is not None else (x, False)
        return (_grad_or_empty(grads[0], x, need_x), _grad_or_empty(grads[1], alpha, need_alpha),
                _grad_or_empty(grads[2], bases, need_bases), _grad_or_empty(grads[3], rel, need_rel))

    @op.register_fake
    def _(x, alpha, bases, rel_pos, stride, dilation):
        return _fake_out(x, bases.shape[-1], stride, dilation)

    @bwd_op.register_fake
    def _(gy, x, alpha, bases, rel_pos, stride, dilation, need_x, need_alpha, need_bases, need_rel):
        rel = _fake_grad(rel_pos, need_rel) if rel_pos is not None else x.new_empty(0)
        return _fake_grad(x, need_x), _fake_grad(alpha, need_alpha), _fake_grad(bases, need_bases), rel

    def setup_context(ctx, inputs, output):
        x, alpha, bases, rel_pos, stride, dilation = inputs
        ctx.save_for_backward(x, alpha, bases, rel_pos)
        ctx.args = (stride, dilation)

    def backward(ctx, gy):
        x, alpha, bases, rel_pos = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = bwd_op(gy, x, alpha, bases, rel_pos, *ctx.args, *need[:4])
        return tuple(g if n else None for g, n in zip(grads, need[:4])) + (None, None)

    op.register_autograd(backward, setup_context=setup_context)

    def cada(x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor] = None,
             stride: int = 1, dilation: int = 1) -> torch.Tensor:
        return op(x, alpha, bases, rel_pos, stride, dilation)
    return _public(cada, name, doc, fwd)
