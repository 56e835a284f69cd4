/* Fused CPU kernels of timm-cada's 'native' backend (timm_cada/ops/native.py compiles and calls them).

Plain C with GCC/Clang vector extensions and OpenMP, no PyTorch headers: the library builds in about a second
with the system compiler on first use. One call works through all its tasks, one task = one head of one sample
(or all heads of one, see geo_init), on `threads` OpenMP threads: loaded into a process that runs PyTorch's own
libgomp (its Linux wheels), these are PyTorch's intra-op threads, so no second pool competes with them for the
cores. Each task copies its heads' channels, NCHW or channels_last, into zero-padded stride phases, so that
every tap of the window reads a contiguous run, and builds each output row's kernels (k*k of them, one per
window offset, for every pixel of the row) on the fly: from the CA parameters and the bases for CADA, or
copied from the per-pixel kernels. No per-pixel kernel map of the whole image is ever stored.

Every function returns 0, or -1 where a work buffer could not be allocated (its tasks are then skipped). The float and double versions
are the same code (cada_cpu_kernels.h, included once for each type).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the int64 parameter vector of every call */
enum { P_N, P_C, P_H, P_W, P_G, P_K, P_STRIDE, P_DILATION, P_HO, P_WO, P_NK, P_SYNTH, P_ABATCH, P_LANES, P_NHWC,
       P_COUNT };

typedef struct {
    long N, C, H, W, G, hd, k, kk, s, dil, pad, Ho, Wo;
    long hpt, cpt; /* heads per task (below) and their channels */
    long nk;      /* kernels per head: B bases (synth) or k*k per-pixel weights */
    long synth;   /* 1: CADA (kernels = bases^T alpha + rel_pos); 0: per-pixel kernels given */
    long abatch;  /* 1: alpha / attn has one map per sample; 0: one map shared by the batch */
    long nhwc;    /* the layout of x, y, gy and gx: 1 channels_last (N, H, W, C), 0 NCHW */
    long Wop;     /* Wo rounded up to the vector width: the length of a row buffer */
    long Hph, Wph, phsz;  /* rows and columns of one stride phase, and a channel's s*s phases */
    long *tapoff; /* per tap: its phase's offset in a channel's phases + its row and column shift */
    long *coloff; /* per input column iw: its place in a channel's phases but for the row's (phase_row) */
} geo_t;

static void geo_free(geo_t *g) {
    free(g->tapoff);
    free(g->coloff);
}

/* A task is one head of one sample; in channels_last, where the samples keep the threads busy, all heads of a
sample, so that its reads and writes of x, y, gy and gx run over whole pixels (C contiguous channels): a head's
channels alone, a cache line or two of every pixel, are read at a fraction of the memory's speed. */
static int geo_init(geo_t *g, const int64_t *p, long threads) {
    long L = p[P_LANES];
    g->N = p[P_N]; g->C = p[P_C]; g->H = p[P_H]; g->W = p[P_W]; g->G = p[P_G]; g->hd = g->C / g->G;
    g->hpt = p[P_NHWC] && g->N >= threads ? g->G : 1;
    g->cpt = g->hpt * g->hd;
    g->k = p[P_K]; g->kk = g->k * g->k; g->s = p[P_STRIDE]; g->dil = p[P_DILATION];
    g->pad = g->dil * (g->k / 2); g->Ho = p[P_HO]; g->Wo = p[P_WO];
    g->nk = p[P_NK]; g->synth = p[P_SYNTH]; g->abatch = p[P_ABATCH]; g->nhwc = p[P_NHWC];
    g->Wop = (g->Wo + L - 1) / L * L;
    long reach = (g->k - 1) * g->dil / g->s;  /* the largest row / column shift of a tap */
    g->Hph = (g->H + 2 * g->pad + g->s - 1) / g->s;
    long wph = (g->W + 2 * g->pad + g->s - 1) / g->s;
    if (wph < g->Wop + reach) wph = g->Wop + reach;  /* the last row vector's lanes read past Wo */
    g->Wph = wph;
    g->phsz = g->s * g->s * g->Hph * g->Wph;
    g->tapoff = malloc(sizeof(long) * g->kk);
    g->coloff = malloc(sizeof(long) * g->W);
    if (!g->tapoff || !g->coloff) {
        geo_free(g);
        return -1;
    }
    for (long iw = 0; iw < g->W; iw++)
        g->coloff[iw] = (iw + g->pad) % g->s * g->Hph * g->Wph + (iw + g->pad) / g->s;
    for (long d = 0; d < g->kk; d++) {
        long oi = g->dil * (d / g->k), oj = g->dil * (d % g->k);
        long ph = (oi % g->s) * g->s + oj % g->s;
        g->tapoff[d] = ph * g->Hph * g->Wph + (oi / g->s) * g->Wph + oj / g->s;
    }
    return 0;
}

/* input row ih's place in a channel's phases (s * s, Hph, Wph): pixel (ih, iw) is at this + coloff[iw] */
static inline long phase_row(const geo_t *g, long ih) {
    return (ih + g->pad) % g->s * g->s * g->Hph * g->Wph + (ih + g->pad) / g->s * g->Wph;
}

/* 1 where the compiler has __builtin_shufflevector (GCC >= 12, Clang): channels_last copies then transpose L x L
tiles in registers */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define CADA_SHUFFLE 1
#endif
#endif
#ifndef CADA_SHUFFLE
#define CADA_SHUFFLE 0
#endif

#define CADA_T float
#define CADA_L 8
#define CADA_NAME(f) f##_f32
#include "cada_cpu_kernels.h"
#undef CADA_T
#undef CADA_L
#undef CADA_NAME

#define CADA_T double
#define CADA_L 4
#define CADA_NAME(f) f##_f64
#include "cada_cpu_kernels.h"
