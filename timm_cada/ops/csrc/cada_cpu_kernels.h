/* The kernels for one element type: CADA_T, CADA_L lanes per vector, CADA_NAME(f) the exported name.
Included by cada_cpu.c once per type. Tensors are contiguous: x, y, gy, gx (N, C, H or Ho, W or Wo), or
(N, H or Ho, W or Wo, C) where geo_t.nhwc says channels_last; alpha / attn (N or 1, G, nk, Ho, Wo); bases
(G, nk, k, k); rel_pos (G, k, k). Only the copies in and out of a task's buffers (phases, unphase, gy_rows and
filter_block's stores) see the layout: the compute loops run on the same per-channel rows in both; where a
channels_last head is whole vectors, the *_nhwc / *_shift kernels work on its pixels directly instead. */
#define T CADA_T
#define L CADA_L
#define V CADA_NAME(vec)
#define F(f) CADA_NAME(f)

typedef T V __attribute__((vector_size(sizeof(T) * L)));
/* V at any T's address: loads and stores of T (not of any type, as memcpy's are), so that a store does not make
the compiler reload the geometry and the pointers it might have overwritten */
typedef T CADA_NAME(uvec) __attribute__((vector_size(sizeof(T) * L), aligned(sizeof(T))));

static inline V F(ld)(const T *p) { return *(const CADA_NAME(uvec) *)p; }
static inline void F(st)(T *p, V v) { *(CADA_NAME(uvec) *)p = v; }

/* channels per register block of the filter, and taps per block of the kernels' gradient */
#define CB 8
#define TB 8
/* bases per register block of the kernels' synthesis and of alpha's gradient */
#define NB 8
/* bases x taps per register tile of the bases' gradient */
#define FB 4
#define FT 4

/* one thread's scratch, for whichever kernel: a task's padded phases (of x or of grad_x; a head's after another's),
one row of the kernels or of their gradient, gy's rows of the task's channels, alpha's row, alpha's gradient row,
the vector partial sums of the bases' and rel_pos' gradients of each head, CB vectors (an output block on its way
out) */
typedef struct {
    T *xb, *K, *gyb, *ab, *gab, *gwv, *grv, *tail;
} F(work_t);

static int F(work_init)(F(work_t) *w, const geo_t *g, long rows) {
    w->xb = malloc(sizeof(T) * g->cpt * g->phsz);
    w->K = malloc(sizeof(T) * g->kk * g->Wop * rows);
    w->gyb = malloc(sizeof(T) * g->cpt * g->Wop * rows);
    w->ab = malloc(sizeof(T) * g->nk * g->Wop * rows);
    w->gab = malloc(sizeof(T) * g->nk * g->Wop);
    /* the bases' partial sums only where there are bases: per-pixel kernels (nk = k * k) would need hpt * k^4 */
    w->gwv = malloc(sizeof(T) * (g->synth ? g->hpt * g->nk * g->kk : 1) * L);
    w->grv = malloc(sizeof(T) * g->hpt * g->kk * L);
    w->tail = malloc(sizeof(T) * CB * L);
    return w->xb && w->K && w->gyb && w->ab && w->gab && w->gwv && w->grv && w->tail;
}

static void F(work_free)(F(work_t) *w) {
    free(w->xb); free(w->K); free(w->gyb); free(w->ab); free(w->gab); free(w->gwv); free(w->grv); free(w->tail);
}

#if CADA_SHUFFLE && (L == 8 || L == 4)
#define TR_FAST 1
#if L == 8
#define ZIP_LO 0, 8, 1, 9, 2, 10, 3, 11
#define ZIP_HI 4, 12, 5, 13, 6, 14, 7, 15
#else
#define ZIP_LO 0, 4, 1, 5
#define ZIP_HI 2, 6, 3, 7
#endif
/* r (L vectors of L) transposed in registers: log2(L) rounds of interleaving row i with row i + L / 2 */
static inline __attribute__((always_inline)) void F(tr)(V *r) {
    for (int round = 1; round < L; round *= 2) {
        V t[L];
        for (int i = 0; i < L / 2; i++) {
            t[2 * i] = __builtin_shufflevector(r[i], r[i + L / 2], ZIP_LO);
            t[2 * i + 1] = __builtin_shufflevector(r[i], r[i + L / 2], ZIP_HI);
        }
        for (int i = 0; i < L; i++) r[i] = t[i];
    }
}
#else
#define TR_FAST 0
#endif

/* dst[j * dj + i] = src[i * si + j] for i < ni, j < nj (a copy between pixel and channel rows): in L x L tiles
transposed in registers, a row's or a column's last tile overlapping the one before it; scalar where ni or nj is
under L or the compiler lacks __builtin_shufflevector */
static void F(transpose)(const T *src, long si, T *dst, long dj, long ni, long nj) {
#if TR_FAST
    if (ni >= L && nj >= L) {
        for (long i0 = 0; i0 < ni; i0 += L) {
            long i = i0 + L <= ni ? i0 : ni - L;
            for (long j0 = 0; j0 < nj; j0 += L) {
                long j = j0 + L <= nj ? j0 : nj - L;
                V r[L];
                for (int l = 0; l < L; l++) r[l] = F(ld)(src + (i + l) * si + j);
                F(tr)(r);
                for (int l = 0; l < L; l++) F(st)(dst + (j + l) * dj + i, r[l]);
            }
        }
        return;
    }
#endif
    for (long i = 0; i < ni; i++)
        for (long j = 0; j < nj; j++) dst[j * dj + i] = src[i * si + j];
}

/* the task's channels, from head gi on, of sample n of channels_last x (or, with `out`, of gx, from buf): an
input row's pixels r, r + s, r + 2 s, ... are consecutive in one phase, so each such run is one transpose */
static void F(phases_nhwc)(const geo_t *g, T *x, long n, long gi, T *buf, int out) {
    for (long ih = 0; ih < g->H; ih++) {
        T *px = x + (n * g->H + ih) * g->W * g->C + gi * g->hd, *row = buf + phase_row(g, ih);
        for (long r = 0; r < g->s && r < g->W; r++) {
            long np = (g->W - r + g->s - 1) / g->s;
            if (out) F(transpose)(row + g->coloff[r], g->phsz, px + r * g->C, g->s * g->C, g->cpt, np);
            else F(transpose)(px + r * g->C, g->s * g->C, row + g->coloff[r], g->phsz, np, g->cpt);
        }
    }
}

