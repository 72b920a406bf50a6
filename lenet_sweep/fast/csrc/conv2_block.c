/* LeNet-5's second block, max_pool2d(silu(conv2d(x, w, b)), 2), fused: 6x12x12 maps
 * (channels last, as conv1_block.c writes them), 16 output channels, 5x5 kernels -> 8x8
 * -> pooled 4x4.
 *
 * The 16 output channels are one vector, so each input value read feeds 16
 * multiply-adds. Backward uses the pooling: only each window's winner has a gradient, so
 * the input gradient spreads one 5x5 patch per channel and window instead of a full
 * transposed convolution. */
#include "simd.h"

#define IN 12
#define CI 6
#define K 5
#define CONV 8
#define POOL 4
#define CO 16 /* = LANES */
#define TAPS (K * K * CI)

/* wt[(u * K + v) * CI + ic][oc] = w[oc][ic][u][v]: a tap's 16 output-channel weights in a row. */
static void weights_by_tap(const float *w, float wt[TAPS][CO]) {
    for (int oc = 0; oc < CO; oc++)
        for (int ic = 0; ic < CI; ic++)
            for (int u = 0; u < K; u++)
                for (int v = 0; v < K; v++) wt[(u * K + v) * CI + ic][oc] = w[((oc * CI + ic) * K + u) * K + v];
}

/* wp[oc][u][v][ic]: a tap's 6 input-channel weights, padded to 8, for the input gradient. */
static void weights_by_input_channel(const float *w, float wp[CO][K][K][8]) {
    memset(wp, 0, CO * K * K * 8 * sizeof(float));
    for (int oc = 0; oc < CO; oc++)
        for (int ic = 0; ic < CI; ic++)
            for (int u = 0; u < K; u++)
                for (int v = 0; v < K; v++) wp[oc][u][v][ic] = w[((oc * CI + ic) * K + u) * K + v];
}

static void forward_images(const float *x, float wt[TAPS][CO], const float *b, int64_t n,
                           float *out, uint8_t *phase, float *dact) {
    const vf bias = load(b);
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * IN * IN * CI;
        for (int i = 0; i < POOL; i++) {
            /* The two conv rows of pooled row i, all 16 channels per position. */
            vf y[2][CONV];
            for (int r = 0; r < 2; r++)
                for (int col = 0; col < CONV; col++) y[r][col] = bias;
            for (int u = 0; u < K; u++)
                for (int v = 0; v < K; v++)
                    for (int ic = 0; ic < CI; ic++) {
                        const vf wv = load(wt[(u * K + v) * CI + ic]);
                        const float *x0 = xi + ((2 * i + u) * IN + v) * CI + ic, *x1 = x0 + IN * CI;
                        for (int col = 0; col < CONV; col++) {
                            y[0][col] += x0[col * CI] * wv;
                            y[1][col] += x1[col * CI] * wv;
                        }
                    }
            for (int j = 0; j < POOL; j++) {
                vf best, best_da, best_p;
                for (int p = 0; p < 4; p++) pool_swish(y[p >> 1][2 * j + (p & 1)], p, &best, &best_da, &best_p);
                int64_t o = (img * POOL + i) * POOL + j;
                store(dact + o * CO, best_da);
                for (int oc = 0; oc < CO; oc++) {
                    phase[o * CO + oc] = (uint8_t)best_p[oc];
                    out[(img * CO + oc) * POOL * POOL + i * POOL + j] = best[oc];
                }
            }
        }
    }
}

typedef struct {
    vf acc_w[TAPS], acc_b;
} Sums;

