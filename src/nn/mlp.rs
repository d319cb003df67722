//! Multi-layer perceptrons: z_l = W_l a_{l−1} + b_l, a_l = σ(z_l), softmax
//! cross-entropy on the logits z_L. Forward, backward, and the input-space
//! Hessian-vector product by forward-over-reverse (ALGORITHMS.md §2), all batched:
//! B samples × P probes are B·P rows through the same products.
//!
//! Buffers are row-major with one row per sample (or per sample-probe pair, sample-
//! major: row s·P + j). W_l is (out, in), as in PyTorch's nn.Linear.

use super::layers::dense::{linear_backward_input, linear_forward, linear_param_grads};
use super::linalg::gemm;
use crate::rng::Philox;
use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
    Softplus,
    /// z·sigmoid(z) (PyTorch's SiLU, the U-Net's activation).
    Silu,
}

impl Activation {
    /// relu and other max-of-affine activations have σ'' = 0 almost everywhere.
    pub fn piecewise_linear(self) -> bool {
        self == Activation::Relu
    }

    /// (σ(z), σ'(z), σ''(z)).
    #[inline]
    pub fn eval(self, z: f32) -> (f32, f32, f32) {
        match self {
            Activation::Relu => {
                if z > 0.0 { (z, 1.0, 0.0) } else { (0.0, 0.0, 0.0) }
            }
            Activation::Tanh => {
                let t = z.tanh();
                let d = 1.0 - t * t;
                (t, d, -2.0 * t * d)
            }
            Activation::Softplus => {
                let s = 1.0 / (1.0 + (-z).exp());
                (z.max(0.0) + (-z.abs()).exp().ln_1p(), s, s * (1.0 - s))
            }
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-z).exp());
                let d = s * (1.0 + z * (1.0 - s));
                (z * s, d, s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s)))
            }
            Activation::Gelu => {
                // Exact (erf) GELU, as PyTorch's default: σ = zΦ(z).
                const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
                const INV_SQRT_2PI: f32 = 0.398_942_3;
                let cdf = 0.5 * (1.0 + libm::erff(z * INV_SQRT_2));
                let pdf = INV_SQRT_2PI * (-0.5 * z * z).exp();
                (z * cdf, cdf + z * pdf, pdf * (2.0 - z * z))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Mlp {
    /// Layer sizes, input first: [d, h1, …, C].
    pub sizes: Vec<usize>,
    pub activation: Activation,
    /// weights\[l\]: (sizes\[l+1\], sizes\[l\]).
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<Vec<f32>>,
}

/// Parses `mlp:784-512-512-10,act=relu`.
pub fn parse_spec(spec: &str) -> Result<(Vec<usize>, Activation)> {
    let body = spec.strip_prefix("mlp:").with_context(|| format!("model spec '{spec}' must start with 'mlp:', e.g. mlp:784-512-10,act=relu"))?;
    let mut parts = body.split(',');
    let sizes: Vec<usize> = parts
        .next()
        .unwrap_or("")
        .split('-')
        .map(|s| s.trim().parse::<usize>().ok().filter(|&v| v > 0).with_context(|| format!("model spec '{spec}': '{s}' is not a positive layer size")))
        .collect::<Result<_>>()?;
    if sizes.len() < 2 {
        bail!("model spec '{spec}' needs at least an input and an output size");
    }
    let mut activation = Activation::Relu;
    for opt in parts {
        match opt.split_once('=') {
            Some(("act", a)) => {
                activation = match a {
                    "relu" => Activation::Relu,
                    "gelu" => Activation::Gelu,
                    "tanh" => Activation::Tanh,
                    "softplus" => Activation::Softplus,
                    "silu" => Activation::Silu,
                    _ => bail!("model spec '{spec}': activation '{a}' is not relu, gelu, tanh, softplus or silu"),
                }
            }
            _ => bail!("model spec '{spec}': unknown option '{opt}' (act=relu|gelu|tanh|softplus|silu)"),
        }
    }
    Ok((sizes, activation))
}

/// Everything a forward pass leaves for the backward passes.
pub struct Forward {
    pub rows: usize,
    /// Pre-activations z_1 … z_L.
    pub z: Vec<Vec<f32>>,
    /// Activations a_1 … a_{L−1} (a_0 is the input).
    pub a: Vec<Vec<f32>>,
    /// softmax(z_L).
    pub probs: Vec<f32>,
}

impl Mlp {
    /// PyTorch's nn.Linear initialisation, U(−1/√fan_in, 1/√fan_in) for W and b, from
    /// Philox.
    pub fn init(sizes: &[usize], activation: Activation, seed: u64) -> Self {
        let mut weights = vec![];
        let mut biases = vec![];
        for l in 0..sizes.len() - 1 {
            let (fan_in, out) = (sizes[l], sizes[l + 1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let rng = Philox::new(seed, 0x1417 + l as u64);
            let mut w = vec![0f32; out * fan_in];
            rng.fill_uniform(0, &mut w);
            w.iter_mut().for_each(|v| *v = (2.0 * *v - 1.0) * bound);
            let mut b = vec![0f32; out];
            rng.fill_uniform(w.len() as u64, &mut b);
            b.iter_mut().for_each(|v| *v = (2.0 * *v - 1.0) * bound);
            weights.push(w);
            biases.push(b);
        }
        Self { sizes: sizes.to_vec(), activation, weights, biases }
    }

    pub fn layers(&self) -> usize {
        self.weights.len()
    }

    pub fn input_dim(&self) -> usize {
        self.sizes[0]
    }

    pub fn classes(&self) -> usize {
        *self.sizes.last().unwrap()
    }

    pub fn parameters(&self) -> usize {
        self.weights.iter().map(|w| w.len()).sum::<usize>() + self.biases.iter().map(|b| b.len()).sum::<usize>()
    }

    /// Multiply-adds of one forward pass per sample.
    pub fn macs_per_sample(&self) -> usize {
        self.weights.iter().map(|w| w.len()).sum()
    }

    /// (rows, in) → (rows, out) through layer l: x W_lᵀ + b_l (the linear layer of
    /// nn/layers/dense.rs).
    fn affine(&self, l: usize, x: &[f32], rows: usize, bias: bool) -> Vec<f32> {
        let (fan_in, out) = (self.sizes[l], self.sizes[l + 1]);
        linear_forward(x, rows, &self.weights[l], bias.then_some(&self.biases[l][..]), fan_in, out)
    }

    /// (rows, out) → (rows, in): g W_l.
    fn back(&self, l: usize, g: &[f32], rows: usize) -> Vec<f32> {
        let (fan_in, out) = (self.sizes[l], self.sizes[l + 1]);
        linear_backward_input(g, rows, &self.weights[l], fan_in, out)
    }

    pub fn forward(&self, x: &[f32], rows: usize) -> Forward {
        let mut z = vec![];
        let mut a: Vec<Vec<f32>> = vec![];
        for l in 0..self.layers() {
            let input = if l == 0 { x } else { &a[l - 1] };
            let zl = self.affine(l, input, rows, true);
            if l + 1 < self.layers() {
                a.push(zl.iter().map(|&v| self.activation.eval(v).0).collect());
            }
            z.push(zl);
        }
        let probs = softmax(z.last().unwrap(), self.classes());
        Forward { rows, z, a, probs }
    }

    /// `forward` in blocks of `block` rows, a short last block padded (its last row
    /// repeated) and the padding dropped: every row's values are then computed by
    /// products of the same shape, whatever the number of rows, so a sample's results
    /// do not depend on the batch it came in (shards, batch sizes, Python callers).
    pub fn forward_blocked(&self, x: &[f32], rows: usize, block: usize) -> Forward {
        let d = self.input_dim();
        let mut out = Forward { rows, z: vec![Vec::new(); self.layers()], a: vec![Vec::new(); self.layers() - 1], probs: Vec::new() };
        for s0 in (0..rows).step_by(block.max(1)) {
            let s1 = (s0 + block).min(rows);
            let f = if s1 - s0 == block {
                self.forward(&x[s0 * d..s1 * d], block)
            } else {
                let mut xp = x[s0 * d..s1 * d].to_vec();
                for _ in s1 - s0..block {
                    xp.extend_from_slice(&x[(s1 - 1) * d..s1 * d]);
                }
                self.forward(&xp, block)
            };
            let keep = s1 - s0;
            for (l, zl) in f.z.iter().enumerate() {
                let w = zl.len() / block;
                out.z[l].extend_from_slice(&zl[..keep * w]);
            }
            for (l, al) in f.a.iter().enumerate() {
                let w = al.len() / block;
                out.a[l].extend_from_slice(&al[..keep * w]);
            }
            let c = self.classes();
            out.probs.extend_from_slice(&f.probs[..keep * c]);
        }
        out
    }

    /// Per-sample cross-entropy losses.
    pub fn losses(&self, f: &Forward, y: &[i64]) -> Vec<f32> {
        let c = self.classes();
        (0..f.rows).map(|r| -(f.probs[r * c + y[r] as usize].max(1e-30)).ln()).collect()
    }

    /// Backward pass of Σ_rows weight_r · CE_r. Returns (dL/dz_l for every layer, dL/dx).
    pub fn backward(&self, f: &Forward, y: &[i64], weight: f32) -> (Vec<Vec<f32>>, Vec<f32>) {
        let c = self.classes();
        let mut g = f.probs.clone();
        for r in 0..f.rows {
            g[r * c + y[r] as usize] -= 1.0;
        }
        g.iter_mut().for_each(|v| *v *= weight);
        let mut gz = vec![vec![]; self.layers()];
        let mut grad_x = vec![];
        for l in (0..self.layers()).rev() {
            let ga = self.back(l, &g, f.rows);
            gz[l] = g;
            if l == 0 {
                grad_x = ga;
                break;
            }
            g = ga.iter().zip(&f.z[l - 1]).map(|(&ga, &z)| ga * self.activation.eval(z).1).collect();
        }
        (gz, grad_x)
    }

    /// Parameter gradients from `backward`'s dL/dz: dW_l = gᵀ a_{l−1}, db_l = Σ g.
    pub fn param_grads(&self, f: &Forward, x: &[f32], gz: &[Vec<f32>]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        (0..self.layers())
            .map(|l| {
                let input = if l == 0 { x } else { &f.a[l - 1] };
                linear_param_grads(&gz[l], input, f.rows, self.sizes[l], self.sizes[l + 1])
            })
            .unzip()
    }

    /// Per-sample input Hessian-vector products H_s v for `probes` tangents per sample
    /// (v: (rows·probes, d), sample-major), by forward-over-reverse:
    ///   ż_l = ȧ_{l−1}W_lᵀ, ȧ_l = σ'(z_l)ż_l, ȧ_0 = v;
    ///   ġ_L = p⊙ż_L − p(pᵀż_L); ġ_{a,l−1} = ġ_l W_l;
    ///   ġ_l = σ''(z_l)⊙ż_l⊙g_{a,l} + σ'(z_l)⊙ġ_{a,l};  Hv = ġ_{a,0}.
    /// The primal forward and backward run once per sample; only the tangents run per
    /// probe.
    pub fn input_hvp(&self, x: &[f32], y: &[i64], rows: usize, v: &[f32], probes: usize) -> Vec<f32> {
        let g1 = self.hvp_tangents(x, y, rows, v, probes);
        self.back(0, &g1, rows * probes)
    }

    /// K = W₁W₁ᵀ (n₁, n₁): ‖Hv‖² = ġ₁Kġ₁ᵀ for the tangent ġ₁ at the first layer.
    pub fn first_gram(&self) -> Vec<f32> {
        let (d, n1) = (self.sizes[0], self.sizes[1]);
        let mut k = vec![0f32; n1 * n1];
        gemm(&self.weights[0], n1, d, &self.weights[0], n1, true, false, &mut k);
        k
    }

    /// The tangent of `input_hvp` at the first layer: ġ₁ (rows·probes, n₁), with
    /// Hv = ġ₁W₁.
    fn hvp_tangents(&self, x: &[f32], y: &[i64], rows: usize, v: &[f32], probes: usize) -> Vec<f32> {
        let f = self.forward(x, rows);
        let lcount = self.layers();
        let c = self.classes();
        // Primal backward, keeping g_{a,l} for the σ'' term.
        let mut ga_hidden: Vec<Vec<f32>> = vec![vec![]; lcount];
        let mut g = f.probs.clone();
        for r in 0..rows {
            g[r * c + y[r] as usize] -= 1.0;
        }
        for l in (1..lcount).rev() {
            let ga = self.back(l, &g, rows);
            g = ga.iter().zip(&f.z[l - 1]).map(|(&ga, &z)| ga * self.activation.eval(z).1).collect();
            ga_hidden[l - 1] = ga;
        }
        // Tangent forward over rows·probes.
        let tp = rows * probes;
        let mut zdot: Vec<Vec<f32>> = vec![];
        let mut adot = v.to_vec();
        for l in 0..lcount {
            let zd = self.affine(l, &adot, tp, false);
            if l + 1 < lcount {
                let out = self.sizes[l + 1];
                let d1: Vec<f32> = f.z[l].iter().map(|&z| self.activation.eval(z).1).collect();
                adot = zd.clone();
                for (i, row) in adot.chunks_mut(out).enumerate() {
                    let s = &d1[(i / probes) * out..(i / probes + 1) * out];
                    row.iter_mut().zip(s).for_each(|(t, &g)| *t *= g);
                }
            }
            zdot.push(zd);
        }
        // Output layer: ġ_L = p⊙ż_L − p (pᵀż_L).
        let mut gdot = zdot[lcount - 1].clone();
        for (i, row) in gdot.chunks_mut(c).enumerate() {
            let p = &f.probs[(i / probes) * c..(i / probes + 1) * c];
            let dot: f32 = p.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
            row.iter_mut().zip(p).for_each(|(t, &pp)| *t = pp * (*t - dot));
        }
        for l in (0..lcount).rev() {
            if l == 0 {
                return gdot;
            }
            let gad = self.back(l, &gdot, tp);
            let n = self.sizes[l];
            let (zl, zd, ga) = (&f.z[l - 1], &zdot[l - 1], &ga_hidden[l - 1]);
            let derivs: Vec<(f32, f32)> = zl.iter().map(|&z| { let (_, d1, d2) = self.activation.eval(z); (d1, d2) }).collect();
            gdot = gad;
            let smooth = !self.activation.piecewise_linear();
            for (i, row) in gdot.chunks_mut(n).enumerate() {
                let s = (i / probes) * n;
                let (dv, gav, zdr) = (&derivs[s..s + n], &ga[s..s + n], &zd[i * n..(i + 1) * n]);
                if smooth {
                    for k in 0..n {
                        row[k] = dv[k].1 * zdr[k] * gav[k] + dv[k].0 * row[k];
                    }
                } else {
                    row.iter_mut().zip(dv).for_each(|(t, d)| *t *= d.0);
                }
            }
        }
        unreachable!()
    }

    /// Per-sample input gradients ∇ₓ CE (rows, d).
    pub fn input_grad(&self, x: &[f32], y: &[i64], rows: usize) -> Vec<f32> {
        let f = self.forward(x, rows);
        self.backward(&f, y, 1.0).1
    }
}

pub fn softmax(logits: &[f32], c: usize) -> Vec<f32> {
    let mut p = logits.to_vec();
    softmax_in_place(&mut p, c);
    p
}

/// Each row of `c` logits replaced by its softmax probabilities.
pub fn softmax_in_place(logits: &mut [f32], c: usize) {
    for row in logits.chunks_mut(c) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        row.iter_mut().for_each(|v| {
            *v = (*v - m).exp();
            s += *v;
        });
        row.iter_mut().for_each(|v| *v /= s);
    }
}