/* the task's channels (from head gi on) of sample n as zero-padded stride phases, (cpt, s * s, Hph, Wph): phase
(pi, pj) holds the padded input's rows pi, pi + s, ... and columns pj, pj + s, ... */
static void F(phases)(const geo_t *g, const T *x, long n, long gi, T *buf) {
    memset(buf, 0, sizeof(T) * g->cpt * g->phsz);
    if (g->nhwc) {
        F(phases_nhwc)(g, (T *)x, n, gi, buf, 0);  /* reads x only */
        return;
    }
    for (long c = 0; c < g->cpt; c++) {
        const T *src = x + ((n * g->C) + gi * g->hd + c) * g->H * g->W;
        for (long pi = 0; pi < g->s; pi++) {
            for (long pj = 0; pj < g->s; pj++) {
                T *dst = buf + c * g->phsz + (pi * g->s + pj) * g->Hph * g->Wph;
                /* the phase's first column and row inside the image, and the image's first column there */
                long q0 = (g->pad - pj + g->s - 1) / g->s, iw0 = q0 * g->s + pj - g->pad;
                for (long r = (g->pad - pi + g->s - 1) / g->s; r < g->Hph; r++) {
                    long ih = r * g->s + pi - g->pad;
                    if (ih >= g->H) break;
                    const T *sr = src + ih * g->W;
                    T *dr = dst + r * g->Wph;
                    long cols = (g->W - iw0 + g->s - 1) / g->s;
                    if (g->s == 1) memcpy(dr + q0, sr + iw0, sizeof(T) * g->W);
                    else if (g->s == 2) for (long j = 0; j < cols; j++) dr[q0 + j] = sr[iw0 + 2 * j];  /* vectorised */
                    else for (long j = 0; j < cols; j++) dr[q0 + j] = sr[iw0 + g->s * j];
                }
            }
        }
    }
}

/* the inverse of phases, dropping the padding: buf (cpt, s * s, Hph, Wph) -> the task's channels of gx */
static void F(unphase)(const geo_t *g, const T *buf, long n, long gi, T *gx) {
    if (g->nhwc) {
        F(phases_nhwc)(g, gx, n, gi, (T *)buf, 1);  /* reads buf only */
        return;
    }
    for (long c = 0; c < g->cpt; c++) {
        T *dst = gx + ((n * g->C) + gi * g->hd + c) * g->H * g->W;
        for (long pi = 0; pi < g->s; pi++) {
            for (long pj = 0; pj < g->s; pj++) {
                const T *src = buf + c * g->phsz + (pi * g->s + pj) * g->Hph * g->Wph;
                long q0 = (g->pad - pj + g->s - 1) / g->s, iw0 = q0 * g->s + pj - g->pad;
                for (long r = (g->pad - pi + g->s - 1) / g->s; r < g->Hph; r++) {
                    long ih = r * g->s + pi - g->pad;
                    if (ih >= g->H) break;
                    const T *sr = src + r * g->Wph;
                    T *dr = dst + ih * g->W;
                    if (g->s == 1) {
                        memcpy(dr + iw0, sr + q0, sizeof(T) * g->W);
                        continue;
                    }
                    for (long q = q0, iw = iw0; iw < g->W; q++, iw += g->s) dr[iw] = sr[q];
                }
            }
        }
    }
}

/* sample n's alpha / attn row oh of head gi, kernel 0 (the next kernel's row is Ho * Wo further on) */
static inline const T *F(map_row)(const geo_t *g, const T *a, long n, long gi, long oh) {
    return a + ((g->abatch ? n : 0) * g->G + gi) * g->nk * g->Ho * g->Wo + oh * g->Wo;
}

/* alpha's row oh of sample n's head gi, ab (nk, Wop) with rows ld apart, zero beyond Wo */
static void F(alpha_row)(const geo_t *g, const T *a, long n, long gi, long oh, T *ab, long ld) {
    const T *ap = F(map_row)(g, a, n, gi, oh);
    for (long b = 0; b < g->nk; b++) {
        memcpy(ab + b * ld, ap + b * g->Ho * g->Wo, sizeof(T) * g->Wo);
        for (long ow = g->Wo; ow < g->Wop; ow++) ab[b * ld + ow] = 0;
    }
}

/* K[:, ow:ow + L] (+)= bases b0 .. b0 + nb of wg weighted by their alpha vectors (+ rel_pos on the first block):
DB taps at a time, so that DB sums of nb multiply-adds each run side by side rather than one chain after another */
#define DB 4
static inline __attribute__((always_inline)) void F(synth_block)(
        const geo_t *g, const T *wg, const T *rel, const T *ab, long ow, long b0, int nb, T *K) {
    V av[NB];
    for (int b = 0; b < nb; b++) av[b] = F(ld)(ab + (b0 + b) * g->Wop + ow);
    long d = 0;
    for (; d + DB <= g->kk; d += DB) {
        V acc[DB];
        for (int t = 0; t < DB; t++)
            acc[t] = b0 ? F(ld)(K + (d + t) * g->Wop + ow) : (V){0} + (T)(rel ? rel[d + t] : 0);
        for (int b = 0; b < nb; b++)
            for (int t = 0; t < DB; t++) acc[t] += wg[(b0 + b) * g->kk + d + t] * av[b];
        for (int t = 0; t < DB; t++) F(st)(K + (d + t) * g->Wop + ow, acc[t]);
    }
    for (; d < g->kk; d++) {
        T *kp = K + d * g->Wop + ow;
        V acc = b0 ? F(ld)(kp) : (V){0} + (T)(rel ? rel[d] : 0);
        for (int b = 0; b < nb; b++) acc += wg[(b0 + b) * g->kk + d] * av[b];
        F(st)(kp, acc);
    }
}

