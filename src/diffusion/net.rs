//! The trained denoiser's network F (ALGORITHMS.md §3, EDM preconditioning): a residual
//! MLP on the flattened image, conditioned on c_noise = ln(σ)/4 through a positional
//! embedding and, for class-conditional models, on the label through a learned
//! embedding:
//!
//!   t  = [cos(c_noise·f_j), sin(c_noise·f_j)],  f_j = 10000^(−j/(E/2))     (E numbers)
//!   e  = silu(t·M1ᵀ + m1 + onehot(label)·Lᵀ)·M2ᵀ + m2                      (H)
//!   h₀ = x_in·Winᵀ + b_in
//!   h_{b+1} = h_b + silu(silu(h_b)·W1_bᵀ + b1_b + e)·W2_bᵀ + b2_b         (blocks)
//!   F  = silu(h_B)·Woutᵀ + b_out                                          (D)
//!
//! All parameters live in one flat vector (so Adam, the EMA and checkpoints treat them
//! alike); `Layout` names the slices. Rows are samples, matrices row-major.
//!
//! A `Layout` may instead hold a U-Net (`unet:…`, diffusion/unet.rs): `Layout::for_model`
//! builds either, and `init`, `denoise` and the trainer's step dispatch on it.

// Training splits the batch across threads, one slice each, so the products stay serial.
use crate::nn::linalg::{gemm_serial as gemm, gemm_strided};
use crate::rng::Philox;
use anyhow::{bail, Result};

/// C (m, n) = Aᵀ · B for A (k, m), B (k, n), on the calling thread.
fn gemm_at_b(a: &[f32], k: usize, m: usize, b: &[f32], n: usize, c: &mut [f32]) {
    debug_assert!(a.len() == k * m && b.len() == k * n && c.len() == m * n);
    // SAFETY: A read transposed with row stride m; B and C exact.
    unsafe { gemm_strided((m, k, n), a.as_ptr(), (1, m as isize), b.as_ptr(), (n as isize, 1), false, c.as_mut_ptr(), (n as isize, 1)) }
}

pub const EMBED: usize = 64;

/// `resmlp:width=H,blocks=B` (defaults 256 and 3).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetSpec {
    pub width: usize,
    pub blocks: usize,
}

impl NetSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let (kind, opts) = spec.split_once(':').unwrap_or((spec, ""));
        if kind != "resmlp" {
            bail!("model '{spec}': the denoiser network is resmlp[:width=H,blocks=B]");
        }
        let mut s = Self { width: 256, blocks: 3 };
        for kv in opts.split(',').filter(|t| !t.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("model '{spec}': '{kv}' is not key=value"))?;
            let v: usize = v.parse().map_err(|_| anyhow::anyhow!("model '{spec}': {k}={v} is not a whole number"))?;
            match k {
                "width" => s.width = v,
                "blocks" => s.blocks = v,
                _ => bail!("model '{spec}': unknown option '{k}' (width, blocks)"),
            }
        }
        if s.width == 0 {
            bail!("model '{spec}': width must be at least 1");
        }
        Ok(s)
    }
}

/// Where each tensor sits in the flat parameter vector.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dim: usize,
    pub width: usize,
    pub blocks: usize,
    /// Label classes (0: unconditional).
    pub classes: usize,
    pub tensors: Vec<(String, Vec<usize>, usize)>,
    pub total: usize,
    /// The U-Net this layout describes (None: the residual MLP).
    pub unet: Option<Box<super::unet::UNet>>,
}

impl Layout {
    /// The network `--model` names (resmlp:… or unet:…) for samples of `shape`.
    pub fn for_model(model: &str, shape: &[usize], classes: usize, seed: u64) -> Result<Self> {
        let dim = shape.iter().product();
        if !super::unet::is_unet(model) {
            return Ok(Self::new(dim, NetSpec::parse(model)?, classes));
        }
        let spec = super::unet::UNetSpec::parse(model)?;
        let chw: [usize; 3] = match *shape {
            [c, h, w] => [c, h, w],
            [h, w] => [1, h, w],
            _ => bail!("model '{model}': a U-Net needs image samples (C, H, W), but these have shape {shape:?}"),
        };
        let u = super::unet::UNet::new(&spec, chw, classes, seed)?;
        Ok(Self { dim, width: spec.channels, blocks: spec.blocks, classes, tensors: u.tensors.clone(), total: u.total, unet: Some(Box::new(u)) })
    }

