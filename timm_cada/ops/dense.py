""" Local filtering as a dense matrix product: the backend for small maps.

Each head's per-pixel kernels are scattered into one (Ho * Wo, H * W) matrix M, zero outside every
pixel's window, and the filter becomes a batched matmul per pass: y = x M^T, grad_x = gy M and
grad_M = gy^T x, whose window entries gathered back are the kernels' gradient. The matmuls do
H * W / (k * k) times the multiply-adds of the window (1 for k = 7 on a 7 x 7 map, 4 at 14 x 14),
but run at library GEMM speed in a handful of calls, where the tap walk (`taps.py`) makes k * k
elementwise passes over a map padded to W + k - 1 columns. `timm_cada.ops` picks it for 'auto'
where that pays (`dense_pays`).

M is built per batch chunk (about CHUNK_ELEMS entries), so the temporaries stay bounded; a
batch-1 (broadcast) kernel map is turned into M once and applied to the whole batch.
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .custom_ops import out_like, register_cada, register_pixel_filter
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
    """A zero-filled scratch buffer reused across batch chunks. Every chunk writes the same entries
    (the window taps), so the rest stays zero: it is allocated and zeroed once per call."""

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


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunk_step(per_sample: int) -> int:
    return max(1, CHUNK_ELEMS // max(per_sample, 1))


def _heads(x: torch.Tensor, G: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, C, H, W) -> (N, G, C // G, H * W) in the accumulation dtype."""
    N, C = x.shape[:2]
    return x.to(dtype).reshape(N, G, C // G, -1)


def _apply(xh: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """y (N', G, hd, P) = x (N', G, hd, Q) M^T, M (N' or 1, G, P, Q); a batch-1 M is shared in one GEMM per head."""
    if m.shape[0] == 1 and xh.shape[0] > 1:
        n, g, hd, q = xh.shape
        y = torch.matmul(xh.transpose(0, 1).reshape(g, n * hd, q), m[0].transpose(1, 2))
        return y.view(g, n, hd, -1).transpose(0, 1)
    return torch.matmul(xh, m.transpose(-1, -2))


def _apply_t(gyh: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """grad_x (N', G, hd, Q) = gy (N', G, hd, P) M."""
    if m.shape[0] == 1 and gyh.shape[0] > 1:
        n, g, hd, p = gyh.shape
        gx = torch.matmul(gyh.transpose(0, 1).reshape(g, n * hd, p), m[0])
        return gx.view(g, n, hd, -1).transpose(0, 1)
    return torch.matmul(gyh, m)


def _matrix_grad(gyh: torch.Tensor, xh: torch.Tensor, batch1: bool) -> torch.Tensor:
    """grad_M = gy^T x, (N', G, P, Q); for a batch-1 M summed over the chunk, (1, G, P, Q)."""
    if batch1:
        n, g, hd, p = gyh.shape
        gm = torch.matmul(gyh.transpose(0, 1).reshape(g, n * hd, p).transpose(1, 2),
                          xh.transpose(0, 1).reshape(g, n * hd, -1))
        return gm.unsqueeze(0)
    return torch.matmul(gyh.transpose(-1, -2), xh)


def _synth(alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor]) -> torch.Tensor:
    """(N', G, B, P) CA parameters -> (N', G, k * k, P) kernels."""
    G, B = bases.shape[:2]
    attn = torch.matmul(bases.reshape(G, B, -1).transpose(1, 2), alpha)
    if rel_pos is not None:
        attn = attn + rel_pos.reshape(G, -1, 1)
    return attn


def _forward(x: torch.Tensor, kernels, G: int, batch: int, k: int, stride: int, dilation: int) -> torch.Tensor:
    """Shared forward: `kernels(n0, n1)` gives the (N' or 1, G, k * k, P) kernel map of a batch chunk."""
    N, C, H, W = x.shape
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    taps, entries, _ = _indices(H, W, k, stride, dilation, x.device)
    acc = _acc_dtype(x.dtype)
    y = out_like(x, Ho, Wo)
    with torch.autocast(x.device.type, enabled=False):
        scratch = _Zeroed()
        m_whole = _matrix(kernels(0, 1), taps, entries, H * W, scratch) if batch == 1 else None
        step = N if batch == 1 else _chunk_step(G * Ho * Wo * H * W)
        for n0 in range(0, N, step):
            n1 = min(n0 + step, N)
            m = m_whole if m_whole is not None else _matrix(kernels(n0, n1), taps, entries, H * W, scratch)
            yh = _apply(_heads(x[n0:n1], G, acc), m)
            y[n0:n1] = yh.reshape(n1 - n0, C, Ho, Wo)
    return y


def _backward(
        gy: torch.Tensor, x: torch.Tensor, kernels, fold, G: int, batch: int, k: int, stride: int, dilation: int,
        need_x: bool, need_kernels: bool,
) -> torch.Tensor:
    """Shared backward: returns grad_x (empty if not asked for); `fold(n0, n1, grad_kernels)` takes
    each chunk's kernel-map gradient (summed over the batch for a batch-1 map, then given once)."""
    N, C, H, W = x.shape
    Ho, Wo = filter_output_size(H, k, stride, dilation), filter_output_size(W, k, stride, dilation)
    taps, entries, valid = _indices(H, W, k, stride, dilation, x.device)
    acc = _acc_dtype(x.dtype)
    grad_x = x.new_empty(x.shape) if need_x else x.new_empty(0)
    with torch.autocast(x.device.type, enabled=False):
        m_scratch, g_scratch = _Zeroed(), _Zeroed()
        m_whole = _matrix(kernels(0, 1), taps, entries, H * W, m_scratch) if batch == 1 and need_x else None
        gm_sum = None
        step = _chunk_step(G * Ho * Wo * H * W)
        for n0 in range(0, N, step):
            n1 = min(n0 + step, N)
            gyh = _heads(gy[n0:n1], G, acc)
            if need_x:
                m = m_whole if m_whole is not None else _matrix(kernels(n0, n1), taps, entries, H * W, m_scratch)
                grad_x[n0:n1] = _apply_t(gyh, m).reshape(n1 - n0, C, H, W)
            if need_kernels:
                gm = _matrix_grad(gyh, _heads(x[n0:n1], G, acc), batch == 1)
                if batch == 1:
                    gm_sum = gm if gm_sum is None else gm_sum.add_(gm)
                else:
                    fold(n0, n1, _kernel_grad(gm, taps, entries, valid, g_scratch))
        if gm_sum is not None:
            fold(0, N, _kernel_grad(gm_sum, taps, entries, valid, g_scratch))
    return grad_x


def _pixel_filter_fwd(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    acc = _acc_dtype(x.dtype)
    a = attn.to(acc).flatten(-2)
    return _forward(x, lambda n0, n1: a if a.shape[0] == 1 else a[n0:n1], attn.shape[1], attn.shape[0],
                    k, stride, dilation)


def _pixel_filter_bwd(
        gy: torch.Tensor, x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int,
        need_x: bool, need_attn: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(x.dtype)
    a = attn.to(acc).flatten(-2)
    grad_attn = torch.zeros(a.shape, dtype=acc, device=x.device) if need_attn else x.new_empty(0)

    def fold(n0: int, n1: int, g: torch.Tensor) -> None:
        grad_attn[n0:n1] = g

    grad_x = _backward(gy, x, lambda n0, n1: a if a.shape[0] == 1 else a[n0:n1], fold, attn.shape[1], attn.shape[0],
                       k, stride, dilation, need_x, need_attn)
    return grad_x, grad_attn.view(attn.shape).to(attn.dtype) if need_attn else grad_attn


def _cada_fwd(
        x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
        stride: int, dilation: int,
) -> torch.Tensor:
    acc = _acc_dtype(x.dtype)
    al, bs = alpha.to(acc).flatten(-2), bases.to(acc)
    rp = rel_pos.to(acc) if rel_pos is not None else None
    return _forward(x, lambda n0, n1: _synth(al if al.shape[0] == 1 else al[n0:n1], bs, rp),
                    bases.shape[0], alpha.shape[0], bases.shape[-1], stride, dilation)


def _cada_bwd(
        gy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor],
        stride: int, dilation: int, need_x: bool, need_alpha: bool, need_bases: bool, need_rel: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_alpha, grad_bases, grad_rel_pos); an empty tensor stands for one not asked for.

    The kernel-map gradient of each chunk is folded at once into grad_alpha (bases^T g), grad_bases
    (g alpha^T, summed over the chunk) and grad_rel_pos (g summed over pixels and the chunk).
    """
    acc = _acc_dtype(x.dtype)
    G, B, k, _ = bases.shape
    al, bs = alpha.to(acc).flatten(-2), bases.to(acc)
    rp = rel_pos.to(acc) if rel_pos is not None else None
    need_rel = need_rel and rel_pos is not None
    g_alpha = torch.empty(al.shape, dtype=acc, device=x.device) if need_alpha else None
    g_bases = torch.zeros(G, k * k, B, dtype=acc, device=x.device) if need_bases else None
    g_rel = torch.zeros(G, k * k, dtype=acc, device=x.device) if need_rel else None
    bt = bs.reshape(G, B, k * k)

    def chunk(n0: int, n1: int) -> torch.Tensor:
        return al if al.shape[0] == 1 else al[n0:n1]

    def fold(n0: int, n1: int, g: torch.Tensor) -> None:
        if g_alpha is not None:
            g_alpha[n0:n1] = torch.matmul(bt, g)
        if g_bases is not None:
            g_bases.add_(torch.matmul(g, chunk(n0, n1).transpose(-1, -2)).sum(0))
        if g_rel is not None:
            g_rel.add_(g.sum((0, 3)))

    grad_x = _backward(gy, x, lambda n0, n1: _synth(chunk(n0, n1), bs, rp), fold, G, alpha.shape[0],
                       k, stride, dilation, need_x, need_alpha or need_bases or need_rel)
    return (
        grad_x,
        g_alpha.view(alpha.shape).to(alpha.dtype) if g_alpha is not None else x.new_empty(0),
        g_bases.transpose(1, 2).reshape(bases.shape).to(bases.dtype) if g_bases is not None else x.new_empty(0),
        g_rel.view(G, k, k).to(rel_pos.dtype) if g_rel is not None and rel_pos is not None else x.new_empty(0),
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