/* the kernels of output row oh, K (kk, Wop): sum_b alpha_b W_b[d] + R[d], or attn[d]; zero beyond Wo. ab is
a (nk, Wop) scratch row for CADA's alpha. */
static void F(kernel_row)(const geo_t *g, const T *a, const T *bases, const T *rel, long n, long gi, long oh,
                          T *K, T *ab) {
    const T *ap = F(map_row)(g, a, n, gi, oh);
    long plane = g->Ho * g->Wo;
    if (!g->synth) {
        for (long d = 0; d < g->kk; d++) {
            memcpy(K + d * g->Wop, ap + d * plane, sizeof(T) * g->Wo);
            for (long ow = g->Wo; ow < g->Wop; ow++) K[d * g->Wop + ow] = 0;
        }
        return;
    }
    F(alpha_row)(g, a, n, gi, oh, ab, g->Wop);  /* zero beyond Wo: so are the kernels */
    const T *wg = bases + gi * g->nk * g->kk;
    for (long ow = 0; ow < g->Wop; ow += L) {
        /* the bases in blocks of NB, each block's alpha vectors held in registers across the taps */
        for (long b0 = 0; b0 < g->nk; ) {
            if (g->nk - b0 >= NB) F(synth_block)(g, wg, rel ? rel + gi * g->kk : NULL, ab, ow, b0, NB, K);
            else F(synth_block)(g, wg, rel ? rel + gi * g->kk : NULL, ab, ow, b0, (int)(g->nk - b0), K);
            b0 += g->nk - b0 >= NB ? NB : g->nk - b0;
        }
    }
}

/* y's row oh of channels c0 .. c0 + cb (y points at its first element; NCHW rows Ho * Wo apart, channels_last
pixels C apart) = the filter of output row oh on those channels of the phases xb. A channels_last block, and
the last vector of an NCHW row where it reaches past Wo, go through tail (CB vectors). */
static inline __attribute__((always_inline)) void F(filter_block)(
        const geo_t *g, const T *K, const T *xb, long oh, long c0, int cb, T *y, T *tail) {
    for (long ow = 0; ow < g->Wop; ow += L) {
        V acc[CB];
        for (int c = 0; c < cb; c++) acc[c] = (V){0};
        const T *xo = xb + c0 * g->phsz + oh * g->Wph + ow;
        for (long d = 0; d < g->kk; d++) {
            V kv = F(ld)(K + d * g->Wop + ow);
            const T *xp = xo + g->tapoff[d];
            for (int c = 0; c < cb; c++) acc[c] += kv * F(ld)(xp + c * g->phsz);
        }
        if (g->nhwc) {
            long np = g->Wo - ow < L ? g->Wo - ow : L;
#if TR_FAST
            if (cb % L == 0) {  /* L channels at a time: transposed, a vector per pixel */
                for (int c = 0; c < cb; c += L) {
                    V r[L];
                    for (int l = 0; l < L; l++) r[l] = acc[c + l];
                    F(tr)(r);
                    for (long l = 0; l < np; l++) F(st)(y + (ow + l) * g->C + c, r[l]);
                }
                continue;
            }
#endif
            for (int c = 0; c < cb; c++) F(st)(tail + c * L, acc[c]);
            for (long l = 0; l < np; l++)
                for (int c = 0; c < cb; c++) y[(ow + l) * g->C + c] = tail[c * L + l];
            continue;
        }
        long plane = g->Ho * g->Wo;
        if (ow + L <= g->Wo) {
            for (int c = 0; c < cb; c++) F(st)(y + c * plane + ow, acc[c]);
            continue;
        }
        for (int c = 0; c < cb; c++) {
            F(st)(tail, acc[c]);
            memcpy(y + c * plane + ow, tail, sizeof(T) * (g->Wo - ow));
        }
    }
}

/* The task's channels (from head gi on) of sample n of channels_last t copied into the interior of a zero-padded
(H + 2 pad, Wp, cpt) buffer, or with `out` the interior copied back into t */
static void F(padded_nhwc)(const geo_t *g, T *t, long n, long gi, T *buf, long Wp, int out) {
    for (long ih = 0; ih < g->H; ih++) {
        T *px = t + ((n * g->H + ih) * g->W) * g->C + gi * g->hd, *pb = buf + ((ih + g->pad) * Wp + g->pad) * g->cpt;
        if (g->cpt == g->C) {
            if (out) memcpy(px, pb, sizeof(T) * g->W * g->C);
            else memcpy(pb, px, sizeof(T) * g->W * g->C);
            continue;
        }
        for (long iw = 0; iw < g->W; iw++) {
            if (out) memcpy(px + iw * g->C, pb + iw * g->cpt, sizeof(T) * g->cpt);
            else memcpy(pb + iw * g->cpt, px + iw * g->C, sizeof(T) * g->cpt);
        }
    }
}

/* The channels_last forward where a head's channels are whole vectors (NV of them): vectorised over channels,
not pixels. The task's channels of the sample are copied once into a zero-padded (Hp, Wp, cpt) buffer whose
columns reach as far as a block of RB output pixels reads, so every tap of a pixel is a run of NV vectors; each
output pixel's kernel value is broadcast from the row's kernels K and the RB x NV accumulators go straight to
y's pixels: no phases and no transposes. */
#define RB (NV <= 2 ? 8 : 4)
static inline __attribute__((always_inline)) void F(filter_row_nhwc)(
        const geo_t *g, const T *K, const T *xp, long Wp, long cpt, long oh, T *yh, const int NV) {
    for (long ow = 0; ow < g->Wo; ow += RB) {
        long ow0 = ow + RB <= g->Wo || g->Wo < RB ? ow : g->Wo - RB;  /* the last block overlaps the one before */
        V acc[8][4];
        for (int r = 0; r < RB; r++)
            for (int v = 0; v < NV; v++) acc[r][v] = (V){0};
        for (long i = 0; i < g->k; i++) {
            const T *xr = xp + ((oh * g->s + i * g->dil) * Wp + ow0 * g->s) * cpt;
            for (long j = 0; j < g->k; j++) {
                const T *kd = K + (i * g->k + j) * g->Wop + ow0, *xq = xr + j * g->dil * cpt;
                for (int r = 0; r < RB; r++) {
                    V kb = kd[r] - (V){0};  /* a broadcast (x - 0 is x: no add) */
                    for (int v = 0; v < NV; v++) acc[r][v] += kb * F(ld)(xq + r * g->s * cpt + v * L);
                }
            }
        }
        long rb = g->Wo - ow0 < RB ? g->Wo - ow0 : RB;
        for (long r = 0; r < rb; r++)
            for (int v = 0; v < NV; v++) F(st)(yh + (ow0 + r) * g->C + v * L, acc[r][v]);
    }
}

