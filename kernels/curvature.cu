// Per-sample input curvature of MLPs (ALGORITHMS.md §2). The products run through
// cuBLAS; these kernels do the rest.
// Low-rank pieces (J = ∂z_L/∂x, exact for piecewise-linear networks, the Gauss–Newton
// part otherwise):
//   softmax_rows     p = softmax(z_L) per row
//   identity_seeds   C one-hot rows per sample: the seeds of J's backward pass
//   gram_per_sample  G_s = J_s J_sᵀ (C × C)
//   project_probes   U_s = J_s V_sᵀ (C × P) for Rademacher probes V_s drawn here
// The host finishes tr(AG), tr((AG)²) and the Hutchinson sums from G, p and U — the
// same function the CPU backend uses. Forward-over-reverse HVPs for any activation
// follow below.
#include "common.cuh"

// One warp per row.
extern "C" __global__ void softmax_rows(const float* z, float* p, u32 rows, u32 c) {
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* zr = z + (u64)row * c;
    float m = -INFINITY;
    for (u32 k = lane; k < c; k += 32) m = fmaxf(m, zr[k]);
    m = warp_max(m);
    float s = 0.0f;
    for (u32 k = lane; k < c; k += 32) s += expf(zr[k] - m);
    s = warp_sum(s);
    for (u32 k = lane; k < c; k += 32) p[(u64)row * c + k] = expf(zr[k] - m) / s;
}

extern "C" __global__ void identity_seeds(float* g, u32 rows, u32 c) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * c * c) return;
    u64 r = i / c;  // row of g: sample r / c, class r % c
    g[i] = (i % c == r % c) ? 1.0f : 0.0f;
}

#define MAX_CLASSES 32

// Calls f(l, v) for the d Rademacher signs v = sign(seed, stream, first + l), l < d,
// spread over the lanes of one warp (l ≡ lane mod 32). Each lane draws one Philox
// block (128 signs) per 32 blocks and the lanes share them by shuffles, instead of
// every element drawing the whole block for its one bit. Call it with the warp
// converged: the loop bounds are warp-uniform.
template <class F>
__device__ __forceinline__ void warp_signs(u64 seed, u64 stream, u64 first, u32 d, F f) {
    u32 lane = threadIdx.x % 32;
    u64 end = first + d;
    for (u64 q0 = first / 128; q0 * 128 < end; q0 += 32) {
        PhiloxBlock mine = philox_block(seed, stream, q0 + lane);
        u64 lo = q0 * 128 > first ? q0 * 128 : first;
        u64 hi = (q0 + 32) * 128 < end ? (q0 + 32) * 128 : end;
        for (u64 i0 = lo; i0 < hi; i0 += 32) {
            u64 i = i0 + lane;
            bool live = i < hi;
            u32 src = live ? (u32)(i / 128 - q0) : 0u;
            u32 w0 = __shfl_sync(ROTE_FULL_MASK, mine.w[0], src);
            u32 w1 = __shfl_sync(ROTE_FULL_MASK, mine.w[1], src);
            u32 w2 = __shfl_sync(ROTE_FULL_MASK, mine.w[2], src);
            u32 w3 = __shfl_sync(ROTE_FULL_MASK, mine.w[3], src);
            u32 bit = (u32)(i % 128), k = bit / 32;
            u32 word = k == 0 ? w0 : k == 1 ? w1 : k == 2 ? w2 : w3;
            if (live) f((u32)(i - first), ((word >> (bit % 32)) & 1u) ? 1.0f : -1.0f);
        }
    }
}

// G_s = J_s J_sᵀ for one sample's (c, d) logit Jacobian js (global or shared memory),
// the warps of the block taking the C(C+1)/2 pairs in turn.
__device__ __forceinline__ void gram_of(const float* js, float* gram, u32 c, u32 d) {
    u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    u32 pairs = c * (c + 1) / 2;
    for (u32 q = warp; q < pairs; q += warps) {
        u32 a = 0, rem = q;
        while (rem >= c - a) { rem -= c - a; ++a; }
        u32 b = a + rem;
        const float *ja = js + (u64)a * d, *jb = js + (u64)b * d;
        // Four partial sums, so four pairs of loads are in flight at once.
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        u32 l = lane;
        for (; l + 96 < d; l += 128) {
#pragma unroll
            for (u32 k = 0; k < 4; ++k) part[k] = fmaf(ja[l + 32 * k], jb[l + 32 * k], part[k]);
        }
        for (; l < d; l += 32) part[0] = fmaf(ja[l], jb[l], part[0]);
        float acc = warp_sum((part[0] + part[1]) + (part[2] + part[3]));
        if (lane == 0) {
            gram[a * c + b] = acc;
            gram[b * c + a] = acc;
        }
    }
}

