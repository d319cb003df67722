//! BatchNorm2d with PyTorch's conventions (ALGORITHMS.md §4): per channel c,
//!
//!   training:   μ, σ² the batch's mean and biased variance over (N, H, W);
//!               x̂ = (x − μ)/√(σ² + ε), y = γ·x̂ + β; the running averages move by
//!               momentum 0.1 toward μ and the UNBIASED variance σ²·m/(m − 1), m = N·H·W.
//!   evaluation: y = γ·(x − μ_run)/√(σ²_run + ε) + β, an affine map per channel that
//!               `fold_into` merges into the preceding convolution.
//!
//! Backward (training): with g = ∂L/∂y, dβ = Σg, dγ = Σg·x̂ and
//!   ∂L/∂x = γ/(m·√(σ² + ε)) · (m·g − dβ − x̂·dγ)
//! — the same map as the tangent below (it is self-adjoint), so both run through
//! `centred`.
//! Tangent (training): ẏ = γ/√(σ² + ε) · (ẋ − mean ẋ − x̂·mean(ẋ·x̂)); in evaluation
//! mode ẏ = γ/√(σ²_run + ε)·ẋ.
//!
//! GroupNorm (PyTorch's nn.GroupNorm, the U-Net's normalization): per sample and group
//! of C/G channels, μ and the biased σ² over the group's (C/G, H, W) values — one
//! contiguous run of NCHW memory — then y = γ_c·x̂ + β_c. It has no running statistics,
//! so training and evaluation are the same function. With g' = γ_c·∂L/∂y,
//!   ∂L/∂x = (g' − mean g' − x̂·mean(g'·x̂))/√(σ² + ε)   (means over the group)
//! and the tangent is γ_c·(ẋ − mean ẋ − x̂·mean(ẋ·x̂))/√(σ² + ε): the same centring.

use super::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

pub const EPS: f32 = 1e-5;
pub const MOMENTUM: f32 = 0.1;

#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm2d {
    pub channels: usize,
    /// γ (PyTorch: weight).
    pub weight: Vec<f32>,
    /// β (PyTorch: bias).
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

/// What the training-mode passes keep: the batch statistics and x̂.
#[derive(Clone, Debug)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub normalized: Tensor,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NormGrads {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Per-channel sums over (N, H, W) of f(value index within its plane, plane's channel).
fn per_channel(n: usize, c: usize, plane: usize, f: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ch| (0..n).map(|s| (0..plane).map(|i| f((s * c + ch) * plane + i, ch)).sum::<f64>()).sum())
        .collect()
}

impl BatchNorm2d {
    /// γ = 1, β = 0, running mean 0 and variance 1, as PyTorch initializes it.
    pub fn new(channels: usize) -> Self {
        Self { channels, weight: vec![1.0; channels], bias: vec![0.0; channels], running_mean: vec![0.0; channels], running_var: vec![1.0; channels] }
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        if x.shape.len() != 4 || x.shape[1] != self.channels {
            bail!("a BatchNorm2d over {} channels got a batch of shape {:?}", self.channels, x.shape);
        }
        Ok((x.batch(), x.shape[2] * x.shape[3]))
    }

