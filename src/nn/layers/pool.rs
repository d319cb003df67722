//! Pooling over each channel's plane.
//!
//! max-pool k×k, stride s, padding p (padded positions never win): y = x at the
//!   window's argmax, the first in row-major order among ties (PyTorch's CPU rule).
//!   Backward routes g to that argmax; the tangent reads ẋ there (piecewise linear).
//! average pool k×k, stride s (no padding): the mean of the window — linear, so the
//!   tangent is the same map and backward spreads g/k² over the window.
//! global average pool: the mean of the plane, (N, C, H, W) → (N, C).
//! nearest up-sampling by f: y[i, j] = x[⌊i/f⌋, ⌊j/f⌋] — linear, its own tangent;
//!   backward sums g over each f×f block. (The U-Net's down-sampling is the 2×2
//!   average pool: EDM's [1, 1] resampling filters are exactly these two maps.)
//! bilinear up-sampling by f (PyTorch's align_corners = False, edges clamped): linear,
//!   its own tangent; backward is its transpose. Bilinear down-sampling by 2 in the
//!   same convention reads coordinate 2i + ½, the mean of pixels 2i and 2i + 1: the
//!   2×2 average pool again.

use super::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    pub k: usize,
    pub stride: usize,
}

fn out_size(k: usize, stride: usize, pad: usize, h: usize, w: usize, what: &str) -> Result<(usize, usize)> {
    if h + 2 * pad < k || w + 2 * pad < k {
        bail!("a {k}×{k} {what} does not fit a {h}×{w} input");
    }
    Ok(((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1))
}

fn planes(x: &Tensor) -> Result<(usize, usize, usize)> {
    if x.shape.len() != 4 {
        bail!("pooling needs an NCHW batch, got shape {:?}", x.shape);
    }
    Ok((x.shape[0] * x.shape[1], x.shape[2], x.shape[3]))
}

impl MaxPool2d {
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        out_size(self.k, self.stride, self.pad, h, w, "max-pool")
    }

    /// The output and, per output value, the index of its argmax within the plane.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Vec<u32>)> {
        let (p, h, w) = planes(x)?;
        let (ho, wo) = self.out_size(h, w)?;
        let mut out = Tensor::zeros(vec![x.shape[0], x.shape[1], ho, wo]);
        let mut arg = vec![0u32; p * ho * wo];
        out.data.par_chunks_mut(ho * wo).zip(arg.par_chunks_mut(ho * wo)).zip(x.data.par_chunks(h * w)).for_each(|((o, a), plane)| {
            for i in 0..ho {
                for j in 0..wo {
                    let (mut best, mut at) = (f32::NEG_INFINITY, u32::MAX);
                    for u in 0..self.k {
                        let y = (self.stride * i + u) as isize - self.pad as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for v in 0..self.k {
                            let xx = (self.stride * j + v) as isize - self.pad as isize;
                            if xx < 0 || xx >= w as isize {
                                continue;
                            }
                            let idx = y as usize * w + xx as usize;
                            // Strictly greater: the first of equal values stays (NaN never wins
                            // over a number, but a window of NaN keeps its first NaN).
                            if plane[idx] > best || at == u32::MAX {
                                best = plane[idx];
                                at = idx as u32;
                            }
                        }
                    }
                    o[i * wo + j] = best;
                    a[i * wo + j] = at;
                }
            }
        });
        Ok((out, arg))
    }

    pub fn backward(&self, x_shape: &[usize], gy: &Tensor, arg: &[u32]) -> Tensor {
        let (h, w) = (x_shape[2], x_shape[3]);
        let per = gy.shape[2] * gy.shape[3];
        let mut gx = Tensor::zeros(x_shape.to_vec());
        gx.data.par_chunks_mut(h * w).zip(gy.data.par_chunks(per)).zip(arg.par_chunks(per)).for_each(|((g, gs), a)| {
            for (&v, &i) in gs.iter().zip(a) {
                g[i as usize] += v;
            }
        });
        gx
    }

    pub fn tangent(&self, x_dot: &Tensor, out_shape: &[usize], arg: &[u32]) -> Tensor {
        let (h, w) = (x_dot.shape[2], x_dot.shape[3]);
        let per = out_shape[2] * out_shape[3];
        let mut out = Tensor::zeros(out_shape.to_vec());
        out.data.par_chunks_mut(per).zip(x_dot.data.par_chunks(h * w)).zip(arg.par_chunks(per)).for_each(|((o, xs), a)| {
            o.iter_mut().zip(a).for_each(|(o, &i)| *o = xs[i as usize]);
        });
        out
    }
}