static void backward_images(const float *x, float wp[CO][K][K][8], const float *grad, const uint8_t *phase,
                            const float *dact, int64_t n, float *grad_x, Sums *sums) {
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * IN * IN * CI;
        vf gconv[CONV][CONV]; /* the gradient at the convolution's output: winners only */
        float gx[IN * IN * 8];  /* the input gradient, channels padded to 8 */
        memset(gx, 0, sizeof gx);
        for (int i = 0; i < POOL; i++)
            for (int j = 0; j < POOL; j++) {
                int64_t o = (img * POOL + i) * POOL + j;
                vf g, winner;
                for (int oc = 0; oc < CO; oc++) {
                    g[oc] = grad[(img * CO + oc) * POOL * POOL + i * POOL + j];
                    winner[oc] = phase[o * CO + oc];
                }
                g *= load(dact + o * CO);
                sums->acc_b += g;
                for (int p = 0; p < 4; p++) gconv[2 * i + (p >> 1)][2 * j + (p & 1)] = blend(winner == (float)p, g, splat(0.0f));
                for (int oc = 0; oc < CO; oc++) {
                    const int row = 2 * i + (phase[o * CO + oc] >> 1), col = 2 * j + (phase[o * CO + oc] & 1);
                    for (int u = 0; u < K; u++)
                        for (int v = 0; v < K; v++) {
                            float *dst = gx + ((row + u) * IN + col + v) * 8;
                            store8(dst, load8(dst) + g[oc] * load8(wp[oc][u][v]));
                        }
                }
            }
        for (int pos = 0; pos < IN * IN; pos++)
            memcpy(grad_x + (img * IN * IN + pos) * CI, gx + pos * 8, CI * sizeof(float));
        /* Weight gradient: a conv row's gradients against every tap, the tap's sum in a register. */
        for (int row = 0; row < CONV; row++)
            for (int u = 0; u < K; u++)
                for (int v = 0; v < K; v++)
                    for (int ic = 0; ic < CI; ic++) {
                        const float *xr = xi + ((row + u) * IN + v) * CI + ic;
                        vf sum = sums->acc_w[(u * K + v) * CI + ic];
                        for (int col = 0; col < CONV; col++) sum += xr[col * CI] * gconv[row][col];
                        sums->acc_w[(u * K + v) * CI + ic] = sum;
                    }
    }
}

/* x [n, 12, 12, 6], w [16, 6, 5, 5], b [16] -> out [n, 16, 4, 4] (NCHW, which conv3 reads
 * flat), phase and dact [n, 4, 4, 16]: as conv1_forward. Returns 0. */
int conv2_forward(const float *x, const float *w, const float *b, int64_t n,
                  float *out, uint8_t *phase, float *dact, int threads) {
    float wt[TAPS][CO] __attribute__((aligned(64)));
    weights_by_tap(w, wt);
    threads = thread_count(threads, n);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t lo = first_image(n, t, threads), o = lo * POOL * POOL * CO;
        forward_images(x + lo * IN * IN * CI, wt, b, first_image(n, t + 1, threads) - lo, out + o, phase + o, dact + o);
    }
    return 0;
}

/* grad [n, 16, 4, 4] and forward's phase and dact -> grad_x [n, 12, 12, 6], grad_w
 * [16, 6, 5, 5], grad_b [16]; threads' sums added in a fixed order, as conv1_backward.
 * Returns 0, or -1 when out of memory. */
int conv2_backward(const float *x, const float *w, const float *grad, const uint8_t *phase, const float *dact,
                   int64_t n, float *grad_x, float *grad_w, float *grad_b, int threads) {
    float wp[CO][K][K][8];
    weights_by_input_channel(w, wp);
    threads = thread_count(threads, n);
    Sums *sums = alloc_parts(sizeof(Sums), threads);
    if (sums == NULL) return -1;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t lo = first_image(n, t, threads), o = lo * POOL * POOL * CO;
        backward_images(x + lo * IN * IN * CI, wp, grad + o, phase + o, dact + o, first_image(n, t + 1, threads) - lo,
                        grad_x + lo * IN * IN * CI, &sums[t]);
    }
    for (int tap_index = 0; tap_index < TAPS; tap_index++) {
        vf sum = sums[0].acc_w[tap_index];
        for (int t = 1; t < threads; t++) sum += sums[t].acc_w[tap_index];
        const int u = tap_index / (K * CI), v = tap_index / CI % K, ic = tap_index % CI;
        for (int oc = 0; oc < CO; oc++) grad_w[((oc * CI + ic) * K + u) * K + v] = sum[oc];
    }
    vf sum = sums[0].acc_b;
    for (int t = 1; t < threads; t++) sum += sums[t].acc_b;
    store(grad_b, sum);
    free(sums);
    return 0;
}
