//! Linear layers, activations, the residual add, flatten and softmax cross-entropy.
//!
//! linear (PyTorch's nn.Linear, W (out, in)):  z = x·Wᵀ + b; backward g·W to the input,
//!   gᵀ·x and Σg to the parameters; tangent ẋ·Wᵀ. The MLP (nn/mlp.rs) runs its layers
//!   through these same functions.
//! activation σ (relu, gelu, tanh, softplus; `Activation::eval` gives σ, σ′, σ″):
//!   backward σ′(z)·g, tangent σ′(z)·ż.
//! add: y = a + b; backward passes g to both; tangent ȧ + ḃ. An (N, C) second input
//!   adds to every pixel of its channel (a U-Net block's embedding); its gradient is g
//!   summed over each plane.
//! concat: (N, C1, H, W) and (N, C2, H, W) → (N, C1 + C2, H, W) (the U-Net's skips);
//!   backward splits g.
//! scale: y = s·x. dropout: y = m ⊙ x with m 0 (probability p) or 1/(1 − p), drawn
//!   from Philox per training step; backward and tangent multiply by the same m.
//! softmax cross-entropy per sample: CE = −log softmax(z)_y; ∂CE/∂z = p − e_y.

use super::Tensor;
use crate::nn::linalg::{gemm, gemm_at_b};
use crate::nn::mlp::Activation;
use rayon::prelude::*;

/// (rows, in) → (rows, out): x·Wᵀ (+ b).
pub fn linear_forward(x: &[f32], rows: usize, weight: &[f32], bias: Option<&[f32]>, fan_in: usize, out: usize) -> Vec<f32> {
    let mut z = vec![0f32; rows * out];
    if let Some(b) = bias {
        for r in z.chunks_mut(out) {
            r.copy_from_slice(b);
        }
    }
    gemm(x, rows, fan_in, weight, out, true, bias.is_some(), &mut z);
    z
}

/// (rows, out) → (rows, in): g·W.
pub fn linear_backward_input(g: &[f32], rows: usize, weight: &[f32], fan_in: usize, out: usize) -> Vec<f32> {
    let mut r = vec![0f32; rows * fan_in];
    gemm(g, rows, out, weight, fan_in, false, false, &mut r);
    r
}