/* the pixels of a block of the register shift (forward and grad_x): 4 or 6, whichever covers a row of Wo
pixels with fewer (7 x 7 maps: 8, not 12), else 6 */
static inline int F(shift_block)(long Wo) {
    return (Wo + 3) / 4 * 4 < (Wo + 5) / 6 * 6 ? 4 : 6;
}

/* filter_row_nhwc at stride 1 and dilation 1 (NV <= 2), where tap j + 1 of pixel r reads what tap j of pixel
r + 1 read: the R1 (4 or 6) input pixels of a block are held in registers and shifted by one at each tap, so a
tap loads one pixel, not R1, and the multiply-adds are no longer bound by the loads */
static inline __attribute__((always_inline)) void F(filter_row_s1)(
        const geo_t *g, const T *K, const T *xp, long Wp, long cpt, long oh, T *yh, const int NV, const int R1) {
    for (long ow = 0; ow < g->Wo; ow += R1) {
        long ow0 = ow + R1 <= g->Wo || g->Wo < R1 ? ow : g->Wo - R1;  /* the last block overlaps the one before */
        V acc[6][2];
        for (int r = 0; r < R1; r++)
            for (int v = 0; v < NV; v++) acc[r][v] = (V){0};
        for (long i = 0; i < g->k; i++) {
            const T *xr = xp + ((oh + i) * Wp + ow0) * cpt, *kd = K + i * g->k * g->Wop + ow0;
            V X[6][2];
            for (int r = 0; r < R1; r++)
                for (int v = 0; v < NV; v++) X[r][v] = F(ld)(xr + r * cpt + v * L);
            for (long j = 0; j < g->k; j++) {
                for (int r = 0; r < R1; r++) {
                    V kb = kd[j * g->Wop + r] - (V){0};
                    for (int v = 0; v < NV; v++) acc[r][v] += kb * X[r][v];
                }
                for (int r = 0; r < R1 - 1; r++)
                    for (int v = 0; v < NV; v++) X[r][v] = X[r + 1][v];
                for (int v = 0; v < NV; v++) X[R1 - 1][v] = F(ld)(xr + (R1 + j) * cpt + v * L);
            }
        }
        long nr = g->Wo - ow0 < R1 ? g->Wo - ow0 : R1;
        for (long r = 0; r < nr; r++)
            for (int v = 0; v < NV; v++) F(st)(yh + (ow0 + r) * g->C + v * L, acc[r][v]);
    }
}

static int F(forward_nhwc)(const geo_t *g, const T *x, const T *a, const T *bases, const T *rel, T *y,
                           int64_t threads) {
    long nv = g->hd / L, shift = g->s == 1 && g->dil == 1 && nv <= 2;
    long r1 = F(shift_block)(g->Wo), rb = shift ? r1 : nv <= 2 ? 8 : 4;
    long wb = g->Wo > rb ? g->Wo : rb;  /* the pixels the blocks cover */
    long Wop = (wb + L - 1) / L * L;  /* the K rows: whole vectors, and every block's pixels */
    long Hp = g->H + 2 * g->pad, Wp = (wb - 1) * g->s + (g->k - 1) * g->dil + 1 + shift;  /* + the last shift's load */
    if (Wp < g->W + 2 * g->pad) Wp = g->W + 2 * g->pad;
    geo_t gk = *g;
    gk.Wop = Wop;  /* kernel_row writes K (kk, Wop) and ab (nk, Wop) */
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    size_t xsz = (sizeof(T) * Hp * Wp * g->cpt + 63) / 64 * 64;
    T *xp = aligned_alloc(64, xsz), *K = malloc(sizeof(T) * g->kk * Wop),
      *ab = malloc(sizeof(T) * g->nk * Wop);
    int ok = xp && K && ab;
    rc |= !ok;
    if (xp) memset(xp, 0, xsz);
#pragma omp for schedule(static)
    for (long t = 0; t < g->N * g->G / g->hpt; t++) {
        if (!ok) continue;
        long n = t * g->hpt / g->G, g0 = t * g->hpt % g->G;
        F(padded_nhwc)(g, (T *)x, n, g0, xp, Wp, 0);  /* the interior; the padding stays zero */
        for (long oh = 0; oh < g->Ho; oh++) {
            for (long gi = g0; gi < g0 + g->hpt; gi++) {
                F(kernel_row)(&gk, a, bases, rel, n, gi, oh, K, ab);
                const T *xh = xp + (gi - g0) * g->hd;
                T *yh = y + (n * g->Ho + oh) * g->Wo * g->C + gi * g->hd;
                if (shift) {
                    if (nv == 1 && r1 == 4) F(filter_row_s1)(&gk, K, xh, Wp, g->cpt, oh, yh, 1, 4);
                    else if (nv == 1) F(filter_row_s1)(&gk, K, xh, Wp, g->cpt, oh, yh, 1, 6);
                    else if (r1 == 4) F(filter_row_s1)(&gk, K, xh, Wp, g->cpt, oh, yh, 2, 4);
                    else F(filter_row_s1)(&gk, K, xh, Wp, g->cpt, oh, yh, 2, 6);
                    continue;
                }
                switch (nv) {
                case 1: F(filter_row_nhwc)(&gk, K, xh, Wp, g->cpt, oh, yh, 1); break;
                case 2: F(filter_row_nhwc)(&gk, K, xh, Wp, g->cpt, oh, yh, 2); break;
                case 3: F(filter_row_nhwc)(&gk, K, xh, Wp, g->cpt, oh, yh, 3); break;
                default: F(filter_row_nhwc)(&gk, K, xh, Wp, g->cpt, oh, yh, 4); break;
                }
            }
        }
    }
    free(xp); free(K); free(ab);
    }
    return rc ? -1 : 0;
}
#undef RB

