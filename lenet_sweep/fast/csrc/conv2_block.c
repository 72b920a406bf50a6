/* LeNet-5's second block, max_pool2d(silu(conv2d(x, w, b)), 2), fused: 6x12x12 maps
 * (NCHW, as conv1_block.c writes them), 16 output channels, 5x5 kernels -> 8x8 -> pooled 4x4.
 *
 * The 16 output channels are HALVES vectors (one at 16 lanes, two at 8, four at 4), so each
 * input value read feeds 16 multiply-adds. Forward accumulates WINDOWS pooling windows at a
 * time, 4 positions each: a whole pooled row (16 accumulators) with 32 registers of 16
 * lanes, one window (4 x HALVES accumulators) otherwise. Backward uses the pooling: only
 * each window's winner has a gradient, so the input gradient spreads one 5x5 patch per
 * channel and window instead of a full transposed convolution. */
#include "simd.h"

#define IN 12
#define CI 6
#define K 5
#define CONV 8
#define POOL 4
#define CO 16
#define HALVES (CO / LANES)
#define WINDOWS (VREGS >= 32 && HALVES == 1 ? POOL : 1)
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

/* Windows (i, j0 .. j0 + WINDOWS - 1) of one image: pooled values into out (NCHW), the winning
 * positions and Swish's derivatives there into phase and dact (channels last). */
static inline void forward_windows(const float *xi, float wt[TAPS][CO], const float *b, int64_t img, int i, int j0,
                                   float *out, uint8_t *phase, float *dact) {
    /* y[r][col][h]: conv row 2i + r, column 2 j0 + col, output channels h * LANES... */
    vf y[2][2 * WINDOWS][HALVES];
    for (int r = 0; r < 2; r++)
        for (int col = 0; col < 2 * WINDOWS; col++)
            for (int h = 0; h < HALVES; h++) y[r][col][h] = load(b + h * LANES);
    for (int u = 0; u < K; u++)
        for (int v = 0; v < K; v++)
            for (int ic = 0; ic < CI; ic++) {
                vf wv[HALVES];
                for (int h = 0; h < HALVES; h++) wv[h] = load(wt[(u * K + v) * CI + ic] + h * LANES);
                const float *x0 = xi + (ic * IN + 2 * i + u) * IN + 2 * j0 + v, *x1 = x0 + IN;
                for (int col = 0; col < 2 * WINDOWS; col++) {
                    const float a0 = x0[col], a1 = x1[col];
                    for (int h = 0; h < HALVES; h++) {
                        y[0][col][h] += a0 * wv[h];
                        y[1][col][h] += a1 * wv[h];
                    }
                }
            }
    for (int jj = 0; jj < WINDOWS; jj++)
        for (int h = 0; h < HALVES; h++) {
            vf best, best_da;
            vi best_p;
            const vf window[4] = {y[0][2 * jj][h], y[0][2 * jj + 1][h], y[1][2 * jj][h], y[1][2 * jj + 1][h]};
            pool_swish(window, &best, &best_da, &best_p);
            const int64_t o = ((img * POOL + i) * POOL + j0 + jj) * CO + h * LANES;
            store(dact + o, best_da);
            for (int l = 0; l < LANES; l++) {
                phase[o + l] = (uint8_t)best_p[l];
                out[(img * CO + h * LANES + l) * POOL * POOL + i * POOL + j0 + jj] = best[l];
            }
        }
}

static void forward_images(const float *x, float wt[TAPS][CO], const float *b, int64_t n,
                           float *out, uint8_t *phase, float *dact) {
    for (int64_t img = 0; img < n; img++)
        for (int i = 0; i < POOL; i++)
            for (int j0 = 0; j0 < POOL; j0 += WINDOWS)
                forward_windows(x + img * IN * IN * CI, wt, b, img, i, j0, out, phase, dact);
}

typedef struct {
    vf acc_w[TAPS][HALVES], acc_b[HALVES];
} Sums;

