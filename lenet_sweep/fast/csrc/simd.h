/* Vector helpers shared by the LeNet-5 block kernels: GCC/Clang vector extensions, which the
 * compiler maps onto whatever SIMD the processor has (AVX-512, AVX2, NEON). */
#ifndef LENET_SIMD_H
#define LENET_SIMD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define MAX_THREADS 64

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float s) { return (vf){0} + s; }
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

/* Swish at y, its derivative, and 2x2 max-pooling of four window positions p = 0..3 in
 * max_pool2d's order and rule (the first maximum in row-major order, or a NaN): call with
 * p = 0, 1, 2, 3 in turn. */
static inline void pool_swish(vf y, int p, vf *best, vf *best_da, vf *best_p) {
    vf s = 1.0f / (1.0f + exp_v(-y));
    vf a = y * s;
    vf da = s * (1.0f + y * (1.0f - s));
    if (p == 0) {
        *best = a, *best_da = da, *best_p = splat(0.0f);
        return;
    }
    vi take = (a > *best) | (a != a);
    *best = blend(take, a, *best);
    *best_da = blend(take, da, *best_da);
    *best_p = blend(take, splat((float)p), *best_p);
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