int F(cada_cpu_forward)(const int64_t *prm, const T *x, const T *a, const T *bases, const T *rel, T *y,
                        int64_t threads) {
    geo_t g;
    if (geo_init(&g, prm, threads)) return -1;
    if (g.nhwc && g.hd % L == 0 && g.hd / L <= 4) {
        int r = F(forward_nhwc)(&g, x, a, bases, rel, y, threads);
        geo_free(&g);
        return r;
    }
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    F(work_t) w;
    int ok = F(work_init)(&w, &g, 1);
    rc |= !ok;
#pragma omp for schedule(static)
    for (long t = 0; t < g.N * g.G / g.hpt; t++) {
        if (!ok) continue;
        long n = t * g.hpt / g.G, g0 = t * g.hpt % g.G;
        F(phases)(&g, x, n, g0, w.xb);
        for (long oh = 0; oh < g.Ho; oh++) {
            for (long gi = g0; gi < g0 + g.hpt; gi++) {
                F(kernel_row)(&g, a, bases, rel, n, gi, oh, w.K, w.ab);
                const T *xh = w.xb + (gi - g0) * g.hd * g.phsz;
                for (long c0 = 0; c0 < g.hd; ) {
                    long ch = gi * g.hd + c0;
                    T *yo = y + (g.nhwc ? (n * g.Ho + oh) * g.Wo * g.C + ch : ((n * g.C + ch) * g.Ho + oh) * g.Wo);
                    if (g.hd - c0 >= CB) F(filter_block)(&g, w.K, xh, oh, c0, CB, yo, w.tail);
                    else F(filter_block)(&g, w.K, xh, oh, c0, 1, yo, w.tail);
                    c0 += g.hd - c0 >= CB ? CB : 1;
                }
            }
        }
    }
    F(work_free)(&w);
    }
    geo_free(&g);
    return rc ? -1 : 0;
}

/* gy's rows oh of the task's channels (from head gi on) of sample n, (cpt, Wop), zero beyond Wo */
static void F(gy_rows)(const geo_t *g, const T *gy, long n, long gi, long oh, T *gyb) {
    if (g->nhwc) F(transpose)(gy + (n * g->Ho + oh) * g->Wo * g->C + gi * g->hd, g->C, gyb, g->Wop, g->Wo, g->cpt);
    for (long c = 0; c < g->cpt; c++) {
        T *dst = gyb + c * g->Wop;
        if (!g->nhwc) memcpy(dst, gy + ((n * g->C + gi * g->hd + c) * g->Ho + oh) * g->Wo, sizeof(T) * g->Wo);
        for (long ow = g->Wo; ow < g->Wop; ow++) dst[ow] = 0;
    }
}

/* gy's row oh of the task's channels (from head gi on) of sample n of channels_last gy, (Wo, cpt): as it is */
static void F(gy_row_nhwc)(const geo_t *g, const T *gy, long n, long gi, long oh, T *gyr) {
    const T *src = gy + (n * g->Ho + oh) * g->Wo * g->C + gi * g->hd;
    if (g->cpt == g->C) memcpy(gyr, src, sizeof(T) * g->Wo * g->C);
    else for (long ow = 0; ow < g->Wo; ow++) memcpy(gyr + ow * g->cpt, src + ow * g->C, sizeof(T) * g->cpt);
}

/* grad_x of one output row oh and head, channels_last, stride S (1 or 2) and dilation 1 (NV <= 2 vectors a
head): a block of RX output pixels scatters kernel x gy into the padded gradient gxp. Its gy vectors stay in
registers; tap j of the block's pixel r reaches its input column S r + j, so the S (RX - 1) + 1 columns that tap j
reaches from column j on are summed in registers, and at each tap the first of them, which no later tap
reaches, is added to gxp and the rest shift by one (forward_nhwc's shift, reversed). */
#define RXMAX 6
static inline __attribute__((always_inline)) void F(gx_row_shift)(
        const geo_t *g, const T *K, const T *gyr, long cpt, T *gxp, long Wp, long oh, long wb, const int NV,
        const int S, const int RX) {
    const int NW = S * (RX - 1) + 1;
    for (long ow0 = 0; ow0 < wb; ow0 += RX) {
        V gv[RXMAX][2];
        for (int r = 0; r < RX; r++)
            for (int v = 0; v < NV; v++) gv[r][v] = F(ld)(gyr + (ow0 + r) * cpt + v * L);
        for (long i = 0; i < g->k; i++) {
            T *gr = gxp + ((S * oh + i) * Wp + S * ow0) * cpt;
            const T *kd = K + i * g->k * g->Wop + ow0;
            V G[2 * (RXMAX - 1) + 1][2];
            for (int u = 0; u < NW; u++)
                for (int v = 0; v < NV; v++) G[u][v] = (V){0};
            for (long j = 0; j < g->k; j++) {
                for (int r = 0; r < RX; r++) {
                    V kb = kd[j * g->Wop + r] - (V){0};
                    for (int v = 0; v < NV; v++) G[S * r][v] += kb * gv[r][v];
                }
                for (int v = 0; v < NV; v++) F(st)(gr + j * cpt + v * L, F(ld)(gr + j * cpt + v * L) + G[0][v]);
                for (int u = 0; u < NW - 1; u++)
                    for (int v = 0; v < NV; v++) G[u][v] = G[u + 1][v];
                for (int v = 0; v < NV; v++) G[NW - 1][v] = (V){0};
            }
            for (int u = 0; u < NW - 1; u++)
                for (int v = 0; v < NV; v++)
                    F(st)(gr + (g->k + u) * cpt + v * L, F(ld)(gr + (g->k + u) * cpt + v * L) + G[u][v]);
        }
    }
}

