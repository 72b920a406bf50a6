/* Vector helpers shared by the LeNet-5 block kernels: GCC/Clang vector extensions at the width of
 * the instruction set the build targets, so each build's vectors and register blocking fit its
 * registers: AVX-512 has 32 registers of 16 floats, AVX/AVX2 16 of 8, SSE 16 of 4, NEON 32 of 4.
 * Wider vectors than the target's would be split into register pairs and spill. */
#ifndef LENET_SIMD_H
#define LENET_SIMD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#define VREGS 32
#elif defined(__AVX__)
#define LANES 8
#define VREGS 16
#elif defined(__aarch64__)
#define LANES 4
#define VREGS 32
#else
#define LANES 4
#define VREGS 16
#endif
#define MAX_THREADS 64

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef uint8_t vb __attribute__((vector_size(LANES)));
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float s) { return (vf){0} + s; }

/* The first `count` (<= LANES) values at p, zeros in the other lanes; reads nothing past them.
 * AVX-512 loads them masked: a copy into a zeroed vector would go through memory and stall. */
static inline vf load_first(const float *p, int count) {
#if defined(__AVX512F__)
    return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1), p);
#else
    vf v = {0};
    memcpy(&v, p, count * sizeof(float));
    return v;
#endif
}

/* Stores the first `count` (<= LANES) lanes of v at p; writes nothing past them. */
static inline void store_first(float *p, vf v, int count) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << count) - 1), (__m512)v);
#else
    memcpy(p, &v, count * sizeof(float));
#endif
}

/* Bytes: the first `count` lanes of v, which hold 0..255, at p. */
static inline void store_first_bytes(uint8_t *p, vi v, int count) {
#if defined(__AVX512F__)
    _mm512_mask_cvtepi32_storeu_epi8(p, (__mmask16)((1u << count) - 1), (__m512i)v);
#else
    const vb bytes = __builtin_convertvector(v, vb);
    memcpy(p, &bytes, count);
#endif
}

static inline vi load_first_bytes(const uint8_t *p, int count) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return (vi)_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << count) - 1), p));
#else
    vb v = {0};
    memcpy(&v, p, count);
    return __builtin_convertvector(v, vi);
#endif
}
static inline vf blend(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
static inline float lane_sum(vf v) { float s = 0.0f; for (int l = 0; l < LANES; l++) s += v[l]; return s; }

/* expf within 2 ulp for |x| <= 87 (clamped outside): Cody-Waite reduction and Cephes'
 * polynomial, in vector arithmetic so that it vectorises without a vector math library. */
static inline vf exp_v(vf x) {
    x = blend(x < -87.0f, splat(-87.0f), x);
    x = blend(x > 87.0f, splat(87.0f), x);
    vf k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    vf r = x - k * 0.693359375f + k * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
    return p * (vf)bits;
}

/* 2x2 max pooling of Swish over the four window positions y[p], p = 2 dr + ds, in max_pool2d's
 * order and rule (the first maximum in row-major order; a NaN wins, the last one if several):
 * the pooled value, Swish's derivative there and the winning position. Swish falls, then
 * rises (its minimum is at -1.28), so its largest value over a window is at the window's
 * smallest or largest y: two evaluations instead of four. */
static inline void pool_swish(const vf y[4], vf *best, vf *best_da, vi *best_p) {
    vf hi = y[0], lo = y[0];
    vi p_hi = (vi){0}, p_lo = (vi){0};
    for (int p = 1; p < 4; p++) {
        const vi up = (y[p] > hi) | (y[p] != y[p]), down = y[p] < lo;
        hi = blend(up, y[p], hi);
        p_hi = (up & p) | (~up & p_hi);
        lo = blend(down, y[p], lo);
        p_lo = (down & p) | (~down & p_lo);
    }
    const vf s_hi = 1.0f / (1.0f + exp_v(-hi)), s_lo = 1.0f / (1.0f + exp_v(-lo));
    const vf a_hi = hi * s_hi, a_lo = lo * s_lo;
    const vi take_lo = (a_lo > a_hi) | ((a_lo == a_hi) & (p_lo < p_hi));
    const vf y_win = blend(take_lo, lo, hi), s = blend(take_lo, s_lo, s_hi);
    *best = blend(take_lo, a_lo, a_hi);
    *best_p = (take_lo & p_lo) | (~take_lo & p_hi);
    *best_da = s * (1.0f + y_win * (1.0f - s));
}

/* How many threads split n images: `threads`, at most n and MAX_THREADS, at least 1. */
static inline int thread_count(int threads, int64_t n) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = (int)n;
    return threads < 1 ? 1 : threads;
}

/* `count` zeroed per-thread parts, 64-byte aligned (they hold vectors), or NULL. */
static inline void *alloc_parts(size_t part_size, int count) {
    size_t bytes = (count * part_size + 63) / 64 * 64;
    void *parts = aligned_alloc(64, bytes);
    if (parts != NULL) memset(parts, 0, bytes);
    return parts;
}

/* Part t of `count` takes images first_image(n, t, count) up to first_image(n, t + 1, count). */
static inline int64_t first_image(int64_t n, int part, int count) { return n * part / count; }

#endif
