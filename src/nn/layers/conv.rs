//! conv2d, NCHW, weight (C_out, C_in, k, k) as PyTorch's nn.Conv2d, stride s, zero
//! padding p, optional bias:
//!
//!   z\[n,o,i,j\] = b\[o\] + Σ_{c,u,v} W\[o,c,u,v\] · x\[n, c, s·i + u − p, s·j + v − p\]
//!
//! im2col lays the receptive fields of a group of G samples side by side as a
//! (C_in·k², G·H_out·W_out) matrix X̃, so z = W·X̃ is one GEMM (W as a (C_out, C_in·k²)
//! matrix) — G is chosen so each GEMM has a few hundred columns, which keeps the weights
//! in cache across samples where the maps are small (ResNet's last stages: 4×4); each
//! sample's product runs as its transpose X̃ᵀ·Wᵀ, positions along the GEMM's long side,
//! straight into the output planes. Backward to the input is the transposed
//! convolution: for stride 1 a forward convolution of g with the flipped, transposed
//! kernel (padding k − 1 − p); for larger strides X̃' = Wᵀ·g, scattered back (col2im).
//! To the weights: the correlation g·X̃ᵀ, summed group by group in order (the same bits
//! for any thread count). The tangent is the same convolution of ẋ without the bias (z is
//! affine in x).