// u[a] = Σ_l J_s[a, l] v[l] for one probe, by one warp: the probe's d signs come from
// Philox keyed by (seed, sample's global index = stream, probe) exactly as
// src/curvature/mod.rs::probe. CLASS_GROUP classes per pass over the signs; the loads
// of a group carry no condition (rows past the last class repeat it), so the warp
// issues them back to back instead of waiting out one load per class.
#define CLASS_GROUP 16
__device__ __forceinline__ void project_of(const float* js, float* u, u32 c, u32 d, u32 probe, u64 seed, u64 stream) {
    u32 lane = threadIdx.x % 32;
    for (u32 a0 = 0; a0 < c; a0 += CLASS_GROUP) {
        u32 offset[CLASS_GROUP];
#pragma unroll
        for (u32 a = 0; a < CLASS_GROUP; ++a) offset[a] = (a0 + a < c ? a0 + a : c - 1) * d;
        float acc[CLASS_GROUP];
#pragma unroll
        for (u32 a = 0; a < CLASS_GROUP; ++a) acc[a] = 0.0f;
        warp_signs(seed, stream, (u64)probe * d, d, [&](u32 l, float v) {
            float x[CLASS_GROUP];
#pragma unroll
            for (u32 a = 0; a < CLASS_GROUP; ++a) x[a] = js[offset[a] + l];
#pragma unroll
            for (u32 a = 0; a < CLASS_GROUP; ++a) acc[a] = fmaf(x[a], v, acc[a]);
        });
#pragma unroll
        for (u32 a = 0; a < CLASS_GROUP; ++a) {
            float t = warp_sum(acc[a]);
            if (lane == 0 && a0 + a < c) u[a0 + a] = t;
        }
    }
}

// Gram matrices, one block per sample, J read from global memory.
extern "C" __global__ void gram_per_sample(const float* j, float* gram, u32 c, u32 d) {
    u32 s = blockIdx.x;
    gram_of(j + (u64)s * c * d, gram + (u64)s * c * c, c, d);
}

// Probe projections U[s, p, :], one warp per (sample, probe), J read from global memory.
extern "C" __global__ void project_probes(const float* j, float* u, u32 rows, u32 c, u32 probes, u32 d, u64 seed, u64 first_global) {
    u32 wid = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (wid >= rows * probes) return;
    u32 s = wid / probes, p = wid % probes;
    project_of(j + (u64)s * c * d, u + ((u64)s * probes + p) * c, c, d, p, seed, first_global + s);
}

// Both at once, one block per sample, for Jacobians that fit in shared memory (c·d
// floats of dynamic shared memory): J_s crosses from global memory once instead of
// once for the Gram matrix and once per probe.
extern "C" __global__ void gram_and_projections(const float* j, float* gram, float* u, u32 c, u32 probes, u32 d, u64 seed, u64 first_global) {
    extern __shared__ float js[];
    u32 s = blockIdx.x;
    const float* src = j + (u64)s * c * d;
    u32 n = c * d;
    if (n % 4 == 0) {  // then every sample's J starts 16-byte aligned
        const float4* src4 = reinterpret_cast<const float4*>(src);
        float4* js4 = reinterpret_cast<float4*>(js);
#pragma unroll 4
        for (u32 i = threadIdx.x; i < n / 4; i += blockDim.x) js4[i] = src4[i];
    } else {
#pragma unroll 4
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) js[i] = src[i];
    }
    __syncthreads();
    gram_of(js, gram + (u64)s * c * c, c, d);
    for (u32 p = threadIdx.x / 32; p < probes; p += blockDim.x / 32)
        project_of(js, u + ((u64)s * probes + p) * c, c, d, p, seed, first_global + s);
}

