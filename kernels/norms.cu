// Squared L2 norm of each row of a (rows, cols) chunk, for u8, f16 and f32 samples:
//     out[r] = Σ_c x[r, c]²
// One warp per row; lanes stride over columns and accumulate in float, then a warp
// sum. The CPU twin (src/data/norms.rs) accumulates in the same precision; the
// tests compare both against float64.
#include "common.cuh"
#include <cuda_fp16.h>

__device__ __forceinline__ float load_as_float(const unsigned char* p, u64 i) { return (float)p[i]; }
__device__ __forceinline__ float load_as_float(const __half* p, u64 i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_as_float(const float* p, u64 i) { return p[i]; }

template <typename T>
__device__ void row_sq_norms(const T* x, float* out, u32 rows, u32 cols) {
    u32 warps_per_block = blockDim.x / 32;
    u32 row = blockIdx.x * warps_per_block + threadIdx.x / 32;
    u32 lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T* r = x + (u64)row * cols;
    float acc = 0.0f;
    for (u32 c = lane; c < cols; c += 32) {
        float v = load_as_float(r, c);
        acc = fmaf(v, v, acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) out[row] = acc;
}

extern "C" __global__ void row_sq_norms_u8(const unsigned char* x, float* out, u32 rows, u32 cols) { row_sq_norms(x, out, rows, cols); }
extern "C" __global__ void row_sq_norms_f16(const __half* x, float* out, u32 rows, u32 cols) { row_sq_norms(x, out, rows, cols); }
extern "C" __global__ void row_sq_norms_f32(const float* x, float* out, u32 rows, u32 cols) { row_sq_norms(x, out, rows, cols); }
