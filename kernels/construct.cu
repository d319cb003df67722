// Randomized construction of three-layer threshold networks (ALGORITHMS.md §1).
//
// Layer 1: φ(x)_j = H(w_j·x + b_j), stored as bits: one u64 word per 64 units.
//   layer1_threshold_pack computes a 64-sample × 64-unit tile of X·Wᵀ in registers
//   (float32 FMA), adds b, and packs the signs with warp ballots. Float32 rounding can
//   flip the sign only when |z| is within the proven error bound
//       |fl(z) − z| ≤ γ_{d+2} (‖w‖‖x‖ + |b|),   γ_k ≈ k·2⁻²⁴,
//   so entries inside twice that margin are appended to a list and layer1_fix
//   recomputes them exactly (float64: products of float32 are exact, sums in index
//   order). Every bit is therefore the sign of the same float64 sum on any device.
//
// Layer 2 (greedy covering): for a candidate x_i the mask u = ¬φ(x_i) (restricted to
//   the units in use), s(x) = popcount(u ∧ φ(x)), m = min over X⁺ of s.
//   cover_min computes m for a batch of candidates; cover_mark marks the X⁻ rows a
//   new neuron ψ(x) = H(m − s(x)) covers (s(x) < m).
#include "common.cuh"

#define TILE 64
#define TK 16

extern "C" __global__ void layer1_threshold_pack(
    const float* __restrict__ x,      // (rows, d)
    const float* __restrict__ w,      // (n, d)
    const float* __restrict__ bias,   // (n)
    const float* __restrict__ xnorm,  // (rows)
    const float* __restrict__ wnorm,  // (n)
    u32 rows, u32 n, u32 d, u32 words, float margin_coef,
    u64* __restrict__ bits,           // (rows, words)
    u32* __restrict__ flags,          // (max_flags, 2): (row, unit) pairs
    u32* __restrict__ flag_count, u32 max_flags)
{
    __shared__ float xs[TK][TILE];
    __shared__ float ws[TK][TILE];
    __shared__ float zs[TILE][TILE + 1];
    const u32 tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const u32 row0 = blockIdx.y * TILE, unit0 = blockIdx.x * TILE;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (u32 k0 = 0; k0 < d; k0 += TK) {
        // 64×16 elements of each operand, 4 per thread; k varies fastest (coalesced).
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            u32 e = threadIdx.x + 256 * q;
            u32 r = e / TK, k = e % TK;
            u32 gr = row0 + r, gu = unit0 + r, gk = k0 + k;
            xs[k][r] = (gr < rows && gk < d) ? x[(u64)gr * d + gk] : 0.0f;
            ws[k][r] = (gu < n && gk < d) ? w[(u64)gu * d + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TK; ++k) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) zs[ty + 16 * i][tx + 16 * j] = acc[i][j];
    __syncthreads();

    // Pack: warp v handles rows v, v+8, …; lanes cover units lane and lane+32.
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (u32 r = warp; r < TILE; r += 8) {
        u32 gr = row0 + r;
        if (gr >= rows) break;
        u32 half_words[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            u32 gu = unit0 + lane + 32 * h;
            int bit = 0;
            if (gu < n) {
                float z = zs[r][lane + 32 * h] + bias[gu];
                float margin = margin_coef * (wnorm[gu] * xnorm[gr] + fabsf(bias[gu]));
                bit = z > 0.0f;
                if (fabsf(z) <= margin) {
                    u32 slot = atomicAdd(flag_count, 1u);
                    if (slot < max_flags) { flags[2 * slot] = gr; flags[2 * slot + 1] = gu; }
                }
            }
            half_words[h] = __ballot_sync(ROTE_FULL_MASK, bit);
        }
        if (lane == 0) bits[(u64)gr * words + blockIdx.x] = ((u64)half_words[1] << 32) | half_words[0];
    }
}

extern "C" __global__ void layer1_fix(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    u32 d, u32 words, const u32* __restrict__ flags, u32 count, u64* bits)
{
    u32 f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= count) return;
    u32 r = flags[2 * f], j = flags[2 * f + 1];
    const float* xr = x + (u64)r * d;
    const float* wj = w + (u64)j * d;
    double z = 0.0;
    for (u32 l = 0; l < d; ++l) z = __dadd_rn(z, __dmul_rn((double)xr[l], (double)wj[l]));
    z = __dadd_rn(z, (double)bias[j]);
    u64 bit = 1ull << (j % 64);
    if (z > 0.0) atomicOr(&bits[(u64)r * words + j / 64], bit);
    else atomicAnd(&bits[(u64)r * words + j / 64], ~bit);
}

// m[b] = min over rows p of popcount(mask_b ∧ φ(p)); mask_b = ¬φ(candidate) ∧ units in use.
// Grid (batch, row blocks); the candidate's mask sits in shared memory.
extern "C" __global__ void cover_min(
    const u64* __restrict__ bits, u32 words, u32 used_words,
    const u64* __restrict__ masks,   // (batch, used_words)
    const u32* __restrict__ rows, u32 nrows,
    u32* __restrict__ out_min)       // (batch), preset to 0xffffffff
{
    extern __shared__ u64 mask[];
    const u32 b = blockIdx.x;
    for (u32 w = threadIdx.x; w < used_words; w += blockDim.x) mask[w] = masks[(u64)b * used_words + w];
    __syncthreads();
    u32 best = 0xffffffffu;
    for (u32 i = blockIdx.y * blockDim.x + threadIdx.x; i < nrows; i += gridDim.y * blockDim.x) {
        const u64* f = bits + (u64)rows[i] * words;
        u32 s = 0;
        for (u32 w = 0; w < used_words; ++w) s += __popcll(mask[w] & f[w]);
        best = min(best, s);
    }
    best = warp_min_u32(best);
    if ((threadIdx.x % 32) == 0) atomicMin(&out_min[b], best);
}

// covered[i] |= popcount(mask ∧ φ(rows[i])) < m, for each neuron (mask, m) of a batch.
extern "C" __global__ void cover_mark(
    const u64* __restrict__ bits, u32 words, u32 used_words,
    const u64* __restrict__ masks, const u32* __restrict__ thresholds, u32 neurons,
    const u32* __restrict__ rows, u32 nrows, unsigned char* covered)
{
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nrows || covered[i]) return;
    const u64* f = bits + (u64)rows[i] * words;
    for (u32 k = 0; k < neurons; ++k) {
        u32 s = 0;
        for (u32 w = 0; w < used_words; ++w) s += __popcll(masks[(u64)k * used_words + w] & f[w]);
        if (s < thresholds[k]) { covered[i] = 1; return; }
    }
}