// ---- any activation: forward-over-reverse HVPs (ALGORITHMS.md §2) ------------------
// act: 0 relu, 1 gelu (erf), 2 tanh, 3 softplus, 4 silu. σ, σ', σ'' as in src/nn/mlp.rs.
__device__ __forceinline__ void activation(int act, float z, float* s, float* d1, float* d2) {
    if (act == 0) { *s = z > 0.0f ? z : 0.0f; *d1 = z > 0.0f ? 1.0f : 0.0f; *d2 = 0.0f; }
    else if (act == 1) {
        float cdf = 0.5f * (1.0f + erff(z * 0.70710678118654752f));
        float pdf = 0.3989422804014327f * expf(-0.5f * z * z);
        *s = z * cdf; *d1 = cdf + z * pdf; *d2 = pdf * (2.0f - z * z);
    } else if (act == 2) { float t = tanhf(z); *s = t; *d1 = 1.0f - t * t; *d2 = -2.0f * t * (1.0f - t * t); }
    else if (act == 3) { float sg = 1.0f / (1.0f + expf(-z)); *s = fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z))); *d1 = sg; *d2 = sg * (1.0f - sg); }
    else { float sg = 1.0f / (1.0f + expf(-z)); *s = z * sg; *d1 = sg * (1.0f + z * (1.0f - sg)); *d2 = sg * (1.0f - sg) * (2.0f + z * (1.0f - 2.0f * sg)); }
}

// z ← z + b; a = σ(z), d1 = σ'(z), d2 = σ''(z) (hidden layers).
extern "C" __global__ void bias_act(float* z, float* a, float* d1, float* d2, const float* bias, u32 rows, u32 n, int act) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * n) return;
    float v = z[i] + bias[i % n];
    z[i] = v;
    float s, e1, e2;
    activation(act, v, &s, &e1, &e2);
    a[i] = s; d1[i] = e1; d2[i] = e2;
}

extern "C" __global__ void add_bias(float* z, const float* bias, u32 rows, u32 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (u64)rows * n) z[i] += bias[i % n];
}

// g = p − e_y.
extern "C" __global__ void softmax_grad(const float* p, const long long* y, float* g, u32 rows, u32 c) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * c) return;
    g[i] = p[i] - ((long long)(i % c) == y[i / c] ? 1.0f : 0.0f);
}

// out[i] = x[i] · f[sample(i), k]: rows of x are (sample, probe) pairs, `per` of them
// per sample; f has one row of n per sample.
extern "C" __global__ void scale_by_sample(float* out, const float* x, const float* f, u32 rows, u32 per, u32 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 total = (u64)rows * per * n;
    if (i >= total) return;
    // 32-bit division where the index fits: the 64-bit one is emulated and made this
    // memory-bound kernel compute-bound.
    u64 sample, col;
    if (total <= 0xffffffffull) {
        u32 row = (u32)i / n;
        col = (u32)i - row * n;
        sample = row / per;
    } else {
        col = i % n;
        sample = i / n / per;
    }
    out[i] = x[i] * f[sample * n + col];
}

// Rademacher probes, v[(s·P + j)·d + l] = sign(seed, first_global + s, j·d + l), one
// warp per (sample, probe) row.
extern "C" __global__ void rademacher_rows(float* v, u32 rows, u32 probes, u32 d, u64 seed, u64 first_global) {
    u32 r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows * probes) return;
    float* row = v + (u64)r * d;
    warp_signs(seed, first_global + r / probes, (u64)(r % probes) * d, d, [&](u32 l, float sign) { row[l] = sign; });
}

// ġ_L = p ⊙ (ż_L − pᵀż_L), one warp per (sample, probe) row.
extern "C" __global__ void softmax_tangent(float* gdot, const float* zdot, const float* p, u32 rows, u32 probes, u32 c) {
    u32 r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    if (r >= rows * probes) return;
    const float* pr = p + (u64)(r / probes) * c;
    const float* zr = zdot + (u64)r * c;
    float dot = 0.0f;
    for (u32 k = lane; k < c; k += 32) dot += pr[k] * zr[k];
    dot = warp_sum(dot);
    for (u32 k = lane; k < c; k += 32) gdot[(u64)r * c + k] = pr[k] * (zr[k] - dot);
}

// ġ_l = σ''(z_l)⊙ż_l⊙g_{a,l} + σ'(z_l)⊙ġ_{a,l}, tangent rows against per-sample z.
extern "C" __global__ void tangent_back(float* gdot, const float* gad, const float* zdot, const float* ga, const float* d1, const float* d2, u32 rows, u32 probes, u32 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * probes * n) return;
    u64 s = (i / n / probes) * n + i % n;
    gdot[i] = d2[s] * zdot[i] * ga[s] + d1[s] * gad[i];
}