use super::Tensor;
use crate::nn::linalg::{gemm_serial, gemm_strided, transpose};
use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// (C_out, C_in, k, k).
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// Gradients of a convolution's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGrads {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Conv2d {
    /// Kaiming-uniform weights as PyTorch initializes nn.Conv2d (bound 1/√fan_in), from
    /// Philox stream `stream` of `seed`.
    pub fn init(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool, seed: u64, stream: u64) -> Self {
        let fan_in = (c_in * k * k) as f32;
        let bound = 1.0 / fan_in.sqrt();
        let rng = crate::rng::Philox::new(seed, stream);
        let mut weight = vec![0f32; c_out * c_in * k * k];
        rng.fill_uniform(0, &mut weight);
        weight.iter_mut().for_each(|w| *w = (*w * 2.0 - 1.0) * bound);
        let bias = bias.then(|| {
            let mut b = vec![0f32; c_out];
            rng.fill_uniform(weight.len() as u64, &mut b);
            b.iter_mut().for_each(|v| *v = (*v * 2.0 - 1.0) * bound);
            b
        });
        Self { c_in, c_out, k, stride, pad, weight, bias }
    }

    /// Output height and width for an input of (h, w).
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if h + 2 * self.pad < self.k || w + 2 * self.pad < self.k {
            bail!("a {k}×{k} convolution (padding {p}) does not fit a {h}×{w} input", k = self.k, p = self.pad);
        }
        Ok(((h + 2 * self.pad - self.k) / self.stride + 1, (w + 2 * self.pad - self.k) / self.stride + 1))
    }

    /// Rows of the im2col matrix: C_in·k².
    fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Samples per GEMM: at least `COLUMNS` columns where the maps are small, but at
    /// least `GROUPS` groups per batch to share between threads; a function of the
    /// shapes only (never of the thread count), so the gradient sums do not change.
    fn group(&self, n: usize, positions: usize) -> usize {
        const COLUMNS: usize = 512;
        const GROUPS: usize = 8;
        COLUMNS.div_ceil(positions.max(1)).min(n.div_ceil(GROUPS)).max(1)
    }

    /// One sample (C_in, h, w) into its columns of the group's X̃: row r of the
    /// sample's (C_in·k², ho·wo) patch matrix goes to `cols[r·stride + offset ..]`.
    fn im2col(&self, x: &[f32], (h, w): (usize, usize), (ho, wo): (usize, usize), cols: &mut [f32], stride: usize, offset: usize) {
        let (k, s, p) = (self.k, self.stride, self.pad as isize);
        let positions = ho * wo;
        for c in 0..self.c_in {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for u in 0..k {
                for v in 0..k {
                    let row = &mut cols[((c * k + u) * k + v) * stride + offset..][..positions];
                    for i in 0..ho {
                        let y = (s * i + u) as isize - p;
                        let out = &mut row[i * wo..(i + 1) * wo];
                        if y < 0 || y >= h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let line = &plane[y as usize * w..(y as usize + 1) * w];
                        if s == 1 {
                            // A contiguous run of the input line, zeros at the padded ends.
                            let first = (p - v as isize).max(0) as usize;
                            let last = ((w as isize + p - v as isize).min(wo as isize)).max(first as isize) as usize;
                            out[..first].fill(0.0);
                            out[last..].fill(0.0);
                            let src = (first as isize + v as isize - p) as usize;
                            out[first..last].copy_from_slice(&line[src..src + (last - first)]);
                            continue;
                        }
                        for (j, o) in out.iter_mut().enumerate() {
                            let xx = (s * j + v) as isize - p;
                            *o = if xx >= 0 && xx < w as isize { line[xx as usize] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col`: adds the sample's columns of X̃' back onto its
    /// (C_in, h, w) gradient.
    fn col2im(&self, cols: &[f32], (h, w): (usize, usize), (ho, wo): (usize, usize), gx: &mut [f32], stride: usize, offset: usize) {
        let (k, s, p) = (self.k, self.stride, self.pad as isize);
        let positions = ho * wo;
        for c in 0..self.c_in {
            let plane = &mut gx[c * h * w..(c + 1) * h * w];
            for u in 0..k {
                for v in 0..k {
                    let row = &cols[((c * k + u) * k + v) * stride + offset..][..positions];
                    for i in 0..ho {
                        let y = (s * i + u) as isize - p;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        let line = &mut plane[y as usize * w..(y as usize + 1) * w];
                        for (j, &g) in row[i * wo..(i + 1) * wo].iter().enumerate() {
                            let xx = (s * j + v) as isize - p;
                            if xx >= 0 && xx < w as isize {
                                line[xx as usize] += g;
                            }
                        }
                    }
                }
            }
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<((usize, usize), (usize, usize))> {
        if x.shape.len() != 4 || x.shape[1] != self.c_in {
            bail!("a convolution with {} input channels got a batch of shape {:?}", self.c_in, x.shape);
        }
        let (h, w) = (x.shape[2], x.shape[3]);
        Ok(((h, w), self.out_size(h, w)?))
    }

    /// A 1×1, stride-1, unpadded convolution reads its input as its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Each sample's output, (C_out, P) = W · X̃_s, computed as its transpose
    /// (P, C_out) = X̃_sᵀ · Wᵀ: the positions are the long side the GEMM's tiles run
    /// along, X̃_s is read in place from the group's columns (column `offset`, row
    /// length `columns`) and the result lands in the output planes directly.
    fn product_into(&self, cols: &[f32], columns: usize, offset: usize, positions: usize, out: &mut [f32]) {
        let patch = self.patch();
        debug_assert!(cols.len() >= patch * columns && out.len() == self.c_out * positions && offset + positions <= columns);
        // SAFETY: X̃_sᵀ (P, K) at cols[offset + p + k·columns]; Wᵀ (K, C_out) at
        // weight[k + o·K]; the output (P, C_out) at out[p + o·P]: all inside the slices.
        unsafe {
            gemm_strided(
                (positions, patch, self.c_out),
                cols.as_ptr().add(offset),
                (1, columns as isize),
                self.weight.as_ptr(),
                (1, patch as isize),
                false,
                out.as_mut_ptr(),
                (1, positions as isize),
            );
        }
    }

    fn convolve(&self, x: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
        let ((h, w), (ho, wo)) = self.check_input(x)?;
        let (n, positions, patch) = (x.batch(), ho * wo, self.patch());
        let mut out = Tensor::zeros(vec![n, self.c_out, ho, wo]);
        if n == 0 {
            return Ok(out);
        }
        let (per_in, per_out) = (self.c_in * h * w, self.c_out * positions);
        let g = self.group(n, positions);
        out.data.par_chunks_mut(g * per_out).zip(x.data.par_chunks(g * per_in)).for_each_init(Vec::new, |cols: &mut Vec<f32>, (o, xs)| {
            let samples = xs.len() / per_in;
            let columns = samples * positions;
            let src: &[f32] = if self.pointwise() && samples == 1 {
                xs
            } else {
                cols.resize(patch * columns, 0.0);
                for (s, sample) in xs.chunks(per_in).enumerate() {
                    self.im2col(sample, (h, w), (ho, wo), cols, columns, s * positions);
                }
                cols
            };
            for (s, os) in o.chunks_mut(per_out).enumerate() {
                self.product_into(src, columns, s * positions, positions, os);
                if let Some(b) = bias {
                    os.chunks_mut(positions).zip(b).for_each(|(plane, &bc)| plane.iter_mut().for_each(|v| *v += bc));
                }
            }
        });
        Ok(out)
    }

    /// For stride 1: the convolution whose forward pass is this one's input gradient —
    /// C_in outputs from C_out inputs, the kernel transposed and flipped, padding k−1−p
    /// (the same size back). None where that does not hold (strides, p ≥ k).
    fn transposed(&self) -> Option<Conv2d> {
        if self.stride != 1 || self.pad >= self.k {
            return None;
        }
        let (k, ci, co) = (self.k, self.c_in, self.c_out);
        let mut weight = vec![0f32; self.weight.len()];
        for o in 0..co {
            for c in 0..ci {
                for u in 0..k {
                    for v in 0..k {
                        weight[((c * co + o) * k + (k - 1 - u)) * k + (k - 1 - v)] = self.weight[((o * ci + c) * k + u) * k + v];
                    }
                }
            }
        }
        Some(Conv2d { c_in: co, c_out: ci, k, stride: 1, pad: k - 1 - self.pad, weight, bias: None })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.convolve(x, self.bias.as_deref())
    }

    /// ż = W ⋆ ẋ.
    pub fn tangent(&self, x_dot: &Tensor) -> Result<Tensor> {
        self.convolve(x_dot, None)
    }

    /// Gradients of Σ gy ⊙ z with respect to the input (when `want_input`) and to the
    /// parameters, for the forward pass that read `x`.
    pub fn backward(&self, x: &Tensor, gy: &Tensor, want_input: bool) -> Result<(Option<Tensor>, ConvGrads)> {
        let ((h, w), (ho, wo)) = self.check_input(x)?;
        let (n, positions, patch) = (x.batch(), ho * wo, self.patch());
        if gy.shape != [n, self.c_out, ho, wo] {
            bail!("internal error: conv output gradient of shape {:?}, expected {:?}", gy.shape, [n, self.c_out, ho, wo]);
        }
        // Stride 1: the input gradient is a convolution of gy (its own parallel pass);
        // otherwise Wᵀ·g per group, scattered back by col2im.
        let through = if want_input { self.transposed() } else { None };
        let col2im_input = want_input && through.is_none();
        let mut weight_t = vec![0f32; if col2im_input { patch * self.c_out } else { 0 }];
        if col2im_input {
            transpose(&self.weight, self.c_out, patch, &mut weight_t);
        }
        let (per_in, per_out) = (self.c_in * h * w, self.c_out * positions);
        let mut gx = if col2im_input { vec![0f32; n * per_in] } else { Vec::new() };
        let g = self.group(n, positions);
        let groups = n.div_ceil(g);
        let mut gx_groups: Vec<&mut [f32]> = if col2im_input { gx.chunks_mut(g * per_in).collect() } else { (0..groups).map(|_| &mut [][..]).collect() };
        // Per group: X̃ and g as (K, G·P) and (C_out, G·P); dW += g·X̃ᵀ, X̃' = Wᵀ·g. A group
        // of one sample reads g (and a pointwise convolution's X̃) where they lie.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = gx_groups
            .par_iter_mut()
            .zip(x.data.par_chunks(g * per_in))
            .zip(gy.data.par_chunks(g * per_out))
            .map_init(
                || (Vec::new(), Vec::new()),
                |(cols, grad): &mut (Vec<f32>, Vec<f32>), ((gxg, xg), gg)| {
                    let samples = xg.len() / per_in;
                    let columns = samples * positions;
                    let direct = samples == 1 && self.pointwise();
                    if !direct {
                        cols.resize(patch * columns, 0.0);
                        for (s, sample) in xg.chunks(per_in).enumerate() {
                            self.im2col(sample, (h, w), (ho, wo), cols, columns, s * positions);
                        }
                    }
                    let grad: &[f32] = if samples == 1 {
                        gg
                    } else {
                        grad.resize(self.c_out * columns, 0.0);
                        for (s, gs) in gg.chunks(per_out).enumerate() {
                            for (ch, plane) in gs.chunks(positions).enumerate() {
                                grad[ch * columns + s * positions..][..positions].copy_from_slice(plane);
                            }
                        }
                        grad
                    };
                    let mut dw = vec![0f32; self.c_out * patch];
                    gemm_serial(grad, self.c_out, columns, if direct { xg } else { &cols[..patch * columns] }, patch, true, false, &mut dw);
                    let db: Vec<f32> = grad.chunks(columns).map(|r| r.iter().sum()).collect();
                    if col2im_input {
                        // Strided convolutions only (stride 1 went through `transposed`),
                        // so X̃ is always the im2col copy here.
                        gemm_serial(&weight_t, patch, self.c_out, grad, columns, false, false, &mut cols[..patch * columns]);
                        for (s, gxs) in gxg.chunks_mut(per_in).enumerate() {
                            self.col2im(cols, (h, w), (ho, wo), gxs, columns, s * positions);
                        }
                    }
                    (dw, db)
                },
            )
            .collect();
        let (mut dw, mut db) = (vec![0f32; self.c_out * patch], vec![0f32; self.c_out]);
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let grads = ConvGrads { weight: dw, bias: self.bias.as_ref().map(|_| db) };
        let gx = match through {
            Some(t) => Some(t.convolve(gy, None)?),
            None => want_input.then(|| Tensor::new(x.shape.clone(), gx)),
        };
        Ok((gx, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in float64 loops.
    fn reference(c: &Conv2d, x: &[f64], shape: [usize; 4], with_bias: bool) -> Vec<f64> {
        let [n, ci, h, w] = shape;
        let (ho, wo) = c.out_size(h, w).unwrap();
        let mut out = vec![0f64; n * c.c_out * ho * wo];
        for s in 0..n {
            for o in 0..c.c_out {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut acc = if with_bias { c.bias.as_ref().map_or(0.0, |b| b[o] as f64) } else { 0.0 };
                        for ch in 0..ci {
                            for u in 0..c.k {
                                for v in 0..c.k {
                                    let y = (c.stride * i + u) as isize - c.pad as isize;
                                    let xx = (c.stride * j + v) as isize - c.pad as isize;
                                    if y >= 0 && y < h as isize && xx >= 0 && xx < w as isize {
                                        acc += c.weight[((o * ci + ch) * c.k + u) * c.k + v] as f64 * x[((s * ci + ch) * h + y as usize) * w + xx as usize];
                                    }
                                }
                            }
                        }
                        out[((s * c.c_out + o) * ho + i) * wo + j] = acc;
                    }
                }
            }
        }
        out
    }

    fn random(len: usize, stream: u64) -> Vec<f32> {
        crate::nn::layers::uniform_values(77, stream, len, -1.0, 1.0)
    }

    const CASES: [(usize, usize, usize, usize, usize, bool, usize, usize); 6] = [
        // (c_in, c_out, k, stride, pad, bias, h, w)
        (3, 5, 3, 1, 1, true, 7, 6),
        (2, 4, 3, 2, 1, false, 9, 8),
        (4, 3, 1, 1, 0, false, 5, 5),
        (3, 6, 1, 2, 0, true, 8, 7),
        (1, 2, 5, 1, 2, true, 6, 6),
        (2, 3, 7, 2, 3, false, 11, 10),
    ];

    #[test]
    fn forward_and_tangent_match_the_float64_definition() {
        for (case, &(ci, co, k, s, p, bias, h, w)) in CASES.iter().enumerate() {
            let conv = Conv2d::init(ci, co, k, s, p, bias, 5, case as u64);
            let n = 3;
            let x = random(n * ci * h * w, 100 + case as u64);
            let got = conv.forward(&Tensor::new(vec![n, ci, h, w], x.clone())).unwrap();
            let want = reference(&conv, &x.iter().map(|&v| v as f64).collect::<Vec<_>>(), [n, ci, h, w], true);
            for (g, w) in got.data.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "case {case}: {g} vs {w}");
            }
            // The tangent against central differences of the float64 forward pass.
            let xd = random(x.len(), 200 + case as u64);
            let tangent = conv.tangent(&Tensor::new(vec![n, ci, h, w], xd.clone())).unwrap();
            let hstep = 1e-3;
            let at = |sign: f64| -> Vec<f64> { reference(&conv, &x.iter().zip(&xd).map(|(&a, &b)| a as f64 + sign * hstep * b as f64).collect::<Vec<_>>(), [n, ci, h, w], true) };
            let (plus, minus) = (at(1.0), at(-1.0));
            for (i, &t) in tangent.data.iter().enumerate() {
                let fd = (plus[i] - minus[i]) / (2.0 * hstep);
                assert!((t as f64 - fd).abs() <= 1e-5 * (1.0 + fd.abs()), "case {case} tangent {i}: {t} vs {fd}");
            }
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        for (case, &(ci, co, k, s, p, bias, h, w)) in CASES.iter().enumerate() {
            let conv = Conv2d::init(ci, co, k, s, p, bias, 6, case as u64);
            let n = 2;
            let shape = [n, ci, h, w];
            let x = random(n * ci * h * w, 300 + case as u64);
            let (ho, wo) = conv.out_size(h, w).unwrap();
            let r = random(n * co * ho * wo, 400 + case as u64);
            let (gx, grads) = conv.backward(&Tensor::new(shape.to_vec(), x.clone()), &Tensor::new(vec![n, co, ho, wo], r.clone()), true).unwrap();
            let gx = gx.unwrap();
            // L = Σ r ⊙ conv(x), in float64; the derivative along one coordinate.
            let loss = |c: &Conv2d, x: &[f64]| -> f64 { reference(c, x, shape, true).iter().zip(&r).map(|(a, &b)| a * b as f64).sum() };
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let hstep = 1e-3;
            for i in (0..x.len()).step_by(7) {
                let (mut a, mut b) = (x64.clone(), x64.clone());
                a[i] += hstep;
                b[i] -= hstep;
                let fd = (loss(&conv, &a) - loss(&conv, &b)) / (2.0 * hstep);
                assert!((gx.data[i] as f64 - fd).abs() <= 1e-4 * (1.0 + fd.abs()), "case {case}: dx[{i}] {} vs {fd}", gx.data[i]);
            }
            for i in (0..conv.weight.len()).step_by(5) {
                let mut c2 = conv.clone();
                let w0 = conv.weight[i];
                c2.weight[i] = w0 + hstep as f32;
                let up = loss(&c2, &x64);
                c2.weight[i] = w0 - hstep as f32;
                let down = loss(&c2, &x64);
                let step = (w0 + hstep as f32) as f64 - (w0 - hstep as f32) as f64;
                let fd = (up - down) / step;
                assert!((grads.weight[i] as f64 - fd).abs() <= 1e-3 * (1.0 + fd.abs()), "case {case}: dW[{i}] {} vs {fd}", grads.weight[i]);
            }
            if let Some(db) = &grads.bias {
                for (o, &g) in db.iter().enumerate() {
                    let want: f64 = (0..n).map(|s| r[(s * co + o) * ho * wo..(s * co + o + 1) * ho * wo].iter().map(|&v| v as f64).sum::<f64>()).sum();
                    assert!((g as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "case {case}: db[{o}]");
                }
            }
        }
    }

    #[test]
    fn a_kernel_larger_than_the_padded_input_is_an_error() {
        let conv = Conv2d::init(1, 1, 5, 1, 0, false, 0, 0);
        let e = conv.forward(&Tensor::zeros(vec![1, 1, 3, 3])).unwrap_err();
        assert!(e.to_string().contains("does not fit a 3×3 input"), "{e}");
        let e = conv.forward(&Tensor::zeros(vec![1, 2, 8, 8])).unwrap_err();
        assert!(e.to_string().contains("1 input channels"), "{e}");
    }
}