    pub fn new(dim: usize, spec: NetSpec, classes: usize) -> Self {
        let h = spec.width;
        let mut tensors = Vec::new();
        let mut at = 0;
        let mut add = |name: String, shape: Vec<usize>| {
            let n: usize = shape.iter().product();
            tensors.push((name, shape, at));
            at += n;
        };
        add("map.0.weight".into(), vec![h, EMBED]);
        add("map.0.bias".into(), vec![h]);
        if classes > 0 {
            add("map.label.weight".into(), vec![h, classes]);
        }
        add("map.1.weight".into(), vec![h, h]);
        add("map.1.bias".into(), vec![h]);
        add("input.weight".into(), vec![h, dim]);
        add("input.bias".into(), vec![h]);
        for b in 0..spec.blocks {
            add(format!("blocks.{b}.0.weight"), vec![h, h]);
            add(format!("blocks.{b}.0.bias"), vec![h]);
            add(format!("blocks.{b}.1.weight"), vec![h, h]);
            add(format!("blocks.{b}.1.bias"), vec![h]);
        }
        add("output.weight".into(), vec![dim, h]);
        add("output.bias".into(), vec![dim]);
        Self { dim, width: h, blocks: spec.blocks, classes, tensors, total: at, unet: None }
    }

    pub fn range(&self, name: &str) -> std::ops::Range<usize> {
        let (_, shape, at) = self.tensors.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("no tensor {name}"));
        *at..*at + shape.iter().product::<usize>()
    }

    /// Parameters drawn as PyTorch's Linear does (uniform ±1/√fan_in), except the
    /// output layer, which starts at zero so that D(x; σ) = c_skip·x at first.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        if let Some(u) = &self.unet {
            // The U-Net was built (and initialized) from the run's seed.
            return u.init();
        }
        let mut p = vec![0f32; self.total];
        let rng = Philox::new(seed, 0x1A17);
        for (name, shape, at) in &self.tensors {
            if name.starts_with("output") {
                continue;
            }
            let fan_in = if shape.len() == 2 { shape[1] } else { self.fan_in_of_bias(name) };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let mut u = vec![0f32; n];
            rng.fill_uniform(*at as u64, &mut u);
            for (o, v) in p[*at..*at + n].iter_mut().zip(u) {
                *o = (2.0 * v - 1.0) * bound;
            }
        }
        p
    }

    fn fan_in_of_bias(&self, name: &str) -> usize {
        let weight = name.replace(".bias", ".weight");
        self.tensors.iter().find(|t| t.0 == weight).map(|t| t.1[1]).unwrap_or(1)
    }

    /// Multiply-adds per sample of one forward pass.
    pub fn macs_per_sample(&self) -> usize {
        if let Some(u) = &self.unet {
            return u.macs_per_sample();
        }
        let h = self.width;
        h * EMBED + h * self.classes.min(1) + h * h + h * self.dim + self.blocks * 2 * h * h + self.dim * h
    }
}

