//! The CUDA side of the curvature scores for piecewise-linear (relu) MLPs: the
//! forward pass and the C-row backward pass for the logit Jacobians run through
//! cuBLAS; the Gram matrices and probe projections in kernels/curvature.cu. The host
//! finishes with curvature::finish_low_rank, as the CPU backend does.

use super::cuda::CudaBackend;
use crate::curvature::LowRank;
use crate::nn::mlp::Mlp;
use anyhow::{anyhow, bail, Result};
use cudarc::cublas::CudaBlas;
use super::{elems, gemm_rm, warps};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// The activation numbering of kernels/curvature.cu.
fn activation_code(a: crate::nn::mlp::Activation) -> i32 {
    use crate::nn::mlp::Activation::*;
    match a {
        Relu => 0,
        Gelu => 1,
        Tanh => 2,
        Softplus => 3,
        Silu => 4,
    }
}

/// The largest per-sample logit Jacobian (bytes) that `gram_and_projections` stages in
/// shared memory: the 48 KiB a block gets without opting in to more.
const SHARED_JACOBIAN_BYTES: usize = 48 * 1024;

/// The low-rank pieces, still on the device.
struct DeviceLowRank {
    classes: usize,
    gram: CudaSlice<f32>,
    probs: CudaSlice<f32>,
    projections: Option<CudaSlice<f32>>,
}

struct DeviceForward {
    /// z_1 … z_L (bias added).
    z: Vec<CudaSlice<f32>>,
    /// σ'(z_l), σ''(z_l) for the hidden layers.
    d1: Vec<CudaSlice<f32>>,
    d2: Vec<CudaSlice<f32>>,
    probs: CudaSlice<f32>,
}