// Per row: ‖h‖² and v·h.
extern "C" __global__ void row_sq_and_dot(const float* h, const float* v, u32 rows, u32 d, float* sq, float* vd) {
    u32 r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    if (r >= rows) return;
    float a = 0.0f, b = 0.0f;
    for (u32 l = lane; l < d; l += 32) {
        float x = h[(u64)r * d + l];
        a = fmaf(x, x, a);
        b = fmaf(x, v[(u64)r * d + l], b);
    }
    a = warp_sum(a); b = warp_sum(b);
    if (lane == 0) { sq[r] = a; vd[r] = b; }
}

// ---- training (src/nn/train.rs on the GPU) --------------------------------------------
// xb[r, :] = x[rows[r], :]
extern "C" __global__ void gather_rows(float* xb, const float* x, const u32* rows, u32 count, u32 d) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)count * d) return;
    xb[i] = x[(u64)rows[i / d] * d + i % d];
}

extern "C" __global__ void scale_in_place(float* x, float alpha, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= alpha;
}

// db[k] = Σ_r g[r, k]
extern "C" __global__ void column_sums(const float* g, float* db, u32 rows, u32 n) {
    u32 k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float s = 0.0f;
    for (u32 r = 0; r < rows; ++r) s += g[(u64)r * n + k];
    db[k] = s;
}

// PyTorch's SGD: v ← μv + (g + λw); w ← w − ηv.
extern "C" __global__ void sgd_step(float* w, const float* g, float* v, u64 n, float lr, float momentum, float wd) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float vi = momentum * v[i] + g[i] + wd * w[i];
    v[i] = vi;
    w[i] -= lr * vi;
}

// a = σ(z)
extern "C" __global__ void activate(const float* z, float* a, u64 n, int act) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s, d1, d2;
    activation(act, z[i], &s, &d1, &d2);
    a[i] = s;
}

// The scores from the low-rank pieces, one thread per sample, in double precision:
// the device twin of curvature::finish_low_rank (A = diag p − ppᵀ):
//   exact: tr((AG)²), tr(AG);  Hutchinson: mean_k w_kᵀ G w_k and u_kᵀ w_k, w_k = A u_k.
extern "C" __global__ void finish_low_rank(const float* gram, const float* p, const float* u, u32 rows, u32 c, u32 probes,
                                           float* score, float* trace, float* gauss_newton) {
    u32 s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= rows || c > MAX_CLASSES) return;
    const float* g = gram + (u64)s * c * c;
    const float* ps = p + (u64)s * c;
    double ag[MAX_CLASSES * MAX_CLASSES];
    for (u32 b = 0; b < c; ++b) {
        double pg = 0.0;
        for (u32 k = 0; k < c; ++k) pg += (double)ps[k] * (double)g[k * c + b];
        for (u32 a = 0; a < c; ++a) ag[a * c + b] = (double)ps[a] * ((double)g[a * c + b] - pg);
    }
    double gn_sq = 0.0, gn_tr = 0.0;
    for (u32 a = 0; a < c; ++a) {
        gn_tr += ag[a * c + a];
        for (u32 b = 0; b < c; ++b) gn_sq += ag[a * c + b] * ag[b * c + a];
    }
    gauss_newton[s] = (float)gn_sq;
    if (probes == 0) { score[s] = (float)gn_sq; trace[s] = (float)gn_tr; return; }
    double sq = 0.0, tr = 0.0;
    double w[MAX_CLASSES];
    for (u32 k = 0; k < probes; ++k) {
        const float* uk = u + ((u64)s * probes + k) * c;
        double pu = 0.0;
        for (u32 a = 0; a < c; ++a) pu += (double)ps[a] * (double)uk[a];
        for (u32 a = 0; a < c; ++a) w[a] = (double)ps[a] * ((double)uk[a] - pu);
        for (u32 a = 0; a < c; ++a) {
            double gw = 0.0;
            for (u32 b = 0; b < c; ++b) gw += (double)g[a * c + b] * w[b];
            sq += w[a] * gw;
            tr += (double)uk[a] * w[a];
        }
    }
    score[s] = (float)(sq / probes);
    trace[s] = (float)(tr / probes);
}