pub fn silu(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

/// The positional embedding of c_noise for each row.
pub fn embedding(c_noise: &[f32]) -> Vec<f32> {
    let half = EMBED / 2;
    let freqs: Vec<f64> = (0..half).map(|j| 10000f64.powf(-(j as f64) / half as f64)).collect();
    sinusoids(c_noise, &freqs, false)
}

/// Per row c: [cos(c·f_j)…, sin(c·f_j)…] (or sines first), 2·|freqs| numbers.
pub fn sinusoids(c_noise: &[f32], freqs: &[f64], sin_first: bool) -> Vec<f32> {
    let half = freqs.len();
    let mut t = vec![0f32; c_noise.len() * 2 * half];
    for (row, &c) in t.chunks_exact_mut(2 * half).zip(c_noise) {
        for (j, &f) in freqs.iter().enumerate() {
            let (s, co) = (c as f64 * f).sin_cos();
            let (first, second) = if sin_first { (s, co) } else { (co, s) };
            row[j] = first as f32;
            row[half + j] = second as f32;
        }
    }
    t
}

/// Everything the backward pass needs from a forward pass.
pub struct Activations {
    rows: usize,
    t: Vec<f32>,
    a1: Vec<f32>,
    /// h_0 … h_B.
    h: Vec<Vec<f32>>,
    /// Pre-activations u_b of each block's inner layer.
    u: Vec<Vec<f32>>,
    /// (sigmoid(z), silu(z)) of a1, of each h_b and of each u_b: one exp per
    /// pre-activation, shared by the forward and the backward pass.
    act_a1: (Vec<f32>, Vec<f32>),
    act_h: Vec<(Vec<f32>, Vec<f32>)>,
    act_u: Vec<(Vec<f32>, Vec<f32>)>,
    pub out: Vec<f32>,
}

/// (sigmoid(z), silu(z)) elementwise, through `simd::dispatch` so the loop vectorizes.
/// (The loops are `#[inline(always)]` functions so that they are compiled with the
/// features `dispatch` enables; a closure body the inliner leaves out is not.)
fn activate(z: &[f32]) -> (Vec<f32>, Vec<f32>) {
    #[inline(always)]
    fn body(z: &[f32], sig: &mut [f32], silu: &mut [f32]) {
        for ((s, o), &v) in sig.iter_mut().zip(silu.iter_mut()).zip(z) {
            let g = 1.0 / (1.0 + crate::simd::exp_f32(-v));
            *s = g;
            *o = v * g;
        }
    }
    let (mut sig, mut silu) = (vec![0f32; z.len()], vec![0f32; z.len()]);
    crate::simd::dispatch(#[inline(always)] || body(z, &mut sig, &mut silu));
    (sig, silu)
}

/// g·silu'(z) from z and sigmoid(z), vectorized through `simd::dispatch`.
fn times_silu_grad(g: &[f32], z: &[f32], sig: &[f32]) -> Vec<f32> {
    #[inline(always)]
    fn body(g: &[f32], z: &[f32], sig: &[f32], out: &mut [f32]) {
        for (o, (&g, (&z, &s))) in out.iter_mut().zip(g.iter().zip(z.iter().zip(sig))) {
            *o = g * s * (1.0 + z * (1.0 - s));
        }
    }
    let mut out = vec![0f32; g.len()];
    crate::simd::dispatch(#[inline(always)] || body(g, z, sig, &mut out));
    out
}

fn add_bias(z: &mut [f32], b: &[f32]) {
    for row in z.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, &bi)| *v += bi);
    }
}

/// out = the column sums of g (rows of n).
fn col_sums(g: &[f32], n: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in g.chunks_exact(n) {
        out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
    }
}

/// The network's matrices transposed to (in, out) row-major, at the same offsets as in
/// `p` (biases and the label table left at zero). The forward products read these: the
/// GEMM packs a row-major right operand directly, but transposes an (out, in) one
/// element by element, per call and per thread.
pub fn transposed_weights(l: &Layout, p: &[f32]) -> Vec<f32> {
    let mut t = Vec::new();
    transposed_weights_into(l, p, &mut t);
    t
}

/// `transposed_weights` into a buffer kept between training steps (only the matrices
/// are rewritten).
pub fn transposed_weights_into(l: &Layout, p: &[f32], t: &mut Vec<f32>) {
    use rayon::prelude::*;
    if l.unet.is_some() {
        // The U-Net's convolutions read their weights as they are.
        t.clear();
        return;
    }
    t.resize(p.len(), 0.0);
    let mut jobs = Vec::new();
    let (mut rest, mut pos): (&mut [f32], usize) = (t, 0);
    for (name, shape, at) in &l.tensors {
        let n: usize = shape.iter().product();
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(at - pos);
        let (mine, tail) = tail.split_at_mut(n);
        (rest, pos) = (tail, at + n);
        if shape.len() == 2 && name != "map.label.weight" {
            jobs.push((mine, &p[*at..at + n], shape[0], shape[1]));
        }
    }
    jobs.into_par_iter().for_each(|(dst, src, rows, cols)| crate::nn::linalg::transpose(src, rows, cols, dst));
}

/// F(x_in, c_noise, label) for `rows` rows; labels only for conditional layouts.
pub fn forward(l: &Layout, p: &[f32], x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>) -> Activations {
    forward_with(l, p, &transposed_weights(l, p), x_in, c_noise, labels)
}

