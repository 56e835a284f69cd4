""" Shift-and-accumulate backends with hand-written backward passes, in plain PyTorch ops.

The k x k window is walked tap by tap over a zero-padded copy of x, each tap one fused multiply-add
over a batch chunk, accumulated in place; the backward walks the taps the same way for grad_x (a
scatter-add into a padded gradient) and for the kernels' gradient (the channels of a head summed per
tap). No tap is ever stored, and the batch is processed in chunks of about CHUNK_ELEMS outputs (and
at most MAX_CHUNK_FRACTION of the batch), so the temporaries (padded input, pitched gradient,
accumulators) stay within a few activations.

To keep every tap a long contiguous run, the padded input is flattened with its row pitch Wp: the
tap at (i, j) is then the slice starting at i * Wp + j, and the output is computed on the same
pitch, its Wp - Wo extra columns per row discarded. With stride s the padded input is first split
into its s * s phases x[a::s, b::s], so strided taps are contiguous slices of one phase.

Both operators are torch.library custom ops (`custom_ops.py`), so autograd, torch.compile and
torch.export see one op each. Gradients are first order only.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .custom_ops import acc_dtype, out_like, register_cada, register_pixel_filter
from .reference import filter_output_size

# accumulator elements per batch chunk (4 MiB of float32): on the benchmark CPU 2 to 4 times faster
# than 2^17 or 2^18 (fewer, longer ops, each paying for waking the thread pool), no faster beyond
CHUNK_ELEMS = 1 << 20
# and at most this fraction of the batch per chunk: a smaller one saves memory and costs time
# (benchmarks/RESULTS.md, 'Memory against time')
MAX_CHUNK_FRACTION = 0.5


class _Geometry:
    """Padding, phase layout and the (phase, offset) of every tap for one input size."""

    def __init__(self, H: int, W: int, k: int, stride: int, dilation: int):
        s = stride
        self.H, self.W, self.k, self.s = H, W, k, s
        self.pad = dilation * (k // 2)
        self.Ho = filter_output_size(H, k, stride, dilation)
        self.Wo = filter_output_size(W, k, stride, dilation)
        # each phase holds ceil(padded / s) rows and columns, plus one spare row so that the last
        # output row's discarded columns may read past the end
        self.Hph = -(-(H + 2 * self.pad) // s) + 1
        self.Wph = -(-(W + 2 * self.pad) // s)
        self.L = self.Ho * self.Wph
        self.taps: List[Tuple[int, int]] = []
        for d in range(k * k):
            oi, oj = dilation * (d // k), dilation * (d % k)
            self.taps.append(((oi % s) * s + oj % s, (oi // s) * self.Wph + oj // s))

    def phases(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> zero-padded phases (s * s, N, C, Hph * Wph)."""
        N, C = x.shape[:2]
        s, p = self.s, self.pad
        xp = x.new_zeros(N, C, self.Hph * s, self.Wph * s)
        xp[:, :, p:p + self.H, p:p + self.W] = x
        if s == 1:
            return xp.view(1, N, C, -1)
        xp = xp.view(N, C, self.Hph, s, self.Wph, s).permute(3, 5, 0, 1, 2, 4)
        return xp.reshape(s * s, N, C, -1)

    def zero_phases(self, N: int, C: int, like: torch.Tensor) -> torch.Tensor:
        """A zero (s * s, N, C, Hph * Wph) buffer: the layout of `phases`, for a gradient."""
        return like.new_zeros(self.s * self.s, N, C, self.Hph * self.Wph)

    def unphase(self, xph: torch.Tensor) -> torch.Tensor:
        """Inverse of `phases`, dropping the padding: (s * s, N, C, Hph * Wph) -> (N, C, H, W)."""
        s, p = self.s, self.pad
        N, C = xph.shape[1:3]
        xp = xph.view(s, s, N, C, self.Hph, self.Wph).permute(2, 3, 4, 0, 5, 1)
        xp = xp.reshape(N, C, self.Hph * s, self.Wph * s)
        return xp[:, :, p:p + self.H, p:p + self.W]

    def pitched(self, t: torch.Tensor) -> torch.Tensor:
        """(..., Ho, Wo) -> (..., Ho * Wph), the extra columns zero."""
        return F.pad(t, [0, self.Wph - self.Wo]).flatten(-2)

    def unpitched(self, t: torch.Tensor) -> torch.Tensor:
        """(..., Ho * Wph) -> (..., Ho, Wo)."""
        return t.unflatten(-1, (self.Ho, self.Wph))[..., :self.Wo]


