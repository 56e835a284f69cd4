""" Local filtering as banded dense matrix products: the backend for small maps.

Each head's per-pixel kernels become matrices M, zero outside every pixel's window, and each pass is
a batched matmul: y = x M^T, grad_x = gy M, and grad_M = gy^T x, whose window entries are the
kernels' gradient. The output rows are split into bands of h rows (`_plan`): a band's matrix has a
row per output pixel of the band and a column per input pixel of the input rows its windows reach.
On a small map one band covers everything, and the matmuls do H * W multiply-adds per output (H * Wp
where the rows are padded to the window's span) where the window does k * k (4 times as many at
14 x 14 for k = 7), but at library GEMM speed in a handful of calls, where the tap walk (`taps.py`)
makes k * k elementwise passes. 'auto' picks this backend where that pays (`functional.dense_pays`).

No index tensors: every matrix row is laid out on the row pitch of the zero-padded input, so entry
(i, j, a, b) (output pixel (i, j) of the band, tap (a, b)) lies at a fixed linear offset, and all the
window entries of a chunk of matrices form one strided view (`_Plan.tap_view`). It is written by one
multiply, the kernels times a 0/1 mask of the taps inside the map (taps beside the map's columns
would land on the inputs of the neighbouring row), and read back the same way for the gradient.

The matrices are built for a few (sample, head) rows at a time (`_rows_per_chunk`), so the
temporaries stay bounded; the backward computes grad_x, then the kernels' gradient, so the matrices
and the matrix gradients share one scratch. The matrix of a batch-1 (broadcast) kernel map serves the
whole batch in one GEMM. Inputs in half precision or channels_last are converted whole to NCHW in the
accumulation dtype (float32 for half precision): x, and gy in the backward, as are the output and
grad_x buffers; on the small maps this backend serves, a few activations.
"""
from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch

from .custom_ops import acc_dtype, out_like, register_cada, register_pixel_filter
from .reference import filter_output_size

# scratch entries per batch chunk (4 MiB of float32), and at most this many times x's elements: longer
# GEMMs run faster, and on the benchmark CPU 1.5 keeps the peak memory under twice the depthwise conv's
# (benchmarks/RESULTS.md, 'Memory against time')
CHUNK_ELEMS = 1 << 20
NUMEL_FACTOR = 1.5
# per-band cost of the extra calls, in multiply-adds per head channel (see `_band_height`; read when a
# geometry's plan is first made, `_plan` is cached): 2^13 and 2^14 tied as the fastest of the values tried
# from 2^11 to 2^20 at ResNet-50's stage shapes on the benchmark CPU
BAND_COST = 1 << 14


class _Band(NamedTuple):
    """Output rows o0:o0 + n, which read input rows r0:r1: matrix columns lo:lo + (r1 - r0) * Wp."""
    o0: int
    n: int
    r0: int
    r1: int
    lo: int


class _Plan(NamedTuple):
    """The matrix layout for one geometry (see the module docstring)."""
    k: int
    s: int
    d: int
    Ho: int
    Wo: int
    Wp: int  # row pitch of the input and of the matrix columns: W, or the window's span if wider
    Q: int  # matrix row length
    bands: Tuple[_Band, ...]

    @property
    def h(self) -> int:
        """Output rows per band (the first band is never the short one)."""
        return self.bands[0].n

    def tap_view(self, buf: torch.Tensor, offset: int, rows: int, row_stride: int, n: int, row_len: int) -> torch.Tensor:
        """The window entries of matrices of n * Wo rows of length row_len, stored in buf from offset
        every row_stride, as (rows, n, Wo, k, k): entry (i, j, a, b) of a band lies at column
        (i * s + a * d) * Wp + j * s + b * d of matrix row i * Wo + j (minus lo in a cropped matrix)."""
        s, d, Wp, Wo = self.s, self.d, self.Wp, self.Wo
        stride = (row_stride, Wo * row_len + s * Wp, row_len + s, d * Wp, d)
        return buf.as_strided((rows, n, Wo, self.k, self.k), stride, buf.storage_offset() + offset)

    def matrix_entries(self) -> int:
        """Scratch entries per kernel-map row for its matrices: one band's, and the kernels."""
        return self.h * self.Wo * self.Q + self.Ho * self.Wo * self.k * self.k

    def gradient_entries(self) -> int:
        """Scratch entries per kernel-map row for its matrix gradients: the largest band's, and the
        kernels' gradient."""
        return max(b.n * (b.r1 - b.r0) for b in self.bands) * self.Wo * self.Wp + self.Ho * self.Wo * self.k * self.k

    def pixels(self, t: torch.Tensor) -> torch.Tensor:
        """(..., P, k * k) -> (..., Ho, Wo, k, k)."""
        return t.unflatten(-1, (self.k, self.k)).unflatten(-3, (self.Ho, self.Wo))


