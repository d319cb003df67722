//! The EDM denoiser network (src/diffusion/net.rs) on the GPU: the same forward and
//! backward passes with cuBLAS products and the kernels of kernels/denoiser.cu, Adam and
//! the EMA on the device. The host prepares each batch exactly as the CPU trainer does
//! (the same Philox draws), so both backends train on identical data.

use super::cuda::CudaBackend;
use super::{elems, gemm_rm};
use crate::diffusion::net::{self, Layout, EMBED};
use anyhow::Result;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;

fn columns(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(128), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

struct Act {
    t: CudaSlice<f32>,
    a1: CudaSlice<f32>,
    sig_a1: CudaSlice<f32>,
    s_a1: CudaSlice<f32>,
    /// h_b with σ(h_b), silu(h_b), for b = 0 … B.
    h: Vec<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)>,
    /// u_b with σ(u_b), silu(u_b).
    u: Vec<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)>,
    out: CudaSlice<f32>,
}

/// The network's parameters (and, for training, Adam's moments and the EMA) on a GPU.
pub struct GpuDenoiserNet {
    gpu: Arc<CudaBackend>,
    blas: CudaBlas,
    layout: Layout,
    p: CudaSlice<f32>,
    g: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    ema: CudaSlice<f32>,
    t: i32,
}

impl GpuDenoiserNet {
    pub fn new(gpu: Arc<CudaBackend>, layout: Layout, params: &[f32]) -> Result<Self> {
        let zeros = vec![0f32; params.len()];
        Self::resumed(gpu, layout, params, params, &zeros, &zeros, 0)
    }

    /// A network in the middle of training: parameters, EMA, Adam's moments and step.
    pub fn resumed(gpu: Arc<CudaBackend>, layout: Layout, params: &[f32], ema: &[f32], m: &[f32], v: &[f32], t: i32) -> Result<Self> {
        if layout.unet.is_some() {
            anyhow::bail!("U-Net denoisers run on the CPU so far (no CUDA kernels for GroupNorm and attention yet): use --device cpu");
        }
        let s = gpu.stream().clone();
        let n = layout.total;
        Ok(Self {
            blas: gpu.blas()?,
            p: s.clone_htod(params)?,
            g: s.alloc_zeros(n)?,
            m: s.clone_htod(m)?,
            v: s.clone_htod(v)?,
            ema: s.clone_htod(ema)?,
            t,
            gpu,
            layout,
        })
    }

