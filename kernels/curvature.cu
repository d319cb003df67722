// Per-sample input curvature of relu MLPs (ALGORITHMS.md §2): H = Jᵀ(diag p − ppᵀ)J
// with J = ∂z_L/∂x. The products run through cuBLAS; these kernels do the rest:
//   bias_relu        z ← z + b; a = max(z, 0)                 (forward, one layer)
//   softmax_rows     p = softmax(z_L) per row
//   identity_seeds   C one-hot rows per sample: the seeds of J's backward pass
//   relu_mask_rows   g ← g ⊙ 1[z > 0], row i of g belonging to sample i / C
//   gram_per_sample  G_s = J_s J_sᵀ (C × C)
//   project_probes   U_s = J_s V_sᵀ (C × P) for Rademacher probes V_s drawn here
// The host finishes tr(AG), tr((AG)²) and the Hutchinson sums from G, p and U — the
// same function the CPU backend uses.
#include "common.cuh"

extern "C" __global__ void bias_relu(float* z, float* a, const float* bias, u32 rows, u32 n, int relu) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * n) return;
    float v = z[i] + bias[i % n];
    z[i] = v;
    if (relu) a[i] = v > 0.0f ? v : 0.0f;
}

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

extern "C" __global__ void relu_mask_rows(float* g, const float* z, u32 rows, u32 c, u32 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * c * n) return;
    u64 r = i / n, k = i % n;
    if (z[(r / c) * n + k] <= 0.0f) g[i] = 0.0f;
}

// One block per sample; warps take the C(C+1)/2 pairs in turn.
extern "C" __global__ void gram_per_sample(const float* j, float* gram, u32 c, u32 d) {
    u32 s = blockIdx.x;
    u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const float* js = j + (u64)s * c * d;
    u32 pairs = c * (c + 1) / 2;
    for (u32 q = warp; q < pairs; q += warps) {
        u32 a = 0, rem = q;
        while (rem >= c - a) { rem -= c - a; ++a; }
        u32 b = a + rem;
        float acc = 0.0f;
        for (u32 l = lane; l < d; l += 32) acc = fmaf(js[(u64)a * d + l], js[(u64)b * d + l], acc);
        acc = warp_sum(acc);
        if (lane == 0) {
            gram[(u64)s * c * c + a * c + b] = acc;
            gram[(u64)s * c * c + b * c + a] = acc;
        }
    }
}

// One warp per (sample, probe): draws the probe's d signs from Philox keyed by
// (seed, sample's global index, probe) exactly as src/curvature/mod.rs::probe, then
// U[s, p, a] = Σ_l J_s[a, l] v[l].
extern "C" __global__ void project_probes(const float* j, float* u, u32 rows, u32 c, u32 probes, u32 d, u64 seed, u64 first_global) {
    u32 wid = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    if (wid >= rows * probes) return;
    u32 s = wid / probes, p = wid % probes;
    const float* js = j + (u64)s * c * d;
    for (u32 a = 0; a < c; ++a) {
        float acc = 0.0f;
        for (u32 l = lane; l < d; l += 32) {
            float v = philox_sign(seed, first_global + s, (u64)p * d + l);
            acc = fmaf(js[(u64)a * d + l], v, acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) u[((u64)s * probes + p) * c + a] = acc;
    }
}
