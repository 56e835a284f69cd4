""" Local filtering as a dense matrix product: the backend for small maps.

Each head's per-pixel kernels are scattered into one (Ho * Wo, H * W) matrix M, zero outside every
pixel's window, and the filter becomes a batched matmul per pass: y = x M^T, grad_x = gy M and
grad_M = gy^T x, whose window entries gathered back are the kernels' gradient. The matmuls do
H * W / (k * k) times the multiply-adds of the window (1 for k = 7 on a 7 x 7 map, 4 at 14 x 14),
but run at library GEMM speed in a handful of calls, where the tap walk (`taps.py`) makes k * k
elementwise passes over a map padded to W + k - 1 columns. `timm_cada.ops` picks it for 'auto'
where that pays (`dense_pays`).

M is built for a few (sample, head) rows at a time (see `_rows_per_chunk`), so the temporaries stay
bounded; the matrix of a batch-1 (broadcast) kernel map serves the whole batch in one GEMM. Inputs in
half precision or channels_last are converted to float32 NCHW whole (x, and gy in the backward), as
are the output and grad_x buffers: on the small maps this backend serves, a few float32 activations.
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch

from .custom_ops import acc_dtype, out_like, register_cada, register_pixel_filter
from .reference import filter_output_size

# matrix entries per batch chunk (2 MiB of float32)
CHUNK_ELEMS = 1 << 19


@lru_cache(maxsize=64)
def _indices(
        H: int, W: int, k: int, stride: int, dilation: int, device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(taps, entries, valid) for one geometry, P = Ho * Wo output pixels, Q = H * W inputs.

    taps: the indices, in a flattened (k * k, P) kernel map, of the taps that fall inside the map.
    entries: for each of those, the index of its entry (p, q) in the flattened (P, Q) matrix.
    valid: (k * k, P), whether each tap falls inside the map (taps on the padding have no entry).
    """
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    pad = dilation * (k // 2)
    P, Q = Ho * Wo, H * W
    offsets = torch.arange(k, device=device) * dilation - pad
    rows = (torch.arange(Ho, device=device) * stride).view(1, 1, Ho, 1) + offsets.view(k, 1, 1, 1)
    cols = (torch.arange(Wo, device=device) * stride).view(1, 1, 1, Wo) + offsets.view(1, k, 1, 1)
    valid = ((rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)).reshape(k * k, P)
    entry = torch.arange(P, device=device).view(1, P) * Q + (rows * W + cols).reshape(k * k, P)
    taps = valid.flatten().nonzero().squeeze(1)
    return taps, entry.flatten()[taps], valid


class _Zeroed:
    """A zero-filled scratch buffer reused across batch chunks, allocated and zeroed once per call.
    A matrix writes only its window entries, the same ones in every chunk, so the rest stays zero;
    whoever writes anything else there (the backward's grad_M) zeroes it again after use."""

    def __init__(self):
        self.buf: Optional[torch.Tensor] = None

    def rows(self, n: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        if self.buf is None or self.buf.shape[0] < n:
            self.buf = like.new_zeros(n, cols)
        return self.buf[:n]


def _matrix(attn: torch.Tensor, taps: torch.Tensor, entries: torch.Tensor, Q: int, scratch: _Zeroed) -> torch.Tensor:
    """Kernel maps (..., k * k, P) -> matrices (..., P, Q), zero outside each pixel's window."""
    lead, P = attn.shape[:-2], attn.shape[-1]
    flat = attn.reshape(-1, attn.shape[-2] * P)
    m = scratch.rows(flat.shape[0], P * Q, flat)
    m.index_copy_(1, entries, flat.index_select(1, taps))
    return m.view(lead + (P, Q))


def _kernel_grad(
        gm: torch.Tensor, taps: torch.Tensor, entries: torch.Tensor, valid: torch.Tensor, scratch: _Zeroed,
) -> torch.Tensor:
    """Matrix gradient (..., P, Q) -> kernel-map gradient (..., k * k, P), zero for taps on the padding."""
    lead = gm.shape[:-2]
    flat = gm.reshape(-1, gm.shape[-2] * gm.shape[-1])
    g = scratch.rows(flat.shape[0], valid.numel(), flat)
    g.index_copy_(1, taps, flat.index_select(1, entries))
    return g.view(lead + valid.shape)


def _rows(t: torch.Tensor, i0: int, i1: int, batch1: bool) -> torch.Tensor:
    """Rows i0:i1 of an (N, G, hd, S) tensor as matrices: with per-sample kernels a row is one
    (sample, head), (R, hd, S); with a batch-1 kernel map a row is one head over the whole batch,
    (R, N * hd, S), so that its one matrix serves every sample in a single GEMM."""
    if batch1:
        return t[:, i0:i1].transpose(0, 1).reshape(i1 - i0, -1, t.shape[-1])
    return t.view(-1, t.shape[-2], t.shape[-1])[i0:i1]


def _bmm_rows(out: torch.Tensor, i0: int, i1: int, batch1: bool, a: torch.Tensor, b: torch.Tensor) -> None:
    """Rows i0:i1 (see `_rows`) of a contiguous (N, G, hd, S) `out` = a @ b, in place where the layout allows."""
    if batch1:
        val = torch.bmm(a, b)
        out[:, i0:i1] = val.view(i1 - i0, out.shape[0], out.shape[2], -1).transpose(0, 1)
    else:
        torch.bmm(a, b, out=out.view(-1, out.shape[-2], out.shape[-1])[i0:i1])


def _rows_per_chunk(x: torch.Tensor, P: int, Q: int, kk: int) -> int:
    """Kernel-map rows per chunk: matrices and kernel maps of about CHUNK_ELEMS entries in all, and no
    more than x has elements, so that on the smallest maps the temporaries stay within an activation
    or two (the depthwise conv's whole forward and backward needs about three)."""
    return max(1, min(CHUNK_ELEMS, x.numel()) // (P * Q + kk * P))


def _heads(x: torch.Tensor, G: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, C, H, W) -> contiguous (N, G, C // G, H * W) in the accumulation dtype (a view when it can be)."""
    N, C = x.shape[:2]
    return x.to(dtype).reshape(N, G, C // G, -1).contiguous()


def _synth(alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor]) -> torch.Tensor:
    """CA parameters (R, B, P), each row's bases (R, B, k * k) and rel_pos (R, k * k) -> kernels (R, k * k, P)."""
    attn = torch.bmm(bases.transpose(1, 2), alpha)
    if rel_pos is not None:
        attn = attn + rel_pos.unsqueeze(-1)
    return attn


def _forward(x: torch.Tensor, kernels, rows: int, G: int, k: int, stride: int, dilation: int) -> torch.Tensor:
    """Shared forward: `kernels(i0, i1)` gives rows i0:i1 of the (rows, k * k, P) kernel map, whose
    rows run over (sample, head), or over heads alone for a batch-1 map (rows == G)."""
    N, C, H, W = x.shape
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    taps, entries, _ = _indices(H, W, k, stride, dilation, x.device)
    acc = acc_dtype(x.dtype)
    batch1 = rows == G and N > 1
    out = out_like(x, Ho, Wo)
    # rows are written straight into the output when its layout allows (float32, NCHW)
    direct = out.is_contiguous() and out.dtype == acc
    y = out.view(N, G, C // G, Ho * Wo) if direct else torch.empty(N, G, C // G, Ho * Wo, dtype=acc, device=x.device)
    with torch.autocast(x.device.type, enabled=False):
        xh, scratch = _heads(x, G, acc), _Zeroed()
        step = _rows_per_chunk(x, Ho * Wo, H * W, k * k)
        for i0 in range(0, rows, step):
            i1 = min(i0 + step, rows)
            m = _matrix(kernels(i0, i1), taps, entries, H * W, scratch)
            _bmm_rows(y, i0, i1, batch1, _rows(xh, i0, i1, batch1), m.transpose(1, 2))
    if not direct:
        out.copy_(y.view(N, C, Ho, Wo))
    return out


def _backward(
        gy: torch.Tensor, x: torch.Tensor, kernels, fold, rows: int, G: int, k: int, stride: int, dilation: int,
        need_x: bool, need_kernels: bool,
) -> torch.Tensor:
    """Shared backward: returns grad_x (empty if not asked for); `fold(i0, i1, grad_kernels)` takes
    the gradient of kernel-map rows i0:i1, (R, k * k, P), summed over the batch for a batch-1 map."""
    N, C, H, W = x.shape
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    taps, entries, valid = _indices(H, W, k, stride, dilation, x.device)
    acc = acc_dtype(x.dtype)
    batch1 = rows == G and N > 1
    grad_x = torch.empty(N, G, C // G, H * W, dtype=acc, device=x.device) if need_x else x.new_empty(0)
    with torch.autocast(x.device.type, enabled=False):
        gyh, xh = _heads(gy, G, acc), _heads(x, G, acc) if need_kernels else None
        scratch, g_scratch = _Zeroed(), _Zeroed()
        P, Q = Ho * Wo, H * W
        step = _rows_per_chunk(x, P, Q, k * k)
        for i0 in range(0, rows, step):
            i1 = min(i0 + step, rows)
            gyr = _rows(gyh, i0, i1, batch1)
            if need_x:
                m = _matrix(kernels(i0, i1), taps, entries, Q, scratch)
                _bmm_rows(grad_x, i0, i1, batch1, gyr, m)
            if xh is not None:
                # grad_M takes the matrix's place in the scratch, zeroed again for the next chunk's matrix
                gm = scratch.rows(i1 - i0, P * Q, gyr).view(i1 - i0, P, Q)
                torch.bmm(gyr.transpose(1, 2), _rows(xh, i0, i1, batch1), out=gm)
                fold(i0, i1, _kernel_grad(gm, taps, entries, valid, g_scratch))
                if need_x and i1 < rows:
                    gm.zero_()
    return grad_x.view(x.shape).to(x.dtype) if need_x else grad_x


def _pixel_filter_fwd(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    a = attn.to(acc_dtype(x.dtype)).flatten(-2).flatten(0, 1)
    return _forward(x, lambda i0, i1: a[i0:i1], a.shape[0], attn.shape[1], k, stride, dilation)


def _pixel_filter_bwd(
        gy: torch.Tensor, x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int,
        need_x: bool, need_attn: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    a = attn.to(acc_dtype(x.dtype)).flatten(-2).flatten(0, 1)
    grad_attn = torch.empty_like(a) if need_attn else x.new_empty(0)

    def fold(i0: int, i1: int, g: torch.Tensor) -> None:
        grad_attn[i0:i1] = g

    grad_x = _backward(gy, x, lambda i0, i1: a[i0:i1], fold, a.shape[0], attn.shape[1], k, stride, dilation,
                       need_x, need_attn)
    return grad_x, grad_attn.view(attn.shape).to(attn.dtype) if need_attn else grad_attn


def _cada_rows(alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor], acc: torch.dtype):
    """alpha as (rows, B, P), and the bases (rows, B, k * k) and rel_pos (rows, k * k) of each row's head."""
    G, B, k, _ = bases.shape
    al = alpha.to(acc).flatten(-2).flatten(0, 1)
    reps = al.shape[0] // G
    bs = bases.to(acc).reshape(G, B, k * k).repeat(reps, 1, 1)
    rp = rel_pos.to(acc).reshape(G, k * k).repeat(reps, 1) if rel_pos is not None else None
    return al, bs, rp


def _cada_fwd(
        x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
        stride: int, dilation: int,
) -> torch.Tensor:
    al, bs, rp = _cada_rows(alpha, bases, rel_pos, acc_dtype(x.dtype))

    def kernels(i0: int, i1: int) -> torch.Tensor:
        return _synth(al[i0:i1], bs[i0:i1], rp[i0:i1] if rp is not None else None)

    return _forward(x, kernels, al.shape[0], bases.shape[0], bases.shape[-1], stride, dilation)


def _cada_bwd(
        gy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
        stride: int, dilation: int, need_x: bool, need_alpha: bool, need_bases: bool, need_rel: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_alpha, grad_bases, grad_rel_pos); an empty tensor stands for one not asked for.

    The kernel-map gradient of each chunk of rows is folded at once into grad_alpha (bases^T g) and
    per-row grad_bases (alpha g^T) and grad_rel_pos (g summed over pixels), summed over each head's
    rows at the end.
    """
    G, B, k, _ = bases.shape
    al, bs, rp = _cada_rows(alpha, bases, rel_pos, acc_dtype(x.dtype))
    need_rel = need_rel and rp is not None
    g_alpha = torch.empty_like(al) if need_alpha else None
    g_bases = torch.empty_like(bs) if need_bases else None
    g_rel = torch.empty_like(rp) if need_rel and rp is not None else None

    def kernels(i0: int, i1: int) -> torch.Tensor:
        return _synth(al[i0:i1], bs[i0:i1], rp[i0:i1] if rp is not None else None)

    def fold(i0: int, i1: int, ga: torch.Tensor) -> None:
        if g_alpha is not None:
            torch.bmm(bs[i0:i1], ga, out=g_alpha[i0:i1])
        if g_bases is not None:
            torch.bmm(al[i0:i1], ga.transpose(1, 2), out=g_bases[i0:i1])
        if g_rel is not None:
            torch.sum(ga, -1, out=g_rel[i0:i1])

    grad_x = _backward(gy, x, kernels, fold, al.shape[0], G, k, stride, dilation,
                       need_x, need_alpha or need_bases or need_rel)
    return (
        grad_x,
        g_alpha.view(alpha.shape).to(alpha.dtype) if g_alpha is not None else x.new_empty(0),
        g_bases.view(-1, G, B, k, k).sum(0).to(bases.dtype) if g_bases is not None else x.new_empty(0),
        g_rel.view(-1, G, k, k).sum(0).to(rel_pos.dtype) if g_rel is not None and rel_pos is not None
        else x.new_empty(0),
    )


_pixel_filter_op = register_pixel_filter('pixel_filter_dense', _pixel_filter_fwd, _pixel_filter_bwd)
_cada_op = register_cada('cada_dense', _cada_fwd, _cada_bwd)


def dense_pays(H: int, W: int, k: int, vs_combine: bool = False) -> bool:
    """Whether the dense product beats the other backends on an H x W input with a k x k window.

    The matrix costs H * W multiply-adds per output and channel against the window's k * k, but in
    GEMMs, where each tap of the tap walk is an elementwise pass over a padded map. On the benchmark
    CPU (benchmarks/RESULTS.md) it beats the tap walk up to about 12 times the window's work, and
    conv-then-combine (CADA inference, `vs_combine`) up to about 4 times.
    """
    return H * W <= (4 if vs_combine else 12) * k * k


def pixel_filter_dense(
        x: torch.Tensor,
        attn: torch.Tensor,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
) -> torch.Tensor:
    """`pixel_filter_reference` as a dense matrix product per head, hand-written backward."""
    return _pixel_filter_op(x, attn, kernel_size, stride, dilation)


def cada_dense(
        x: torch.Tensor,
        alpha: torch.Tensor,
        bases: torch.Tensor,
        rel_pos: Optional[torch.Tensor] = None,
        stride: int = 1,
        dilation: int = 1,
) -> torch.Tensor:
    """`cada_reference` as a dense matrix product per head, hand-written backward."""
    return _cada_op(x, alpha, bases, rel_pos, stride, dilation)