/// (dW = gᵀ·x, db = Σ_rows g).
pub fn linear_param_grads(g: &[f32], x: &[f32], rows: usize, fan_in: usize, out: usize) -> (Vec<f32>, Vec<f32>) {
    let mut w = vec![0f32; out * fan_in];
    gemm_at_b(g, rows, out, x, fan_in, &mut w);
    let mut b = vec![0f32; out];
    for r in g.chunks(out) {
        b.iter_mut().zip(r).for_each(|(s, v)| *s += v);
    }
    (w, b)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub fan_in: usize,
    pub out: usize,
    /// (out, in).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Linear {
    /// PyTorch's nn.Linear initialization: U(−1/√in, 1/√in) for weights and bias.
    pub fn init(fan_in: usize, out: usize, seed: u64, stream: u64) -> Self {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let rng = crate::rng::Philox::new(seed, stream);
        let mut weight = vec![0f32; out * fan_in];
        rng.fill_uniform(0, &mut weight);
        weight.iter_mut().for_each(|w| *w = (*w * 2.0 - 1.0) * bound);
        let mut bias = vec![0f32; out];
        rng.fill_uniform(weight.len() as u64, &mut bias);
        bias.iter_mut().for_each(|v| *v = (*v * 2.0 - 1.0) * bound);
        Self { fan_in, out, weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let rows = x.batch();
        Tensor::new(vec![rows, self.out], linear_forward(&x.data, rows, &self.weight, Some(&self.bias), self.fan_in, self.out))
    }

    pub fn tangent(&self, x_dot: &Tensor) -> Tensor {
        let rows = x_dot.batch();
        Tensor::new(vec![rows, self.out], linear_forward(&x_dot.data, rows, &self.weight, None, self.fan_in, self.out))
    }

    /// (∂/∂x when `want_input`, dW, db) of Σ g ⊙ z.
    pub fn backward(&self, x: &Tensor, g: &Tensor, want_input: bool) -> (Option<Tensor>, Vec<f32>, Vec<f32>) {
        let rows = x.batch();
        let (dw, db) = linear_param_grads(&g.data, &x.data, rows, self.fan_in, self.out);
        let gx = want_input.then(|| Tensor::new(x.shape.clone(), linear_backward_input(&g.data, rows, &self.weight, self.fan_in, self.out)));
        (gx, dw, db)
    }
}

pub fn activation_forward(act: Activation, z: &Tensor) -> Tensor {
    let mut y = z.clone();
    activation_in_place(act, &mut y);
    y
}

/// `activation_forward` overwriting its input (inference, where z is not kept).
pub fn activation_in_place(act: Activation, z: &mut Tensor) {
    if act == Activation::Silu {
        // SiLU (the U-Net's) vectorized: σ(z) = z·sigmoid(z) through `simd::exp_f32`.
        #[inline(always)]
        fn body(z: &mut [f32]) {
            z.iter_mut().for_each(|v| *v /= 1.0 + crate::simd::exp_f32(-*v));
        }
        z.data.par_chunks_mut(4096).for_each(|c| crate::simd::dispatch(#[inline(always)] || body(c)));
        return;
    }
    z.data.par_iter_mut().with_min_len(4096).for_each(|v| *v = act.eval(*v).0);
}

/// σ′(z)·g: the backward pass, and (with g = ż) the tangent.
pub fn activation_derivative_times(act: Activation, z: &Tensor, g: &Tensor) -> Tensor {
    if act == Activation::Silu {
        #[inline(always)]
        fn body(z: &[f32], g: &[f32], out: &mut [f32]) {
            for ((o, &v), &gi) in out.iter_mut().zip(z).zip(g) {
                let s = 1.0 / (1.0 + crate::simd::exp_f32(-v));
                *o = gi * s * (1.0 + v * (1.0 - s));
            }
        }
        let mut out = vec![0f32; z.data.len()];
        out.par_chunks_mut(4096).zip(z.data.par_chunks(4096)).zip(g.data.par_chunks(4096)).for_each(|((o, z), g)| crate::simd::dispatch(#[inline(always)] || body(z, g, o)));
        return Tensor::new(z.shape.clone(), out);
    }
    Tensor::new(z.shape.clone(), z.data.par_iter().with_min_len(4096).zip(&g.data).map(|(&v, &gi)| act.eval(v).1 * gi).collect())
}

pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    let mut y = a.clone();
    add_in_place(&mut y, b);
    y
}

/// a += b (the residual add overwriting its first input).
pub fn add_in_place(a: &mut Tensor, b: &Tensor) {
    assert_eq!(a.shape, b.shape, "residual add of shapes {:?} and {:?}", a.shape, b.shape);
    a.data.par_iter_mut().with_min_len(4096).zip(&b.data).for_each(|(x, y)| *x += y);
}

/// a (N, C, H, W) + e (N, C) broadcast over each plane.
pub fn add_per_channel(a: &Tensor, e: &Tensor) -> Tensor {
    let mut y = a.clone();
    add_per_channel_in_place(&mut y, e);
    y
}

pub fn add_per_channel_in_place(a: &mut Tensor, e: &Tensor) {
    let plane = a.shape[2] * a.shape[3];
    assert_eq!(e.data.len() * plane, a.data.len(), "adding (N, C) {:?} to planes of {:?}", e.shape, a.shape);
    a.data.par_chunks_mut(plane).zip(&e.data).for_each(|(p, &v)| p.iter_mut().for_each(|x| *x += v));
}

/// (N, C, H, W) → (N, C): each plane's sum (the adjoint of the broadcast add).
pub fn plane_sums(g: &Tensor) -> Tensor {
    let plane = g.shape[2] * g.shape[3];
    Tensor::new(g.shape[..2].to_vec(), g.data.par_chunks(plane).map(|p| p.iter().map(|&v| v as f64).sum::<f64>() as f32).collect())
}

/// Channel concatenation of two image batches of the same N, H, W.
pub fn concat_channels(a: &Tensor, b: &Tensor) -> Tensor {
    let (n, per_a, per_b) = (a.batch(), a.per_sample(), b.per_sample());
    let mut data = Vec::with_capacity(a.data.len() + b.data.len());
    for s in 0..n {
        data.extend_from_slice(&a.data[s * per_a..(s + 1) * per_a]);
        data.extend_from_slice(&b.data[s * per_b..(s + 1) * per_b]);
    }
    Tensor::new(vec![n, a.shape[1] + b.shape[1], a.shape[2], a.shape[3]], data)
}

/// The adjoint of `concat_channels`: g split after the first input's `channels`.
pub fn split_channels(g: &Tensor, channels: usize) -> (Tensor, Tensor) {
    let (n, plane) = (g.batch(), g.shape[2] * g.shape[3]);
    let (per_a, per) = (channels * plane, g.per_sample());
    let (mut a, mut b) = (Vec::with_capacity(n * per_a), Vec::with_capacity(n * (per - per_a)));
    for row in g.data.chunks(per) {
        a.extend_from_slice(&row[..per_a]);
        b.extend_from_slice(&row[per_a..]);
    }
    (Tensor::new(vec![n, channels, g.shape[2], g.shape[3]], a), Tensor::new(vec![n, g.shape[1] - channels, g.shape[2], g.shape[3]], b))
}

/// y = s·x.
pub fn scale(x: &Tensor, s: f32) -> Tensor {
    Tensor::new(x.shape.clone(), x.data.par_iter().with_min_len(4096).map(|&v| v * s).collect())
}

/// A dropout mask of `len` values: 0 with probability p, else 1/(1 − p), from Philox
/// stream (seed, stream).
pub fn dropout_mask(p: f32, seed: u64, stream: u64, len: usize) -> Vec<f32> {
    let mut u = vec![0f32; len];
    crate::rng::Philox::new(seed, stream).fill_uniform(0, &mut u);
    let keep = 1.0 / (1.0 - p);
    u.iter_mut().for_each(|v| *v = if *v < p { 0.0 } else { keep });
    u
}

/// x ⊙ m.
pub fn times_mask(x: &Tensor, mask: &[f32]) -> Tensor {
    Tensor::new(x.shape.clone(), x.data.par_iter().with_min_len(4096).zip(mask).map(|(&v, &m)| v * m).collect())
}

/// Softmax probabilities and per-sample cross-entropy of logits (rows, C).
pub fn softmax_cross_entropy(logits: &Tensor, y: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let c = logits.per_sample();
    let probs = crate::nn::mlp::softmax(&logits.data, c);
    let losses = (0..logits.batch()).map(|r| -(probs[r * c + y[r] as usize].max(1e-30)).ln()).collect();
    (probs, losses)
}

/// The predicted class of one row of logits or probabilities: the first largest.
pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b })
}

/// weight·(p − e_y) per row: the gradient of Σ weight·CE with respect to the logits.
pub fn cross_entropy_grad(probs: &[f32], y: &[i64], c: usize, weight: f32) -> Vec<f32> {
    let mut g = probs.to_vec();
    for (r, &label) in y.iter().enumerate() {
        g[r * c + label as usize] -= 1.0;
    }
    g.iter_mut().for_each(|v| *v *= weight);
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, stream: u64) -> Vec<f32> {
        crate::nn::layers::uniform_values(21, stream, len, -1.0, 1.0)
    }

    #[test]
    fn linear_passes_match_float64_loops() {
        let (rows, fan_in, out) = (5, 7, 4);
        let lin = Linear::init(fan_in, out, 3, 0);
        let x = random(rows * fan_in, 1);
        let xt = Tensor::new(vec![rows, fan_in], x.clone());
        let z = lin.forward(&xt);
        let dot = |r: usize, o: usize, v: &[f32]| -> f64 { (0..fan_in).map(|i| v[r * fan_in + i] as f64 * lin.weight[o * fan_in + i] as f64).sum() };
        for r in 0..rows {
            for o in 0..out {
                assert!((z.data[r * out + o] as f64 - dot(r, o, &x) - lin.bias[o] as f64).abs() < 1e-6);
            }
        }
        let xd = random(rows * fan_in, 2);
        let t = lin.tangent(&Tensor::new(vec![rows, fan_in], xd.clone()));
        for r in 0..rows {
            for o in 0..out {
                assert!((t.data[r * out + o] as f64 - dot(r, o, &xd)).abs() < 1e-6);
            }
        }
        let g = random(rows * out, 3);
        let (gx, dw, db) = lin.backward(&xt, &Tensor::new(vec![rows, out], g.clone()), true);
        let gx = gx.unwrap();
        for r in 0..rows {
            for i in 0..fan_in {
                let want: f64 = (0..out).map(|o| g[r * out + o] as f64 * lin.weight[o * fan_in + i] as f64).sum();
                assert!((gx.data[r * fan_in + i] as f64 - want).abs() < 1e-6);
            }
        }
        for o in 0..out {
            for i in 0..fan_in {
                let want: f64 = (0..rows).map(|r| g[r * out + o] as f64 * x[r * fan_in + i] as f64).sum();
                assert!((dw[o * fan_in + i] as f64 - want).abs() < 1e-6);
            }
            let want: f64 = (0..rows).map(|r| g[r * out + o] as f64).sum();
            assert!((db[o] as f64 - want).abs() < 1e-6);
        }
    }

    #[test]
    fn activation_derivatives_match_central_differences() {
        let z = random(300, 4).iter().map(|v| v * 4.0).collect::<Vec<_>>();
        let zt = Tensor::new(vec![3, 100], z.clone());
        let ones = Tensor::new(vec![3, 100], vec![1.0; 300]);
        for act in [Activation::Relu, Activation::Gelu, Activation::Tanh, Activation::Softplus, Activation::Silu] {
            let d = activation_derivative_times(act, &zt, &ones);
            for (i, &v) in z.iter().enumerate() {
                if act == Activation::Relu && v.abs() < 1e-3 {
                    continue;
                }
                let h = 1e-3f64;
                let f = |x: f64| -> f64 {
                    match act {
                        Activation::Relu => x.max(0.0),
                        Activation::Tanh => x.tanh(),
                        Activation::Softplus => (1.0 + x.exp()).ln(),
                        Activation::Silu => x / (1.0 + (-x).exp()),
                        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
                    }
                };
                let fd = (f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h);
                assert!((d.data[i] as f64 - fd).abs() < 1e-4, "{act:?} at {v}: {} vs {fd}", d.data[i]);
                if act != Activation::Relu {
                    // σ'' against central differences of σ' (float32, so a wider step).
                    let h = 1e-2f32;
                    let fd2 = (act.eval(v + h).1 - act.eval(v - h).1) as f64 / (2.0 * h as f64);
                    assert!((act.eval(v).2 as f64 - fd2).abs() < 2e-3, "{act:?}'' at {v}: {} vs {fd2}", act.eval(v).2);
                }
            }
        }
    }

    #[test]
    fn cross_entropy_gradient_is_probabilities_minus_the_label() {
        let logits = Tensor::new(vec![2, 3], vec![1.0, 2.0, 0.5, -1.0, 0.0, 3.0]);
        let (p, losses) = softmax_cross_entropy(&logits, &[1, 2]);
        for r in 0..2 {
            let row = &logits.data[r * 3..(r + 1) * 3];
            let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            let label = [1, 2][r];
            assert!((losses[r] as f64 - (lse - row[label] as f64)).abs() < 1e-6);
            let g = cross_entropy_grad(&p, &[1, 2], 3, 0.5);
            for k in 0..3 {
                let want = 0.5 * ((row[k] as f64).exp() / lse.exp() - (k == label) as u8 as f64);
                assert!((g[r * 3 + k] as f64 - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn broadcast_add_concat_and_dropout_have_their_adjoints() {
        let a = Tensor::new(vec![2, 3, 2, 2], random(24, 50));
        let e = Tensor::new(vec![2, 3], random(6, 51));
        let y = add_per_channel(&a, &e);
        for i in 0..24 {
            assert_eq!(y.data[i], a.data[i] + e.data[i / 4]);
        }
        let g = Tensor::new(vec![2, 3, 2, 2], random(24, 52));
        let sums = plane_sums(&g);
        for k in 0..6 {
            assert!((sums.data[k] - g.data[k * 4..k * 4 + 4].iter().sum::<f32>()).abs() < 1e-6);
        }
        let b = Tensor::new(vec![2, 1, 2, 2], random(8, 53));
        let cat = concat_channels(&a, &b);
        assert_eq!(cat.shape, vec![2, 4, 2, 2]);
        assert_eq!(&cat.data[12..16], &b.data[..4]);
        assert_eq!(&cat.data[16..28], &a.data[12..24]);
        let (ga, gb) = split_channels(&cat, 3);
        assert_eq!((ga, gb), (a.clone(), b));
        let mask = dropout_mask(0.25, 9, 0, 40_000);
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / 40_000.0;
        assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
        assert!(mask.iter().all(|&m| m == 0.0 || (m - 4.0 / 3.0).abs() < 1e-6));
    }
}