/// `forward` with the transposed matrices (`transposed_weights`) at hand, as a training
/// step shares them between its threads.
pub fn forward_with(l: &Layout, p: &[f32], pt: &[f32], x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>) -> Activations {
    let rows = c_noise.len();
    let (h, d) = (l.width, l.dim);
    let w = |name: &str| &p[l.range(name)];
    let wt = |name: &str| &pt[l.range(name)];
    let t = embedding(c_noise);
    let mut a1 = vec![0f32; rows * h];
    gemm(&t, rows, EMBED, wt("map.0.weight"), h, false, false, &mut a1);
    add_bias(&mut a1, w("map.0.bias"));
    if l.classes > 0 {
        let lw = w("map.label.weight");
        for (r, &y) in labels.expect("a conditional network needs labels").iter().enumerate() {
            for j in 0..h {
                a1[r * h + j] += lw[j * l.classes + y as usize];
            }
        }
    }
    let act_a1 = activate(&a1);
    let mut e = vec![0f32; rows * h];
    gemm(&act_a1.1, rows, h, wt("map.1.weight"), h, false, false, &mut e);
    add_bias(&mut e, w("map.1.bias"));
    let mut h0 = vec![0f32; rows * h];
    gemm(x_in, rows, d, wt("input.weight"), h, false, false, &mut h0);
    add_bias(&mut h0, w("input.bias"));
    let mut hs = vec![h0];
    let mut us = Vec::new();
    let (mut act_h, mut act_u) = (Vec::new(), Vec::new());
    for b in 0..l.blocks {
        let hb = hs.last().unwrap();
        let ah = activate(hb);
        let mut u = e.clone();
        gemm(&ah.1, rows, h, wt(&format!("blocks.{b}.0.weight")), h, false, true, &mut u);
        add_bias(&mut u, w(&format!("blocks.{b}.0.bias")));
        let au = activate(&u);
        let mut next = hb.clone();
        gemm(&au.1, rows, h, wt(&format!("blocks.{b}.1.weight")), h, false, true, &mut next);
        add_bias(&mut next, w(&format!("blocks.{b}.1.bias")));
        us.push(u);
        hs.push(next);
        act_h.push(ah);
        act_u.push(au);
    }
    let al = activate(hs.last().unwrap());
    let mut out = vec![0f32; rows * d];
    gemm(&al.1, rows, h, wt("output.weight"), d, false, false, &mut out);
    add_bias(&mut out, w("output.bias"));
    act_h.push(al);
    Activations { rows, t, a1, h: hs, u: us, act_a1, act_h, act_u, out }
}

