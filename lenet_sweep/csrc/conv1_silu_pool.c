/* LeNet-5's first block, max_pool2d(silu(conv2d(x, w, b)), 2), fused: 28x28 one-channel
 * images, 6 output channels, 5x5 kernels, stride 1, no padding.
 *
 * PyTorch runs this block as five memory-bound passes over the 24x24x6 map per step
 * (convolution, Swish, pooling; in backward, the pooling's zero fill and scatter, Swish's
 * derivative) and that map does not fit in L2 at batch 64. Here the map lives only in
 * registers: forward writes the pooled 12x12x6 map, which window position won each
 * window and Swish's derivative there; backward reads those and accumulates the weight
 * gradient. Built and loaded by lenet_sweep/fused_conv1.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IN 28
#define K 5
#define POOL 12
#define C 6
#define LANES 16 /* 12 pooled columns per row, in one 16-float vector */
#define ROW 32   /* a split image row: 14 values, zeros so 16-wide loads at offsets <= 2 stay in it */
#define MAX_THREADS 64

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
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

/* xs[parity][row][m] = x[row][2m + parity]: the convolution at one position of every
 * pooling window in a row then reads one contiguous run of it per kernel tap. */
static void split_columns(const float *x, float xs[2][IN][ROW]) {
    for (int row = 0; row < IN; row++)
        for (int m = 0; m < IN / 2; m++) {
            xs[0][row][m] = x[row * IN + 2 * m];
            xs[1][row][m] = x[row * IN + 2 * m + 1];
        }
}

/* The image run that kernel tap (u, v) meets at window position p = 2 dr + ds of the
 * windows in pooled row i. */
static inline vf tap(float xs[2][IN][ROW], int i, int p, int u, int v) {
    const int col = (p & 1) + v;
    return load(&xs[col & 1][2 * i + (p >> 1) + u][col >> 1]);
}

/* y[c][p]: the convolution at position p of windows (i, 0..11), all channels at once, so
 * that each load of the image feeds six multiply-adds. */
static inline void conv_row(float xs[2][IN][ROW], const float *w, const float *b, int i, vf y[C][4]) {
    for (int c = 0; c < C; c++)
        for (int p = 0; p < 4; p++) y[c][p] = splat(b[c]);
    for (int u = 0; u < K; u++)
        for (int v = 0; v < K; v++)
            for (int p = 0; p < 4; p++) {
                const vf xv = tap(xs, i, p, u, v);
                for (int c = 0; c < C; c++) y[c][p] += w[(c * K + u) * K + v] * xv;
            }
}

static void forward_images(const float *x, const float *w, const float *b, int64_t n,
                           float *out, uint8_t *phase, float *dact) {
    float xs[2][IN][ROW];
    memset(xs, 0, sizeof xs);
    for (int64_t img = 0; img < n; img++) {
        split_columns(x + img * IN * IN, xs);
        for (int i = 0; i < POOL; i++) {
            float pooled[C][LANES], pooled_da[C][LANES], pooled_p[C][LANES];
            vf y[C][4];
            conv_row(xs, w, b, i, y);
            for (int c = 0; c < C; c++) {
                vf best = splat(0.0f), best_da = best, best_p = best;
                for (int p = 0; p < 4; p++) {
                    vf s = 1.0f / (1.0f + exp_v(-y[c][p]));
                    vf a = y[c][p] * s;
                    vf da = s * (1.0f + y[c][p] * (1.0f - s));
                    /* max_pool2d's rule: the first maximum in row-major order, or a NaN. */
                    vi take = p == 0 ? ~(vi){0} : (a > best) | (a != a);
                    best = blend(take, a, best);
                    best_da = blend(take, da, best_da);
                    best_p = blend(take, splat((float)p), best_p);
                }
                memcpy(pooled[c], &best, sizeof best);
                memcpy(pooled_da[c], &best_da, sizeof best_da);
                memcpy(pooled_p[c], &best_p, sizeof best_p);
            }
            int64_t o = (img * POOL + i) * POOL * C;
            for (int j = 0; j < POOL; j++)
                for (int c = 0; c < C; c++) {
                    out[o + j * C + c] = pooled[c][j];
                    dact[o + j * C + c] = pooled_da[c][j];
                    phase[o + j * C + c] = (uint8_t)pooled_p[c][j];
                }
        }
    }
}

