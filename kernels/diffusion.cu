// The optimal denoiser, the Heun sampler's updates and exact nearest neighbours
// (ALGORITHMS.md §3). The denoiser's products run through cuBLAS in float64 (the
// tensor cores' FP64 path on H100/H200), which keeps every logit within 2e-5 of exact
// down to σ = 0.002; these kernels do the online softmax around them:
//   widen_f64          float rows → double
//   row_sq_norms_f64   ‖y‖² per row (one warp per row)
//   softmax_chunk      per query: logits of one training chunk, running max / sum,
//                      the rescale factor for the accumulator, weights in place
//   scale_rows         acc[q, :] *= rescale[q]
//   finish_rows        out = acc / sum
//   heun_euler, heun_correct   the sampler's two updates
//   knn_tile           exact distances (float64, in index order: the CPU's values
//                      bit for bit) of 64 queries × a segment of the training set,
//                      per-query top-k with ties to the lower index
#include "common.cuh"

__device__ __forceinline__ double warp_max_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(ROTE_FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ROTE_FULL_MASK, v, o);
    return v;
}

extern "C" __global__ void widen_f64(const float* x, double* y, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = (double)x[i];
}

extern "C" __global__ void row_sq_norms_f64(const double* y, double* out, u32 rows, u32 cols) {
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    if (row >= rows) return;
    const double* r = y + (u64)row * cols;
    double s = 0.0;
    for (u32 c = lane; c < cols; c += 32) s += r[c] * r[c];
    s = warp_sum_d(s);
    if (lane == 0) out[row] = s;
}

// One block of 256 threads per query row. g holds x·y for the chunk on entry and the
// weights exp(l − max) on exit (0 below max − tail); l = (2x·y − ‖y‖²)/2σ².
extern "C" __global__ void softmax_chunk(double* g, const double* yy, u32 rows, u32 nc, double two_s2, double tail,
                                         double* run_max, double* run_sum, double* rescale) {
    u32 q = blockIdx.x;
    if (q >= rows) return;
    double* gr = g + (u64)q * nc;
    __shared__ double red[32];
    double m = -INFINITY;
    for (u32 i = threadIdx.x; i < nc; i += blockDim.x) {
        double l = (2.0 * gr[i] - yy[i]) / two_s2;
        gr[i] = l;
        m = fmax(m, l);
    }
    m = warp_max_d(m);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        double v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : -INFINITY;
        v = warp_max_d(v);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    double old = run_max[q];
    double top = fmax(old, red[0]);
    __syncthreads();
    double s = 0.0;
    for (u32 i = threadIdx.x; i < nc; i += blockDim.x) {
        double l = gr[i];
        double w = l >= top - tail ? exp(l - top) : 0.0;
        gr[i] = w;
        s += w;
    }
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (u32 w = 0; w < blockDim.x / 32; ++w) total += red[w];
        double r = old == -INFINITY ? 0.0 : exp(old - top);
        rescale[q] = r;
        run_sum[q] = run_sum[q] * r + total;
        run_max[q] = top;
    }
}

extern "C" __global__ void scale_rows(double* acc, const double* rescale, u32 rows, u32 d) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (u64)rows * d) acc[i] *= rescale[i / d];
}

extern "C" __global__ void finish_rows(const double* acc, const double* sum, double* out, u32 rows, u32 d) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (u64)rows * d) out[i] = acc[i] / sum[i / d];
}

// d = (x − D(x; t_i))/t_i;  x' = x + (t_{i+1} − t_i)·d
extern "C" __global__ void heun_euler(const double* x, const double* den, double* d, double* x_euler, u64 n, double ti, double tn) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double di = (x[i] - den[i]) / ti;
    d[i] = di;
    x_euler[i] = x[i] + (tn - ti) * di;
}

// x ← x + (t_{i+1} − t_i)·(d + (x' − D(x'; t_{i+1}))/t_{i+1})/2
extern "C" __global__ void heun_correct(double* x, const double* d, const double* x_euler, const double* den, u64 n, double ti, double tn) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double d2 = (x_euler[i] - den[i]) / tn;
    x[i] = x[i] + (tn - ti) * 0.5 * (d[i] + d2);
}

