//! The CUDA side of the diffusion work: the optimal denoiser (cuBLAS float64 products
//! around the online softmax of kernels/diffusion.cu), the Heun sampler with every step
//! on the device, and exact kNN. The training set is uploaded in chunks while device
//! memory allows; chunks beyond that are uploaded again on every call, so N may exceed
//! device memory.

use super::cuda::CudaBackend;
use super::{elems, gemm_rm, warps};
use crate::data::Array;
use crate::diffusion::knn::{Metric, Neighbours};
use crate::diffusion::sampler::Schedule;
use crate::diffusion::{PixelRange, TrainingSet};
use anyhow::{anyhow, bail, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const CHUNK: usize = 8192;
const QUERY_BLOCK: usize = 4096;
pub const MAX_GPU_K: usize = 32;

struct Chunk {
    rows: usize,
    y: CudaSlice<f64>,
    yy: CudaSlice<f64>,
}

/// Work buffers of one denoiser call, kept between calls (the sampler makes 35).
struct Scratch {
    rows: usize,
    g: CudaSlice<f64>,
    acc: CudaSlice<f64>,
    sum: CudaSlice<f64>,
    rescale: CudaSlice<f64>,
}

/// The optimal denoiser of one training set on one GPU.
pub struct GpuDenoiser {
    scratch: std::sync::Mutex<Option<Scratch>>,
    gpu: Arc<CudaBackend>,
    blas: CudaBlas,
    x: Array,
    range: PixelRange,
    d: usize,
    n: usize,
    resident: Vec<Chunk>,
    /// Rows from here on did not fit and are uploaded on every call.
    streamed_from: usize,
}

impl GpuDenoiser {
    /// Keeps as much of the training set on the device as half its free memory holds.
    pub fn new(gpu: Arc<CudaBackend>, train: &TrainingSet) -> Result<Self> {
        let (free, _) = cudarc::driver::result::mem_get_info().map_err(|e| anyhow!("cannot query device memory: {e}"))?;
        Self::with_budget(gpu, train, free / 2)
    }

    /// Keeps at most `budget` bytes of the training set on the device; the rest is
    /// uploaded on every call.
    pub fn with_budget(gpu: Arc<CudaBackend>, train: &TrainingSet, budget: usize) -> Result<Self> {
        let blas = gpu.blas()?;
        let (d, n) = (train.dim(), train.len());
        let mut me = Self { scratch: std::sync::Mutex::new(None), gpu, blas, x: train.x.clone(), range: train.range, d, n, resident: vec![], streamed_from: n };
        let mut used = 0usize;
        for r in crate::sched::chunks(0..n, CHUNK) {
            let bytes = r.len() * (d + 1) * 8;
            if used + bytes > budget {
                me.streamed_from = r.start;
                break;
            }
            used += bytes;
            let c = me.upload(r.start, r.len())?;
            me.resident.push(c);
        }
        Ok(me)
    }

    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.gpu
    }

    pub fn dim(&self) -> usize {
        self.d
    }

    /// How many training rows are kept on the device between calls.
    pub fn resident_rows(&self) -> usize {
        self.streamed_from
    }

    fn upload(&self, start: usize, rows: usize) -> Result<Chunk> {
        let s = self.gpu.stream();
        let mut host = vec![0f32; rows * self.d];
        self.x.rows_f32_into(start, start + rows, &mut host);
        self.range.to_model(&mut host);
        let dev32 = s.clone_htod(&host)?;
        let mut y = s.alloc_zeros::<f64>(rows * self.d)?;
        let mut yy = s.alloc_zeros::<f64>(rows)?;
        let total = (rows * self.d) as u64;
        let widen = self.gpu.function("diffusion", "widen_f64")?;
        launch!(self.gpu, widen, elems(rows * self.d), &dev32, &mut y, &total);
        let norms = self.gpu.function("diffusion", "row_sq_norms_f64")?;
        let (r32, d32) = (rows as u32, self.d as u32);
        launch!(self.gpu, norms, warps(rows), &y, &mut yy, &r32, &d32);
        Ok(Chunk { rows, y, yy })
    }

    /// D*(x; σ) for `rows` model-space rows already on the device, into `out`.
    pub fn denoise_device(&self, x: &CudaSlice<f64>, rows: usize, sigma: f64, out: &mut CudaSlice<f64>) -> Result<()> {
        crate::diffusion::optimal::check_sigma(sigma)?;
        let s = self.gpu.stream();
        let d = self.d;
        let two_s2 = 2.0 * sigma * sigma;
        let tail = (self.n as f64).ln() + crate::diffusion::optimal::TAIL;
        let softmax = self.gpu.function("diffusion", "softmax_chunk")?;
        let scale = self.gpu.function("diffusion", "scale_rows")?;
        let finish = self.gpu.function("diffusion", "finish_rows")?;
        let qb_max = rows.min(QUERY_BLOCK);
        let mut cached = self.scratch.lock().unwrap();
        if cached.as_ref().is_none_or(|c| c.rows < qb_max) {
            *cached = Some(Scratch {
                rows: qb_max,
                g: s.alloc_zeros::<f64>(qb_max * CHUNK)?,
                acc: s.alloc_zeros::<f64>(qb_max * d)?,
                sum: s.alloc_zeros::<f64>(qb_max)?,
                rescale: s.alloc_zeros::<f64>(qb_max)?,
            });
        }
        let Scratch { g, acc, sum, rescale, .. } = cached.as_mut().unwrap();
        let streamed: Vec<std::ops::Range<usize>> = crate::sched::chunks(self.streamed_from..self.n, CHUNK).collect();
        for q0 in (0..rows).step_by(QUERY_BLOCK) {
            let qb = (rows - q0).min(QUERY_BLOCK);
            let xq = x.slice(q0 * d..(q0 + qb) * d);
            let mut run_max = s.clone_htod(&vec![f64::NEG_INFINITY; qb])?;
            s.memset_zeros(acc)?;
            s.memset_zeros(sum)?;
            let mut absorb = |c: &Chunk| -> Result<()> {
                let nc = c.rows;
                let mut gv = g.slice_mut(0..qb * nc);
                gemm_rm(&self.blas, &xq, false, &c.y, true, (qb, d, nc), 0.0f64, &mut gv)?;
                let (qb32, nc32) = (qb as u32, nc as u32);
                let cfg = LaunchConfig { grid_dim: (qb32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                launch!(self.gpu, softmax, cfg, &mut gv, &c.yy, &qb32, &nc32, &two_s2, &tail, &mut run_max, &mut *sum, &mut *rescale);
                let d32 = d as u32;
                let mut accv = acc.slice_mut(0..qb * d);
                launch!(self.gpu, scale, elems(qb * d), &mut accv, &*rescale, &qb32, &d32);
                let gv = g.slice(0..qb * nc);
                gemm_rm(&self.blas, &gv, false, &c.y, false, (qb, nc, d), 1.0f64, &mut accv)
            };
            for c in &self.resident {
                absorb(c)?;
            }
            for r in &streamed {
                let c = self.upload(r.start, r.len())?;
                absorb(&c)?;
            }
            let (qb32, d32) = (qb as u32, d as u32);
            let mut o = out.slice_mut(q0 * d..(q0 + qb) * d);
            launch!(self.gpu, finish, elems(qb * d), &*acc, &*sum, &mut o, &qb32, &d32);
        }
        Ok(())
    }

    /// D*(x; σ) for host rows.
    pub fn denoise(&self, x: &[f32], sigma: f64) -> Result<Vec<f32>> {
        let rows = x.len() / self.d;
        let s = self.gpu.stream();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let dx = s.clone_htod(&x64)?;
        let mut out = s.alloc_zeros::<f64>(x.len())?;
        self.denoise_device(&dx, rows, sigma, &mut out)?;
        let host = s.clone_dtoh(&out)?;
        Ok(host.iter().map(|&v| v as f32).collect())
    }

    /// The Heun sampler from `x0` (rows at σ = t_0) with every step on the device;
    /// `step(i)` after each step.
    pub fn sample(&self, x0: &[f32], schedule: &Schedule, step: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
        let s = self.gpu.stream();
        let n = x0.len();
        let rows = n / self.d;
        let t = schedule.sigmas();
        let euler = self.gpu.function("diffusion", "heun_euler")?;
        let correct = self.gpu.function("diffusion", "heun_correct")?;
        let mut x = s.clone_htod(&x0.iter().map(|&v| v as f64).collect::<Vec<_>>())?;
        let mut den = s.alloc_zeros::<f64>(n)?;
        let mut dir = s.alloc_zeros::<f64>(n)?;
        let mut xe = s.alloc_zeros::<f64>(n)?;
        let n64 = n as u64;
        for i in 0..schedule.steps {
            let (ti, tn) = (t[i], t[i + 1]);
            self.denoise_device(&x, rows, ti, &mut den)?;
            launch!(self.gpu, euler, elems(n), &x, &den, &mut dir, &mut xe, &n64, &ti, &tn);
            if tn > 0.0 {
                self.denoise_device(&xe, rows, tn, &mut den)?;
                launch!(self.gpu, correct, elems(n), &mut x, &dir, &xe, &den, &n64, &ti, &tn);
            } else {
                std::mem::swap(&mut x, &mut xe);
            }
            s.synchronize()?;
            step(i);
        }
        let host = s.clone_dtoh(&x)?;
        Ok(host.iter().map(|&v| v as f32).collect())
    }
}

/// Exact k nearest neighbours on the GPU: every distance computed exactly (float64, in
/// index order, as `crate::diffusion::exact_sq_dist`), top-k per segment on the device,
/// segments merged on the host by (cost, index).
pub fn knn(gpu: &CudaBackend, train: &TrainingSet, queries: &[f32], k: usize, metric: Metric) -> Result<Neighbours> {
    let d = train.dim();
    let n = train.len();
    let q = train.check_queries(queries.len(), "kNN queries")?;
    crate::diffusion::knn::check_k(k, n)?;
    if k > MAX_GPU_K {
        bail!("k = {k}: the GPU kNN keeps at most {MAX_GPU_K} neighbours per query in registers; use --device cpu for larger k");
    }
    let s = gpu.stream();
    let f = gpu.function("diffusion", "knn_tile")?;
    let dq = s.clone_htod(queries)?;
    let mut best: Vec<Vec<(f64, u32)>> = vec![Vec::with_capacity(4 * k); q];
    // Upload the training set a slab at a time (at most 256 MiB of floats).
    let slab = ((1usize << 26) / d.max(1)).max(64);
    let q_tiles = q.div_ceil(64) as u32;
    let mut host = Vec::new();
    for r in crate::sched::chunks(0..n, slab) {
        train.rows(r.clone(), &mut host);
        let dy = s.clone_htod(&host)?;
        let rows = r.len();
        // Enough blocks to fill the device: about 4 per SM on a 132-SM part.
        let segments = (528u32.div_ceil(q_tiles)).clamp(1, rows.div_ceil(64) as u32);
        let seg = (rows.div_ceil(segments as usize)).div_ceil(64) * 64;
        let segments = rows.div_ceil(seg) as u32;
        let mut cost = s.alloc_zeros::<f64>(segments as usize * q * k)?;
        let mut index = s.alloc_zeros::<i32>(segments as usize * q * k)?;
        let cfg = LaunchConfig { grid_dim: (q_tiles, segments, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (q32, n32, d32, k32, m32, seg32) = (q as u32, rows as u32, d as u32, k as u32, metric_code(metric), seg as u32);
        launch!(gpu, f, cfg, &dq, &q32, &dy, &n32, &d32, &k32, &m32, &seg32, &mut cost, &mut index);
        let (hc, hi) = (s.clone_dtoh(&cost)?, s.clone_dtoh(&index)?);
        for sg in 0..segments as usize {
            for (qi, list) in best.iter_mut().enumerate() {
                let at = (sg * q + qi) * k;
                for j in 0..k {
                    if hi[at + j] >= 0 {
                        list.push((hc[at + j], (r.start + hi[at + j] as usize) as u32));
                    }
                }
            }
        }
        for list in best.iter_mut() {
            list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            list.truncate(k);
        }
    }
    let mut out = Neighbours { k, indices: Vec::with_capacity(q * k), values: Vec::with_capacity(q * k) };
    for list in best {
        for (c, i) in list {
            out.indices.push(i);
            out.values.push(if metric == Metric::Ip { -c } else { c });
        }
    }
    Ok(out)
}

fn metric_code(m: Metric) -> i32 {
    match m {
        Metric::L2 => 0,
        Metric::Ip => 1,
    }
}