    /// The evaluation map per channel: y = scale·x + shift.
    pub fn eval_affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = (0..self.channels).map(|c| self.weight[c] / (self.running_var[c] + EPS).sqrt()).collect();
        let shift = (0..self.channels).map(|c| self.bias[c] - scale[c] * self.running_mean[c]).collect();
        (scale, shift)
    }

    fn per_channel_map(x: &Tensor, plane: usize, scale: &[f32], shift: Option<&[f32]>) -> Tensor {
        let mut out = x.clone();
        Self::per_channel_map_in_place(&mut out, plane, scale, shift);
        out
    }

    fn per_channel_map_in_place(x: &mut Tensor, plane: usize, scale: &[f32], shift: Option<&[f32]>) {
        let c = scale.len();
        x.data.par_chunks_mut(plane).enumerate().for_each(|(p, v)| {
            let ch = p % c;
            let b = shift.map_or(0.0, |s| s[ch]);
            v.iter_mut().for_each(|x| *x = *x * scale[ch] + b);
        });
    }

    pub fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        self.forward_eval_in_place(&mut y)?;
        Ok(y)
    }

    /// `forward_eval` overwriting its input (inference, where the input is not kept).
    pub fn forward_eval_in_place(&self, x: &mut Tensor) -> Result<()> {
        let (_, plane) = self.check(x)?;
        let (scale, shift) = self.eval_affine();
        Self::per_channel_map_in_place(x, plane, &scale, Some(&shift));
        Ok(())
    }

    pub fn tangent_eval(&self, x_dot: &Tensor) -> Result<Tensor> {
        let (_, plane) = self.check(x_dot)?;
        Ok(Self::per_channel_map(x_dot, plane, &self.eval_affine().0, None))
    }

    pub fn backward_eval(&self, x: &Tensor, gy: &Tensor) -> Result<(Tensor, NormGrads)> {
        let (n, plane) = self.check(x)?;
        let c = self.channels;
        let inv_std: Vec<f32> = self.running_var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
        let gx = Self::per_channel_map(gy, plane, &self.eval_affine().0, None);
        let bias = per_channel(n, c, plane, |i, _| gy.data[i] as f64);
        let weight = per_channel(n, c, plane, |i, ch| gy.data[i] as f64 * ((x.data[i] - self.running_mean[ch]) * inv_std[ch]) as f64);
        Ok((gx, NormGrads { weight: weight.iter().map(|&v| v as f32).collect(), bias: bias.iter().map(|&v| v as f32).collect() }))
    }

    /// Training-mode forward: batch statistics (sums in float64).
    pub fn forward_train(&self, x: &Tensor) -> Result<(Tensor, BatchStats)> {
        let (n, plane) = self.check(x)?;
        let c = self.channels;
        let m = (n * plane) as f64;
        if n * plane < 2 {
            bail!("BatchNorm2d in training mode needs more than one value per channel (got a batch of shape {:?})", x.shape);
        }
        let mean64 = per_channel(n, c, plane, |i, _| x.data[i] as f64).iter().map(|s| s / m).collect::<Vec<_>>();
        let var64 = per_channel(n, c, plane, |i, ch| (x.data[i] as f64 - mean64[ch]).powi(2)).iter().map(|s| s / m).collect::<Vec<_>>();
        let inv_std: Vec<f32> = var64.iter().map(|&v| (1.0 / (v + EPS as f64).sqrt()) as f32).collect();
        let mean: Vec<f32> = mean64.iter().map(|&v| v as f32).collect();
        let mut normalized = x.clone();
        normalized.data.par_chunks_mut(plane).enumerate().for_each(|(p, v)| {
            let ch = p % c;
            v.iter_mut().for_each(|x| *x = (*x - mean[ch]) * inv_std[ch]);
        });
        let y = Self::per_channel_map(&normalized, plane, &self.weight, Some(&self.bias));
        Ok((y, BatchStats { mean, var: var64.iter().map(|&v| v as f32).collect(), inv_std, normalized }))
    }

    /// Moves the running averages toward a training batch's statistics.
    pub fn update_running(&mut self, stats: &BatchStats, values_per_channel: usize) {
        let m = values_per_channel as f32;
        let unbias = if values_per_channel > 1 { m / (m - 1.0) } else { 1.0 };
        for c in 0..self.channels {
            self.running_mean[c] = (1.0 - MOMENTUM) * self.running_mean[c] + MOMENTUM * stats.mean[c];
            self.running_var[c] = (1.0 - MOMENTUM) * self.running_var[c] + MOMENTUM * stats.var[c] * unbias;
        }
    }

    /// γ/√(σ² + ε) · (v − mean v − x̂·mean(v·x̂)) per channel, with Σv and Σv·x̂: the
    /// training-mode tangent of v = ẋ, and the input gradient of v = ∂L/∂y (the map is
    /// self-adjoint), whose Σv and Σv·x̂ are dβ and dγ.
    fn centred(&self, stats: &BatchStats, v: &Tensor) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
        let (n, plane) = self.check(v)?;
        let c = self.channels;
        let m = (n * plane) as f64;
        let xh = &stats.normalized.data;
        let sum = per_channel(n, c, plane, |i, _| v.data[i] as f64);
        let sum_xh = per_channel(n, c, plane, |i, _| v.data[i] as f64 * xh[i] as f64);
        let mut out = v.clone();
        out.data.par_chunks_mut(plane).enumerate().for_each(|(p, vs)| {
            let ch = p % c;
            let k = self.weight[ch] * stats.inv_std[ch];
            let (a, b) = ((sum[ch] / m) as f32, (sum_xh[ch] / m) as f32);
            let xs = &xh[p * plane..(p + 1) * plane];
            vs.iter_mut().zip(xs).for_each(|(d, &xn)| *d = k * (*d - a - xn * b));
        });
        Ok((out, sum, sum_xh))
    }

    pub fn backward_train(&self, stats: &BatchStats, gy: &Tensor) -> Result<(Tensor, NormGrads)> {
        let (gx, db, dg) = self.centred(stats, gy)?;
        Ok((gx, NormGrads { weight: dg.iter().map(|&v| v as f32).collect(), bias: db.iter().map(|&v| v as f32).collect() }))
    }

    pub fn tangent_train(&self, stats: &BatchStats, x_dot: &Tensor) -> Result<Tensor> {
        Ok(self.centred(stats, x_dot)?.0)
    }

    /// Folds the evaluation map into the convolution before it: W'\[o\] = scale\[o\]·W\[o\],
    /// b'\[o\] = scale\[o\]·b\[o\] + shift\[o\].
    pub fn fold_into(&self, conv: &super::conv::Conv2d) -> Result<super::conv::Conv2d> {
        if conv.c_out != self.channels {
            bail!("internal error: folding a BatchNorm2d of {} channels into a convolution with {} outputs", self.channels, conv.c_out);
        }
        let (scale, shift) = self.eval_affine();
        let per_out = conv.weight.len() / conv.c_out;
        let mut folded = conv.clone();
        for o in 0..conv.c_out {
            folded.weight[o * per_out..(o + 1) * per_out].iter_mut().for_each(|w| *w *= scale[o]);
        }
        folded.bias = Some((0..conv.c_out).map(|o| conv.bias.as_ref().map_or(0.0, |b| b[o]) * scale[o] + shift[o]).collect());
        Ok(folded)
    }
}

