/* The kernels for one element type: CADA_T, CADA_L lanes per vector, CADA_NAME(f) the exported name.
Included by cada_cpu.c once per type. Tensors are contiguous: x, y, gy, gx (N, C, H or Ho, W or Wo), or
(N, H or Ho, W or Wo, C) where geo_t.nhwc says channels_last; alpha / attn (N or 1, G, nk, Ho, Wo); bases
(G, nk, k, k); rel_pos (G, k, k). Only the copies in and out of a task's buffers (phases, unphase, gy_rows and
filter_block's stores) see the layout: the compute loops run on the same per-channel rows in both. */
#define T CADA_T
#define L CADA_L
#define V CADA_NAME(vec)
#define F(f) CADA_NAME(f)

typedef T V __attribute__((vector_size(sizeof(T) * L)));

static inline V F(ld)(const T *p) { V v; memcpy(&v, p, sizeof v); return v; }
static inline void F(st)(T *p, V v) { memcpy(p, &v, sizeof v); }

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

static int F(work_init)(F(work_t) *w, const geo_t *g) {
    w->xb = malloc(sizeof(T) * g->cpt * g->phsz);
    w->K = malloc(sizeof(T) * g->kk * g->Wop);
    w->gyb = malloc(sizeof(T) * g->cpt * g->Wop);
    w->ab = malloc(sizeof(T) * g->nk * g->Wop);
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

/* alpha's row oh of sample n's head gi, ab (nk, Wop), zero beyond Wo */
static void F(alpha_row)(const geo_t *g, const T *a, long n, long gi, long oh, T *ab) {
    const T *ap = F(map_row)(g, a, n, gi, oh);
    for (long b = 0; b < g->nk; b++) {
        memcpy(ab + b * g->Wop, ap + b * g->Ho * g->Wo, sizeof(T) * g->Wo);
        for (long ow = g->Wo; ow < g->Wop; ow++) ab[b * g->Wop + ow] = 0;
    }
}

/* K[:, ow:ow + L] (+)= bases b0 .. b0 + nb of wg weighted by their alpha vectors (+ rel_pos on the first block) */
static inline __attribute__((always_inline)) void F(synth_block)(
        const geo_t *g, const T *wg, const T *rel, const T *ab, long ow, long b0, int nb, T *K) {
    V av[NB];
    for (int b = 0; b < nb; b++) av[b] = F(ld)(ab + (b0 + b) * g->Wop + ow);
    for (long d = 0; d < g->kk; d++) {
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
    F(alpha_row)(g, a, n, gi, oh, ab);  /* zero beyond Wo: so are the kernels */
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

int F(cada_cpu_forward)(const int64_t *prm, const T *x, const T *a, const T *bases, const T *rel, T *y,
                        int64_t threads) {
    geo_t g;
    if (geo_init(&g, prm, threads)) return -1;
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    F(work_t) w;
    int ok = F(work_init)(&w, &g);
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

/* grad_x: each tap's kernel times gy, scattered into the padded phases of the gradient */
int F(cada_cpu_backward_x)(const int64_t *prm, const T *gy, const T *a, const T *bases, const T *rel, T *gx,
                           int64_t threads) {
    geo_t g;
    if (geo_init(&g, prm, threads)) return -1;
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    F(work_t) w;
    int ok = F(work_init)(&w, &g);
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

/* gK rows (tb, Wop) of taps d0 .. d0 + tb: sum over a head's channels of gy * the tap's input (gyb and xb: the
head's rows and phases) */
static inline __attribute__((always_inline)) void F(kgrad_block)(
        const geo_t *g, const T *gyb, const T *xb, long oh, long d0, int tb, T *gK) {
    for (long ow = 0; ow < g->Wop; ow += L) {
        V acc[TB];
        for (int t = 0; t < tb; t++) acc[t] = (V){0};
        for (long c = 0; c < g->hd; c++) {
            V gv = F(ld)(gyb + c * g->Wop + ow);
            const T *xo = xb + c * g->phsz + oh * g->Wph + ow;
            for (int t = 0; t < tb; t++) acc[t] += gv * F(ld)(xo + g->tapoff[d0 + t]);
        }
        for (int t = 0; t < tb; t++) F(st)(gK + (d0 + t) * g->Wop + ow, acc[t]);
    }
}

/* the bases' gradient's vector partial sums gwv (nk, kk, L) of bases b0 .. b0 + nb and taps d0 .. d0 + tb
+= alpha's row ab * the kernels' gradient row gK, summed over the row in a register tile */
static inline __attribute__((always_inline)) void F(bgrad_tile)(
        const geo_t *g, const T *ab, const T *gK, long b0, int nb, long d0, int tb, T *gwv) {
    V acc[FB][FT];
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < tb; t++) acc[b][t] = F(ld)(gwv + ((b0 + b) * g->kk + d0 + t) * L);
    for (long ow = 0; ow < g->Wop; ow += L) {
        V gk[FT];
        for (int t = 0; t < tb; t++) gk[t] = F(ld)(gK + (d0 + t) * g->Wop + ow);
        for (int b = 0; b < nb; b++) {
            V av = F(ld)(ab + (b0 + b) * g->Wop + ow);
            for (int t = 0; t < tb; t++) acc[b][t] += av * gk[t];
        }
    }
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < tb; t++) F(st)(gwv + ((b0 + b) * g->kk + d0 + t) * L, acc[b][t]);
}

/* the bases' tiles of taps d0 .. d0 + tb: FB bases at a time, then one at a time */
static inline __attribute__((always_inline)) void F(bgrad_taps)(
        const geo_t *g, const T *ab, const T *gK, long d0, int tb, T *gwv) {
    long b0 = 0;
    for (; b0 + FB <= g->nk; b0 += FB) F(bgrad_tile)(g, ab, gK, b0, FB, d0, tb, gwv);
    for (; b0 < g->nk; b0++) F(bgrad_tile)(g, ab, gK, b0, 1, d0, tb, gwv);
}

/* The kernels' gradient gK (kk, Wop) row by row, folded at once into what the caller asks for (NULL: not asked):
ga, the gradient of alpha / attn with one map per sample, (N, G, nk, Ho, Wo), whether or not alpha is shared by
the batch (the caller sums it then); gw, the bases' gradient per task, (N * G, nk, kk); gr, rel_pos's per task,
(N * G, kk). */
int F(cada_cpu_backward_k)(const int64_t *prm, const T *gy, const T *x, const T *a, const T *bases,
                           T *ga, T *gw, T *gr, int64_t threads) {
    geo_t g;
    if (geo_init(&g, prm, threads)) return -1;
    long plane = g.Ho * g.Wo;
    int rc = 0;
#pragma omp parallel num_threads((int)threads) reduction(|:rc)
    {
    F(work_t) w;
    int ok = F(work_init)(&w, &g);
    rc |= !ok;
    /* the kernels' gradient row, and the vector partial sums of the bases' and rel_pos' gradients (lanes
       summed at the task's end) */
    T *xb = w.xb, *gK = w.K, *gyb = w.gyb, *ab = w.ab, *gab = w.gab, *gwv = w.gwv, *grv = w.grv;
#pragma omp for schedule(static)
    for (long t = 0; t < g.N * g.G / g.hpt; t++) {
        if (!ok) continue;
        long n = t * g.hpt / g.G, g0 = t * g.hpt % g.G;
        F(phases)(&g, x, n, g0, xb);
        if (gw) memset(gwv, 0, sizeof(T) * g.hpt * g.nk * g.kk * L);
        memset(grv, 0, sizeof(T) * g.hpt * g.kk * L);
        for (long oh = 0; oh < g.Ho; oh++) {
            F(gy_rows)(&g, gy, n, g0, oh, gyb);
            for (long gi = g0; gi < g0 + g.hpt; gi++) {
                const T *gyh = gyb + (gi - g0) * g.hd * g.Wop, *xh = xb + (gi - g0) * g.hd * g.phsz;
                T *gwh = gwv + (gi - g0) * g.nk * g.kk * L, *grh = grv + (gi - g0) * g.kk * L;
                long d0 = 0;
                for (; d0 + TB <= g.kk; d0 += TB) F(kgrad_block)(&g, gyh, xh, oh, d0, TB, gK);
                for (; d0 < g.kk; d0++) F(kgrad_block)(&g, gyh, xh, oh, d0, 1, gK);
                T *gap = ga ? ga + (n * g.G + gi) * g.nk * plane + oh * g.Wo : NULL;
                if (!g.synth) {
                    for (long d = 0; gap && d < g.kk; d++) memcpy(gap + d * plane, gK + d * g.Wop, sizeof(T) * g.Wo);
                    continue;
                }
                const T *wg = bases + gi * g.nk * g.kk;
                for (long ow = 0; gap && ow < g.Wop; ow += L) {  /* alpha's gradient: bases x taps per vector */
                    for (long b0 = 0; b0 < g.nk; b0 += NB) {
                        int nb = g.nk - b0 < NB ? (int)(g.nk - b0) : NB;
                        V acc[NB];
                        for (int b = 0; b < nb; b++) acc[b] = (V){0};
                        for (long d = 0; d < g.kk; d++) {
                            V gk = F(ld)(gK + d * g.Wop + ow);
                            for (int b = 0; b < nb; b++) acc[b] += wg[(b0 + b) * g.kk + d] * gk;
                        }
                        for (int b = 0; b < nb; b++) F(st)(gab + (b0 + b) * g.Wop + ow, acc[b]);
                    }
                }
                if (gw) {  /* the bases': alpha x gK over the row, in tiles of taps */
                    F(alpha_row)(&g, a, n, gi, oh, ab);
                    long d1 = 0;
                    for (; d1 + FT <= g.kk; d1 += FT) F(bgrad_taps)(&g, ab, gK, d1, FT, gwh);
                    for (; d1 < g.kk; d1++) F(bgrad_taps)(&g, ab, gK, d1, 1, gwh);
                }
                for (long d = 0; gr && d < g.kk; d++) {  /* rel_pos': gK over the row */
                    V s = F(ld)(grh + d * L);
                    for (long ow = 0; ow < g.Wop; ow += L) s += F(ld)(gK + d * g.Wop + ow);
                    F(st)(grh + d * L, s);
                }
                for (long b = 0; gap && b < g.nk; b++) memcpy(gap + b * plane, gab + b * g.Wop, sizeof(T) * g.Wo);
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

#undef CB
#undef TB
#undef NB
#undef FB
#undef FT
#undef TR_FAST
#undef ZIP_LO
#undef ZIP_HI
#undef T
#undef L
#undef V
#undef F