def _chunks(n: int, per_sample: int) -> List[Tuple[int, int]]:
    """Batch slices of about CHUNK_ELEMS accumulator elements each, and at most MAX_CHUNK_FRACTION of
    the batch (the backward holds about five chunk-sized temporaries)."""
    step = max(1, min(CHUNK_ELEMS, int(n * per_sample * MAX_CHUNK_FRACTION)) // max(per_sample, 1))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _tap(xph: torch.Tensor, geo: _Geometry, d: int, G: int) -> torch.Tensor:
    """The input seen by tap d at every (pitched) output position, (N, G, head_dim, L)."""
    ph, off = geo.taps[d]
    xs = xph[ph, :, :, off:off + geo.L]
    return xs.view(xs.shape[0], G, -1, geo.L)


def _scatter(gxph: torch.Tensor, geo: _Geometry, d: int, gy: torch.Tensor, a: torch.Tensor) -> None:
    """grad_x at tap d's inputs += a * gy."""
    _tap(gxph, geo, d, gy.shape[1]).addcmul_(gy, a)


def _tap_grad(
        xph: torch.Tensor, geo: _Geometry, d: int, gy: torch.Tensor, buf: torch.Tensor, out: torch.Tensor,
        accumulate: bool = False,
) -> None:
    """out (N or 1, G, L) (+)= sum over a head's channels (and the batch, for a batch-1 out) of gy * x_d."""
    torch.mul(_tap(xph, geo, d, gy.shape[1]), gy, out=buf)
    if out.shape[0] == buf.shape[0] and not accumulate:
        torch.sum(buf, 2, out=out)  # straight into the (strided) destination: no temporary, no copy
        return
    g = buf.sum(2) if out.shape[0] == buf.shape[0] else buf.sum((0, 2)).unsqueeze(0)
    if accumulate:
        out.add_(g)
    else:
        out.copy_(g)


def _pitched_chunks(t: torch.Tensor, geo: _Geometry, dtype: torch.dtype, n0: int, n1: int, whole: Optional[torch.Tensor]):
    """Rows n0:n1 of t, pitched and cast; a batch-1 tensor is pitched once (`whole`)."""
    return whole if whole is not None else geo.pitched(t[n0:n1].to(dtype))


# Every function below works one batch chunk at a time: its padded phases, pitched gradient and
# accumulators exist for one chunk only (see `_chunks`).

def _pixel_filter_fwd(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    N, C, H, W = x.shape
    G = attn.shape[1]
    geo = _Geometry(H, W, k, stride, dilation)
    acc = acc_dtype(x.dtype)
    y = out_like(x, geo.Ho, geo.Wo)
    whole = geo.pitched(attn.to(acc)) if attn.shape[0] == 1 else None

    def chunk(n0: int, n1: int) -> None:
        xc, ac = geo.phases(x[n0:n1]), _pitched_chunks(attn, geo, acc, n0, n1, whole)
        oc = torch.mul(_tap(xc, geo, 0, G), ac[:, :, 0:1])
        for d in range(1, k * k):
            oc.addcmul_(_tap(xc, geo, d, G), ac[:, :, d:d + 1])
        y[n0:n1] = geo.unpitched(oc.view(n1 - n0, C, geo.L))

    # one chunk at a time: its temporaries are freed before the next chunk makes its own
    for n0, n1 in _chunks(N, C * geo.L):
        chunk(n0, n1)
    return y


def _pixel_filter_bwd(
        gy: torch.Tensor, x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int,
        need_x: bool, need_attn: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_attn); an empty tensor stands for a gradient not asked for."""
    N, C, H, W = x.shape
    G = attn.shape[1]
    kk = k * k
    geo = _Geometry(H, W, k, stride, dilation)
    acc = acc_dtype(x.dtype)
    grad_x = x.new_empty(x.shape) if need_x else x.new_empty(0)
    grad_attn = x.new_empty(0)
    whole = geo.pitched(attn.to(acc)) if attn.shape[0] == 1 else None
    # a per-sample map's gradient is finished chunk by chunk; a batch-1 map's sums over all of them
    batch1 = attn.shape[0] == 1
    ga1 = gy.new_zeros(1, G, kk, geo.L, dtype=acc) if need_attn and batch1 else None
    if need_attn and not batch1:
        grad_attn = attn.new_empty(attn.shape)

    # grad_x and the kernels' gradient in turn, so that the padded gradient and the padded input
    # never exist at once
    def chunk(n0: int, n1: int) -> None:
        ac = _pitched_chunks(attn, geo, acc, n0, n1, whole)
        gyc = geo.pitched(gy[n0:n1].to(acc)).view(n1 - n0, G, C // G, geo.L)
        if need_x:
            gxc = geo.zero_phases(n1 - n0, C, gyc)
            for d in range(kk):
                _scatter(gxc, geo, d, gyc, ac[:, :, d:d + 1])
            grad_x[n0:n1] = geo.unphase(gxc)
            del gxc
        if need_attn:
            xc, buf = geo.phases(x[n0:n1]), torch.empty_like(gyc)
            gac = ga1 if ga1 is not None else gy.new_empty(n1 - n0, G, kk, geo.L, dtype=acc)
            for d in range(kk):
                _tap_grad(xc, geo, d, gyc, buf, gac[:, :, d], accumulate=batch1)
            if not batch1:
                grad_attn[n0:n1] = geo.unpitched(gac)

    # one chunk at a time: its temporaries are freed before the next chunk makes its own
    for n0, n1 in _chunks(N, C * geo.L):
        chunk(n0, n1)
    if ga1 is not None:
        grad_attn = geo.unpitched(ga1).to(attn.dtype)
    return grad_x, grad_attn


def _cada_fwd(
        x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
        stride: int, dilation: int,
) -> torch.Tensor:
    N, C, H, W = x.shape
    G, B, k, _ = bases.shape
    geo = _Geometry(H, W, k, stride, dilation)
    acc = acc_dtype(x.dtype)
    y = out_like(x, geo.Ho, geo.Wo)
    bases = bases.to(acc)
    rel_pos = rel_pos.to(acc) if rel_pos is not None else None
    whole = geo.pitched(alpha.to(acc)) if alpha.shape[0] == 1 else None

    def chunk(n0: int, n1: int) -> None:
        xc, alc = geo.phases(x[n0:n1]), _pitched_chunks(alpha, geo, acc, n0, n1, whole)
        oc = torch.empty(0)
        for i in range(k):
            a_row = _synth_row(alc, bases, rel_pos, i)
            for j in range(k):
                xs = _tap(xc, geo, i * k + j, G)
                if i == 0 and j == 0:
                    oc = torch.mul(xs, a_row[:, :, 0:1])
                else:
                    oc.addcmul_(xs, a_row[:, :, j:j + 1])
        y[n0:n1] = geo.unpitched(oc.view(n1 - n0, C, geo.L))

    # one chunk at a time: its temporaries are freed before the next chunk makes its own
    for n0, n1 in _chunks(N, C * geo.L):
        chunk(n0, n1)
    return y


def _cada_bwd(
        gy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
        stride: int, dilation: int, need_x: bool, need_alpha: bool, need_bases: bool, need_rel: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_alpha, grad_bases, grad_rel_pos); an empty tensor stands for one not asked for.

    Each window row's kernels are synthesised again, and the kernel gradient of one row is folded
    into grad_alpha / grad_bases / grad_rel_pos at once, so nothing grows with k * k per pixel.
    """
    N, C, H, W = x.shape
    G, B, k, _ = bases.shape
    geo = _Geometry(H, W, k, stride, dilation)
    acc = acc_dtype(x.dtype)
    need_rel = need_rel and rel_pos is not None
    grad_x, grad_alpha, grad_bases, grad_rel = (x.new_empty(0) for _ in range(4))
    if need_x:
        grad_x = x.new_empty(x.shape)
    bases_a = bases.to(acc)
    rel_a = rel_pos.to(acc) if rel_pos is not None else None
    whole = geo.pitched(alpha.to(acc)) if alpha.shape[0] == 1 else None
    # a per-sample alpha's gradient is finished chunk by chunk; a batch-1 alpha's sums over all of them
    g_alpha1 = gy.new_zeros(1, G, B, geo.L, dtype=acc) if need_alpha and alpha.shape[0] == 1 else None
    if need_alpha and g_alpha1 is None:
        grad_alpha = alpha.new_empty(alpha.shape)
    g_bases = torch.zeros_like(bases_a) if need_bases else None
    g_rel = torch.zeros(G, k, k, dtype=acc, device=x.device) if need_rel else None
    need_kernels = need_alpha or need_bases or need_rel

    # per chunk, grad_x and then the kernels' gradient, so that the padded gradient and the padded
    # input (with the kernel-gradient buffers) never exist at once
    def chunk(n0: int, n1: int) -> None:
        alc = _pitched_chunks(alpha, geo, acc, n0, n1, whole)
        gyc = geo.pitched(gy[n0:n1].to(acc)).view(n1 - n0, G, C // G, geo.L)
        if need_x:
            gxc = geo.zero_phases(n1 - n0, C, gyc)
            for i in range(k):
                a_row = _synth_row(alc, bases_a, rel_a, i)
                for j in range(k):
                    _scatter(gxc, geo, i * k + j, gyc, a_row[:, :, j:j + 1])
            grad_x[n0:n1] = geo.unphase(gxc)
            del gxc, a_row
        if not need_kernels:
            return
        xc, buf = geo.phases(x[n0:n1]), torch.empty_like(gyc)
        # this chunk's alpha gradient (all of it, for a batch-1 alpha)
        g_alpha = g_alpha1 if g_alpha1 is not None else (
            gy.new_zeros(n1 - n0, G, B, geo.L, dtype=acc) if need_alpha else None)
        # one window row's kernel gradient, (N' or 1, G, k, L), rewritten whole for every row
        ga_row = gy.new_empty(alc.shape[0], G, k, geo.L, dtype=acc)
        for i in range(k):
            for j in range(k):
                _tap_grad(xc, geo, i * k + j, gyc, buf, ga_row[:, :, j])
            if g_alpha is not None:
                # (G, B, k) @ (N', G, k, L)
                g_alpha.add_(torch.matmul(bases_a[:, :, i], ga_row))
            if g_bases is not None:
                # (N', G, B, L) @ (N', G, L, k), summed over the chunk
                g_bases[:, :, i] += torch.matmul(alc, ga_row.transpose(-1, -2)).sum(0)
            if g_rel is not None:
                g_rel[:, i] += ga_row.sum((0, 3))
        if g_alpha is not None and g_alpha1 is None:
            grad_alpha[n0:n1] = geo.unpitched(g_alpha)

    # one chunk at a time: its temporaries are freed before the next chunk makes its own
    for n0, n1 in _chunks(N, C * geo.L):
        chunk(n0, n1)
    if g_alpha1 is not None:
        grad_alpha = geo.unpitched(g_alpha1).to(alpha.dtype)
    if g_bases is not None:
        grad_bases = g_bases.to(bases.dtype)
    if g_rel is not None and rel_pos is not None:
        grad_rel = g_rel.to(rel_pos.dtype)
    return grad_x, grad_alpha, grad_bases, grad_rel


def _synth_row(
        alpha_p: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor], i: int,
) -> torch.Tensor:
    """Kernels of window row i at every pixel, (N', G, k, L): sum_b alpha_b W_b[i, :] (+ R[i, :])."""
    a_row = torch.matmul(bases[:, :, i].transpose(1, 2), alpha_p)
    if rel_pos is not None:
        a_row += rel_pos[:, i].unsqueeze(-1)
    return a_row


pixel_filter_taps = register_pixel_filter(
    'pixel_filter_taps', _pixel_filter_fwd, _pixel_filter_bwd,
    """`pixel_filter_reference` as in-place tap accumulation with a hand-written backward.

    First-order gradients only (the backward is itself an opaque op).""")
cada_taps = register_cada(
    'cada_taps', _cada_fwd, _cada_bwd,
    """`cada_reference` with row-wise synthesis and in-place tap accumulation, hand-written backward.

    First-order gradients only (the backward is itself an opaque op).""")