def _bands(H: int, k: int, s: int, d: int, Ho: int, Wp: int, h: int) -> Tuple[_Band, ...]:
    """Bands of h output rows (the last one shorter where h does not divide Ho), with the input rows
    their windows reach inside the map."""
    pad = d * (k // 2)
    bands = []
    for o0 in range(0, Ho, h):
        n = min(h, Ho - o0)
        r0, r1 = max(0, o0 * s - pad), min(H, (o0 + n - 1) * s + (k - 1) * d - pad + 1)
        bands.append(_Band(o0, n, r0, r1, (r0 + pad - o0 * s) * Wp + pad))
    return tuple(bands)


def _band_cost(bands: Tuple[_Band, ...], Wo: int, Wp: int) -> int:
    """The bands' multiply-adds per head channel, plus BAND_COST for each."""
    return sum(b.n * Wo * (b.r1 - b.r0) * Wp + BAND_COST for b in bands)


def _band_height(H: int, k: int, s: int, d: int, Ho: int, Wo: int, Wp: int) -> int:
    """Output rows per band: the fewest multiply-adds plus BAND_COST per band (each band is a few more
    calls), the tallest bands among equals."""
    return min(range(1, Ho + 1), key=lambda h: (_band_cost(_bands(H, k, s, d, Ho, Wp, h), Wo, Wp), -h))


@lru_cache(maxsize=64)
def _plan(H: int, W: int, k: int, s: int, d: int) -> _Plan:
    """Row pitch, band height and matrix row length for one geometry."""
    Ho, Wo = filter_output_size(H, k, s, d), filter_output_size(W, k, s, d)
    # a pitch wider than the window's span keeps a pixel's k * k entries in distinct columns
    Wp = max(W, (k - 1) * d + 1)
    h = _band_height(H, k, s, d, Ho, Wo, Wp)
    bands = _bands(H, k, s, d, Ho, Wp, h)
    # a matrix row holds every window entry (those on the padding included) and the columns multiplied
    Q = max(((h - 1) * s + (k - 1) * d) * Wp + (Wo - 1) * s + (k - 1) * d + 1,
            max(b.lo + (b.r1 - b.r0) * Wp for b in bands))
    return _Plan(k, s, d, Ho, Wo, Wp, Q, bands)


@lru_cache(maxsize=64)
def _inside(H: int, W: int, k: int, s: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(Ho * Wo, k * k): 1 where a pixel's tap falls inside the map, 0 on the padding (a factor: on
    the benchmark CPU a multiply is 2.5 times faster than masked_fill_)."""
    pad = d * (k // 2)
    Ho, Wo = filter_output_size(H, k, s, d), filter_output_size(W, k, s, d)
    rows = torch.arange(Ho, device=device).view(Ho, 1, 1, 1) * s + torch.arange(k, device=device).view(k, 1) * d - pad
    cols = torch.arange(Wo, device=device).view(1, Wo, 1, 1) * s + torch.arange(k, device=device) * d - pad
    return ((rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)).to(dtype).view(Ho * Wo, k * k)


class _Scratch:
    """A buffer reused across batch chunks and bands, zero-filled once per call. Matrices are only
    ever written at window entries, the same ones in every chunk, so the rest stays zero; the
    backward's matrix gradients overwrite it once the matrices are done with."""

    def __init__(self):
        self.buf: Optional[torch.Tensor] = None

    def get(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        if self.buf is None or self.buf.numel() < numel:
            self.buf = like.new_zeros(numel)
        return self.buf


def _matrix(plan: _Plan, kern: torch.Tensor, inside: torch.Tensor, band: _Band, scratch: _Scratch) -> torch.Tensor:
    """One band's matrices (R, n * Wo, width) for kernel maps (R, P, k * k): the columns lo:lo + width
    of each full-length row. Window entries on the padding are written as zeros (`inside`, (P, k * k)):
    those beside the map's columns land on its neighbouring row's inputs."""
    R, n, Q, hw = kern.shape[0], band.n, plan.Q, plan.h * plan.Wo
    # laid out as full bands whatever n, so that a short band's entries are a subset of a full one's
    buf = scratch.get(R * hw * Q, kern)
    rows = slice(band.o0, band.o0 + n)
    torch.mul(plan.pixels(kern)[:, rows], plan.pixels(inside)[rows],
              out=plan.tap_view(buf, 0, R, hw * Q, n, Q))
    m = buf[:R * hw * Q].view(R, hw, Q)
    return m[:, :n * plan.Wo, band.lo:band.lo + (band.r1 - band.r0) * plan.Wp]


def _kernel_grad(plan: _Plan, gy: torch.Tensor, x: torch.Tensor, inside: torch.Tensor, band: _Band,
                 g: torch.Tensor, scratch: _Scratch) -> None:
    """g[:, band's pixels] = the window entries of the band's matrix gradient gy^T x, (R, n * Wo, width),
    zero for those on the padding: they read whatever lies there (another entry, or the margin), times
    0, so with non-finite inputs they may come out NaN where the reference has 0 (a multiply is 1.6 to
    5 times faster than torch.where here)."""
    R, n, width = g.shape[0], band.n, x.shape[-1]
    size = R * n * plan.Wo * width
    # the window entries of a row reach from `lo` columns before its first column to past its last
    margin = plan.Q
    buf = scratch.get(size + 2 * margin, x)
    gm = buf[margin:margin + size].view(R, n * plan.Wo, width)
    torch.bmm(gy.transpose(1, 2), x, out=gm)
    rows = slice(band.o0, band.o0 + n)
    torch.mul(plan.tap_view(buf, margin - band.lo, R, n * plan.Wo * width, n, width), plan.pixels(inside)[rows],
              out=plan.pixels(g)[:, rows])


def _rows(t: torch.Tensor, i0: int, i1: int, batch1: bool) -> torch.Tensor:
    """Rows i0:i1 of an (N, G, hd, S) tensor as matrices: with per-sample kernels a row is one
    (sample, head), (R, hd, S); with a batch-1 kernel map a row is one head over the whole batch,
    (R, N * hd, S), so that its one matrix serves every sample in a single GEMM."""
    if batch1:
        return t[:, i0:i1].transpose(0, 1).reshape(i1 - i0, -1, t.shape[-1])
    return t.view(-1, t.shape[-2], t.shape[-1])[i0:i1]


def _store(out: torch.Tensor, i0: int, i1: int, batch1: bool, a: torch.Tensor, b: torch.Tensor, c0: int,
           add: bool) -> None:
    """Rows i0:i1 (see `_rows`), columns c0: of a contiguous (N, G, hd, S) `out` = (or +=) a @ b;
    straight into `out` where the layout allows."""
    c1 = c0 + b.shape[-1]
    if not batch1 and not add and c0 == 0 and c1 == out.shape[-1]:
        torch.bmm(a, b, out=out.view(-1, out.shape[-2], out.shape[-1])[i0:i1])
        return
    val = torch.bmm(a, b)
    if batch1:
        dst, val = out[:, i0:i1, :, c0:c1], val.view(i1 - i0, out.shape[0], out.shape[2], -1).transpose(0, 1)
    else:
        dst = out.view(-1, out.shape[-2], out.shape[-1])[i0:i1, :, c0:c1]
    if add:
        dst.add_(val)
    else:
        dst.copy_(val)


def _rows_per_chunk(per_row: int, numel: int) -> int:
    """Kernel-map rows per chunk, for per_row scratch entries a row: about CHUNK_ELEMS entries in all,
    and no more than NUMEL_FACTOR times x's elements (numel), so that on the smallest maps the
    temporaries stay within two activations (the depthwise conv's forward and backward needs about
    three). Longer GEMMs run faster: this bound sets the speed on small maps."""
    return max(1, min(CHUNK_ELEMS, int(NUMEL_FACTOR * numel)) // per_row)


def _heads(x: torch.Tensor, G: int, Wp: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, C, H, W) -> contiguous (N, G, C // G, H * Wp) in the accumulation dtype, each row padded
    with zeros to the pitch Wp (a view when it can be)."""
    N, C, H, W = x.shape
    if Wp == W:
        return x.to(dtype).reshape(N, G, C // G, H * W).contiguous()
    xp = x.new_zeros(N, G, C // G, H, Wp, dtype=dtype)
    xp[..., :W] = x.view(N, G, C // G, H, W)
    return xp.view(N, G, C // G, H * Wp)


def _synth(alpha: torch.Tensor, bases: torch.Tensor, rel_pos: Optional[torch.Tensor]) -> torch.Tensor:
    """CA parameters (R, B, P), each row's bases (R, B, k * k) and rel_pos (R, k * k) -> kernels (R, P, k * k)."""
    attn = torch.bmm(alpha.transpose(1, 2), bases)
    if rel_pos is not None:
        attn += rel_pos.unsqueeze(1)
    return attn


def _forward(x: torch.Tensor, kernels, rows: int, G: int, k: int, stride: int, dilation: int) -> torch.Tensor:
    """Shared forward: `kernels(i0, i1)` gives rows i0:i1 of the (rows, P, k * k) kernel map, whose
    rows run over (sample, head), or over heads alone for a batch-1 map (rows == G)."""
    N, C, H, W = x.shape
    plan = _plan(H, W, k, stride, dilation)
    Ho, Wo, Wp = plan.Ho, plan.Wo, plan.Wp
    acc = acc_dtype(x.dtype)
    inside = _inside(H, W, k, stride, dilation, x.device, acc)
    batch1 = rows == G and N > 1
    out = out_like(x, Ho, Wo)
    # rows are written straight into the output when its layout allows (float32, NCHW)
    direct = out.is_contiguous() and out.dtype == acc
    y = out.view(N, G, C // G, Ho * Wo) if direct else torch.empty(N, G, C // G, Ho * Wo, dtype=acc, device=x.device)
    xh, scratch = _heads(x, G, Wp, acc), _Scratch()
    step = _rows_per_chunk(plan.matrix_entries(), x.numel())
    for i0 in range(0, rows, step):
        i1 = min(i0 + step, rows)
        kern = kernels(i0, i1)
        xr = _rows(xh, i0, i1, batch1)
        for band in plan.bands:
            m = _matrix(plan, kern, inside, band, scratch)
            _store(y, i0, i1, batch1, xr[:, :, band.r0 * Wp:band.r1 * Wp], m.transpose(1, 2), band.o0 * Wo, False)
    if not direct:
        out.copy_(y.view(N, C, Ho, Wo))
    return out


def _backward(
        gy: torch.Tensor, x: torch.Tensor, kernels, fold, rows: int, G: int, k: int, stride: int, dilation: int,
        need_x: bool, need_kernels: bool,
) -> torch.Tensor:
    """Shared backward: returns grad_x (empty if not asked for); `fold(i0, i1, grad_kernels)` takes
    the gradient of kernel-map rows i0:i1, (R, P, k * k), summed over the batch for a batch-1 map."""
    N, C, H, W = x.shape
    plan = _plan(H, W, k, stride, dilation)
    Wo, Wp = plan.Wo, plan.Wp
    acc = acc_dtype(x.dtype)
    inside = _inside(H, W, k, stride, dilation, x.device, acc)
    batch1 = rows == G and N > 1
    # bands overlap in their input rows, and some input rows may be read by no output: accumulate
    whole = len(plan.bands) == 1 and plan.bands[0].r1 - plan.bands[0].r0 == H
    gx = (torch.empty if whole else torch.zeros)(N, G, C // G, H * Wp, dtype=acc, device=x.device) \
        if need_x else None
    gyh, scratch = _heads(gy, G, Wo, acc), _Scratch()
    # grad_x, then the kernels' gradient (which needs no kernels): the matrices and the matrix
    # gradients are never held at once, and share one scratch
    if need_x:
        step = _rows_per_chunk(plan.matrix_entries(), x.numel())
        for i0 in range(0, rows, step):
            i1 = min(i0 + step, rows)
            gyr, kern = _rows(gyh, i0, i1, batch1), kernels(i0, i1)
            for band in plan.bands:
                gyb = gyr[:, :, band.o0 * Wo:(band.o0 + band.n) * Wo]
                _store(gx, i0, i1, batch1, gyb, _matrix(plan, kern, inside, band, scratch), band.r0 * Wp, not whole)
    if need_kernels:
        xh = _heads(x, G, Wp, acc)
        step = _rows_per_chunk(plan.gradient_entries(), x.numel())
        for i0 in range(0, rows, step):
            i1 = min(i0 + step, rows)
            gyr, xr = _rows(gyh, i0, i1, batch1), _rows(xh, i0, i1, batch1)
            g = gyr.new_empty(i1 - i0, plan.Ho * Wo, k * k)
            for band in plan.bands:
                gyb = gyr[:, :, band.o0 * Wo:(band.o0 + band.n) * Wo]
                _kernel_grad(plan, gyb, xr[:, :, band.r0 * Wp:band.r1 * Wp], inside, band, g, scratch)
            fold(i0, i1, g)
    if not need_x:
        return x.new_empty(0)
    return gx.view(N, C, H, Wp)[..., :W].to(x.dtype)


def _pixel_filter_fwd(x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int) -> torch.Tensor:
    a = attn.to(acc_dtype(x.dtype)).flatten(-2).flatten(0, 1)
    return _forward(x, lambda i0, i1: a[i0:i1].transpose(1, 2), a.shape[0], attn.shape[1], k, stride, dilation)


def _pixel_filter_bwd(
        gy: torch.Tensor, x: torch.Tensor, attn: torch.Tensor, k: int, stride: int, dilation: int,
        need_x: bool, need_attn: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    a = attn.to(acc_dtype(x.dtype)).flatten(-2).flatten(0, 1)
    grad_attn = torch.empty_like(a) if need_attn else x.new_empty(0)

    def fold(i0: int, i1: int, g: torch.Tensor) -> None:
        grad_attn[i0:i1] = g.transpose(1, 2)

    grad_x = _backward(gy, x, lambda i0, i1: a[i0:i1].transpose(1, 2), fold, a.shape[0], attn.shape[1], k, stride, dilation,
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
    g_alpha = torch.empty_like(al) if need_alpha else None
    g_bases = torch.empty_like(bs) if need_bases else None
    g_rel = torch.empty_like(rp) if need_rel and rp is not None else None

    def kernels(i0: int, i1: int) -> torch.Tensor:
        return _synth(al[i0:i1], bs[i0:i1], rp[i0:i1] if rp is not None else None)

    def fold(i0: int, i1: int, ga: torch.Tensor) -> None:
        if g_alpha is not None:
            torch.bmm(bs[i0:i1], ga.transpose(1, 2), out=g_alpha[i0:i1])
        if g_bases is not None:
            torch.bmm(al[i0:i1], ga, out=g_bases[i0:i1])
        if g_rel is not None:
            torch.sum(ga, 1, out=g_rel[i0:i1])

    grad_x = _backward(gy, x, kernels, fold, al.shape[0], G, k, stride, dilation,
                       need_x, need_alpha or need_bases or g_rel is not None)
    return (
        grad_x,
        g_alpha.view(alpha.shape).to(alpha.dtype) if g_alpha is not None else x.new_empty(0),
        g_bases.view(-1, G, B, k, k).sum(0).to(bases.dtype) if g_bases is not None else x.new_empty(0),
        g_rel.view(-1, G, k, k).sum(0).to(rel_pos.dtype) if g_rel is not None and rel_pos is not None
        else x.new_empty(0),
    )


pixel_filter_dense = register_pixel_filter(
    'pixel_filter_dense', _pixel_filter_fwd, _pixel_filter_bwd,
    """`pixel_filter_reference` as a dense matrix product per head, hand-written backward.""")
cada_dense = register_cada(
    'cada_dense', _cada_fwd, _cada_bwd,
    """`cada_reference` as a dense matrix product per head, hand-written backward.""")
