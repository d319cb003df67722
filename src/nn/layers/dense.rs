//! Linear layers, activations, the residual add, flatten and softmax cross-entropy.
//!
//! linear (PyTorch's nn.Linear, W (out, in)):  z = x·Wᵀ + b; backward g·W to the input,
//!   gᵀ·x and Σg to the parameters; tangent ẋ·Wᵀ. The MLP (nn/mlp.rs) runs its layers
//!   through these same functions.
//! activation σ (relu, gelu, tanh, softplus; `Activation::eval` gives σ, σ′, σ″):
//!   backward σ′(z)·g, tangent σ′(z)·ż.
//! add: y = a + b; backward passes g to both; tangent ȧ + ḃ.
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
    z.data.par_iter_mut().with_min_len(4096).for_each(|v| *v = act.eval(*v).0);
}

/// σ′(z)·g: the backward pass, and (with g = ż) the tangent.
pub fn activation_derivative_times(act: Activation, z: &Tensor, g: &Tensor) -> Tensor {
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
        for act in [Activation::Relu, Activation::Gelu, Activation::Tanh, Activation::Softplus] {
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
                        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
                    }
                };
                let fd = (f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h);
                assert!((d.data[i] as f64 - fd).abs() < 1e-4, "{act:?} at {v}: {} vs {fd}", d.data[i]);
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
}
