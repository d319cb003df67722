//! The optimal (empirical) denoiser D*(x; σ) = Σᵢ wᵢ yᵢ, w = softmax(−‖x − yᵢ‖²/2σ²),
//! on the CPU, streamed over the training set, exact over σ ∈ [0.002, 80].
//!
//! Why two paths: in float32 the GEMM form ‖x‖² + ‖y‖² − 2x·y carries an error of
//! order d·u·‖x‖‖y‖, which at σ = 0.002 (logit scale 1/2σ² = 125 000) moves weights by
//! far more than 1e-4. So a float32 GEMM pass only *screens*: per query it keeps every
//! training point whose distance could be within 2σ²·(ln N + 30) of the nearest, given
//! a rigorous bound on the GEMM's error; those few candidates are then weighed with
//! exact float64 distances, and everything screened out has a total weight below
//! e⁻³⁰ of the largest. When a query's candidates are too many for that to pay (larger
//! σ), it goes to a float64 GEMM pass with an online softmax instead, whose error at
//! σ = 0.002 is still below 2e-5 in any logit.

use super::{exact_sq_dist, f32_dot_error_factor, sq_norm, TrainingSet};
use crate::nn::linalg::gemm_strided;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Weights below e^−(ln N + TAIL) of the largest are dropped; together they weigh at
/// most e^−TAIL of the total.
pub const TAIL: f64 = 30.0;
/// Queries per block: one block per thread, at most MAX_QUERY_BLOCK rows — each block's
/// GEMM packs the whole training chunk again, so fewer, taller blocks pack less.
const MAX_QUERY_BLOCK: usize = 256;

fn query_block(queries: usize) -> usize {
    queries.div_ceil(rayon::current_num_threads().max(1)).clamp(16, MAX_QUERY_BLOCK)
}
const CHUNK: usize = 2048;
/// Points per float32 partial product of the weighted sum (see DenseBlock::absorb).
const PRODUCT_DEPTH: usize = 512;

/// What a call did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Queries resolved from their screened candidates.
    pub screened_queries: usize,
    /// Candidates weighed exactly, over all screened queries.
    pub candidates: usize,
    /// Queries that went to the float64 pass.
    pub dense_queries: usize,
}

pub fn check_sigma(sigma: f64) -> Result<()> {
    if !(sigma > 0.0 && sigma.is_finite()) {
        bail!("σ must be a positive finite number (got {sigma})");
    }
    Ok(())
}

/// D*(x; σ) for each row of `queries` (model space, B×d), on the CPU.
pub fn denoise(train: &TrainingSet, queries: &[f32], sigma: f64) -> Result<(Vec<f32>, Stats)> {
    check_sigma(sigma)?;
    let d = train.dim();
    let b = train.check_queries(queries.len(), "denoiser queries")?;
    let n = train.len();
    let tail = (n as f64).ln() + TAIL;
    let two_s2 = 2.0 * sigma * sigma;
    let kappa = f32_dot_error_factor(d);
    let max_norm = train.max_sq_norm.sqrt();
    // Exact weighing of C candidates costs about 3·C·d scalar float64 operations; the
    // float64 pass 4·N·d at GEMM speed, roughly ten times faster per operation.
    let cap = (n / 12).max(64);

    let per_block = query_block(b);
    let mut blocks: Vec<ScreenBlock> = queries.chunks(per_block * d).map(|x| ScreenBlock::new(x, d, kappa, max_norm, two_s2 * tail, n, cap)).collect();
    let mut yc = Vec::new();
    for r in crate::sched::chunks(0..n, CHUNK) {
        if blocks.iter().all(|b| b.all_dense()) {
            break;
        }
        train.rows(r.clone(), &mut yc);
        let yy: Vec<f64> = yc.chunks_exact(d).map(sq_norm).collect();
        blocks.par_iter_mut().for_each(|blk| blk.absorb(r.start, &yc, &yy, cap));
    }

    let mut out = vec![0f32; b * d];
    let mut stats = Stats::default();
    let mut dense_rows = Vec::new();
    let mut screened = Vec::new();
    for (bi, blk) in blocks.iter_mut().enumerate() {
        for q in 0..blk.rows {
            let row = bi * per_block + q;
            if blk.dense[q] {
                dense_rows.push(row);
            } else {
                let limit = blk.best[q] + blk.window[q];
                let mut c = std::mem::take(&mut blk.candidates[q]);
                c.retain(|&(_, dd)| dd <= limit);
                stats.candidates += c.len();
                screened.push((row, c));
            }
        }
    }
    stats.screened_queries = screened.len();
    let exact: Vec<(usize, Vec<f32>)> = screened
        .into_par_iter()
        .map(|(row, c)| (row, weigh_exactly(train, &queries[row * d..(row + 1) * d], &c, two_s2)))
        .collect();
    for (row, v) in exact {
        out[row * d..(row + 1) * d].copy_from_slice(&v);
    }
    if !dense_rows.is_empty() {
        stats.dense_queries = dense_rows.len();
        let x: Vec<f32> = dense_rows.iter().flat_map(|&r| queries[r * d..(r + 1) * d].iter().copied()).collect();
        let v = dense_f64(train, &x, two_s2, tail);
        for (k, &r) in dense_rows.iter().enumerate() {
            out[r * d..(r + 1) * d].copy_from_slice(&v[k * d..(k + 1) * d]);
        }
    }
    Ok((out, stats))
}