static void backward_images(const float *x, float wp[CO][K][K][8], const float *grad, const uint8_t *phase,
                            const float *dact, int64_t n, float *grad_x, Sums *sums) {
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * IN * IN * CI;
        float gconv[CONV][CONV][CO]; /* the gradient at the convolution's output: winners only */
        float gx[IN * IN * 8];       /* the input gradient, channels padded to 8 */
        memset(gconv, 0, sizeof gconv);
        memset(gx, 0, sizeof gx);
        for (int i = 0; i < POOL; i++)
            for (int j = 0; j < POOL; j++) {
                const int64_t o = ((img * POOL + i) * POOL + j) * CO;
                for (int oc = 0; oc < CO; oc++) {
                    const float g = grad[(img * CO + oc) * POOL * POOL + i * POOL + j] * dact[o + oc];
                    const int row = 2 * i + (phase[o + oc] >> 1), col = 2 * j + (phase[o + oc] & 1);
                    gconv[row][col][oc] = g;
                    for (int u = 0; u < K; u++)
                        for (int v = 0; v < K; v++) {
                            float *dst = gx + ((row + u) * IN + col + v) * 8;
                            store8(dst, load8(dst) + g * load8(wp[oc][u][v]));
                        }
                }
            }
        for (int ic = 0; ic < CI; ic++)
            for (int pos = 0; pos < IN * IN; pos++) grad_x[(img * CI + ic) * IN * IN + pos] = gx[pos * 8 + ic];
        for (int row = 0; row < CONV; row++)
            for (int col = 0; col < CONV; col++)
                for (int h = 0; h < HALVES; h++) sums->acc_b[h] += load(gconv[row][col] + h * LANES);
        /* Weight gradient: per tap (u, v), its 6 input channels' sums in registers over the whole map. */
        for (int u = 0; u < K; u++)
            for (int v = 0; v < K; v++) {
                vf acc[CI][HALVES];
                for (int ic = 0; ic < CI; ic++)
                    for (int h = 0; h < HALVES; h++) acc[ic][h] = sums->acc_w[(u * K + v) * CI + ic][h];
                for (int row = 0; row < CONV; row++)
                    for (int col = 0; col < CONV; col++) {
                        const float *xr = xi + (row + u) * IN + col + v;
                        vf gc[HALVES];
                        for (int h = 0; h < HALVES; h++) gc[h] = load(gconv[row][col] + h * LANES);
                        for (int ic = 0; ic < CI; ic++)
                            for (int h = 0; h < HALVES; h++) acc[ic][h] += xr[ic * IN * IN] * gc[h];
                    }
                for (int ic = 0; ic < CI; ic++)
                    for (int h = 0; h < HALVES; h++) sums->acc_w[(u * K + v) * CI + ic][h] = acc[ic][h];
            }
    }
}

/* x [n, 6, 12, 12], w [16, 6, 5, 5], b [16] -> out [n, 16, 4, 4] (NCHW, which conv3 reads
 * flat), phase and dact [n, 4, 4, 16] (channels last): as conv1_forward. Returns 0. */
int conv2_forward(const float *x, const float *w, const float *b, int64_t n,
                  float *out, uint8_t *phase, float *dact, int threads) {
    float wt[TAPS][CO] __attribute__((aligned(64)));
    weights_by_tap(w, wt);
    threads = thread_count(threads, n);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t lo = first_image(n, t, threads);
        forward_images(x + lo * IN * IN * CI, wt, b, first_image(n, t + 1, threads) - lo,
                       out + lo * CO * POOL * POOL, phase + lo * POOL * POOL * CO, dact + lo * POOL * POOL * CO);
    }
    return 0;
}

/* grad [n, 16, 4, 4] and forward's phase and dact -> grad_x [n, 6, 12, 12], grad_w
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
        const int u = tap_index / (K * CI), v = tap_index / CI % K, ic = tap_index % CI;
        for (int h = 0; h < HALVES; h++) {
            vf sum = sums[0].acc_w[tap_index][h];
            for (int t = 1; t < threads; t++) sum += sums[t].acc_w[tap_index][h];
            for (int l = 0; l < LANES; l++) grad_w[((h * LANES + l) * CI + ic) * K * K + u * K + v] = sum[l];
        }
    }
    for (int h = 0; h < HALVES; h++) {
        vf sum = sums[0].acc_b[h];
        for (int t = 1; t < threads; t++) sum += sums[t].acc_b[h];
        store(grad_b + h * LANES, sum);
    }
    free(sums);
    return 0;
}