/// nn.GroupNorm(groups, channels, eps) with its affine γ (weight) and β (bias).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNorm {
    pub groups: usize,
    pub channels: usize,
    pub eps: f32,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// What a GroupNorm forward pass keeps: 1/√(σ² + ε) per (sample, group), and x̂.
#[derive(Clone, Debug)]
pub struct GroupStats {
    pub inv_std: Vec<f32>,
    pub normalized: Tensor,
}

impl GroupNorm {
    /// γ = 1, β = 0 as PyTorch initializes it.
    pub fn new(groups: usize, channels: usize, eps: f32) -> Self {
        Self { groups, channels, eps, weight: vec![1.0; channels], bias: vec![0.0; channels] }
    }

    /// EDM's group count for `channels`: min(32, channels/4), at least 1.
    pub fn edm_groups(channels: usize) -> usize {
        (channels / 4).clamp(1, 32)
    }

    /// (values per group, values per channel plane).
    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        if x.shape.len() != 4 || x.shape[1] != self.channels {
            bail!("a GroupNorm over {} channels got a batch of shape {:?}", self.channels, x.shape);
        }
        if self.groups == 0 || self.channels % self.groups != 0 {
            bail!("a GroupNorm of {} groups cannot split {} channels evenly", self.groups, self.channels);
        }
        let plane = x.shape[2] * x.shape[3];
        Ok((self.channels / self.groups * plane, plane))
    }

    /// Sums in float64 within each group.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, GroupStats)> {
        let (m, plane) = self.check(x)?;
        let per_group = self.channels / self.groups;
        let mut normalized = x.clone();
        let mut y = x.clone();
        let inv_std: Vec<f32> = normalized
            .data
            .par_chunks_mut(m)
            .zip(y.data.par_chunks_mut(m))
            .enumerate()
            .map(|(k, (xh, out))| {
                let mean = xh.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
                let var = xh.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m as f64;
                let inv = (1.0 / (var + self.eps as f64).sqrt()) as f32;
                let (mean, c0) = (mean as f32, (k % self.groups) * per_group);
                for (j, (xs, os)) in xh.chunks_mut(plane).zip(out.chunks_mut(plane)).enumerate() {
                    let (g, b) = (self.weight[c0 + j], self.bias[c0 + j]);
                    for (a, o) in xs.iter_mut().zip(os.iter_mut()) {
                        *a = (*a - mean) * inv;
                        *o = g * *a + b;
                    }
                }
                inv
            })
            .collect();
        Ok((y, GroupStats { inv_std, normalized }))
    }

    /// (v − mean v − x̂·mean(v·x̂))·inv_std per group, for v = γ·g (backward) or ẋ.
    fn centred(&self, stats: &GroupStats, v: &mut Tensor) {
        let m = v.data.len() / stats.inv_std.len();
        v.data.par_chunks_mut(m).zip(stats.normalized.data.par_chunks(m)).zip(&stats.inv_std).for_each(|((vs, xh), &inv)| {
            let a = (vs.iter().map(|&u| u as f64).sum::<f64>() / m as f64) as f32;
            let b = (vs.iter().zip(xh).map(|(&u, &x)| u as f64 * x as f64).sum::<f64>() / m as f64) as f32;
            vs.iter_mut().zip(xh).for_each(|(u, &x)| *u = (*u - a - x * b) * inv);
        });
    }

    /// v ← v·γ_c per channel plane.
    fn times_weight(&self, v: &mut Tensor, plane: usize) {
        let c = self.channels;
        v.data.par_chunks_mut(plane).enumerate().for_each(|(p, vs)| vs.iter_mut().for_each(|u| *u *= self.weight[p % c]));
    }

    pub fn backward(&self, stats: &GroupStats, gy: &Tensor) -> Result<(Tensor, NormGrads)> {
        let (_, plane) = self.check(gy)?;
        let (n, c) = (gy.batch(), self.channels);
        let bias = per_channel(n, c, plane, |i, _| gy.data[i] as f64);
        let weight = per_channel(n, c, plane, |i, _| gy.data[i] as f64 * stats.normalized.data[i] as f64);
        let mut gx = gy.clone();
        self.times_weight(&mut gx, plane);
        self.centred(stats, &mut gx);
        Ok((gx, NormGrads { weight: weight.iter().map(|&v| v as f32).collect(), bias: bias.iter().map(|&v| v as f32).collect() }))
    }

    pub fn tangent(&self, stats: &GroupStats, x_dot: &Tensor) -> Result<Tensor> {
        let (_, plane) = self.check(x_dot)?;
        let mut t = x_dot.clone();
        self.centred(stats, &mut t);
        self.times_weight(&mut t, plane);
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, stream: u64, lo: f32, hi: f32) -> Vec<f32> {
        crate::nn::layers::uniform_values(91, stream, len, lo, hi)
    }

    fn layer(c: usize) -> BatchNorm2d {
        let mut bn = BatchNorm2d::new(c);
        bn.weight = random(c, 1, 0.5, 1.5);
        bn.bias = random(c, 2, -0.5, 0.5);
        bn.running_mean = random(c, 3, -0.3, 0.3);
        bn.running_var = random(c, 4, 0.2, 2.0);
        bn
    }

    /// Training-mode BN in float64 from the definition: (y, batch mean, biased var).
    fn reference_train(bn: &BatchNorm2d, x: &[f64], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let plane = h * w;
        let m = (n * plane) as f64;
        let mut y = vec![0f64; x.len()];
        let (mut means, mut vars) = (vec![], vec![]);
        for ch in 0..c {
            let idx: Vec<usize> = (0..n).flat_map(|s| (0..plane).map(move |i| (s * c + ch) * plane + i)).collect();
            let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / m;
            let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / m;
            for &i in &idx {
                y[i] = bn.weight[ch] as f64 * (x[i] - mean) / (var + EPS as f64).sqrt() + bn.bias[ch] as f64;
            }
            means.push(mean);
            vars.push(var);
        }
        (y, means, vars)
    }

    #[test]
    fn training_mode_matches_the_definition_and_pytorchs_running_averages() {
        let shape = [4, 3, 5, 6];
        let bn = layer(3);
        let x = random(shape.iter().product(), 10, -2.0, 3.0);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (y, stats) = bn.forward_train(&Tensor::new(shape.to_vec(), x.clone())).unwrap();
        let (want, means, vars) = reference_train(&bn, &x64, shape);
        for (g, w) in y.data.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
        let mut updated = bn.clone();
        updated.update_running(&stats, 4 * 30);
        for c in 0..3 {
            let m = 120.0;
            let mean = 0.9 * bn.running_mean[c] as f64 + 0.1 * means[c];
            let var = 0.9 * bn.running_var[c] as f64 + 0.1 * vars[c] * m / (m - 1.0);
            assert!((updated.running_mean[c] as f64 - mean).abs() < 1e-6);
            assert!((updated.running_var[c] as f64 - var).abs() < 1e-5 * var);
        }
        // Backward and tangent against central differences of the float64 definition.
        let r = random(x.len(), 11, -1.0, 1.0);
        let (gx, grads) = bn.backward_train(&stats, &Tensor::new(shape.to_vec(), r.clone())).unwrap();
        let loss = |bn: &BatchNorm2d, x: &[f64]| -> f64 { reference_train(bn, x, shape).0.iter().zip(&r).map(|(a, &b)| a * b as f64).sum() };
        let h = 1e-4;
        for i in (0..x.len()).step_by(11) {
            let (mut a, mut b) = (x64.clone(), x64.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&bn, &a) - loss(&bn, &b)) / (2.0 * h);
            assert!((gx.data[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "dx[{i}]: {} vs {fd}", gx.data[i]);
        }
        for c in 0..3 {
            let mut p = bn.clone();
            p.weight[c] += 1e-2;
            let mut q = bn.clone();
            q.weight[c] -= 1e-2;
            let fd = (loss(&p, &x64) - loss(&q, &x64)) / ((p.weight[c] - q.weight[c]) as f64);
            assert!((grads.weight[c] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "dγ[{c}]");
            let want_b: f64 = (0..4).map(|s| r[(s * 3 + c) * 30..(s * 3 + c + 1) * 30].iter().map(|&v| v as f64).sum::<f64>()).sum();
            assert!((grads.bias[c] as f64 - want_b).abs() < 1e-4 * (1.0 + want_b.abs()), "dβ[{c}]");
        }
        let xd = random(x.len(), 12, -1.0, 1.0);
        let t = bn.tangent_train(&stats, &Tensor::new(shape.to_vec(), xd.clone())).unwrap();
        let at = |s: f64| reference_train(&bn, &x64.iter().zip(&xd).map(|(&a, &b)| a + s * h * b as f64).collect::<Vec<_>>(), shape).0;
        let (plus, minus) = (at(1.0), at(-1.0));
        for i in 0..x.len() {
            let fd = (plus[i] - minus[i]) / (2.0 * h);
            assert!((t.data[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "tangent {i}: {} vs {fd}", t.data[i]);
        }
    }

    #[test]
    fn evaluation_mode_is_the_running_affine_map_and_folds_into_the_convolution() {
        use crate::nn::layers::conv::Conv2d;
        let shape = [2, 4, 6, 5];
        let bn = layer(4);
        let x = random(shape.iter().product(), 20, -2.0, 2.0);
        let xt = Tensor::new(shape.to_vec(), x.clone());
        let y = bn.forward_eval(&xt).unwrap();
        for (i, (&g, &v)) in y.data.iter().zip(&x).enumerate() {
            let c = (i / 30) % 4;
            let want = bn.weight[c] as f64 * (v as f64 - bn.running_mean[c] as f64) / (bn.running_var[c] as f64 + 1e-5).sqrt() + bn.bias[c] as f64;
            assert!((g as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        }
        let r = random(x.len(), 21, -1.0, 1.0);
        let (gx, grads) = bn.backward_eval(&xt, &Tensor::new(shape.to_vec(), r.clone())).unwrap();
        let t = bn.tangent_eval(&Tensor::new(shape.to_vec(), r.clone())).unwrap();
        assert_eq!(gx.data, t.data, "the evaluation map is diagonal: backward and tangent coincide");
        for c in 0..4 {
            let want: f64 = (0..2).flat_map(|s| (0..30).map(move |i| (s * 4 + c) * 30 + i)).map(|i| r[i] as f64 * (x[i] as f64 - bn.running_mean[c] as f64) / (bn.running_var[c] as f64 + 1e-5).sqrt()).sum();
            assert!((grads.weight[c] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()));
        }
        // Folding: conv then BN equals the folded conv.
        for bias in [false, true] {
            let conv = Conv2d::init(3, 4, 3, 1, 1, bias, 3, 0);
            let input = Tensor::new(vec![2, 3, 6, 5], random(2 * 3 * 30, 22, -1.0, 1.0));
            let two_steps = bn.forward_eval(&conv.forward(&input).unwrap()).unwrap();
            let folded = bn.fold_into(&conv).unwrap().forward(&input).unwrap();
            for (a, b) in two_steps.data.iter().zip(&folded.data) {
                assert!((a - b).abs() < 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
            }
        }
    }

    /// GroupNorm in float64 from the definition.
    fn reference_group(gn: &GroupNorm, x: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let (plane, per) = (h * w, c / gn.groups);
        let mut y = vec![0f64; x.len()];
        for s in 0..n {
            for g in 0..gn.groups {
                let idx: Vec<usize> = (g * per..(g + 1) * per).flat_map(|ch| (0..plane).map(move |i| (s * c + ch) * plane + i)).collect();
                let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
                let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
                for &i in &idx {
                    let ch = (i / plane) % c;
                    y[i] = gn.weight[ch] as f64 * (x[i] - mean) / (var + gn.eps as f64).sqrt() + gn.bias[ch] as f64;
                }
            }
        }
        y
    }

    #[test]
    fn group_norm_matches_the_definition_and_central_differences() {
        let shape = [3, 6, 4, 5];
        let mut gn = GroupNorm::new(3, 6, 1e-6);
        gn.weight = random(6, 30, 0.5, 1.5);
        gn.bias = random(6, 31, -0.5, 0.5);
        let x = random(shape.iter().product(), 32, -2.0, 3.0);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (y, stats) = gn.forward(&Tensor::new(shape.to_vec(), x.clone())).unwrap();
        for (g, w) in y.data.iter().zip(reference_group(&gn, &x64, shape)) {
            assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
        let r = random(x.len(), 33, -1.0, 1.0);
        let (gx, grads) = gn.backward(&stats, &Tensor::new(shape.to_vec(), r.clone())).unwrap();
        let loss = |gn: &GroupNorm, x: &[f64]| -> f64 { reference_group(gn, x, shape).iter().zip(&r).map(|(a, &b)| a * b as f64).sum() };
        let h = 1e-4;
        for i in (0..x.len()).step_by(7) {
            let (mut a, mut b) = (x64.clone(), x64.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&gn, &a) - loss(&gn, &b)) / (2.0 * h);
            assert!((gx.data[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "dx[{i}]: {} vs {fd}", gx.data[i]);
        }
        for c in 0..6 {
            for (which, analytic) in [(0, grads.weight[c]), (1, grads.bias[c])] {
                let shifted = |d: f32| {
                    let mut p = gn.clone();
                    if which == 0 { p.weight[c] += d } else { p.bias[c] += d }
                    loss(&p, &x64)
                };
                let fd = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
                assert!((analytic as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "parameter {which} of channel {c}: {analytic} vs {fd}");
            }
        }
        let xd = random(x.len(), 34, -1.0, 1.0);
        let t = gn.tangent(&stats, &Tensor::new(shape.to_vec(), xd.clone())).unwrap();
        let at = |s: f64| reference_group(&gn, &x64.iter().zip(&xd).map(|(&a, &b)| a + s * h * b as f64).collect::<Vec<_>>(), shape);
        let (plus, minus) = (at(1.0), at(-1.0));
        for i in 0..x.len() {
            let fd = (plus[i] - minus[i]) / (2.0 * h);
            assert!((t.data[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "tangent {i}: {} vs {fd}", t.data[i]);
        }
        assert!(gn.forward(&Tensor::zeros(vec![1, 4, 2, 2])).is_err(), "a batch of the wrong channel count is refused");
        assert_eq!((GroupNorm::edm_groups(3), GroupNorm::edm_groups(64), GroupNorm::edm_groups(256)), (1, 16, 32));
    }
}