static void backward_images(const float *x, const float *grad, const uint8_t *phase, const float *dact,
                            int64_t n, vf acc_w[C][K * K], vf acc_b[C]) {
    float xs[2][IN][ROW];
    memset(xs, 0, sizeof xs);
    for (int64_t img = 0; img < n; img++) {
        split_columns(x + img * IN * IN, xs);
        for (int i = 0; i < POOL; i++) {
            int64_t o = (img * POOL + i) * POOL * C;
            /* The gradient at the convolution's output: at each window's winner, zero elsewhere. */
            vf g[C][4];
            for (int c = 0; c < C; c++) {
                float rows[4][LANES];
                memset(rows, 0, sizeof rows);
                for (int j = 0; j < POOL; j++)
                    rows[phase[o + j * C + c]][j] = grad[o + j * C + c] * dact[o + j * C + c];
                for (int p = 0; p < 4; p++) g[c][p] = load(rows[p]);
                acc_b[c] += g[c][0] + g[c][1] + g[c][2] + g[c][3];
            }
            for (int u = 0; u < K; u++)
                for (int v = 0; v < K; v++) {
                    vf sum[C];
                    for (int c = 0; c < C; c++) sum[c] = acc_w[c][u * K + v];
                    for (int p = 0; p < 4; p++) {
                        const vf xv = tap(xs, i, p, u, v);
                        for (int c = 0; c < C; c++) sum[c] += g[c][p] * xv;
                    }
                    for (int c = 0; c < C; c++) acc_w[c][u * K + v] = sum[c];
                }
        }
    }
}

/* One thread's share: a contiguous run of images. */
typedef struct {
    const float *x, *w, *b, *grad;
    const uint8_t *saved_phase;
    const float *saved_dact;
    float *out, *dact;
    uint8_t *phase;
    int64_t n;
    vf acc_w[C][K * K], acc_b[C];
} Part;

static void *forward_part(void *arg) {
    Part *part = arg;
    forward_images(part->x, part->w, part->b, part->n, part->out, part->phase, part->dact);
    return NULL;
}

static void *backward_part(void *arg) {
    Part *part = arg;
    memset(part->acc_w, 0, sizeof part->acc_w);
    memset(part->acc_b, 0, sizeof part->acc_b);
    backward_images(part->x, part->grad, part->saved_phase, part->saved_dact, part->n, part->acc_w, part->acc_b);
    return NULL;
}

/* Zeroed parts of n images for `threads` threads (at most n and MAX_THREADS), or NULL. */
static Part *split(int64_t n, int *threads) {
    int count = *threads > MAX_THREADS ? MAX_THREADS : *threads;
    if (count > n) count = (int)n;
    if (count < 1) count = 1;
    size_t bytes = (count * sizeof(Part) + 63) / 64 * 64; /* vectors need 64-byte alignment */
    Part *parts = aligned_alloc(64, bytes);
    if (parts == NULL) return NULL;
    memset(parts, 0, bytes);
    for (int t = 0; t < count; t++) parts[t].n = n * (t + 1) / count - n * t / count;
    *threads = count;
    return parts;
}

/* OpenMP, so that the parts run on PyTorch's own thread pool (the same libgomp, already
 * loaded): threads of a second pool would wait for cores its idle workers spin on. */
static void run(Part *parts, int threads, void *(*fn)(void *)) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) fn(&parts[t]);
}

/* x [n, 28, 28], w [6, 25], b [6] -> out, phase, dact [n, 12, 12, 6] (channels last):
 * the pooled map, the position p = 2 dr + ds that won each window, and Swish's
 * derivative there. */
int conv1_forward(const float *x, const float *w, const float *b, int64_t n,
                  float *out, uint8_t *phase, float *dact, int threads) {
    Part *parts = split(n, &threads);
    if (parts == NULL) return -1;
    int64_t lo = 0;
    for (int t = 0; t < threads; lo += parts[t].n, t++) {
        int64_t o = lo * POOL * POOL * C;
        parts[t].x = x + lo * IN * IN, parts[t].w = w, parts[t].b = b;
        parts[t].out = out + o, parts[t].phase = phase + o, parts[t].dact = dact + o;
    }
    run(parts, threads, forward_part);
    free(parts);
    return 0;
}

/* grad [n, 12, 12, 6], the gradient of the pooled map, and forward's phase and dact ->
 * grad_w [6, 25], grad_b [6]. The parts are summed in a fixed order, so the same
 * number of threads gives the same bits. Both return 0, or -1 when out of memory. */
int conv1_backward(const float *x, const float *grad, const uint8_t *phase, const float *dact, int64_t n,
                   float *grad_w, float *grad_b, int threads) {
    Part *parts = split(n, &threads);
    if (parts == NULL) return -1;
    int64_t lo = 0;
    for (int t = 0; t < threads; lo += parts[t].n, t++) {
        int64_t o = lo * POOL * POOL * C;
        parts[t].x = x + lo * IN * IN, parts[t].grad = grad + o;
        parts[t].saved_phase = phase + o, parts[t].saved_dact = dact + o;
    }
    run(parts, threads, backward_part);
    for (int c = 0; c < C; c++) {
        for (int t = 0; t < K * K; t++) {
            vf sum = parts[0].acc_w[c][t];
            for (int part = 1; part < threads; part++) sum += parts[part].acc_w[c][t];
            grad_w[c * K * K + t] = lane_sum(sum);
        }
        vf sum = parts[0].acc_b[c];
        for (int part = 1; part < threads; part++) sum += parts[part].acc_b[c];
        grad_b[c] = lane_sum(sum);
    }
    free(parts);
    return 0;
}
