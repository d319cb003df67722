// Training and evaluating the EDM denoiser network (src/diffusion/net.rs) on the GPU.
// The products run through cuBLAS; these kernels do the rest, each the twin of a loop
// in net.rs / train.rs:
//   add_bias_rows        z[r, j] += b[j]
//   add_label_columns    a1[r, j] += L[j, label[r]]
//   activate_silu        sig = σ(z), s = z·σ(z)
//   times_silu_grad      out = g·σ(z)·(1 + z(1 − σ(z)))
//   add_into             a += b
//   column_sums_add      out[j] += Σ_r g[r, j]
//   label_grad           out[j, y] += Σ_{r: label r = y} g[r, j]
//   loss_grad            dout = scale·(F − target); Σ (F − target)² into a double
//   adam_ema             Adam with bias correction, then ema ← decay·ema + (1 − decay)·p
//   edm_combine          D = c_skip·x + c_out·F
#include "common.cuh"

extern "C" __global__ void add_bias_rows(float* z, const float* b, u32 rows, u32 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (u64)rows * n) z[i] += b[i % n];
}

extern "C" __global__ void add_label_columns(float* a1, const float* lw, const long long* labels, u32 rows, u32 h, u32 classes) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * h) return;
    u32 r = i / h, j = i % h;
    a1[i] += lw[(u64)j * classes + labels[r]];
}

extern "C" __global__ void activate_silu(const float* z, float* sig, float* s, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = 1.0f / (1.0f + expf(-z[i]));
    sig[i] = g;
    s[i] = z[i] * g;
}

extern "C" __global__ void times_silu_grad(const float* g, const float* z, const float* sig, float* out, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = g[i] * sig[i] * (1.0f + z[i] * (1.0f - sig[i]));
}

extern "C" __global__ void add_into(float* a, const float* b, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] += b[i];
}

extern "C" __global__ void column_sums_add(const float* g, float* out, u32 rows, u32 n) {
    u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0.0f;
    for (u32 r = 0; r < rows; ++r) s += g[(u64)r * n + j];
    out[j] += s;
}

extern "C" __global__ void label_grad(const float* g, const long long* labels, float* out, u32 rows, u32 h, u32 classes) {
    u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= h) return;
    for (u32 r = 0; r < rows; ++r) out[(u64)j * classes + labels[r]] += g[(u64)r * h + j];
}

extern "C" __global__ void loss_grad(const float* f, const float* target, float* dout, u64 n, float scale, double* loss) {
    __shared__ double part[256];
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    double sq = 0.0;
    if (i < n) {
        float e = f[i] - target[i];
        dout[i] = scale * e;
        sq = (double)e * (double)e;
    }
    part[threadIdx.x] = sq;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(loss, part[0]);
}

extern "C" __global__ void adam_ema(float* p, const float* g, float* m, float* v, float* ema, u64 n, float step, float eps, float decay) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float b1 = 0.9f, b2 = 0.999f;
    float mi = b1 * m[i] + (1.0f - b1) * g[i];
    float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    float pi = p[i] - step * mi / (sqrtf(vi) + eps);
    p[i] = pi;
    ema[i] = decay * ema[i] + (1.0f - decay) * pi;
}

extern "C" __global__ void edm_combine(const float* x, const float* f, float* out, u64 n, float c_skip, float c_out) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = c_skip * x[i] + c_out * f[i];
}