/// Gradient of Σ dout·F with respect to the parameters, written into `grad` (every
/// entry, so it needs no clearing).
pub fn backward(l: &Layout, p: &[f32], x_in: &[f32], labels: Option<&[i64]>, act: &Activations, dout: &[f32], grad: &mut [f32]) {
    let rows = act.rows;
    let (h, d) = (l.width, l.dim);
    let w = |name: &str| &p[l.range(name)];
    // Output layer.
    let hl = act.h.last().unwrap();
    let (sig_l, s) = act.act_h.last().unwrap();
    gemm_at_b(dout, rows, d, s, h, &mut grad[l.range("output.weight")]);
    col_sums(dout, d, &mut grad[l.range("output.bias")]);
    let mut ds = vec![0f32; rows * h];
    gemm(dout, rows, d, w("output.weight"), h, false, false, &mut ds);
    let mut dh = times_silu_grad(&ds, hl, sig_l);
    let mut de = vec![0f32; rows * h];
    let mut dv = vec![0f32; rows * h];
    let mut dsb = vec![0f32; rows * h];
    for b in (0..l.blocks).rev() {
        let (hb, u) = (&act.h[b], &act.u[b]);
        let (sig_u, v) = &act.act_u[b];
        let (sig_h, sb) = &act.act_h[b];
        gemm_at_b(&dh, rows, h, v, h, &mut grad[l.range(&format!("blocks.{b}.1.weight"))]);
        col_sums(&dh, h, &mut grad[l.range(&format!("blocks.{b}.1.bias"))]);
        gemm(&dh, rows, h, w(&format!("blocks.{b}.1.weight")), h, false, false, &mut dv);
        let du = times_silu_grad(&dv, u, sig_u);
        gemm_at_b(&du, rows, h, sb, h, &mut grad[l.range(&format!("blocks.{b}.0.weight"))]);
        col_sums(&du, h, &mut grad[l.range(&format!("blocks.{b}.0.bias"))]);
        de.iter_mut().zip(&du).for_each(|(a, &g)| *a += g);
        gemm(&du, rows, h, w(&format!("blocks.{b}.0.weight")), h, false, false, &mut dsb);
        let back = times_silu_grad(&dsb, hb, sig_h);
        dh.iter_mut().zip(&back).for_each(|(a, &g)| *a += g);
    }
    gemm_at_b(&dh, rows, h, x_in, d, &mut grad[l.range("input.weight")]);
    col_sums(&dh, h, &mut grad[l.range("input.bias")]);
    // Embedding: e = silu(a1)·M2ᵀ + m2.
    let (sig_a1, sa1) = &act.act_a1;
    gemm_at_b(&de, rows, h, sa1, h, &mut grad[l.range("map.1.weight")]);
    col_sums(&de, h, &mut grad[l.range("map.1.bias")]);
    let mut dsa1 = vec![0f32; rows * h];
    gemm(&de, rows, h, w("map.1.weight"), h, false, false, &mut dsa1);
    let da1 = times_silu_grad(&dsa1, &act.a1, sig_a1);
    gemm_at_b(&da1, rows, h, &act.t, EMBED, &mut grad[l.range("map.0.weight")]);
    col_sums(&da1, h, &mut grad[l.range("map.0.bias")]);
    if l.classes > 0 {
        let r = l.range("map.label.weight");
        let gl = &mut grad[r];
        gl.fill(0.0);
        for (row, &y) in labels.unwrap().iter().enumerate() {
            for j in 0..h {
                gl[j * l.classes + y as usize] += da1[row * h + j];
            }
        }
    }
}

/// EDM's preconditioning at σ with σ_data = 0.5: (c_skip, c_out, c_in, c_noise).
pub fn precondition(sigma: f64) -> (f64, f64, f64, f64) {
    const SD: f64 = 0.5;
    let s2 = sigma * sigma + SD * SD;
    (SD * SD / s2, sigma * SD / s2.sqrt(), 1.0 / s2.sqrt(), sigma.ln() / 4.0)
}

/// EDM's loss weight λ(σ) = (σ² + σ_d²)/(σ·σ_d)².
pub fn loss_weight(sigma: f64) -> f64 {
    const SD: f64 = 0.5;
    (sigma * sigma + SD * SD) / (sigma * SD).powi(2)
}

/// D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise) for rows at one σ, with the
/// parameters `p` and their `transposed_weights` `pt` (made once for all the calls of a
/// sampler or a sweep over σ).
pub fn denoise(l: &Layout, p: &[f32], pt: &[f32], x: &[f32], sigma: f64, labels: Option<&[i64]>) -> Result<Vec<f32>> {
    let rows = x.len() / l.dim;
    let (c_skip, c_out, c_in, c_noise) = precondition(sigma);
    let x_in: Vec<f32> = x.iter().map(|&v| (v as f64 * c_in) as f32).collect();
    let c_noise = vec![c_noise as f32; rows];
    let out = match &l.unet {
        Some(u) => u.forward(p, &x_in, &c_noise, labels)?,
        None => forward_with(l, p, pt, &x_in, &c_noise, labels).out,
    };
    Ok(x.iter().zip(&out).map(|(&xv, &f)| (c_skip * xv as f64 + c_out * f as f64) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_matches_its_definition() {
        let z: Vec<f32> = (-400..400).map(|i| i as f32 * 0.05).collect();
        let (sig, s) = activate(&z);
        for ((&v, &g), &o) in z.iter().zip(&sig).zip(&s) {
            let want = 1.0 / (1.0 + (-(v as f64)).exp());
            assert!((g as f64 - want).abs() < 2e-7, "σ({v}) = {g}, want {want}");
            assert!((o as f64 - v as f64 * want).abs() < 2e-6 * (1.0 + v.abs() as f64));
            assert!((o - silu(v)).abs() <= 1e-6 * (1.0 + v.abs()));
        }
    }
}
