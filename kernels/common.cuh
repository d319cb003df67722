// Shared device helpers for every rote kernel: Philox4x32-10 (bit-identical to
// src/rng.rs), warp reductions and bit helpers. Kept free of system headers so the
// same text compiles under nvcc and, when no precompiled image fits, under NVRTC.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;

#define ROTE_FULL_MASK 0xffffffffu

// ---- Philox4x32-10 -------------------------------------------------------------
// key = (seed_lo, seed_hi); counter = (block_lo, block_hi, stream_lo, stream_hi).
struct PhiloxBlock { u32 w[4]; };

__device__ __forceinline__ PhiloxBlock philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const u32 W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += W0; k1 += W1; }
        u32 hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        u32 hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        u32 n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    }
    PhiloxBlock b; b.w[0] = c0; b.w[1] = c1; b.w[2] = c2; b.w[3] = c3;
    return b;
}

__device__ __forceinline__ PhiloxBlock philox_block(u64 seed, u64 stream, u64 block) {
    return philox4x32_10((u32)block, (u32)(block >> 32), (u32)stream, (u32)(stream >> 32),
                         (u32)seed, (u32)(seed >> 32));
}

// (0, 1), never 0 or 1: top 24 bits plus half a step.
__device__ __forceinline__ float philox_uniform_from_word(u32 w) {
    return ((float)(w >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// Box–Muller in double, rounded to float, exactly as the host does it.
__device__ __forceinline__ void philox_box_muller(u32 w0, u32 w1, float* z0, float* z1) {
    double u0 = (double)philox_uniform_from_word(w0);
    double u1 = (double)philox_uniform_from_word(w1);
    double r = sqrt(-2.0 * log(u0));
    double theta = 6.283185307179586 * u1;
    *z0 = (float)(r * cos(theta));
    *z1 = (float)(r * sin(theta));
}

__device__ __forceinline__ float philox_normal(u64 seed, u64 stream, u64 index) {
    PhiloxBlock b = philox_block(seed, stream, index / 4);
    int lane = (int)(index % 4), pair = lane / 2;
    float z0, z1;
    philox_box_muller(b.w[2 * pair], b.w[2 * pair + 1], &z0, &z1);
    return (lane % 2 == 0) ? z0 : z1;
}

// Rademacher ±1: bit (index % 128) of block index / 128.
__device__ __forceinline__ float philox_sign(u64 seed, u64 stream, u64 index) {
    PhiloxBlock b = philox_block(seed, stream, index / 128);
    u32 bit = (u32)(index % 128);
    return ((b.w[bit / 32] >> (bit % 32)) & 1u) ? 1.0f : -1.0f;
}

// ---- warp reductions -----------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(ROTE_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(ROTE_FULL_MASK, v, offset));
    return v;
}

__device__ __forceinline__ u32 warp_min_u32(u32 v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_xor_sync(ROTE_FULL_MASK, v, offset));
    return v;
}

// ---- bits ----------------------------------------------------------------------
__device__ __forceinline__ int popcount_and(u64 a, u64 b) { return __popcll(a & b); }

// Bit i of a packed row of 64-bit words.
__device__ __forceinline__ int bit_at(const u64* words, u32 i) { return (int)((words[i >> 6] >> (i & 63)) & 1ull); }