#define KNN_TILE 64
#define KNN_DEPTH 16
#define KNN_MAX_K 32

// Grid (ceil(Q/64), segments); 256 threads, each computing 4 × 4 (query, point)
// pairs of a 64 × 64 tile. Segment s covers training rows [s·seg, min((s+1)·seg, n)).
// Output per (segment, query): k (cost, index) pairs, cost ascending, index ascending
// among equal costs; missing entries have cost +inf and index −1. cost = ‖q − y‖² for
// metric 0, −q·y for metric 1.
extern "C" __global__ void knn_tile(const float* queries, u32 nq, const float* train, u32 n, u32 dim, u32 k, int metric,
                                    u32 seg, double* out_cost, int* out_index) {
    __shared__ float qs[KNN_TILE][KNN_DEPTH + 1];
    __shared__ float ys[KNN_TILE][KNN_DEPTH + 1];
    __shared__ double dist[KNN_TILE][KNN_TILE];
    u32 tid = threadIdx.x;
    u32 tx = tid % 16, ty = tid / 16;
    u32 q0 = blockIdx.x * KNN_TILE;
    u32 begin = blockIdx.y * seg;
    u32 end = min(begin + seg, n);
    double best_cost[KNN_MAX_K];
    int best_index[KNN_MAX_K];
    for (u32 j = 0; j < k; ++j) { best_cost[j] = INFINITY; best_index[j] = -1; }
    for (u32 p0 = begin; p0 < end; p0 += KNN_TILE) {
        double acc[4][4];
        for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) acc[a][b] = 0.0;
        for (u32 c0 = 0; c0 < dim; c0 += KNN_DEPTH) {
            for (u32 e = tid; e < KNN_TILE * KNN_DEPTH; e += blockDim.x) {
                u32 r = e / KNN_DEPTH, c = e % KNN_DEPTH;
                u32 qi = q0 + r, pi = p0 + r, ci = c0 + c;
                qs[r][c] = (qi < nq && ci < dim) ? queries[(u64)qi * dim + ci] : 0.0f;
                ys[r][c] = (pi < end && ci < dim) ? train[(u64)pi * dim + ci] : 0.0f;
            }
            __syncthreads();
            u32 depth = min((u32)KNN_DEPTH, dim - c0);
            for (u32 c = 0; c < depth; ++c) {
                for (int a = 0; a < 4; ++a) {
                    double qv = (double)qs[ty * 4 + a][c];
                    for (int b = 0; b < 4; ++b) {
                        double yv = (double)ys[tx * 4 + b][c];
                        // Exact terms added in index order, never fused: the CPU's sum.
                        double term = metric == 0 ? __dmul_rn(qv - yv, qv - yv) : __dmul_rn(qv, yv);
                        acc[a][b] = __dadd_rn(acc[a][b], term);
                    }
                }
            }
            __syncthreads();
        }
        for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) dist[ty * 4 + a][tx * 4 + b] = metric == 0 ? acc[a][b] : -acc[a][b];
        __syncthreads();
        if (tid < KNN_TILE && q0 + tid < nq) {
            u32 count = min((u32)KNN_TILE, end - p0);
            for (u32 b = 0; b < count; ++b) {
                double c = dist[tid][b];
                // Points arrive in increasing index order, so an equal cost never displaces.
                if (c < best_cost[k - 1]) {
                    int j = (int)k - 1;
                    while (j > 0 && best_cost[j - 1] > c) {
                        best_cost[j] = best_cost[j - 1];
                        best_index[j] = best_index[j - 1];
                        --j;
                    }
                    best_cost[j] = c;
                    best_index[j] = (int)(p0 + b);
                }
            }
        }
        __syncthreads();
    }
    if (tid < KNN_TILE && q0 + tid < nq) {
        u64 at = ((u64)blockIdx.y * nq + q0 + tid) * k;
        for (u32 j = 0; j < k; ++j) { out_cost[at + j] = best_cost[j]; out_index[at + j] = best_index[j]; }
    }
}