/// The float32 screen of a block of queries.
struct ScreenBlock {
    rows: usize,
    d: usize,
    x: Vec<f32>,
    xx: Vec<f64>,
    /// Smallest screened distance so far, per query.
    best: Vec<f64>,
    /// 2δ + 2σ²·tail: how far above `best` a candidate may screen.
    window: Vec<f64>,
    candidates: Vec<Vec<(u32, f64)>>,
    pruned_at: Vec<usize>,
    dense: Vec<bool>,
    g: Vec<f32>,
}

impl ScreenBlock {
    fn new(x: &[f32], d: usize, kappa: f64, max_norm: f64, softmax_window: f64, n: usize, cap: usize) -> Self {
        let rows = x.len() / d;
        let xx: Vec<f64> = x.chunks_exact(d).map(sq_norm).collect();
        // |fl(x·y) − x·y| ≤ κ·Σ|xⱼyⱼ| ≤ κ‖x‖‖y‖, and the distance carries it twice.
        let window: Vec<f64> = xx.iter().map(|&s| 2.0 * (2.0 * kappa * s.sqrt() * max_norm) + softmax_window).collect();
        // Every training point lies between (‖x‖ − M)₊² and (‖x‖ + M)² from x (M the
        // largest training norm). When that spread fits in the softmax window, every
        // point screens in, so a query with more points than `cap` is dense without
        // screening (the rounding margin of the window covers the computed distances).
        let dense = xx
            .iter()
            .map(|&s| {
                let r = s.sqrt();
                let spread = (r + max_norm).powi(2) - (r - max_norm).max(0.0).powi(2);
                n > cap && spread <= softmax_window
            })
            .collect();
        Self {
            rows,
            d,
            x: x.to_vec(),
            xx,
            best: vec![f64::INFINITY; rows],
            window,
            candidates: vec![Vec::new(); rows],
            pruned_at: vec![0; rows],
            dense,
            g: Vec::new(),
        }
    }

    fn all_dense(&self) -> bool {
        self.dense.iter().all(|&d| d)
    }

    fn absorb(&mut self, start: usize, yc: &[f32], yy: &[f64], cap: usize) {
        if self.all_dense() {
            return;
        }
        let nc = yy.len();
        self.g.resize(self.rows * nc, 0.0);
        crate::nn::linalg::gemm_serial(&self.x, self.rows, self.d, yc, nc, true, false, &mut self.g);
        for q in 0..self.rows {
            if self.dense[q] {
                continue;
            }
            let g = &self.g[q * nc..(q + 1) * nc];
            let (xx, w) = (self.xx[q], self.window[q]);
            let mut best = self.best[q];
            let list = &mut self.candidates[q];
            for (i, (&gi, &yi)) in g.iter().zip(yy).enumerate() {
                let dd = xx + yi - 2.0 * gi as f64;
                if dd <= best + w {
                    best = best.min(dd);
                    list.push(((start + i) as u32, dd));
                }
            }
            self.best[q] = best;
            if list.len() > 2 * self.pruned_at[q] + 256 {
                list.retain(|&(_, dd)| dd <= best + w);
                self.pruned_at[q] = list.len();
            }
            if list.len() > cap {
                self.dense[q] = true;
                *list = Vec::new();
            }
        }
    }
}

