//! Self-attention over the pixels of a feature map, as EDM's U-Net block computes it
//! from the output of its 1×1 `qkv` convolution (the convolutions before and after are
//! ordinary conv2d nodes; this layer has no parameters):
//!
//!   the input (N, 3C, H, W) is read as EDM's reshape (N·heads, C/heads, 3, L), L = H·W:
//!   channel (h·C/heads + c)·3 + j holds q (j = 0), k (1) or v (2) of head h, channel c.
//!   Per sample and head, with Q, K, V (c_h × L) and c_h = C/heads:
//!     S = QᵀK/√c_h,  W = softmax over each row of S (keys),  A = V·Wᵀ  (c_h × L)
//!   and the output (N, C, H, W) holds A of head h at channels h·c_h + c.
//!
//! Backward from G = ∂L/∂A: ∂W = GᵀV, ∂V = G·W, ∂S = W ⊙ (∂W − rowsum(∂W ⊙ W))/√c_h,
//!   ∂Q = K·∂Sᵀ, ∂K = Q·∂S.
//! Tangent: Ṡ = (Q̇ᵀK + QᵀK̇)/√c_h, Ẇ = W ⊙ (Ṡ − rowsum(W ⊙ Ṡ)), Ȧ = V̇·Wᵀ + V·Ẇᵀ.
//! The attention weights W (L × L per sample and head) are what forward keeps.

use super::Tensor;
use crate::nn::linalg::gemm_serial as gemm;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub heads: usize,
}

/// The softmax weights of every (sample, head), L × L each, rows the queries.
#[derive(Clone, Debug)]
pub struct AttentionWeights(pub Vec<f32>);

/// C (m, n) = Aᵀ·B for A (k, m), B (k, n).
fn at_b(a: &[f32], k: usize, m: usize, b: &[f32], n: usize, c: &mut [f32]) {
    let mut t = vec![0f32; m * k];
    crate::nn::linalg::transpose(a, k, m, &mut t);
    gemm(&t, m, k, b, n, false, false, c);
}

impl Attention {
    /// (channels C of the output, c_h, L) for an input of shape (N, 3C, H, W).
    fn dims(&self, x: &Tensor) -> Result<(usize, usize, usize)> {
        if x.shape.len() != 4 || x.shape[1] % 3 != 0 || self.heads == 0 || (x.shape[1] / 3) % self.heads != 0 {
            bail!("attention with {} heads needs an (N, 3·C, H, W) input with C a multiple of the heads, got {:?}", self.heads, x.shape);
        }
        let c = x.shape[1] / 3;
        Ok((c, c / self.heads, x.shape[2] * x.shape[3]))
    }