impl AvgPool2d {
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        out_size(self.k, self.stride, 0, h, w, "average pool")
    }

    /// Also its own tangent (it is linear).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w) = planes(x)?;
        let (ho, wo) = self.out_size(h, w)?;
        let scale = 1.0 / (self.k * self.k) as f32;
        let mut out = Tensor::zeros(vec![x.shape[0], x.shape[1], ho, wo]);
        out.data.par_chunks_mut(ho * wo).zip(x.data.par_chunks(h * w)).for_each(|(o, plane)| {
            for i in 0..ho {
                for j in 0..wo {
                    let mut s = 0f32;
                    for u in 0..self.k {
                        let row = &plane[(self.stride * i + u) * w + self.stride * j..][..self.k];
                        s += row.iter().sum::<f32>();
                    }
                    o[i * wo + j] = s * scale;
                }
            }
        });
        Ok(out)
    }

    pub fn backward(&self, x_shape: &[usize], gy: &Tensor) -> Tensor {
        let (h, w) = (x_shape[2], x_shape[3]);
        let (ho, wo) = (gy.shape[2], gy.shape[3]);
        let scale = 1.0 / (self.k * self.k) as f32;
        let mut gx = Tensor::zeros(x_shape.to_vec());
        gx.data.par_chunks_mut(h * w).zip(gy.data.par_chunks(ho * wo)).for_each(|(g, gs)| {
            for i in 0..ho {
                for j in 0..wo {
                    let v = gs[i * wo + j] * scale;
                    for u in 0..self.k {
                        g[(self.stride * i + u) * w + self.stride * j..][..self.k].iter_mut().for_each(|x| *x += v);
                    }
                }
            }
        });
        gx
    }
}

/// (N, C, H, W) → (N, C): the mean of each plane. Also its own tangent.
pub fn global_avg_forward(x: &Tensor) -> Result<Tensor> {
    let (_, h, w) = planes(x)?;
    let scale = 1.0 / (h * w) as f32;
    Ok(Tensor::new(vec![x.shape[0], x.shape[1]], x.data.par_chunks(h * w).map(|p| p.iter().sum::<f32>() * scale).collect()))
}

pub fn global_avg_backward(x_shape: &[usize], gy: &Tensor) -> Tensor {
    let plane = x_shape[2] * x_shape[3];
    let scale = 1.0 / plane as f32;
    let mut gx = Tensor::zeros(x_shape.to_vec());
    gx.data.par_chunks_mut(plane).zip(gy.data.par_iter()).for_each(|(g, &v)| g.fill(v * scale));
    gx
}

/// How up-sampling fills the new pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpMode {
    /// y[i, j] = x[⌊i/f⌋, ⌊j/f⌋].
    Nearest,
    /// PyTorch's `interpolate(mode="bilinear", align_corners=False)`: output pixel i
    /// reads source coordinate (i + ½)/f − ½, clamped at 0, between its two neighbours
    /// (the last pixel repeated past the edge).
    Bilinear,
}

/// Up-sampling by an integer factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upsample {
    pub factor: usize,
    pub mode: UpMode,
}

