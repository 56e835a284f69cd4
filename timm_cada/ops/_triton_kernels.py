""" The Triton kernels of the 'triton' backend (`triton_fused.py` launches them).

Imported on the backend's first call, not with the package: whether `triton.jit` compiles for the GPU
or runs the kernels in Triton's interpreter (on CPU tensors, TRITON_INTERPRET=1) is decided when these
functions are decorated.

One program computes one (sample, head) (grid axis 0, which takes any count) on a tile of BLOCK pixels (axis
1), all the head's channels at once. With
SYNTH (CADA) it holds the tile's CA parameters, (B, BLOCK), and builds every tap's kernel value on chip,
sum_b alpha_b W_b[d] (+ R[d]); without, the kernel map is read directly (pixel_filter). Nothing per-pixel
of size k*k is ever written, and every sum accumulates in ACC (float32, or float64 for float64 inputs).
"""
import triton
import triton.language as tl


@triton.jit
def _program(G, HD, NB, HD_PAD: tl.constexpr, B_PAD: tl.constexpr):
    """This program's sample n (int64, for the batch offsets) and head g (grid axis 0), the head's channels ch
    with their mask, and the kernel indices b with theirs."""
    pid_ng = tl.program_id(0)
    c = tl.arange(0, HD_PAD)
    b = tl.arange(0, B_PAD)
    g = pid_ng % G
    return (pid_ng // G).to(tl.int64), g, g * HD + c, c < HD, b, b < NB


@triton.jit
def _tap_kernel(a_base, w_ptr, r_ptr, b, bmask, alpha, pix, m, g, d, P, NB,
                KK: tl.constexpr, SYNTH: tl.constexpr, HAS_REL: tl.constexpr, ACC: tl.constexpr):
    """Tap d's kernel value at pixels `pix` (masked by m): synthesised from `alpha` (the CA parameters
    at those pixels, (B_PAD, BLOCK)) and the bases with SYNTH, else read from the kernel map."""
    if SYNTH:
        wcol = tl.load(w_ptr + (g * NB + b) * KK + d, mask=bmask, other=0.0).to(ACC)
        kern = tl.sum(alpha * wcol[:, None], axis=0)
        if HAS_REL:
            kern += tl.load(r_ptr + g * KK + d).to(ACC)
    else:
        kern = tl.load(a_base + d * P + pix, mask=m, other=0.0).to(ACC)
    return kern


@triton.jit
def filter_fwd_kernel(
        x_ptr, a_ptr, w_ptr, r_ptr, y_ptr,
        G, H, W, Ho, Wo, HD, NB,
        sxn, sxc, sxh, sxw, syn, syc, syh, syw, san,
        K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, SYNTH: tl.constexpr, HAS_REL: tl.constexpr,
        HD_PAD: tl.constexpr, B_PAD: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """y[n, c, p] = sum_d kernel_d(n, g(c), p) * x[n, c, STRIDE * p + DIL * d - pad]."""
    KK: tl.constexpr = K * K
    PAD: tl.constexpr = DIL * (K // 2)
    n, g, ch, cmask, b, bmask = _program(G, HD, NB, HD_PAD, B_PAD)
    P = Ho * Wo
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pmask = p < P
    ho = p // Wo
    wo = p % Wo
    x_base = x_ptr + n * sxn + ch[:, None] * sxc
    a_base = a_ptr + n * san + g * NB * P
    alpha = tl.zeros((B_PAD, BLOCK), ACC)
    if SYNTH:
        alpha = tl.load(a_base + b[:, None] * P + p[None, :], mask=bmask[:, None] & pmask[None, :], other=0.0).to(ACC)
    acc = tl.zeros((HD_PAD, BLOCK), ACC)
    for d in range(KK):
        hi = ho * STRIDE + (d // K) * DIL - PAD
        wi = wo * STRIDE + (d % K) * DIL - PAD
        m = pmask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        xv = tl.load(x_base + hi[None, :] * sxh + wi[None, :] * sxw, mask=cmask[:, None] & m[None, :], other=0.0)
        kern = _tap_kernel(a_base, w_ptr, r_ptr, b, bmask, alpha, p, pmask, g, d, P, NB, KK, SYNTH, HAS_REL, ACC)
        acc += xv.to(ACC) * kern[None, :]
    y_off = n * syn + ch[:, None] * syc + ho[None, :] * syh + wo[None, :] * syw
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])


@triton.jit
def filter_bwd_x_kernel(
        gy_ptr, a_ptr, w_ptr, r_ptr, gx_ptr,
        G, H, W, Ho, Wo, HD, NB,
        sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, san,
        K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, SYNTH: tl.constexpr, HAS_REL: tl.constexpr,
        HD_PAD: tl.constexpr, B_PAD: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """grad_x[n, c, q] = sum over the taps d and outputs p that read q of kernel_d(n, g(c), p) * gy[n, c, p]:
    a gather over a tile of input pixels q, so no two programs write the same element."""
    KK: tl.constexpr = K * K
    PAD: tl.constexpr = DIL * (K // 2)
    n, g, ch, cmask, b, bmask = _program(G, HD, NB, HD_PAD, B_PAD)
    P = Ho * Wo
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    qmask = q < H * W
    hq = q // W
    wq = q % W
    gy_base = gy_ptr + n * sgn + ch[:, None] * sgc
    a_base = a_ptr + n * san + g * NB * P
    acc = tl.zeros((HD_PAD, BLOCK), ACC)
    for d in range(KK):
        th = hq + PAD - (d // K) * DIL  # STRIDE * ho, when tap d of output (ho, wo) reads q
        tw = wq + PAD - (d % K) * DIL
        ho = th // STRIDE
        wo = tw // STRIDE
        m = qmask & (th >= 0) & (tw >= 0) & (th % STRIDE == 0) & (tw % STRIDE == 0) & (ho < Ho) & (wo < Wo)
        pix = ho * Wo + wo
        alpha = tl.zeros((B_PAD, BLOCK), ACC)
        if SYNTH:
            alpha = tl.load(a_base + b[:, None] * P + pix[None, :], mask=bmask[:, None] & m[None, :], other=0.0).to(ACC)
        kern = _tap_kernel(a_base, w_ptr, r_ptr, b, bmask, alpha, pix, m, g, d, P, NB, KK, SYNTH, HAS_REL, ACC)
        gv = tl.load(gy_base + ho[None, :] * sgh + wo[None, :] * sgw, mask=cmask[:, None] & m[None, :], other=0.0)
        acc += gv.to(ACC) * kern[None, :]
    gx_off = n * sxn + ch[:, None] * sxc + hq[None, :] * sxh + wq[None, :] * sxw
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=cmask[:, None] & qmask[None, :])


@triton.jit
def filter_bwd_kernels_kernel(
        x_ptr, gy_ptr, a_ptr, w_ptr, ga_ptr, pw_ptr, pr_ptr,
        G, H, W, Ho, Wo, HD, NB,
        sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, san,
        K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, SYNTH: tl.constexpr,
        NEED_A: tl.constexpr, NEED_W: tl.constexpr, NEED_R: tl.constexpr,
        HD_PAD: tl.constexpr, B_PAD: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """The kernels' gradient over a tile of outputs. Per tap d, gk_d(p) = sum_{c in head} gy[c, p] * x[c, tap d
    of p]. Without SYNTH that is grad_attn. With SYNTH: grad_alpha[b, p] = sum_d W_b[d] gk_d(p) (written per
    sample to ga), and this tile's shares of grad_bases[b, d] = sum_p alpha_b(p) gk_d(p) and grad_rel[d] =
    sum_p gk_d(p), written to the partial buffers pw (tiles, NB, KK) and pr (tiles, KK) for the caller to sum
    (deterministic, no atomics)."""
    KK: tl.constexpr = K * K
    PAD: tl.constexpr = DIL * (K // 2)
    n, g, ch, cmask, b, bmask = _program(G, HD, NB, HD_PAD, B_PAD)
    P = Ho * Wo
    tile = tl.program_id(0).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pmask = p < P
    ho = p // Wo
    wo = p % Wo
    x_base = x_ptr + n * sxn + ch[:, None] * sxc
    gmask = cmask[:, None] & pmask[None, :]
    gv = tl.load(gy_ptr + n * sgn + ch[:, None] * sgc + ho[None, :] * sgh + wo[None, :] * sgw, mask=gmask,
                 other=0.0).to(ACC)
    ga_base = ga_ptr + (n * G + g) * NB * P  # ga is per sample, (N, G, NB, Ho, Wo)
    amask = bmask[:, None] & pmask[None, :]
    alpha = tl.zeros((B_PAD, BLOCK), ACC)
    if SYNTH and NEED_W:
        alpha = tl.load(a_ptr + n * san + g * NB * P + b[:, None] * P + p[None, :], mask=amask, other=0.0).to(ACC)
    g_alpha = tl.zeros((B_PAD, BLOCK), ACC)
    for d in range(KK):
        hi = ho * STRIDE + (d // K) * DIL - PAD
        wi = wo * STRIDE + (d % K) * DIL - PAD
        m = pmask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        xv = tl.load(x_base + hi[None, :] * sxh + wi[None, :] * sxw, mask=cmask[:, None] & m[None, :], other=0.0)
        gk = tl.sum(xv.to(ACC) * gv, axis=0)
        if SYNTH:
            if NEED_A:
                wcol = tl.load(w_ptr + (g * NB + b) * KK + d, mask=bmask, other=0.0).to(ACC)
                g_alpha += wcol[:, None] * gk[None, :]
            if NEED_W:
                tl.store(pw_ptr + (tile * NB + b) * KK + d, tl.sum(alpha * gk[None, :], axis=1), mask=bmask)
            if NEED_R:
                tl.store(pr_ptr + tile * KK + d, tl.sum(gk, axis=0))
        else:
            tl.store(ga_base + d * P + p, gk.to(ga_ptr.dtype.element_ty), mask=pmask)
    if SYNTH and NEED_A:
        tl.store(ga_base + b[:, None] * P + p[None, :], g_alpha.to(ga_ptr.dtype.element_ty), mask=amask)
