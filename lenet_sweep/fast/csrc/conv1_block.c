/* LeNet-5's first block, max_pool2d(silu(conv2d(x, w, b)), 2), fused: 28x28 one-channel
 * images, 6 output channels, 5x5 kernels -> 24x24 -> pooled 12x12 (NCHW).
 *
 * Through PyTorch's operators this block is five memory-bound passes over the 24x24x6 map
 * per step (convolution, Swish, pooling; in backward the pooling's zero fill and scatter,
 * Swish's derivative), and at batch 64 that map does not fit in L2. Here it lives only in
 * registers: forward writes the pooled map, which window position won each window and
 * Swish's derivative there; backward reads those to accumulate the weight gradient. All
 * three are NCHW, so that a vector of windows of one channel is one load or store (scalar
 * scatters into a vector on the stack stall on store forwarding).
 *
 * A vector holds LANES pooling windows of one pooled row: one block at 16 lanes (12 used),
 * blocks starting at windows 0 and 4 at 8 lanes, 0, 4 and 8 at 4 lanes. GROUP channels are
 * accumulated at a time, 4 window positions each, so that the accumulators, the image run
 * and the weights fit the registers: 6 channels with 32 registers, 3 with 16. */
#include "simd.h"

#define IN 28
#define K 5
#define POOL 12
#define C 6
#define ROW 32 /* a split image row: 14 values, zeros so loads at offsets <= 2 + POOL - LANES stay in it */
#define BLOCKS ((POOL + LANES - 1) / LANES)
#define STORED (LANES < POOL ? LANES : POOL) /* windows a block stores: 12 of 16 lanes at most */
#define GROUP (VREGS >= 32 ? 6 : 3)

/* The first window of column block `block`: blocks overlap where LANES does not divide POOL. */
static inline int block_start(int block) {
    const int start = block * LANES;
    return LANES >= POOL ? 0 : (start + LANES > POOL ? POOL - LANES : start);
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
 * windows j0.. of pooled row i. */
static inline vf tap(float xs[2][IN][ROW], int i, int j0, int p, int u, int v) {
    const int col = (p & 1) + v;
    return load(&xs[col & 1][2 * i + (p >> 1) + u][j0 + (col >> 1)]);
}

/* wb[c][tap] = w[c][tap] in every lane: multiply-adds read it from memory instead of holding
 * broadcast weights in registers the accumulators need. */
static void broadcast_weights(const float *w, vf wb[C][K * K]) {
    for (int c = 0; c < C; c++)
        for (int t = 0; t < K * K; t++) wb[c][t] = splat(w[c * K * K + t]);
}

/* y[c][p]: the convolution of channels c0.. at position p of windows (i, j0..), all
 * GROUP channels at once, so that each load of the image feeds GROUP multiply-adds. */
static inline void conv_group(float xs[2][IN][ROW], vf wb[C][K * K], const float *b, int i, int j0, int c0,
                              vf y[GROUP][4]) {
    for (int c = 0; c < GROUP; c++)
        for (int p = 0; p < 4; p++) y[c][p] = splat(b[c0 + c]);
    for (int u = 0; u < K; u++)
        for (int v = 0; v < K; v++) {
            vf wv[GROUP];
            for (int c = 0; c < GROUP; c++) wv[c] = wb[c0 + c][u * K + v];
            for (int p = 0; p < 4; p++) {
                const vf xv = tap(xs, i, j0, p, u, v);
                for (int c = 0; c < GROUP; c++) y[c][p] += wv[c] * xv;
            }
        }
}

static void forward_images(const float *x, vf wb[C][K * K], const float *b, int64_t n,
                           float *out, uint8_t *phase, float *dact) {
    float xs[2][IN][ROW];
    memset(xs, 0, sizeof xs);
    for (int64_t img = 0; img < n; img++) {
        split_columns(x + img * IN * IN, xs);
        for (int i = 0; i < POOL; i++)
            for (int block = 0; block < BLOCKS; block++) {
                const int j0 = block_start(block);
                for (int c0 = 0; c0 < C; c0 += GROUP) {
                    vf y[GROUP][4], best[GROUP], best_da[GROUP];
                    vi best_p[GROUP];
                    conv_group(xs, wb, b, i, j0, c0, y);
                    for (int c = 0; c < GROUP; c++) {
                        pool_swish(y[c], &best[c], &best_da[c], &best_p[c]);
                        /* Overlapping blocks write the same bits twice. */
                        const int64_t o = ((img * C + c0 + c) * POOL + i) * POOL + j0;
                        store_first(out + o, best[c], STORED);
                        store_first(dact + o, best_da[c], STORED);
                        store_first_bytes(phase + o, best_p[c], STORED);
                    }
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
        for (int i = 0; i < POOL; i++)
            for (int block = 0; block < BLOCKS; block++) {
                const int j0 = block_start(block);
                /* The lanes whose windows are this block's: not an earlier block's, not past the row. */
                vi own;
                for (int l = 0; l < LANES; l++) own[l] = j0 + l >= block * LANES && j0 + l < POOL ? -1 : 0;
                for (int c0 = 0; c0 < C; c0 += GROUP) {
                    /* The gradient at the convolution's output: at each window's winner, zero elsewhere. */
                    vf g[GROUP][4];
                    for (int c = 0; c < GROUP; c++) {
                        const int64_t o = ((img * C + c0 + c) * POOL + i) * POOL + j0;
                        const vf gd = blend(own, load_first(grad + o, STORED) * load_first(dact + o, STORED), splat(0.0f));
                        const vi winner = load_first_bytes(phase + o, STORED);
                        for (int p = 0; p < 4; p++) g[c][p] = blend(winner == p, gd, splat(0.0f));
                        acc_b[c0 + c] += gd;
                    }
                    for (int u = 0; u < K; u++)
                        for (int v = 0; v < K; v++) {
                            vf sum[GROUP];
                            for (int c = 0; c < GROUP; c++) sum[c] = acc_w[c0 + c][u * K + v];
                            for (int p = 0; p < 4; p++) {
                                const vf xv = tap(xs, i, j0, p, u, v);
                                for (int c = 0; c < GROUP; c++) sum[c] += g[c][p] * xv;
                            }
                            for (int c = 0; c < GROUP; c++) acc_w[c0 + c][u * K + v] = sum[c];
                        }
                }
            }
    }
}

typedef struct {
    vf acc_w[C][K * K], acc_b[C];
} Sums;

/* The vector width this build chose (simd.h), so that the caller can say which build runs. */
int lenet_lanes(void) { return LANES; }

/* x [n, 28, 28], w [6, 25], b [6] -> out, phase, dact [n, 6, 12, 12]: the
 * pooled map, the position p = 2 dr + ds that won each window, and Swish's derivative
 * there. Runs on PyTorch's own OpenMP threads (the libgomp it loaded): threads of a second
 * pool would wait for the cores its idle workers spin on. Returns 0. */
int conv1_forward(const float *x, const float *w, const float *b, int64_t n,
                  float *out, uint8_t *phase, float *dact, int threads) {
    vf wb[C][K * K];
    broadcast_weights(w, wb);
    threads = thread_count(threads, n);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t lo = first_image(n, t, threads), o = lo * POOL * POOL * C;
        forward_images(x + lo * IN * IN, wb, b, first_image(n, t + 1, threads) - lo, out + o, phase + o, dact + o);
    }
    return 0;
}

/* grad [n, 6, 12, 12], the gradient of the pooled map, and forward's phase and dact ->
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