/// Σ wᵢyᵢ over the candidates with exact float64 distances.
fn weigh_exactly(train: &TrainingSet, x: &[f32], candidates: &[(u32, f64)], two_s2: f64) -> Vec<f32> {
    let d = x.len();
    let mut y = Vec::with_capacity(d);
    let mut ys = Vec::with_capacity(candidates.len() * d);
    let mut logits = Vec::with_capacity(candidates.len());
    for &(i, _) in candidates {
        train.rows(i as usize..i as usize + 1, &mut y);
        logits.push(-exact_sq_dist(x, &y) / two_s2);
        ys.extend_from_slice(&y);
    }
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut acc = vec![0f64; d];
    let mut total = 0f64;
    for (l, y) in logits.iter().zip(ys.chunks_exact(d)) {
        let w = (l - top).exp();
        total += w;
        acc.iter_mut().zip(y).for_each(|(a, &v)| *a += w * v as f64);
    }
    acc.iter().map(|&a| (a / total) as f32).collect()
}

/// The float64 pass: GEMM-form logits with an online softmax (running max and sum per
/// query), streamed over the training set; the B×N matrix is never held.
pub fn dense_f64(train: &TrainingSet, x: &[f32], two_s2: f64, tail: f64) -> Vec<f32> {
    let d = train.dim();
    let n = train.len();
    let mut blocks: Vec<DenseBlock> = x.chunks(query_block(x.len() / d.max(1)) * d).map(|x| DenseBlock::new(x, d)).collect();
    let (mut yc, mut y64, mut yy) = (Vec::new(), Vec::new(), Vec::new());
    for r in crate::sched::chunks(0..n, CHUNK) {
        train.rows(r, &mut yc);
        y64.resize(yc.len(), 0f64);
        y64.par_chunks_mut(d * 64).zip(yc.par_chunks(d * 64)).for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = v as f64));
        yy.resize(yc.len() / d, 0f64);
        yy.par_iter_mut().zip(yc.par_chunks_exact(d)).for_each(|(o, y)| *o = sq_norm(y));
        blocks.par_iter_mut().for_each(|blk| blk.absorb(&y64, &yc, &yy, two_s2, tail));
    }
    blocks.iter().flat_map(|b| b.finish()).collect()
}

struct DenseBlock {
    rows: usize,
    d: usize,
    x: Vec<f64>,
    max: Vec<f64>,
    sum: Vec<f64>,
    acc: Vec<f64>,
    /// This chunk's logits (float64), then its weights (float32), rows × chunk.
    g: Vec<f64>,
    w: Vec<f32>,
    part: Vec<f32>,
}

/// Logits (2x·yᵢ − ‖yᵢ‖²)/2σ² in place of the dot products, and their largest value.
/// (Plain loops over slices and eight-lane arrays, so that they vectorize.)
#[inline(always)]
fn logits_and_max(g: &mut [f64], yy: &[f64], inv_two_s2: f64) -> f64 {
    for (gi, &yi) in g.iter_mut().zip(yy) {
        *gi = (2.0 * *gi - yi) * inv_two_s2;
    }
    let mut top = [f64::NEG_INFINITY; 8];
    let chunks = g.chunks_exact(8);
    let rest = chunks.remainder().iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for c in chunks {
        for k in 0..8 {
            top[k] = top[k].max(c[k]);
        }
    }
    top.iter().copied().fold(rest, f64::max)
}

