// Philox fills: out[i] = distribution(seed, stream, start + i). One thread per
// output; the counter-based generator makes the result independent of the launch
// shape, so it equals src/rng.rs element for element.
#include "common.cuh"

extern "C" __global__ void philox_fill_words(u32* out, u64 n, u64 seed, u64 stream, u64 start) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    u64 index = start + i;
    out[i] = philox_block(seed, stream, index / 4).w[index % 4];
}

extern "C" __global__ void philox_fill_uniform(float* out, u64 n, u64 seed, u64 stream, u64 start) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    u64 index = start + i;
    out[i] = philox_uniform_from_word(philox_block(seed, stream, index / 4).w[index % 4]);
}

extern "C" __global__ void philox_fill_normal(float* out, u64 n, u64 seed, u64 stream, u64 start) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = philox_normal(seed, stream, start + i);
}

extern "C" __global__ void philox_fill_sign(float* out, u64 n, u64 seed, u64 stream, u64 start) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = philox_sign(seed, stream, start + i);
}

// Whole blocks: out[4i..4i+4] = Philox(counter = (first_block + i, stream), key = seed).
// Addresses any 64-bit block, so the published known-answer vectors can be checked.
extern "C" __global__ void philox_fill_blocks(u32* out, u64 blocks, u64 seed, u64 stream, u64 first_block) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= blocks) return;
    PhiloxBlock b = philox_block(seed, stream, first_block + i);
    out[4 * i + 0] = b.w[0]; out[4 * i + 1] = b.w[1]; out[4 * i + 2] = b.w[2]; out[4 * i + 3] = b.w[3];
}