static int F(backward_x_nhwc)(const geo_t *g, const T *gy, const T *a, const T *bases, const T *rel, T *gx,
                              int64_t threads) {
    long nv = g->hd / L, rx = g->s == 2 && nv == 2 ? 4 : F(shift_block)(g->Wo);  /* RX: what fits the registers */
    long wb = (g->Wo + rx - 1) / rx * rx;  /* the blocks' output pixels, gy zero beyond Wo */
    long Wop = (wb + L - 1) / L * L, Hp = g->H + 2 * g->pad, Wp = g->s * (wb - 1) + g->k;
    if (Wp < g->W + 2 * g->pad) Wp = g->W + 2 * g->pad;
    geo_t gk = *g;
    gk.Wop = Wop;  /* kernel_row's K (kk, Wop) and ab (nk, Wop), zero beyond Wo */
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    size_t gsz = (sizeof(T) * Hp * Wp * g->cpt + 63) / 64 * 64;
    T *gxp = aligned_alloc(64, gsz), *gyr = calloc(wb * g->cpt, sizeof(T)), *K = malloc(sizeof(T) * g->kk * Wop),
      *ab = malloc(sizeof(T) * g->nk * Wop);
    int ok = gxp && gyr && K && ab;
    rc |= !ok;
#pragma omp for schedule(static)
    for (long t = 0; t < g->N * g->G / g->hpt; t++) {
        if (!ok) continue;
        long n = t * g->hpt / g->G, g0 = t * g->hpt % g->G;
        memset(gxp, 0, gsz);
        for (long oh = 0; oh < g->Ho; oh++) {
            F(gy_row_nhwc)(g, gy, n, g0, oh, gyr);
            for (long gi = g0; gi < g0 + g->hpt; gi++) {
                F(kernel_row)(&gk, a, bases, rel, n, gi, oh, K, ab);
                long c0 = (gi - g0) * g->hd;
                T *gxh = gxp + c0;
                const T *gyh = gyr + c0;
#define GX(NV, S, RX) F(gx_row_shift)(&gk, K, gyh, g->cpt, gxh, Wp, oh, wb, NV, S, RX)
                if (g->s == 1 && nv == 1) { if (rx == 4) GX(1, 1, 4); else GX(1, 1, 6); }
                else if (g->s == 1) { if (rx == 4) GX(2, 1, 4); else GX(2, 1, 6); }
                else if (nv == 1) { if (rx == 4) GX(1, 2, 4); else GX(1, 2, 6); }
                else GX(2, 2, 4);
#undef GX
            }
        }
        F(padded_nhwc)(g, gx, n, g0, gxp, Wp, 1);  /* the interior to gx */
    }
    free(gxp); free(gyr); free(K); free(ab);
    }
    return rc ? -1 : 0;
}
#undef RXMAX

/* grad_x: each tap's kernel times gy, scattered into the padded phases of the gradient */
int F(cada_cpu_backward_x)(const int64_t *prm, const T *gy, const T *a, const T *bases, const T *rel, T *gx,
                           int64_t threads) {
    geo_t g;
    if (geo_init(&g, prm, threads)) return -1;
    if (g.nhwc && g.s <= 2 && g.dil == 1 && g.hd % L == 0 && g.hd / L <= 2) {
        int r = F(backward_x_nhwc)(&g, gy, a, bases, rel, gx, threads);
        geo_free(&g);
        return r;
    }
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    F(work_t) w;
    int ok = F(work_init)(&w, &g, 1);
    rc |= !ok;
    T *gxb = w.xb, *K = w.K, *gyb = w.gyb, *ab = w.ab;  /* the phases hold grad_x here */
    /* in registers: the stores (memcpy, so of any type) would otherwise reload them from g in the inner loop */
    const long hd = g.hd, phsz = g.phsz, Wop = g.Wop;
#pragma omp for schedule(static)
    for (long t = 0; t < g.N * g.G / g.hpt; t++) {
        if (!ok) continue;
        long n = t * g.hpt / g.G, g0 = t * g.hpt % g.G;
        memset(gxb, 0, sizeof(T) * g.cpt * g.phsz);
        for (long oh = 0; oh < g.Ho; oh++) {
            F(gy_rows)(&g, gy, n, g0, oh, gyb);
            for (long gi = g0; gi < g0 + g.hpt; gi++) {
                F(kernel_row)(&g, a, bases, rel, n, gi, oh, K, ab);
                const T *gyh = gyb + (gi - g0) * g.hd * g.Wop;
                /* the taps column by column: consecutive taps then write different rows, where taps of one
                   window row would each reload the vectors the previous one stored, shifted by a column */
                for (long e = 0; e < g.kk; e++) {
                    long d = (e % g.k) * g.k + e / g.k;
                    const T *kd = K + d * g.Wop;
                    T *go = gxb + (gi - g0) * g.hd * g.phsz + g.tapoff[d] + oh * g.Wph;
                    for (long ow = 0; ow < Wop; ow += L) {
                        V kv = F(ld)(kd + ow);
                        for (long c = 0; c < hd; c++) {
                            T *p = go + c * phsz + ow;
                            F(st)(p, F(ld)(p) + kv * F(ld)(gyh + c * Wop + ow));
                        }
                    }
                }
            }
        }
        F(unphase)(&g, gxb, n, g0, gx);
    }
    F(work_free)(&w);
    }
    geo_free(&g);
    return rc ? -1 : 0;
}

/* gK rows (tb, Wop; ld apart) of taps d0 .. d0 + tb: sum over a head's channels of gy * the tap's input (gyb and
xb: the head's rows and phases) */
static inline __attribute__((always_inline)) void F(kgrad_block)(
        const geo_t *g, const T *gyb, const T *xb, long oh, long d0, int tb, T *gK, long ld) {
    for (long ow = 0; ow < g->Wop; ow += L) {
        V acc[TB];
        for (int t = 0; t < tb; t++) acc[t] = (V){0};
        for (long c = 0; c < g->hd; c++) {
            V gv = F(ld)(gyb + c * g->Wop + ow);
            const T *xo = xb + c * g->phsz + oh * g->Wph + ow;
            for (int t = 0; t < tb; t++) acc[t] += gv * F(ld)(xo + g->tapoff[d0 + t]);
        }
        for (int t = 0; t < tb; t++) F(st)(gK + (d0 + t) * ld + ow, acc[t]);
    }
}

/* alpha's gradient of bases b0 .. b0 + nb at pixels ow .. ow + L: the kernels' gradient gK (kk rows ld apart)
weighted by each base's taps; nb a constant where it is called, so that the nb sums stay in registers */
static inline __attribute__((always_inline)) void F(agrad_block)(
        const geo_t *g, const T *wg, const T *gK, long ld, long ow, long b0, const int nb, T *gab) {
    V acc[NB];
    for (int b = 0; b < nb; b++) acc[b] = (V){0};
    for (long d = 0; d < g->kk; d++) {
        V gk = F(ld)(gK + d * ld + ow);
        for (int b = 0; b < nb; b++) acc[b] += wg[(b0 + b) * g->kk + d] * gk;
    }
    for (int b = 0; b < nb; b++) F(st)(gab + (b0 + b) * g->Wop + ow, acc[b]);
}