impl CudaBackend {
    pub(crate) fn blas(&self) -> Result<CudaBlas> {
        // SAFETY: only tries to dlopen the library; without it cudarc would panic.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!("cuBLAS (libcublas) was not found; this work needs it on the GPU (use --device cpu)");
        }
        CudaBlas::new(self.stream().clone()).map_err(|e| anyhow!("cannot create a cuBLAS handle: {e:?}"))
    }

    /// A device buffer left uninitialized, for outputs that are written whole before
    /// anything reads them (GEMM results with β = 0, element-wise kernel outputs): the
    /// Jacobian chain's buffers are hundreds of MB, and clearing them costs as much as
    /// a small GEMM.
    fn written_before_read(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: f32 has no invalid bit patterns, and every caller overwrites the whole
        // buffer before reading it.
        Ok(unsafe { self.stream().alloc::<f32>(len) }?)
    }

    /// Forward pass on the device: z_l, and for hidden layers σ(z_l), σ'(z_l), σ''(z_l);
    /// softmax probabilities of the logits.
    fn forward_device(&self, blas: &CudaBlas, m: &Mlp, w: &[CudaSlice<f32>], b: &[CudaSlice<f32>], x: &CudaSlice<f32>, rows: usize) -> Result<DeviceForward> {
        let s = self.stream();
        let act = activation_code(m.activation);
        let (bias_act, add_bias) = (self.function("curvature", "bias_act")?, self.function("curvature", "add_bias")?);
        let mut fw = DeviceForward { z: vec![], d1: vec![], d2: vec![], probs: s.alloc_zeros::<f32>(rows * m.classes())? };
        let mut a: Option<CudaSlice<f32>> = None;
        for l in 0..m.layers() {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut z = s.alloc_zeros::<f32>(rows * out)?;
            gemm_rm(blas, a.as_ref().unwrap_or(x), false, &w[l], true, (rows, fan_in, out), 0.0f32, &mut z)?;
            let (r32, n32) = (rows as u32, out as u32);
            if l + 1 < m.layers() {
                let mut next = s.alloc_zeros::<f32>(rows * out)?;
                let mut d1 = s.alloc_zeros::<f32>(rows * out)?;
                let mut d2 = s.alloc_zeros::<f32>(rows * out)?;
                launch!(self, bias_act, elems(rows * out), &mut z, &mut next, &mut d1, &mut d2, &b[l], &r32, &n32, &act);
                fw.d1.push(d1);
                fw.d2.push(d2);
                a = Some(next);
            } else {
                launch!(self, add_bias, elems(rows * out), &mut z, &b[l], &r32, &n32);
            }
            fw.z.push(z);
        }
        let f = self.function("curvature", "softmax_rows")?;
        let (r32, c32) = (rows as u32, m.classes() as u32);
        let logits = fw.z.last().unwrap();
        let probs = &mut fw.probs;
        launch!(self, f, warps(rows), logits, probs, &r32, &c32);
        Ok(fw)
    }

    fn upload_model(&self, m: &Mlp) -> Result<(Vec<CudaSlice<f32>>, Vec<CudaSlice<f32>>)> {
        let s = self.stream();
        Ok((
            m.weights.iter().map(|w| s.clone_htod(w)).collect::<Result<_, _>>()?,
            m.biases.iter().map(|b| s.clone_htod(b)).collect::<Result<_, _>>()?,
        ))
    }

    /// G = JJᵀ, p and (for `probes` > 0) u = Jv per sample (J = ∂z_L/∂x), any
    /// activation: for piecewise-linear networks these give the exact and the Hutchinson
    /// scores, for smooth ones the exact Gauss–Newton part.
    fn low_rank_device(&self, m: &Mlp, x: &[f32], rows: usize, probes: usize, probe_seed: u64, first_global: u64) -> Result<DeviceLowRank> {
        let s = self.stream();
        let blas = self.blas()?;
        let (c, d, layers) = (m.classes(), m.input_dim(), m.layers());
        let (w, b) = self.upload_model(m)?;
        let x_dev = s.clone_htod(x)?;
        let fw = self.forward_device(&blas, m, &w, &b, &x_dev, rows)?;
        // Backward with C one-hot rows per sample: J = ∂z_L/∂x, (rows·C, d).
        let mut g = s.alloc_zeros::<f32>(rows * c * c)?;
        let (r32, c32) = (rows as u32, c as u32);
        launch!(self, self.function("curvature", "identity_seeds")?, elems(rows * c * c), &mut g, &r32, &c32);
        let scale = self.function("curvature", "scale_by_sample")?;
        for l in (0..layers).rev() {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut ga = self.written_before_read(rows * c * fan_in)?;
            gemm_rm(&blas, &g, false, &w[l], false, (rows * c, out, fan_in), 0.0f32, &mut ga)?;
            if l > 0 {
                let mut scaled = self.written_before_read(rows * c * fan_in)?;
                let n32 = fan_in as u32;
                launch!(self, scale, elems(rows * c * fan_in), &mut scaled, &ga, &fw.d1[l - 1], &r32, &c32, &n32);
                ga = scaled;
            }
            g = ga;
        }
        let j = g;
        let mut gram = s.alloc_zeros::<f32>(rows * c * c)?;
        let mut projections = if probes > 0 { Some(s.alloc_zeros::<f32>(rows * probes * c)?) } else { None };
        let (p32, d32) = (probes as u32, d as u32);
        let jacobian_bytes = c * d * std::mem::size_of::<f32>();
        if jacobian_bytes <= SHARED_JACOBIAN_BYTES {
            // One block per sample with J_s in shared memory; a warp per probe.
            let f = self.function("curvature", "gram_and_projections")?;
            let mut empty = s.alloc_zeros::<f32>(1)?;
            let u = match projections.as_mut() {
                Some(u) => u,
                None => &mut empty,
            };
            let block = 32 * probes.clamp(8, 16) as u32;
            let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: jacobian_bytes as u32 };
            launch!(self, f, cfg, &j, &mut gram, u, &c32, &p32, &d32, &probe_seed, &first_global);
        } else {
            let f = self.function("curvature", "gram_per_sample")?;
            let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            launch!(self, f, cfg, &j, &mut gram, &c32, &d32);
            if let Some(u) = projections.as_mut() {
                let f = self.function("curvature", "project_probes")?;
                launch!(self, f, warps(rows * probes), &j, u, &r32, &c32, &p32, &d32, &probe_seed, &first_global);
            }
        }
        Ok(DeviceLowRank { classes: c, gram, probs: fw.probs, projections })
    }

    /// G = JJᵀ, p and (for `probes` > 0) u = Jv per sample (J = ∂z_L/∂x), copied to
    /// the host for curvature::finish_low_rank.
    pub fn curvature_low_rank(&self, m: &Mlp, x: &[f32], rows: usize, probes: usize, probe_seed: u64, first_global: u64) -> Result<LowRank> {
        let d = self.low_rank_device(m, x, rows, probes, probe_seed, first_global)?;
        let s = self.stream();
        let to_f64 = |v: Vec<f32>| v.into_iter().map(|t| t as f64).collect::<Vec<f64>>();
        Ok(LowRank {
            rows,
            classes: d.classes,
            probes,
            gram: to_f64(s.clone_dtoh(&d.gram)?),
            probs: s.clone_dtoh(&d.probs)?,
            projections: match &d.projections {
                Some(u) => to_f64(s.clone_dtoh(u)?),
                None => vec![],
            },
        })
    }

    /// The low-rank scores finished on the device (kernel finish_low_rank, the twin of
    /// curvature::finish_low_rank): (score, trace, exact Gauss–Newton tr((AG)²)) per
    /// sample. None when there are more classes than the kernel holds.
    pub fn curvature_low_rank_scores(&self, m: &Mlp, x: &[f32], rows: usize, probes: usize, probe_seed: u64, first_global: u64) -> Result<Option<[Vec<f32>; 3]>> {
        const MAX_CLASSES: usize = 32;
        if m.classes() > MAX_CLASSES {
            return Ok(None);
        }
        let d = self.low_rank_device(m, x, rows, probes, probe_seed, first_global)?;
        let s = self.stream();
        let mut out = [s.alloc_zeros::<f32>(rows)?, s.alloc_zeros::<f32>(rows)?, s.alloc_zeros::<f32>(rows)?];
        let empty = s.alloc_zeros::<f32>(1)?;
        let u = d.projections.as_ref().unwrap_or(&empty);
        let (r32, c32, p32) = (rows as u32, d.classes as u32, probes as u32);
        let [score, trace, gn] = &mut out;
        // One thread per sample and latency-bound: small blocks spread a batch of a few
        // thousand samples over every SM.
        let cfg = LaunchConfig { grid_dim: ((rows as u32).div_ceil(32), 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        launch!(self, self.function("curvature", "finish_low_rank")?, cfg, &d.gram, &d.probs, u, &r32, &c32, &p32, score, trace, gn);
        Ok(Some([s.clone_dtoh(&out[0])?, s.clone_dtoh(&out[1])?, s.clone_dtoh(&out[2])?]))
    }

    /// Per (sample, probe) row: (‖Hv‖², vᵀHv) with Hv by forward-over-reverse on the
    /// device, the twin of Mlp::input_hvp; probes drawn on the device from Philox.
    pub fn curvature_hvp(&self, m: &Mlp, x: &[f32], y: &[i64], probes: usize, probe_seed: u64, first_global: u64) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.stream();
        let blas = self.blas()?;
        let rows = y.len();
        let (c, d, layers) = (m.classes(), m.input_dim(), m.layers());
        let tp = rows * probes;
        let (w, b) = self.upload_model(m)?;
        let x_dev = s.clone_htod(x)?;
        let fw = self.forward_device(&blas, m, &w, &b, &x_dev, rows)?;
        let (r32, p32, c32, d32) = (rows as u32, probes as u32, c as u32, d as u32);
        // Primal backward, keeping g_{a,l} for the σ'' term.
        let y_dev = s.clone_htod(y)?;
        let mut g = s.alloc_zeros::<f32>(rows * c)?;
        launch!(self, self.function("curvature", "softmax_grad")?, elems(rows * c), &fw.probs, &y_dev, &mut g, &r32, &c32);
        let scale = self.function("curvature", "scale_by_sample")?;
        let one = 1u32;
        let mut ga_hidden: Vec<Option<CudaSlice<f32>>> = (0..layers).map(|_| None).collect();
        for l in (1..layers).rev() {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut ga = s.alloc_zeros::<f32>(rows * fan_in)?;
            gemm_rm(&blas, &g, false, &w[l], false, (rows, out, fan_in), 0.0f32, &mut ga)?;
            let mut next = s.alloc_zeros::<f32>(rows * fan_in)?;
            let n32 = fan_in as u32;
            launch!(self, scale, elems(rows * fan_in), &mut next, &ga, &fw.d1[l - 1], &r32, &one, &n32);
            ga_hidden[l - 1] = Some(ga);
            g = next;
        }
        // Tangent forward over rows·probes.
        let mut v = s.alloc_zeros::<f32>(tp * d)?;
        launch!(self, self.function("curvature", "rademacher_rows")?, warps(tp), &mut v, &r32, &p32, &d32, &probe_seed, &first_global);
        let mut zdot: Vec<CudaSlice<f32>> = vec![];
        let mut adot: Option<CudaSlice<f32>> = None;
        for l in 0..layers {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut zd = s.alloc_zeros::<f32>(tp * out)?;
            gemm_rm(&blas, adot.as_ref().unwrap_or(&v), false, &w[l], true, (tp, fan_in, out), 0.0f32, &mut zd)?;
            if l + 1 < layers {
                let mut ad = s.alloc_zeros::<f32>(tp * out)?;
                let n32 = out as u32;
                launch!(self, scale, elems(tp * out), &mut ad, &zd, &fw.d1[l], &r32, &p32, &n32);
                adot = Some(ad);
            }
            zdot.push(zd);
        }
        let mut gdot = s.alloc_zeros::<f32>(tp * c)?;
        let zl = &zdot[layers - 1];
        launch!(self, self.function("curvature", "softmax_tangent")?, warps(tp), &mut gdot, zl, &fw.probs, &r32, &p32, &c32);
        let back = self.function("curvature", "tangent_back")?;
        for l in (0..layers).rev() {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let mut gad = s.alloc_zeros::<f32>(tp * fan_in)?;
            gemm_rm(&blas, &gdot, false, &w[l], false, (tp, out, fan_in), 0.0f32, &mut gad)?;
            if l == 0 {
                gdot = gad;
                break;
            }
            let mut next = s.alloc_zeros::<f32>(tp * fan_in)?;
            let n32 = fan_in as u32;
            let ga = ga_hidden[l - 1].as_ref().unwrap();
            launch!(self, back, elems(tp * fan_in), &mut next, &gad, &zdot[l - 1], ga, &fw.d1[l - 1], &fw.d2[l - 1], &r32, &p32, &n32);
            gdot = next;
        }
        let (mut sq, mut vd) = (s.alloc_zeros::<f32>(tp)?, s.alloc_zeros::<f32>(tp)?);
        let tp32 = tp as u32;
        launch!(self, self.function("curvature", "row_sq_and_dot")?, warps(tp), &gdot, &v, &tp32, &d32, &mut sq, &mut vd);
        Ok((s.clone_dtoh(&sq)?, s.clone_dtoh(&vd)?))
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
            let mut z = self.written_before_read(rows * m.sizes[l + 1])?;
            gemm_rm(&blas, &a, false, &w[l], true, (rows, m.sizes[l], m.sizes[l + 1]), 0.0f32, &mut z)?;
            a = z;
        }
        let mut g = s.alloc_zeros::<f32>(rows * c * c)?;
        for l in (0..m.layers()).rev() {
            let mut ga = self.written_before_read(rows * c * m.sizes[l])?;
            gemm_rm(&blas, &g, false, &w[l], false, (rows * c, m.sizes[l + 1], m.sizes[l]), 0.0f32, &mut ga)?;
            g = ga;
        }
        s.synchronize()?;
        Ok(())
    }


    /// Uploads a training set (rows, d), the model's parameters and the SGD momentum
    /// buffers (zeros for a fresh run) for `GpuTrainer`.
    /// `momentum` holds one buffer per parameter, weights and biases interleaved
    /// (0.weight, 0.bias, 2.weight, …).
    pub fn trainer(&self, m: &Mlp, x: &[f32], d: usize, momentum: &[Vec<f32>]) -> Result<GpuTrainer<'_>> {
        let s = self.stream();
        let (w, b) = self.upload_model(m)?;
        let vw = momentum.iter().step_by(2).map(|v| s.clone_htod(v)).collect::<Result<_, _>>()?;
        let vb = momentum.iter().skip(1).step_by(2).map(|v| s.clone_htod(v)).collect::<Result<_, _>>()?;
        Ok(GpuTrainer { gpu: self, blas: self.blas()?, x: s.clone_htod(x)?, d, w, b, vw, vb })
    }
}

