//! The CUDA side of the curvature scores for piecewise-linear (relu) MLPs: the
//! forward pass and the C-row backward pass for the logit Jacobians run through
//! cuBLAS; the Gram matrices and probe projections in kernels/curvature.cu. The host
//! finishes with curvature::finish_low_rank, as the CPU backend does.

use super::cuda::CudaBackend;
use crate::curvature::LowRank;
use crate::nn::mlp::Mlp;
use anyhow::{anyhow, bail, Result};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

impl CudaBackend {
    fn blas(&self) -> Result<CudaBlas> {
        // SAFETY: only tries to dlopen the library; without it cudarc would panic.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!("cuBLAS (libcublas) was not found; the curvature scores need it on the GPU (use --device cpu)");
        }
        CudaBlas::new(self.stream().clone()).map_err(|e| anyhow!("cannot create a cuBLAS handle: {e:?}"))
    }

    /// Row-major C (m, n) = A (m, k) · op(B), op(B) = Bᵀ for B (n, k) or B for B (k, n):
    /// cuBLAS is column-major, so it computes Cᵀ = op(B)ᵀ · Aᵀ on the same buffers.
    fn gemm_rm(&self, blas: &CudaBlas, a: &CudaSlice<f32>, m: usize, k: usize, b: &CudaSlice<f32>, n: usize, b_transposed: bool, c: &mut CudaSlice<f32>) -> Result<()> {
        let cfg = GemmConfig {
            transa: if b_transposed { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N },
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: if b_transposed { k as i32 } else { n as i32 },
            ldb: k as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        // SAFETY: the buffers hold (m, k), (n, k) or (k, n), and (m, n) floats.
        unsafe { blas.gemm(cfg, b, a, c) }.map_err(|e| anyhow!("cuBLAS sgemm failed: {e:?}"))
    }

    /// G = JJᵀ, p and (for `probes` > 0) u = Jv per sample, for a relu MLP.
    pub fn curvature_low_rank(&self, m: &Mlp, x: &[f32], rows: usize, probes: usize, probe_seed: u64, first_global: u64) -> Result<LowRank> {
        if !m.activation.piecewise_linear() {
            bail!("the GPU curvature path handles piecewise-linear (relu) networks");
        }
        let s = self.stream();
        let blas = self.blas()?;
        let (c, d, layers) = (m.classes(), m.input_dim(), m.layers());
        let w: Vec<CudaSlice<f32>> = m.weights.iter().map(|w| s.clone_htod(w)).collect::<Result<_, _>>()?;
        let b: Vec<CudaSlice<f32>> = m.biases.iter().map(|b| s.clone_htod(b)).collect::<Result<_, _>>()?;
        let bias_relu = self.function("curvature", "bias_relu")?;
        // Forward: z_l = a_{l−1} W_lᵀ + b_l, a_l = relu(z_l).
        let mut zs: Vec<CudaSlice<f32>> = vec![];
        let mut a = s.clone_htod(x)?;
        for l in 0..layers {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut z = s.alloc_zeros::<f32>(rows * out)?;
            self.gemm_rm(&blas, &a, rows, fan_in, &w[l], out, true, &mut z)?;
            let mut next = s.alloc_zeros::<f32>(rows * out)?;
            let (r32, n32, relu) = (rows as u32, out as u32, (l + 1 < layers) as i32);
            let mut lb = s.launch_builder(&bias_relu);
            lb.arg(&mut z).arg(&mut next).arg(&b[l]).arg(&r32).arg(&n32).arg(&relu);
            // SAFETY: z and next hold rows·out floats, bias out.
            unsafe { lb.launch(LaunchConfig::for_num_elems((rows * out) as u32)) }?;
            zs.push(z);
            a = next;
        }
        let mut p = s.alloc_zeros::<f32>(rows * c)?;
        {
            let f = self.function("curvature", "softmax_rows")?;
            let (r32, c32) = (rows as u32, c as u32);
            let mut lb = s.launch_builder(&f);
            lb.arg(&zs[layers - 1]).arg(&mut p).arg(&r32).arg(&c32);
            let cfg = LaunchConfig { grid_dim: ((rows as u32).div_ceil(8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: one warp per row of rows × c.
            unsafe { lb.launch(cfg) }?;
        }
        // Backward with C one-hot rows per sample: J = ∂z_L/∂x, (rows·C, d).
        let mut g = s.alloc_zeros::<f32>(rows * c * c)?;
        {
            let f = self.function("curvature", "identity_seeds")?;
            let (r32, c32) = (rows as u32, c as u32);
            let mut lb = s.launch_builder(&f);
            lb.arg(&mut g).arg(&r32).arg(&c32);
            // SAFETY: g holds rows·c·c floats.
            unsafe { lb.launch(LaunchConfig::for_num_elems((rows * c * c) as u32)) }?;
        }
        let mask = self.function("curvature", "relu_mask_rows")?;
        for l in (0..layers).rev() {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut ga = s.alloc_zeros::<f32>(rows * c * fan_in)?;
            self.gemm_rm(&blas, &g, rows * c, out, &w[l], fan_in, false, &mut ga)?;
            if l > 0 {
                let (r32, c32, n32) = (rows as u32, c as u32, fan_in as u32);
                let mut lb = s.launch_builder(&mask);
                lb.arg(&mut ga).arg(&zs[l - 1]).arg(&r32).arg(&c32).arg(&n32);
                // SAFETY: ga holds rows·c·fan_in floats, zs[l−1] rows·fan_in.
                unsafe { lb.launch(LaunchConfig::for_num_elems((rows * c * fan_in) as u32)) }?;
            }
            g = ga;
        }
        let j = g;
        let mut gram = s.alloc_zeros::<f32>(rows * c * c)?;
        {
            let f = self.function("curvature", "gram_per_sample")?;
            let (c32, d32) = (c as u32, d as u32);
            let mut lb = s.launch_builder(&f);
            lb.arg(&j).arg(&mut gram).arg(&c32).arg(&d32);
            let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: j holds rows·c·d floats, gram rows·c·c.
            unsafe { lb.launch(cfg) }?;
        }
        let mut projections = vec![];
        if probes > 0 {
            let mut u = s.alloc_zeros::<f32>(rows * probes * c)?;
            let f = self.function("curvature", "project_probes")?;
            let (r32, c32, p32, d32) = (rows as u32, c as u32, probes as u32, d as u32);
            let mut lb = s.launch_builder(&f);
            lb.arg(&j).arg(&mut u).arg(&r32).arg(&c32).arg(&p32).arg(&d32).arg(&probe_seed).arg(&first_global);
            let cfg = LaunchConfig { grid_dim: (((rows * probes) as u32).div_ceil(8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: one warp per (sample, probe); u holds rows·probes·c floats.
            unsafe { lb.launch(cfg) }?;
            projections = s.clone_dtoh(&u)?.iter().map(|&v| v as f64).collect();
        }
        let gram: Vec<f64> = s.clone_dtoh(&gram)?.iter().map(|&v| v as f64).collect();
        let probs = s.clone_dtoh(&p)?;
        Ok(LowRank { rows, classes: c, probes, gram, probs, projections })
    }

    /// Only the products of `curvature_low_rank` (forward for `rows`, backward for
    /// rows·C), synchronised: the cuBLAS floor the full pass is compared with.
    pub fn curvature_gemms_only(&self, m: &Mlp, rows: usize) -> Result<()> {
        let s = self.stream();
        let blas = self.blas()?;
        let c = m.classes();
        let w: Vec<CudaSlice<f32>> = m.weights.iter().map(|w| s.clone_htod(w)).collect::<Result<_, _>>()?;
        let mut a = s.alloc_zeros::<f32>(rows * m.input_dim())?;
        for l in 0..m.layers() {
            let mut z = s.alloc_zeros::<f32>(rows * m.sizes[l + 1])?;
            self.gemm_rm(&blas, &a, rows, m.sizes[l], &w[l], m.sizes[l + 1], true, &mut z)?;
            a = z;
        }
        let mut g = s.alloc_zeros::<f32>(rows * c * c)?;
        for l in (0..m.layers()).rev() {
            let mut ga = s.alloc_zeros::<f32>(rows * c * m.sizes[l])?;
            self.gemm_rm(&blas, &g, rows * c, m.sizes[l + 1], &w[l], m.sizes[l], false, &mut ga)?;
            g = ga;
        }
        s.synchronize()?;
        Ok(())
    }
}