/// Per output index along one axis of length `n·f`: the two source indices and the
/// weight of the second (bilinear, align_corners = False).
fn bilinear_taps(n: usize, f: usize) -> Vec<(usize, usize, f32)> {
    (0..n * f)
        .map(|i| {
            let src = (((i as f64 + 0.5) / f as f64) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect()
}

impl Upsample {
    pub fn nearest(factor: usize) -> Self {
        Self { factor, mode: UpMode::Nearest }
    }

    /// Also its own tangent (it is linear).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w) = planes(x)?;
        let f = self.factor;
        let (ho, wo) = (h * f, w * f);
        let mut out = Tensor::zeros(vec![x.shape[0], x.shape[1], ho, wo]);
        match self.mode {
            UpMode::Nearest => out.data.par_chunks_mut(ho * wo).zip(x.data.par_chunks(h * w)).for_each(|(o, plane)| {
                for (i, row) in o.chunks_mut(wo).enumerate() {
                    let src = &plane[(i / f) * w..][..w];
                    row.iter_mut().enumerate().for_each(|(j, v)| *v = src[j / f]);
                }
            }),
            UpMode::Bilinear => {
                let (rows, cols) = (bilinear_taps(h, f), bilinear_taps(w, f));
                out.data.par_chunks_mut(ho * wo).zip(x.data.par_chunks(h * w)).for_each(|(o, plane)| {
                    for (row, &(r0, r1, lr)) in o.chunks_mut(wo).zip(&rows) {
                        let (a, b) = (&plane[r0 * w..][..w], &plane[r1 * w..][..w]);
                        for (v, &(c0, c1, lc)) in row.iter_mut().zip(&cols) {
                            let top = a[c0] + lc * (a[c1] - a[c0]);
                            let bottom = b[c0] + lc * (b[c1] - b[c0]);
                            *v = top + lr * (bottom - top);
                        }
                    }
                });
            }
        }
        Ok(out)
    }

    /// The adjoint: each output pixel's gradient back to the source pixels it read, by
    /// the same weights.
    pub fn backward(&self, x_shape: &[usize], gy: &Tensor) -> Tensor {
        let (h, w) = (x_shape[2], x_shape[3]);
        let f = self.factor;
        let wo = w * f;
        let mut gx = Tensor::zeros(x_shape.to_vec());
        match self.mode {
            UpMode::Nearest => gx.data.par_chunks_mut(h * w).zip(gy.data.par_chunks(h * w * f * f)).for_each(|(g, gs)| {
                for (i, row) in gs.chunks(wo).enumerate() {
                    let dst = &mut g[(i / f) * w..][..w];
                    row.iter().enumerate().for_each(|(j, &v)| dst[j / f] += v);
                }
            }),
            UpMode::Bilinear => {
                let (rows, cols) = (bilinear_taps(h, f), bilinear_taps(w, f));
                gx.data.par_chunks_mut(h * w).zip(gy.data.par_chunks(h * w * f * f)).for_each(|(g, gs)| {
                    // Each output row first folded onto the w source columns, then split
                    // between its two source rows.
                    let mut folded = vec![0f32; w];
                    for (row, &(r0, r1, lr)) in gs.chunks(wo).zip(&rows) {
                        folded.fill(0.0);
                        for (&v, &(c0, c1, lc)) in row.iter().zip(&cols) {
                            folded[c0] += (1.0 - lc) * v;
                            folded[c1] += lc * v;
                        }
                        for (k, &v) in folded.iter().enumerate() {
                            g[r0 * w + k] += (1.0 - lr) * v;
                            g[r1 * w + k] += lr * v;
                        }
                    }
                });
            }
        }
        gx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, stream: u64) -> Vec<f32> {
        crate::nn::layers::uniform_values(13, stream, len, -1.0, 1.0)
    }

    #[test]
    fn max_pool_takes_the_first_maximum_and_routes_gradients_there() {
        // Ties: a plane of equal values with one larger, in a 4×4 plane, 2×2 windows.
        #[rustfmt::skip]
        let plane = vec![
            1.0, 1.0, 0.0, 5.0,
            1.0, 1.0, 5.0, 0.0,
            2.0, 3.0, 7.0, 7.0,
            3.0, 2.0, 7.0, 7.0f32,
        ];
        let pool = MaxPool2d { k: 2, stride: 2, pad: 0 };
        let (y, arg) = pool.forward(&Tensor::new(vec![1, 1, 4, 4], plane.clone())).unwrap();
        assert_eq!(y.data, vec![1.0, 5.0, 3.0, 7.0]);
        assert_eq!(arg, vec![0, 3, 9, 10]);
        let g = pool.backward(&[1, 1, 4, 4], &Tensor::new(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]), &arg);
        let mut want = vec![0f32; 16];
        want[0] = 1.0;
        want[3] = 2.0;
        want[9] = 3.0;
        want[10] = 4.0;
        assert_eq!(g.data, want);
        // Padding (torchvision's 3×3/2, p = 1) and the tangent: the derivative of the
        // forward pass where the argmax is unique (random values).
        let pool = MaxPool2d { k: 3, stride: 2, pad: 1 };
        let x = random(2 * 3 * 7 * 6, 1);
        let xt = Tensor::new(vec![2, 3, 7, 6], x.clone());
        let (y, arg) = pool.forward(&xt).unwrap();
        assert_eq!(y.shape, vec![2, 3, 4, 3]);
        let xd = random(x.len(), 2);
        let t = pool.tangent(&Tensor::new(xt.shape.clone(), xd.clone()), &y.shape, &arg);
        // Each output is the largest of its window, found directly; the tangent is ẋ
        // there (the derivative of the forward pass wherever the maximum is unique).
        for s in 0..6 {
            for i in 0..4 {
                for j in 0..3 {
                    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
                    for u in 0..3 {
                        for v in 0..3 {
                            let (yy, xx) = ((2 * i + u) as isize - 1, (2 * j + v) as isize - 1);
                            if yy >= 0 && yy < 7 && xx >= 0 && xx < 6 {
                                let idx = s * 42 + yy as usize * 6 + xx as usize;
                                if x[idx] > best {
                                    (best, at) = (x[idx], idx);
                                }
                            }
                        }
                    }
                    assert_eq!(y.data[s * 12 + i * 3 + j], best);
                    assert_eq!(t.data[s * 12 + i * 3 + j], xd[at]);
                }
            }
        }
    }

    #[test]
    fn average_pools_are_window_means_and_their_adjoints() {
        let pool = AvgPool2d { k: 2, stride: 2 };
        let x = random(3 * 2 * 6 * 5, 3);
        let xt = Tensor::new(vec![3, 2, 6, 5], x.clone());
        let y = pool.forward(&xt).unwrap();
        assert_eq!(y.shape, vec![3, 2, 3, 2]);
        for p in 0..6 {
            for i in 0..3 {
                for j in 0..2 {
                    let want: f64 = (0..2).flat_map(|u| (0..2).map(move |v| (u, v))).map(|(u, v)| x[p * 30 + (2 * i + u) * 5 + 2 * j + v] as f64).sum::<f64>() / 4.0;
                    assert!((y.data[p * 6 + i * 2 + j] as f64 - want).abs() < 1e-6);
                }
            }
        }
        // Backward is the adjoint: <backward(r), e> = <r, forward(e)>.
        let r = random(y.data.len(), 4);
        let e = random(x.len(), 5);
        let gx = pool.backward(&xt.shape, &Tensor::new(y.shape.clone(), r.clone()));
        let fe = pool.forward(&Tensor::new(xt.shape.clone(), e.clone())).unwrap();
        let lhs: f64 = gx.data.iter().zip(&e).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = r.iter().zip(&fe.data).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-5 * (1.0 + lhs.abs()));
        let g = global_avg_forward(&xt).unwrap();
        assert_eq!(g.shape, vec![3, 2]);
        for p in 0..6 {
            let want = x[p * 30..(p + 1) * 30].iter().map(|&v| v as f64).sum::<f64>() / 30.0;
            assert!((g.data[p] as f64 - want).abs() < 1e-6);
        }
        let r = random(6, 6);
        let gx = global_avg_backward(&xt.shape, &Tensor::new(vec![3, 2], r.clone()));
        let lhs: f64 = gx.data.iter().zip(&e).map(|(a, b)| *a as f64 * *b as f64).sum();
        let fe = global_avg_forward(&Tensor::new(xt.shape.clone(), e)).unwrap();
        let rhs: f64 = r.iter().zip(&fe.data).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-5 * (1.0 + lhs.abs()));
        assert!(AvgPool2d { k: 4, stride: 4 }.forward(&Tensor::zeros(vec![1, 1, 3, 3])).unwrap_err().to_string().contains("does not fit a 3×3"));
    }

    /// Bilinear up-sampling against PyTorch's rule computed in float64 from its
    /// definition (source coordinate, clamping, the four neighbours' weights), for
    /// factors 2 and 3; and its backward as the transpose (⟨up(x), g⟩ = ⟨x, upᵀ(g)⟩).
    #[test]
    fn bilinear_upsampling_follows_the_align_corners_false_rule_and_its_adjoint() {
        for f in [2usize, 3] {
            let (h, w) = (3usize, 4usize);
            let x = Tensor::new(vec![2, 1, h, w], random(2 * h * w, 42 + f as u64));
            let up = Upsample { factor: f, mode: UpMode::Bilinear };
            let y = up.forward(&x).unwrap();
            assert_eq!(y.shape, vec![2, 1, h * f, w * f]);
            let coord = |i: usize, n: usize| -> (usize, usize, f64) {
                let s = ((i as f64 + 0.5) * (n as f64 / (n * f) as f64) - 0.5).max(0.0);
                let lo = s as usize;
                let hi = if lo < n - 1 { lo + 1 } else { lo };
                (lo, hi, s - lo as f64)
            };
            for pl in 0..2 {
                let at = |i: usize, j: usize| x.data[pl * h * w + i * w + j] as f64;
                for i in 0..h * f {
                    for j in 0..w * f {
                        let ((i0, i1, a), (j0, j1, b)) = (coord(i, h), coord(j, w));
                        let want = (1.0 - a) * ((1.0 - b) * at(i0, j0) + b * at(i0, j1)) + a * ((1.0 - b) * at(i1, j0) + b * at(i1, j1));
                        let got = y.data[pl * h * w * f * f + i * w * f + j] as f64;
                        assert!((got - want).abs() < 1e-6, "factor {f}, ({i}, {j}): {got} vs {want}");
                    }
                }
            }
            let g = Tensor::new(y.shape.clone(), random(y.data.len(), 50 + f as u64));
            let gx = up.backward(&x.shape, &g);
            let lhs: f64 = y.data.iter().zip(&g.data).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = x.data.iter().zip(&gx.data).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((lhs - rhs).abs() < 1e-5 * (1.0 + lhs.abs()), "factor {f}: {lhs} vs {rhs}");
        }
        // Down by 2 in the same convention is the 2×2 average pool: coordinate 2i + ½.
        let x = Tensor::new(vec![1, 1, 4, 4], random(16, 60));
        let pooled = AvgPool2d { k: 2, stride: 2 }.forward(&x).unwrap();
        for i in 0..2 {
            for j in 0..2 {
                let s = |k: usize| (k as f64 + 0.5) * 2.0 - 0.5;
                let (r, c) = (s(i), s(j));
                let (r0, c0) = (r.floor() as usize, c.floor() as usize);
                let (a, b) = (r - r0 as f64, c - c0 as f64);
                let v = |p: usize, q: usize| x.data[p * 4 + q] as f64;
                let want = (1.0 - a) * ((1.0 - b) * v(r0, c0) + b * v(r0, c0 + 1)) + a * ((1.0 - b) * v(r0 + 1, c0) + b * v(r0 + 1, c0 + 1));
                assert!((pooled.data[i * 2 + j] as f64 - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn nearest_upsampling_copies_each_pixel_and_its_adjoint_sums_them() {
        let x = Tensor::new(vec![2, 3, 2, 3], random(36, 40));
        let up = Upsample::nearest(2);
        let y = up.forward(&x).unwrap();
        assert_eq!(y.shape, vec![2, 3, 4, 6]);
        for p in 0..6 {
            for i in 0..4 {
                for j in 0..6 {
                    assert_eq!(y.data[p * 24 + i * 6 + j], x.data[p * 6 + (i / 2) * 3 + j / 2]);
                }
            }
        }
        // ⟨up(x), g⟩ = ⟨x, upᵀ(g)⟩.
        let g = Tensor::new(y.shape.clone(), random(y.data.len(), 41));
        let gx = up.backward(&x.shape, &g);
        let lhs: f64 = y.data.iter().zip(&g.data).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = x.data.iter().zip(&gx.data).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-5 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
    }
}