/// w = e^(logit − m) for logits within `tail` of m, else 0; returns Σ w in float64 and
/// how many are nonzero. The exponent is taken in float32 (relative error < 3e-7 in
/// each weight, the precision the weighted sum keeps anyway); the logit difference
/// itself is formed in float64.
#[inline(always)]
fn weights_and_sum(g: &[f64], m: f64, tail: f64, w: &mut [f32]) -> (f64, usize) {
    for (wi, &gi) in w.iter_mut().zip(g) {
        let t = gi - m;
        let e = crate::simd::exp_f32(t as f32);
        *wi = if t >= -tail { e } else { 0.0 };
    }
    let mut sums = [0f64; 8];
    let chunks = w.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for c in chunks {
        for k in 0..8 {
            sums[k] += c[k] as f64;
        }
    }
    // e^−tail is far above float32's smallest normal, so kept weights are never 0.
    let nonzero = w.iter().filter(|&&v| v != 0.0).count();
    (sums.iter().sum::<f64>() + rest, nonzero)
}

impl DenseBlock {
    fn new(x: &[f32], d: usize) -> Self {
        let rows = x.len() / d;
        Self {
            rows,
            d,
            x: x.iter().map(|&v| v as f64).collect(),
            max: vec![f64::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: vec![0.0; rows * d],
            g: Vec::new(),
            w: Vec::new(),
            part: vec![0.0; rows * d],
        }
    }

    fn absorb(&mut self, y: &[f64], y32: &[f32], yy: &[f64], two_s2: f64, tail: f64) {
        let (rows, d, nc) = (self.rows, self.d, yy.len());
        self.g.resize(rows * nc, 0.0);
        self.w.resize(rows * nc, 0.0);
        // SAFETY: strides describe the row-major buffers exactly.
        unsafe {
            gemm_strided((rows, d, nc), self.x.as_ptr(), (d as isize, 1), y.as_ptr(), (1, d as isize), false, self.g.as_mut_ptr(), (nc as isize, 1));
        }
        let inv_two_s2 = 1.0 / two_s2;
        let mut nonzero = 0usize;
        for q in 0..rows {
            let g = &mut self.g[q * nc..(q + 1) * nc];
            // Logits up to the per-query constant −‖x‖²/2σ², which cancels.
            let top = crate::simd::dispatch(#[inline(always)] || logits_and_max(g, yy, inv_two_s2));
            let m = self.max[q].max(top);
            if m > self.max[q] {
                let rescale = if self.max[q] == f64::NEG_INFINITY { 0.0 } else { (self.max[q] - m).exp() };
                self.sum[q] *= rescale;
                self.acc[q * d..(q + 1) * d].iter_mut().for_each(|a| *a *= rescale);
                self.max[q] = m;
            }
            let w = &mut self.w[q * nc..(q + 1) * nc];
            let (s, nz) = crate::simd::dispatch(#[inline(always)] || weights_and_sum(g, m, tail, w));
            self.sum[q] += s;
            nonzero += nz;
        }
        if nonzero * 8 > rows * nc {
            // acc += W · Y with the weights (in [0, 1]) and the chunk in float32, summed in
            // float64 every PRODUCT_DEPTH points: a float32 sum of k non-negative-weighted
            // terms errs by at most k·u·Σ wᵢ|yᵢ| (3e-5 relative for k = 512), so the
            // float64 GEMM is kept only for the logits, where it matters.
            for k0 in (0..nc).step_by(PRODUCT_DEPTH) {
                let k = PRODUCT_DEPTH.min(nc - k0);
                // SAFETY: W's columns k0..k0+k (row stride nc) and Y's rows k0..k0+k.
                unsafe {
                    gemm_strided((rows, k, d), self.w.as_ptr().add(k0), (nc as isize, 1), y32.as_ptr().add(k0 * d), (d as isize, 1), false, self.part.as_mut_ptr(), (d as isize, 1));
                }
                self.acc.iter_mut().zip(&self.part).for_each(|(a, &p)| *a += p as f64);
            }
        } else {
            for q in 0..rows {
                let acc = &mut self.acc[q * d..(q + 1) * d];
                for (i, &w) in self.w[q * nc..(q + 1) * nc].iter().enumerate() {
                    if w != 0.0 {
                        let w = w as f64;
                        acc.iter_mut().zip(&y[i * d..(i + 1) * d]).for_each(|(a, &v)| *a += w * v);
                    }
                }
            }
        }
    }

    fn finish(&self) -> Vec<f32> {
        let d = self.d;
        (0..self.rows).flat_map(|q| self.acc[q * d..(q + 1) * d].iter().map(move |&a| (a / self.sum[q]) as f32)).collect()
    }
}