/* the bases' gradient's vector partial sums gwv (nk, kk, L) of bases b0 .. b0 + nb and taps d0 .. d0 + tb
+= alpha ab * the kernels' gradient gK over np pixels (their rows ld apart), summed in a register tile */
static inline __attribute__((always_inline)) void F(bgrad_tile)(
        const geo_t *g, const T *ab, const T *gK, long np, long ld, long b0, int nb, long d0, int tb, T *gwv) {
    V acc[FB][FT];
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < tb; t++) acc[b][t] = F(ld)(gwv + ((b0 + b) * g->kk + d0 + t) * L);
    for (long ow = 0; ow < np; ow += L) {
        V gk[FT];
        for (int t = 0; t < tb; t++) gk[t] = F(ld)(gK + (d0 + t) * ld + ow);
        for (int b = 0; b < nb; b++) {
            V av = F(ld)(ab + (b0 + b) * ld + ow);
            for (int t = 0; t < tb; t++) acc[b][t] += av * gk[t];
        }
    }
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < tb; t++) F(st)(gwv + ((b0 + b) * g->kk + d0 + t) * L, acc[b][t]);
}

/* the bases' tiles of taps d0 .. d0 + tb: FB bases at a time, then one at a time */
static inline __attribute__((always_inline)) void F(bgrad_taps)(
        const geo_t *g, const T *ab, const T *gK, long np, long ld, long d0, int tb, T *gwv) {
    long b0 = 0;
    for (; b0 + FB <= g->nk; b0 += FB) F(bgrad_tile)(g, ab, gK, np, ld, b0, FB, d0, tb, gwv);
    for (; b0 < g->nk; b0++) F(bgrad_tile)(g, ab, gK, np, ld, b0, 1, d0, tb, gwv);
}

#if TR_FAST
#if L == 8
#define HS_A 0, 8, 2, 10, 4, 12, 6, 14
#define HS_B 1, 9, 3, 11, 5, 13, 7, 15
#define HS_C 0, 1, 8, 9, 4, 5, 12, 13
#define HS_D 2, 3, 10, 11, 6, 7, 14, 15
#else
#define HS_A 0, 4, 2, 6
#define HS_B 1, 5, 3, 7
#define HS_C 0, 1, 4, 5
#define HS_D 2, 3, 6, 7
#endif
/* the sums of L vectors' lanes, sum(p[l]) in lane l: log2(L) rounds, each adding the neighbouring lanes of two
vectors interleaved (2 L - 2 shuffles, L - 1 adds, where a transpose and L adds would take L log2(L) shuffles) */
static inline __attribute__((always_inline)) V F(hsums)(const V *p) {
    V q[L / 2], r[L / 4];
    for (int i = 0; i < L / 2; i++)
        q[i] = __builtin_shufflevector(p[2 * i], p[2 * i + 1], HS_A) + __builtin_shufflevector(p[2 * i], p[2 * i + 1], HS_B);
    for (int i = 0; i < L / 4; i++)
        r[i] = __builtin_shufflevector(q[2 * i], q[2 * i + 1], HS_C) + __builtin_shufflevector(q[2 * i], q[2 * i + 1], HS_D);
#if L == 8
    return __builtin_shufflevector(r[0], r[1], 0, 1, 2, 3, 8, 9, 10, 11)
         + __builtin_shufflevector(r[0], r[1], 4, 5, 6, 7, 12, 13, 14, 15);
#else
    return r[0];
#endif
}

/* The kernels' gradient row gK (kk, Wop; rows ld apart) of one head, channels_last (NV vectors a head), read from the padded
input xp (forward_nhwc's) and gy's row gyr (Wop, cpt; zero beyond Wo), neither transposed: each pixel's dot
product with a tap's input pixel runs over the head's channels, L pixels side by side, and their L sums go
across lanes at once (hsums) into gK's vector of those pixels. */
static inline __attribute__((always_inline)) void F(kgrad_row_nhwc)(
        const geo_t *g, const T *gyr, const T *xp, long Wp, long cpt, long oh, T *gK, long ld, const int NV) {
    for (long ow0 = 0; ow0 < g->Wop; ow0 += L) {
        V gv[L][4];
        for (int r = 0; r < L; r++)
            for (int v = 0; v < NV; v++) gv[r][v] = F(ld)(gyr + (ow0 + r) * cpt + v * L);
        for (long i = 0; i < g->k; i++) {
            const T *xr = xp + ((oh * g->s + i * g->dil) * Wp + ow0 * g->s) * cpt;
            for (long j = 0; j < g->k; j++) {
                const T *xq = xr + j * g->dil * cpt;
                V p[L];
                for (int r = 0; r < L; r++) {
                    V acc = gv[r][0] * F(ld)(xq + r * g->s * cpt);
                    for (int v = 1; v < NV; v++) acc += gv[r][v] * F(ld)(xq + r * g->s * cpt + v * L);
                    p[r] = acc;
                }
                F(st)(gK + (i * g->k + j) * ld + ow0, F(hsums)(p));
            }
        }
    }
}
#endif