    fn silu(&self, z: &CudaSlice<f32>) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let s = self.gpu.stream();
        let n = z.len();
        let (mut sig, mut out) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
        let f = self.gpu.function("denoiser", "activate_silu")?;
        let n64 = n as u64;
        launch!(self.gpu, f, elems(n), z, &mut sig, &mut out, &n64);
        Ok((sig, out))
    }

    fn add_bias(&self, z: &mut CudaSlice<f32>, params: &CudaSlice<f32>, name: &str, rows: usize) -> Result<()> {
        let r = self.layout.range(name);
        let n = r.len();
        let b = params.slice(r);
        let f = self.gpu.function("denoiser", "add_bias_rows")?;
        let (r32, n32) = (rows as u32, n as u32);
        launch!(self.gpu, f, elems(rows * n), z, &b, &r32, &n32);
        Ok(())
    }

    fn forward(&self, params: &CudaSlice<f32>, x_in: &CudaSlice<f32>, c_noise: &[f32], labels: Option<&CudaSlice<i64>>) -> Result<Act> {
        let s = self.gpu.stream();
        let l = &self.layout;
        let rows = c_noise.len();
        let (h, d) = (l.width, l.dim);
        let w = |name: &str| params.slice(l.range(name));
        let t = s.clone_htod(&net::embedding(c_noise))?;
        let mut a1 = s.alloc_zeros::<f32>(rows * h)?;
        gemm_rm(&self.blas, &t, false, &w("map.0.weight"), true, (rows, EMBED, h), 0.0f32, &mut a1)?;
        self.add_bias(&mut a1, params, "map.0.bias", rows)?;
        if let (true, Some(y)) = (l.classes > 0, labels) {
            let f = self.gpu.function("denoiser", "add_label_columns")?;
            let (r32, h32, c32) = (rows as u32, h as u32, l.classes as u32);
            let lw = w("map.label.weight");
            launch!(self.gpu, f, elems(rows * h), &mut a1, &lw, y, &r32, &h32, &c32);
        }
        let (sig_a1, s_a1) = self.silu(&a1)?;
        let mut e = s.alloc_zeros::<f32>(rows * h)?;
        gemm_rm(&self.blas, &s_a1, false, &w("map.1.weight"), true, (rows, h, h), 0.0f32, &mut e)?;
        self.add_bias(&mut e, params, "map.1.bias", rows)?;
        let mut h0 = s.alloc_zeros::<f32>(rows * h)?;
        gemm_rm(&self.blas, x_in, false, &w("input.weight"), true, (rows, d, h), 0.0f32, &mut h0)?;
        self.add_bias(&mut h0, params, "input.bias", rows)?;
        let (sig0, s0) = self.silu(&h0)?;
        let mut hs = vec![(h0, sig0, s0)];
        let mut us = Vec::new();
        for b in 0..l.blocks {
            let mut u = s.clone_dtod(&e)?;
            gemm_rm(&self.blas, &hs[b].2, false, &w(&format!("blocks.{b}.0.weight")), true, (rows, h, h), 1.0f32, &mut u)?;
            self.add_bias(&mut u, params, &format!("blocks.{b}.0.bias"), rows)?;
            let (sig_u, s_u) = self.silu(&u)?;
            let mut next = s.clone_dtod(&hs[b].0)?;
            gemm_rm(&self.blas, &s_u, false, &w(&format!("blocks.{b}.1.weight")), true, (rows, h, h), 1.0f32, &mut next)?;
            self.add_bias(&mut next, params, &format!("blocks.{b}.1.bias"), rows)?;
            let (sig_n, s_n) = self.silu(&next)?;
            us.push((u, sig_u, s_u));
            hs.push((next, sig_n, s_n));
        }
        let mut out = s.alloc_zeros::<f32>(rows * d)?;
        gemm_rm(&self.blas, &hs[l.blocks].2, false, &w("output.weight"), true, (rows, h, d), 0.0f32, &mut out)?;
        self.add_bias(&mut out, params, "output.bias", rows)?;
        Ok(Act { t, a1, sig_a1, s_a1, h: hs, u: us, out })
    }

    fn times_silu_grad(&self, g: &CudaSlice<f32>, z: &CudaSlice<f32>, sig: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let mut out = self.gpu.stream().alloc_zeros::<f32>(g.len())?;
        let f = self.gpu.function("denoiser", "times_silu_grad")?;
        let n = g.len() as u64;
        launch!(self.gpu, f, elems(g.len()), g, z, sig, &mut out, &n);
        Ok(out)
    }

    /// Weight gradient Aᵀ·B (A rows×m, B rows×n) and, if named, the bias gradient
    /// Σ_rows A, into the gradient buffer.
    fn param_grad(&mut self, a: &CudaSlice<f32>, b: &CudaSlice<f32>, rows: usize, m: usize, n: usize, weight: &str, bias: Option<&str>) -> Result<()> {
        let wr = self.layout.range(weight);
        {
            let mut gw = self.g.slice_mut(wr);
            gemm_rm(&self.blas, a, true, b, false, (m, rows, n), 0.0f32, &mut gw)?;
        }
        if let Some(bias) = bias {
            let br = self.layout.range(bias);
            let mut gb = self.g.slice_mut(br);
            let f = self.gpu.function("denoiser", "column_sums_add")?;
            let (r32, m32) = (rows as u32, m as u32);
            launch!(self.gpu, f, columns(m), a, &mut gb, &r32, &m32);
        }
        Ok(())
    }

    /// One Adam step on the mean of (F − target)² over the batch; returns that mean.
    pub fn step(&mut self, x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>, target: &[f32], lr: f64, ema_decay: f32) -> Result<f64> {
        let s = self.gpu.stream().clone();
        let rows = c_noise.len();
        let (h, d, blocks) = (self.layout.width, self.layout.dim, self.layout.blocks);
        let x_dev = s.clone_htod(x_in)?;
        let y_dev = labels.map(|y| s.clone_htod(y)).transpose()?;
        let act = self.forward(&self.p, &x_dev, c_noise, y_dev.as_ref())?;
        let tgt = s.clone_htod(target)?;
        let mut dout = s.alloc_zeros::<f32>(rows * d)?;
        let mut loss = s.clone_htod(&[0f64])?;
        let f = self.gpu.function("denoiser", "loss_grad")?;
        let n64 = (rows * d) as u64;
        let scale = 2.0 / (rows * d) as f32;
        // 256 threads per block: the kernel reduces through a 256-entry shared array.
        let cfg = LaunchConfig { grid_dim: (((rows * d) as u32).div_ceil(256).max(1), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self.gpu, f, cfg, &act.out, &tgt, &mut dout, &n64, &scale, &mut loss);
        s.memset_zeros(&mut self.g)?;
        // Output layer.
        self.param_grad(&dout, &act.h[blocks].2, rows, d, h, "output.weight", Some("output.bias"))?;
        let mut ds = s.alloc_zeros::<f32>(rows * h)?;
        gemm_rm(&self.blas, &dout, false, &self.p.slice(self.layout.range("output.weight")), false, (rows, d, h), 0.0f32, &mut ds)?;
        let mut dh = self.times_silu_grad(&ds, &act.h[blocks].0, &act.h[blocks].1)?;
        let mut de = s.alloc_zeros::<f32>(rows * h)?;
        let add = self.gpu.function("denoiser", "add_into")?;
        let nh = (rows * h) as u64;
        for b in (0..blocks).rev() {
            let (u, sig_u, s_u) = &act.u[b];
            let (hb, sig_h, s_h) = &act.h[b];
            self.param_grad(&dh, s_u, rows, h, h, &format!("blocks.{b}.1.weight"), Some(&format!("blocks.{b}.1.bias")))?;
            let mut dv = s.alloc_zeros::<f32>(rows * h)?;
            gemm_rm(&self.blas, &dh, false, &self.p.slice(self.layout.range(&format!("blocks.{b}.1.weight"))), false, (rows, h, h), 0.0f32, &mut dv)?;
            let du = self.times_silu_grad(&dv, u, sig_u)?;
            self.param_grad(&du, s_h, rows, h, h, &format!("blocks.{b}.0.weight"), Some(&format!("blocks.{b}.0.bias")))?;
            launch!(self.gpu, add, elems(rows * h), &mut de, &du, &nh);
            let mut dsb = s.alloc_zeros::<f32>(rows * h)?;
            gemm_rm(&self.blas, &du, false, &self.p.slice(self.layout.range(&format!("blocks.{b}.0.weight"))), false, (rows, h, h), 0.0f32, &mut dsb)?;
            let back = self.times_silu_grad(&dsb, hb, sig_h)?;
            launch!(self.gpu, add, elems(rows * h), &mut dh, &back, &nh);
        }
        self.param_grad(&dh, &x_dev, rows, h, d, "input.weight", Some("input.bias"))?;
        self.param_grad(&de, &act.s_a1, rows, h, h, "map.1.weight", Some("map.1.bias"))?;
        let mut dsa1 = s.alloc_zeros::<f32>(rows * h)?;
        gemm_rm(&self.blas, &de, false, &self.p.slice(self.layout.range("map.1.weight")), false, (rows, h, h), 0.0f32, &mut dsa1)?;
        let da1 = self.times_silu_grad(&dsa1, &act.a1, &act.sig_a1)?;
        self.param_grad(&da1, &act.t, rows, h, EMBED, "map.0.weight", Some("map.0.bias"))?;
        if let (true, Some(y)) = (self.layout.classes > 0, &y_dev) {
            let r = self.layout.range("map.label.weight");
            let mut gl = self.g.slice_mut(r);
            let f = self.gpu.function("denoiser", "label_grad")?;
            let (r32, h32, c32) = (rows as u32, h as u32, self.layout.classes as u32);
            launch!(self.gpu, f, columns(h), &da1, y, &mut gl, &r32, &h32, &c32);
        }
        // Adam (as train.rs: step = lr·√c2/c1, ε·√c2) and the EMA.
        self.t += 1;
        let (c1, c2) = (1.0 - 0.9f32.powi(self.t), 1.0 - 0.999f32.powi(self.t));
        let (step, eps) = (lr as f32 * c2.sqrt() / c1, 1e-8 * c2.sqrt());
        let f = self.gpu.function("denoiser", "adam_ema")?;
        let n = self.layout.total as u64;
        launch!(self.gpu, f, elems(self.layout.total), &mut self.p, &self.g, &mut self.m, &mut self.v, &mut self.ema, &n, &step, &eps, &ema_decay);
        let total = s.clone_dtoh(&loss)?[0];
        Ok(total / (rows * d) as f64)
    }

    /// (parameters, EMA) back on the host.
    pub fn download(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.gpu.stream();
        Ok((s.clone_dtoh(&self.p)?, s.clone_dtoh(&self.ema)?))
    }

    /// (parameters, EMA, Adam's first and second moments, Adam's step) on the host.
    #[allow(clippy::type_complexity)]
    pub fn download_state(&self) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, i32)> {
        let s = self.gpu.stream();
        Ok((s.clone_dtoh(&self.p)?, s.clone_dtoh(&self.ema)?, s.clone_dtoh(&self.m)?, s.clone_dtoh(&self.v)?, self.t))
    }

    /// D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise) with the current parameters.
    pub fn denoise(&self, x: &[f32], sigma: f64, labels: Option<&[i64]>) -> Result<Vec<f32>> {
        let s = self.gpu.stream();
        let rows = x.len() / self.layout.dim;
        let (c_skip, c_out, c_in, c_noise) = net::precondition(sigma);
        let x_in: Vec<f32> = x.iter().map(|&v| (v as f64 * c_in) as f32).collect();
        let x_dev = s.clone_htod(&x_in)?;
        let y_dev = labels.map(|y| s.clone_htod(y)).transpose()?;
        let act = self.forward(&self.p, &x_dev, &vec![c_noise as f32; rows], y_dev.as_ref())?;
        let raw = s.clone_htod(x)?;
        let mut out = s.alloc_zeros::<f32>(x.len())?;
        let f = self.gpu.function("denoiser", "edm_combine")?;
        let n = x.len() as u64;
        let (cs, co) = (c_skip as f32, c_out as f32);
        launch!(self.gpu, f, elems(x.len()), &raw, &act.out, &mut out, &n, &cs, &co);
        Ok(s.clone_dtoh(&out)?)
    }
}