/// SGD on the device: the training set and the parameters stay there between steps.
pub struct GpuTrainer<'a> {
    gpu: &'a CudaBackend,
    blas: CudaBlas,
    x: CudaSlice<f32>,
    d: usize,
    w: Vec<CudaSlice<f32>>,
    b: Vec<CudaSlice<f32>>,
    vw: Vec<CudaSlice<f32>>,
    vb: Vec<CudaSlice<f32>>,
}

impl GpuTrainer<'_> {
    /// One SGD step on training rows `rows` (indices into the uploaded set) with labels
    /// `y`: the mean cross-entropy's gradient, then v ← μv + (g + λw), w ← w − ηv.
    pub fn step(&mut self, m: &Mlp, rows: &[u32], y: &[i64], lr: f32, momentum: f32, wd: f32) -> Result<()> {
        let gpu = self.gpu;
        let s = gpu.stream();
        let bsz = rows.len();
        let (c, layers, d) = (m.classes(), m.layers(), self.d);
        let rows_dev = s.clone_htod(rows)?;
        let mut xb = s.alloc_zeros::<f32>(bsz * d)?;
        let (b32, d32) = (bsz as u32, d as u32);
        launch!(gpu, gpu.function("curvature", "gather_rows")?, elems(bsz * d), &mut xb, &self.x, &rows_dev, &b32, &d32);
        let fw = gpu.forward_device(&self.blas, m, &self.w, &self.b, &xb, bsz)?;
        // Hidden activations are recomputed here from z (forward_device keeps σ', σ'').
        let y_dev = s.clone_htod(y)?;
        let mut g = s.alloc_zeros::<f32>(bsz * c)?;
        let c32 = c as u32;
        launch!(gpu, gpu.function("curvature", "softmax_grad")?, elems(bsz * c), &fw.probs, &y_dev, &mut g, &b32, &c32);
        let (inv, n64) = (1.0f32 / bsz as f32, (bsz * c) as u64);
        launch!(gpu, gpu.function("curvature", "scale_in_place")?, elems(bsz * c), &mut g, &inv, &n64);
        let acts = activations(gpu, m, &fw, bsz)?;
        let one = 1u32;
        for l in (0..layers).rev() {
            let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
            let input = if l == 0 { &xb } else { &acts[l - 1] };
            let mut dw = s.alloc_zeros::<f32>(out * fan_in)?;
            gemm_rm(&self.blas, &g, true, input, false, (out, bsz, fan_in), 0.0f32, &mut dw)?;
            let mut db = s.alloc_zeros::<f32>(out)?;
            let (o32,) = (out as u32,);
            let cfg = LaunchConfig { grid_dim: ((out as u32).div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            launch!(gpu, gpu.function("curvature", "column_sums")?, cfg, &g, &mut db, &b32, &o32);
            if l > 0 {
                let mut ga = s.alloc_zeros::<f32>(bsz * fan_in)?;
                gemm_rm(&self.blas, &g, false, &self.w[l], false, (bsz, out, fan_in), 0.0f32, &mut ga)?;
                let mut next = s.alloc_zeros::<f32>(bsz * fan_in)?;
                let n32 = fan_in as u32;
                launch!(gpu, gpu.function("curvature", "scale_by_sample")?, elems(bsz * fan_in), &mut next, &ga, &fw.d1[l - 1], &b32, &one, &n32);
                g = next;
            }
            let sgd = gpu.function("curvature", "sgd_step")?;
            let (nw, nb) = ((out * fan_in) as u64, out as u64);
            launch!(gpu, sgd, elems(out * fan_in), &mut self.w[l], &dw, &mut self.vw[l], &nw, &lr, &momentum, &wd);
            launch!(gpu, sgd, elems(out), &mut self.b[l], &db, &mut self.vb[l], &nb, &lr, &momentum, &wd);
        }
        Ok(())
    }

    /// Copies the parameters and the momentum buffers back.
    pub fn download(&self, m: &mut Mlp, momentum: &mut [Vec<f32>]) -> Result<()> {
        let s = self.gpu.stream();
        for l in 0..m.layers() {
            m.weights[l] = s.clone_dtoh(&self.w[l])?;
            m.biases[l] = s.clone_dtoh(&self.b[l])?;
            momentum[2 * l] = s.clone_dtoh(&self.vw[l])?;
            momentum[2 * l + 1] = s.clone_dtoh(&self.vb[l])?;
        }
        Ok(())
    }
}

/// σ(z_l) of the hidden layers, recomputed from the forward pass's z.
fn activations(gpu: &CudaBackend, m: &Mlp, fw: &DeviceForward, rows: usize) -> Result<Vec<CudaSlice<f32>>> {
    let s = gpu.stream();
    let act = activation_code(m.activation);
    let f = gpu.function("curvature", "activate")?;
    let mut out = vec![];
    for l in 0..m.layers() - 1 {
        let n = rows * m.sizes[l + 1];
        let mut a = s.alloc_zeros::<f32>(n)?;
        let n64 = n as u64;
        launch!(gpu, f, elems(n), &fw.z[l], &mut a, &n64, &act);
        out.push(a);
    }
    Ok(out)
}