    pub fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        vec![input[0], input[1] / 3, input[2], input[3]]
    }

    /// Q, K, V (c_h × L each, contiguous) of sample `s`, head `h` of a qkv tensor.
    fn split(x: &[f32], c: usize, ch: usize, l: usize, s: usize, h: usize) -> [Vec<f32>; 3] {
        let sample = &x[s * 3 * c * l..(s + 1) * 3 * c * l];
        std::array::from_fn(|j| {
            let mut m = vec![0f32; ch * l];
            for i in 0..ch {
                let at = ((h * ch + i) * 3 + j) * l;
                m[i * l..(i + 1) * l].copy_from_slice(&sample[at..at + l]);
            }
            m
        })
    }

    /// Writes [Q, K, V]-shaped pieces back into sample `s`, head `h` of a qkv-shaped buffer.
    fn merge(dst: &mut [f32], ch: usize, l: usize, h: usize, parts: [&[f32]; 3]) {
        for (j, part) in parts.iter().enumerate() {
            for i in 0..ch {
                let at = ((h * ch + i) * 3 + j) * l;
                dst[at..at + l].copy_from_slice(&part[i * l..(i + 1) * l]);
            }
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, AttentionWeights)> {
        let (c, ch, l) = self.dims(x)?;
        let n = x.batch();
        let scale = 1.0 / (ch as f32).sqrt();
        let mut out = vec![0f32; n * c * l];
        let mut weights = vec![0f32; n * self.heads * l * l];
        out.par_chunks_mut(ch * l).zip(weights.par_chunks_mut(l * l)).enumerate().for_each(|(k, (a, w))| {
            let (s, h) = (k / self.heads, k % self.heads);
            let [q, kk, v] = Self::split(&x.data, c, ch, l, s, h);
            at_b(&q, ch, l, &kk, l, w);
            for row in w.chunks_mut(l) {
                let top = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
                let mut sum = 0f64;
                row.iter_mut().for_each(|v| {
                    *v = (*v * scale - top).exp();
                    sum += *v as f64;
                });
                let inv = (1.0 / sum) as f32;
                row.iter_mut().for_each(|v| *v *= inv);
            }
            gemm(&v, ch, l, w, l, true, false, a);
        });
        Ok((Tensor::new(self.out_shape(&x.shape), out), AttentionWeights(weights)))
    }

    /// W ⊙ (D − rowsum(D ⊙ W)) in place of D: the softmax's Jacobian (it is symmetric,
    /// so backward and tangent share it).
    fn through_softmax(w: &[f32], d: &mut [f32], l: usize) {
        for (dr, wr) in d.chunks_mut(l).zip(w.chunks(l)) {
            let dot = dr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
            dr.iter_mut().zip(wr).for_each(|(a, &b)| *a = b * (*a - dot));
        }
    }

    /// ∂L/∂qkv from ∂L/∂output `gy`.
    pub fn backward(&self, x: &Tensor, weights: &AttentionWeights, gy: &Tensor) -> Result<Tensor> {
        let (c, ch, l) = self.dims(x)?;
        let n = x.batch();
        let scale = 1.0 / (ch as f32).sqrt();
        let mut gx = vec![0f32; x.data.len()];
        gx.par_chunks_mut(3 * c * l).enumerate().for_each(|(s, dst)| {
            for h in 0..self.heads {
                let [q, kk, v] = Self::split(&x.data, c, ch, l, s, h);
                let w = &weights.0[(s * self.heads + h) * l * l..][..l * l];
                let g = &gy.data[(s * c + h * ch) * l..][..ch * l];
                let mut dw = vec![0f32; l * l];
                at_b(g, ch, l, &v, l, &mut dw);
                let mut dv = vec![0f32; ch * l];
                gemm(g, ch, l, w, l, false, false, &mut dv);
                Self::through_softmax(w, &mut dw, l);
                dw.iter_mut().for_each(|v| *v *= scale);
                let (mut dq, mut dk) = (vec![0f32; ch * l], vec![0f32; ch * l]);
                gemm(&kk, ch, l, &dw, l, true, false, &mut dq);
                gemm(&q, ch, l, &dw, l, false, false, &mut dk);
                Self::merge(dst, ch, l, h, [&dq, &dk, &dv]);
            }
        });
        debug_assert_eq!(gx.len(), n * 3 * c * l);
        Ok(Tensor::new(x.shape.clone(), gx))
    }

    /// The output's tangent along `x_dot` at the forward pass's input `x`.
    pub fn tangent(&self, x: &Tensor, weights: &AttentionWeights, x_dot: &Tensor) -> Result<Tensor> {
        let (c, ch, l) = self.dims(x)?;
        let n = x.batch();
        let scale = 1.0 / (ch as f32).sqrt();
        let mut out = vec![0f32; n * c * l];
        out.par_chunks_mut(ch * l).enumerate().for_each(|(k, a)| {
            let (s, h) = (k / self.heads, k % self.heads);
            let [q, kk, v] = Self::split(&x.data, c, ch, l, s, h);
            let [qd, kd, vd] = Self::split(&x_dot.data, c, ch, l, s, h);
            let w = &weights.0[k * l * l..][..l * l];
            let mut sd = vec![0f32; l * l];
            at_b(&qd, ch, l, &kk, l, &mut sd);
            let mut more = vec![0f32; l * l];
            at_b(&q, ch, l, &kd, l, &mut more);
            sd.iter_mut().zip(&more).for_each(|(a, &b)| *a = (*a + b) * scale);
            Self::through_softmax(w, &mut sd, l);
            gemm(&vd, ch, l, w, l, true, false, a);
            gemm(&v, ch, l, &sd, l, true, true, a);
        });
        Ok(Tensor::new(self.out_shape(&x.shape), out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in float64 from the definition (EDM's channel layout).
    fn reference(x: &[f64], [n, c3, h, w]: [usize; 4], heads: usize) -> Vec<f64> {
        let (c, l) = (c3 / 3, h * w);
        let ch = c / heads;
        let at = |s: usize, hd: usize, i: usize, j: usize, p: usize| x[((s * c3) + (hd * ch + i) * 3 + j) * l + p];
        let mut out = vec![0f64; n * c * l];
        for s in 0..n {
            for hd in 0..heads {
                for q in 0..l {
                    let scores: Vec<f64> = (0..l).map(|k| (0..ch).map(|i| at(s, hd, i, 0, q) * at(s, hd, i, 1, k)).sum::<f64>() / (ch as f64).sqrt()).collect();
                    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - top).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..ch {
                        out[(s * c + hd * ch + i) * l + q] = (0..l).map(|k| e[k] / z * at(s, hd, i, 2, k)).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition_and_central_differences() {
        for (shape, heads) in [([2, 12, 3, 3], 2), ([1, 6, 2, 4], 1)] {
            let att = Attention { heads };
            let x = crate::nn::layers::uniform_values(5, heads as u64, shape.iter().product(), -1.5, 1.5);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let xt = Tensor::new(shape.to_vec(), x.clone());
            let (y, weights) = att.forward(&xt).unwrap();
            let want = reference(&x64, shape, heads);
            for (g, w) in y.data.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
            }
            let r = crate::nn::layers::uniform_values(6, 0, y.data.len(), -1.0, 1.0);
            let gx = att.backward(&xt, &weights, &Tensor::new(y.shape.clone(), r.clone())).unwrap();
            let loss = |x: &[f64]| -> f64 { reference(x, shape, heads).iter().zip(&r).map(|(a, &b)| a * b as f64).sum() };
            let h = 1e-5;
            for i in 0..x.len() {
                let (mut a, mut b) = (x64.clone(), x64.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (loss(&a) - loss(&b)) / (2.0 * h);
                assert!((gx.data[i] as f64 - fd).abs() < 1e-4 * (1.0 + fd.abs()), "dx[{i}]: {} vs {fd}", gx.data[i]);
            }
            let xd = crate::nn::layers::uniform_values(7, 0, x.len(), -1.0, 1.0);
            let t = att.tangent(&xt, &weights, &Tensor::new(shape.to_vec(), xd.clone())).unwrap();
            let along = |s: f64| reference(&x64.iter().zip(&xd).map(|(&a, &b)| a + s * h * b as f64).collect::<Vec<_>>(), shape, heads);
            let (plus, minus) = (along(1.0), along(-1.0));
            for i in 0..t.data.len() {
                let fd = (plus[i] - minus[i]) / (2.0 * h);
                assert!((t.data[i] as f64 - fd).abs() < 1e-4 * (1.0 + fd.abs()), "tangent {i}: {} vs {fd}", t.data[i]);
            }
        }
        assert!(Attention { heads: 2 }.forward(&Tensor::zeros(vec![1, 9, 2, 2])).is_err(), "3 channels do not split into 2 heads");
    }
}