/* The kernels' gradient gK (kk, Wop) row by row, folded at once into what the caller asks for (NULL: not asked):
ga, the gradient of alpha / attn with one map per sample, (N, G, nk, Ho, Wo), whether or not alpha is shared by
the batch (the caller sums it then); gw, the bases' gradient per task, (N * G, nk, kk); gr, rel_pos's per task,
(N * G, kk). */
int F(cada_cpu_backward_k)(const int64_t *prm, const T *gy, const T *x, const T *a, const T *bases,
                           T *ga, T *gw, T *gr, int64_t threads) {
    geo_t g;
    if (geo_init(&g, prm, threads)) return -1;
    long plane = g.Ho * g.Wo, nv = g.hd / L;
    /* channels_last heads of whole vectors: x in a zero-padded NHWC copy (its phases' buffer is large enough)
       and gy's rows as they are; otherwise the phases of x and gy's rows transposed to channel rows */
    int cl = TR_FAST && g.nhwc && g.hd % L == 0 && nv <= 4;
    long Wp = g.s * (g.Wop - 1) + (g.k - 1) * g.dil + 1;
    if (Wp < g.W + 2 * g.pad) Wp = g.W + 2 * g.pad;
    /* rows at a time: the bases' gradient sums over at least 64 pixels between loading and storing its tiles */
    long rows = (64 + g.Wop - 1) / g.Wop;
    if (rows > g.Ho) rows = g.Ho;
    long ld = rows * g.Wop;  /* gK (kk, ld) and ab (nk, ld): the rows side by side */
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    F(work_t) w;
    int ok = F(work_init)(&w, &g, rows);
    rc |= !ok;
    /* the kernels' gradient rows, and the vector partial sums of the bases' and rel_pos' gradients (lanes
       summed at the task's end) */
    T *xb = w.xb, *gK = w.K, *gyb = w.gyb, *ab = w.ab, *gab = w.gab, *gwv = w.gwv, *grv = w.grv;
    if (ok && cl) {  /* the padding and gy's pixels beyond Wo stay zero */
        memset(xb, 0, sizeof(T) * g.cpt * g.phsz);
        memset(gyb, 0, sizeof(T) * g.cpt * ld);
    }
#pragma omp for schedule(static)
    for (long t = 0; t < g.N * g.G / g.hpt; t++) {
        if (!ok) continue;
        long n = t * g.hpt / g.G, g0 = t * g.hpt % g.G;
        if (cl) F(padded_nhwc)(&g, (T *)x, n, g0, xb, Wp, 0);  /* reads x only */
        else F(phases)(&g, x, n, g0, xb);
        if (gw) memset(gwv, 0, sizeof(T) * g.hpt * g.nk * g.kk * L);
        memset(grv, 0, sizeof(T) * g.hpt * g.kk * L);
        for (long oh0 = 0; oh0 < g.Ho; oh0 += rows) {
            long nr = g.Ho - oh0 < rows ? g.Ho - oh0 : rows, np = nr * g.Wop;
            for (long q = 0; q < nr; q++) {  /* gy's rows: (Wop, cpt) each in channels_last, else (cpt, Wop) */
                T *gyq = gyb + q * g.cpt * g.Wop;
                if (!cl) {
                    F(gy_rows)(&g, gy, n, g0, oh0 + q, gyq);
                    continue;
                }
                F(gy_row_nhwc)(&g, gy, n, g0, oh0 + q, gyq);
            }
            for (long gi = g0; gi < g0 + g.hpt; gi++) {
                T *gwh = gwv + (gi - g0) * g.nk * g.kk * L, *grh = grv + (gi - g0) * g.kk * L;
                for (long q = 0; q < nr; q++) {
                    const T *gyq = gyb + q * g.cpt * g.Wop;
                    T *gKq = gK + q * g.Wop;
#if TR_FAST
                    if (cl) {
                        const T *gyh = gyq + (gi - g0) * g.hd, *xh = xb + (gi - g0) * g.hd;
                        switch (nv) {
                        case 1: F(kgrad_row_nhwc)(&g, gyh, xh, Wp, g.cpt, oh0 + q, gKq, ld, 1); break;
                        case 2: F(kgrad_row_nhwc)(&g, gyh, xh, Wp, g.cpt, oh0 + q, gKq, ld, 2); break;
                        case 3: F(kgrad_row_nhwc)(&g, gyh, xh, Wp, g.cpt, oh0 + q, gKq, ld, 3); break;
                        default: F(kgrad_row_nhwc)(&g, gyh, xh, Wp, g.cpt, oh0 + q, gKq, ld, 4); break;
                        }
                        continue;
                    }
#endif
                    const T *gyh = gyq + (gi - g0) * g.hd * g.Wop, *xh = xb + (gi - g0) * g.hd * g.phsz;
                    long d0 = 0;
                    for (; d0 + TB <= g.kk; d0 += TB) F(kgrad_block)(&g, gyh, xh, oh0 + q, d0, TB, gKq, ld);
                    for (; d0 < g.kk; d0++) F(kgrad_block)(&g, gyh, xh, oh0 + q, d0, 1, gKq, ld);
                }
                T *gap = ga ? ga + (n * g.G + gi) * g.nk * plane + oh0 * g.Wo : NULL;
                if (!g.synth) {
                    for (long q = 0; gap && q < nr; q++)
                        for (long d = 0; d < g.kk; d++)
                            memcpy(gap + d * plane + q * g.Wo, gK + d * ld + q * g.Wop, sizeof(T) * g.Wo);
                    continue;
                }
                const T *wg = bases + gi * g.nk * g.kk;
                for (long q = 0; gap && q < nr; q++) {  /* alpha's gradient: bases x taps per vector */
                    const T *gKq = gK + q * g.Wop;
                    for (long ow = 0; ow < g.Wop; ow += L) {
                        long b0 = 0;
                        for (; b0 + NB <= g.nk; b0 += NB) F(agrad_block)(&g, wg, gKq, ld, ow, b0, NB, gab);
                        for (; b0 < g.nk; b0++) F(agrad_block)(&g, wg, gKq, ld, ow, b0, 1, gab);
                    }
                    for (long b = 0; b < g.nk; b++)
                        memcpy(gap + b * plane + q * g.Wo, gab + b * g.Wop, sizeof(T) * g.Wo);
                }
                if (gw) {  /* the bases': alpha x gK over the rows, in tiles of taps */
                    for (long q = 0; q < nr; q++) F(alpha_row)(&g, a, n, gi, oh0 + q, ab + q * g.Wop, ld);
                    long d1 = 0;
                    for (; d1 + FT <= g.kk; d1 += FT) F(bgrad_taps)(&g, ab, gK, np, ld, d1, FT, gwh);
                    for (; d1 < g.kk; d1++) F(bgrad_taps)(&g, ab, gK, np, ld, d1, 1, gwh);
                }
                for (long d = 0; gr && d < g.kk; d++) {  /* rel_pos': gK over the rows */
                    V s = F(ld)(grh + d * L);
                    for (long ow = 0; ow < np; ow += L) s += F(ld)(gK + d * ld + ow);
                    F(st)(grh + d * L, s);
                }
            }
        }
        /* the lanes summed: head gi's partial sums at (n * G + gi) */
        for (long i = 0; gw && i < g.hpt * g.nk * g.kk; i++) {
            T s = 0;
            for (int l = 0; l < L; l++) s += gwv[i * L + l];
            gw[(n * g.G + g0) * g.nk * g.kk + i] = s;
        }
        for (long i = 0; gr && i < g.hpt * g.kk; i++) {
            T s = 0;
            for (int l = 0; l < L; l++) s += grv[i * L + l];
            gr[(n * g.G + g0) * g.kk + i] = s;
        }
    }
    F(work_free)(&w);
    }
    geo_free(&g);
    return rc ? -1 : 0;
}

#undef DB
#undef CB
#undef TB
#undef NB
#undef FB
#undef FT
#undef TR_FAST
#undef HS_A
#undef HS_B
#undef HS_C
#undef HS_D
#undef ZIP_LO
#undef ZIP_HI
#undef T
#undef L
#undef V
#undef F
