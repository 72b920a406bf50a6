/* LeNet-5's first block, max_pool2d(silu(conv2d(x, w, b)), 2), fused: 28x28 one-channel
 * images, 6 output channels, 5x5 kernels -> 24x24 -> pooled 12x12 (channels last).
 *
 * Through PyTorch's operators this block is five memory-bound passes over the 24x24x6 map
 * per step (convolution, Swish, pooling; in backward the pooling's zero fill and scatter,
 * Swish's derivative), and at batch 64 that map does not fit in L2. Here it lives only in
 * registers: forward writes the pooled map, which window position won each window and
 * Swish's derivative there; backward reads those to accumulate the weight gradient. */
#include "simd.h"

#define IN 28
#define K 5
#define POOL 12
#define C 6
#define ROW 32 /* a split image row: 14 values, zeros so 16-wide loads at offsets <= 2 stay in it */

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
            vf y[C][4], best[C], best_da[C], best_p[C];
            conv_row(xs, w, b, i, y);
            for (int c = 0; c < C; c++)
                for (int p = 0; p < 4; p++) pool_swish(y[c][p], p, &best[c], &best_da[c], &best_p[c]);
            int64_t o = (img * POOL + i) * POOL * C;
            for (int j = 0; j < POOL; j++)
                for (int c = 0; c < C; c++) {
                    out[o + j * C + c] = best[c][j];
                    dact[o + j * C + c] = best_da[c][j];
                    phase[o + j * C + c] = (uint8_t)best_p[c][j];
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

typedef struct {
    vf acc_w[C][K * K], acc_b[C];
} Sums;

/* The vector width this build chose (simd.h), so that the caller can say which build runs. */
int lenet_lanes(void) { return LANES; }

/* x [n, 28, 28], w [6, 25], b [6] -> out, phase, dact [n, 12, 12, 6] (channels last): the
 * pooled map, the position p = 2 dr + ds that won each window, and Swish's derivative
 * there. Runs on PyTorch's own OpenMP threads (the libgomp it loaded): threads of a second
 * pool would wait for the cores its idle workers spin on. Returns 0. */
int conv1_forward(const float *x, const float *w, const float *b, int64_t n,
                  float *out, uint8_t *phase, float *dact, int threads) {
    threads = thread_count(threads, n);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t lo = first_image(n, t, threads), o = lo * POOL * POOL * C;
        forward_images(x + lo * IN * IN, w, b, first_image(n, t + 1, threads) - lo, out + o, phase + o, dact + o);
    }
    return 0;
}

/* grad [n, 12, 12, 6], the gradient of the pooled map, and forward's phase and dact ->
 * grad_w [6, 25], grad_b [6]. The threads' sums are added in a fixed order, so the same
 * number of threads gives the same bits. Returns 0, or -1 when out of memory. */
int conv1_backward(const float *x, const float *grad, const uint8_t *phase, const float *dact, int64_t n,
                   float *grad_w, float *grad_b, int threads) {
    threads = thread_count(threads, n);
    Sums *sums = alloc_parts(sizeof(Sums), threads);
    if (sums == NULL) return -1;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t lo = first_image(n, t, threads), o = lo * POOL * POOL * C;
        backward_images(x + lo * IN * IN, grad + o, phase + o, dact + o, first_image(n, t + 1, threads) - lo,
                        sums[t].acc_w, sums[t].acc_b);
    }
    for (int c = 0; c < C; c++) {
        for (int tap_index = 0; tap_index < K * K; tap_index++) {
            vf sum = sums[0].acc_w[c][tap_index];
            for (int t = 1; t < threads; t++) sum += sums[t].acc_w[c][tap_index];
            grad_w[c * K * K + tap_index] = lane_sum(sum);
        }
        vf sum = sums[0].acc_b[c];
        for (int t = 1; t < threads; t++) sum += sums[t].acc_b[c];
        grad_b[c] = lane_sum(sum);
    }
    free(sums);
    return 0;
}
