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
//! σ), it goes to a dense pass with an online softmax instead, whose logits come from
//! a float64 GEMM (error at σ = 0.002 still below 2e-5 in any logit) or, for 8-bit data
//! on CPUs with AMX, from exact integer products of the pixels with the query written
//! in 8-bit digits (see `Digits` for its bound).

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
    /// Queries that went to the dense pass.
    pub dense_queries: usize,
    /// Of those, the queries whose dot products came exactly from integer tiles (8-bit
    /// data on a CPU with AMX) rather than from a float64 GEMM.
    pub integer_dots: usize,
    /// Whether the screen's distances came from integer tiles (8-bit data on a CPU with
    /// AMX) rather than from a float32 GEMM.
    pub integer_screen: bool,
}

pub fn check_sigma(sigma: f64) -> Result<()> {
    if !(sigma > 0.0 && sigma.is_finite()) {
        bail!("σ must be a positive finite number (got {sigma})");
    }
    Ok(())
}

/// Below this σ the dense pass's float64 logits (error ∝ 1/σ²) are not trusted: every
/// candidate the screen keeps is weighed exactly instead, however many there are.
pub const DENSE_SIGMA_MIN: f64 = 1e-3;

/// The σ the GPU denoiser is checked over (its float arithmetic is validated against
/// this file's CPU path there); outside it the CPU computes D*.
pub const GPU_SIGMA_RANGE: (f64, f64) = (1e-3, 1e4);

/// Largest norm of a model-space row the float32 screen takes: beyond it its products
/// overflow (model space is [−1, 1]; this admits any sane `--range`).
pub const SCREEN_MAX_NORM: f64 = (1u64 << 40) as f64;

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
    if max_norm > SCREEN_MAX_NORM {
        bail!(
            "{}: a training sample has norm {max_norm:.3e} in model space, beyond the denoiser's float32 screen ({SCREEN_MAX_NORM:e}); the denoiser works in [−1, 1]: map the data there with --range minmax or --range LO,HI",
            train.x.origin
        );
    }
    // Exact weighing of C candidates costs about 3·C·d scalar float64 operations; the
    // float64 pass 4·N·d at GEMM speed, roughly ten times faster per operation.
    let cap = if sigma < DENSE_SIGMA_MIN { n } else { (n / 12).max(64) };

    let per_block = query_block(b);
    // Non-finite queries keep the float paths, which carry NaN and ∞ through.
    let finite = queries.iter().all(|v| v.is_finite());
    let digits = if finite { Digits::new(train, SCREEN_DIGITS) } else { None };
    let mut blocks: Vec<ScreenBlock> = queries.chunks(per_block * d).map(|x| ScreenBlock::new(x, d, kappa, max_norm, two_s2 * tail, n, cap, digits.as_ref())).collect();
    let (mut yc, mut yy, mut pixels) = (Vec::new(), Vec::new(), Vec::new());
    // The first chunk holds cap + 1 points: enough for a query all of whose points
    // screen in (larger σ) to be found dense before the screen reads any more.
    let first = n.min(cap + 1);
    for r in std::iter::once(0..first).chain(crate::sched::chunks(first..n, CHUNK)) {
        if blocks.iter().all(|b| b.all_dense()) {
            break;
        }
        let source = match &digits {
            Some(dg) => {
                let bytes = train.x.row_bytes(r.start, r.end);
                dg.pad_pixels(bytes, r.len(), &mut pixels);
                train.pixel_sq_norms(bytes, &mut yy);
                ScreenSource::Pixels(&pixels)
            }
            None => {
                train.rows(r.clone(), &mut yc);
                yy.clear();
                yy.extend(yc.chunks_exact(d).map(sq_norm));
                ScreenSource::Float32(&yc)
            }
        };
        blocks.par_iter_mut().for_each(|blk| blk.absorb(r.start, &source, &yy, cap));
    }

    let mut out = vec![0f32; b * d];
    let mut stats = Stats { integer_screen: digits.is_some(), ..Stats::default() };
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
        let (v, integer) = dense(train, &x, two_s2, tail);
        if integer {
            stats.integer_dots = dense_rows.len();
        }
        for (k, &r) in dense_rows.iter().enumerate() {
            out[r * d..(r + 1) * d].copy_from_slice(&v[k * d..(k + 1) * d]);
        }
    }
    Ok((out, stats))
}

/// The screen of a block of queries: float32 GEMM distances, or (8-bit data with AMX)
/// integer-tile distances of the query rounded to SCREEN_DIGITS digits.
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
    /// The integer screen: the queries in digits, and a chunk's dots.
    digits: Option<PackedQueries>,
    dots: Vec<f64>,
}

/// Where the screen reads a chunk from.
enum ScreenSource<'a> {
    /// Model-space rows.
    Float32(&'a [f32]),
    /// Raw 8-bit rows padded for the tiles (`Digits::pad_pixels`).
    Pixels(&'a [u8]),
}

impl ScreenBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(x: &[f32], d: usize, kappa: f64, max_norm: f64, softmax_window: f64, n: usize, cap: usize, digits: Option<&Digits>) -> Self {
        let rows = x.len() / d;
        let xx: Vec<f64> = x.chunks_exact(d).map(sq_norm).collect();
        let packed = digits.map(|dg| dg.pack_queries(x));
        let window: Vec<f64> = match (&packed, digits) {
            // The tiles' dot products are exact for the rounded query x̃, and the
            // training rows as the exact weighing reads them are a·p + b rounded to
            // float32 (off by at most 2⁻²⁴ per value in [−1, 1]): |x̃·(a·p) − x·y| ≤
            // rounding(s) + s·d·2⁻²⁴ beyond the per-query constant b·Σx, which cancels.
            (Some(packed), Some(dg)) => packed.scale.iter().map(|&s| 2.0 * (2.0 * (dg.rounding(s) + s * d as f64 * 2f64.powi(-24))) + softmax_window).collect(),
            // |fl(x·y) − x·y| ≤ κ·Σ|xⱼyⱼ| ≤ κ‖x‖‖y‖, and the distance carries it twice.
            // Products that underflow float32 add at most 2⁻¹⁴⁹ each beyond that.
            _ => xx.iter().map(|&s| 2.0 * (2.0 * (kappa * s.sqrt() * max_norm + (d as f64 + 1.0) * 2f64.powi(-148))) + softmax_window).collect(),
        };
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
            x: if packed.is_some() { Vec::new() } else { x.to_vec() },
            xx,
            best: vec![f64::INFINITY; rows],
            window,
            candidates: vec![Vec::new(); rows],
            pruned_at: vec![0; rows],
            dense,
            g: Vec::new(),
            digits: packed,
            dots: Vec::new(),
        }
    }

    fn all_dense(&self) -> bool {
        self.dense.iter().all(|&d| d)
    }

    fn absorb(&mut self, start: usize, source: &ScreenSource, yy: &[f64], cap: usize) {
        if self.all_dense() {
            return;
        }
        match source {
            ScreenSource::Float32(yc) => self.screen_float(start, yc, yy),
            ScreenSource::Pixels(pixels) => self.screen_pixels(start, pixels, yy),
        }
        for q in 0..self.rows {
            if self.dense[q] {
                continue;
            }
            let (best, w) = (self.best[q], self.window[q]);
            let list = &mut self.candidates[q];
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

    fn screen_float(&mut self, start: usize, yc: &[f32], yy: &[f64]) {
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
        }
    }

    /// Distances up to a per-query constant from the tiles' exact a·(x̃·p), point by
    /// point across the queries.
    fn screen_pixels(&mut self, start: usize, pixels: &[u8], yy: &[f64]) {
        let (nc, rows) = (yy.len(), self.rows);
        let packed = self.digits.as_mut().expect("digits packed for the integer screen");
        let k = packed.k();
        // A tile product's worth of points at a time, so the dots stay in cache.
        self.dots.resize(DIGIT_POINTS * rows, 0.0);
        for i0 in (0..nc).step_by(DIGIT_POINTS) {
            let points = DIGIT_POINTS.min(nc - i0);
            packed.dots(&pixels[i0 * k..], points, &mut self.dots);
            for (ii, (dots, &yi)) in self.dots.chunks_exact(rows).zip(&yy[i0..i0 + points]).enumerate() {
                for (q, &dot) in dots.iter().enumerate() {
                    let dd = self.xx[q] + yi - 2.0 * dot;
                    if dd <= self.best[q] + self.window[q] && !self.dense[q] {
                        self.best[q] = self.best[q].min(dd);
                        self.candidates[q].push(((start + i0 + ii) as u32, dd));
                    }
                }
            }
        }
    }
}

/// Σ wᵢyᵢ over the candidates with exact float64 distances.
fn weigh_exactly(train: &TrainingSet, x: &[f32], candidates: &[(u32, f64)], two_s2: f64) -> Vec<f32> {
    let d = x.len();
    let mut y = Vec::with_capacity(d);
    let mut ys = Vec::with_capacity(candidates.len() * d);
    let mut distances = Vec::with_capacity(candidates.len());
    for &(i, _) in candidates {
        train.rows(i as usize..i as usize + 1, &mut y);
        distances.push(exact_sq_dist(x, &y));
        ys.extend_from_slice(&y);
    }
    // Weights from distances relative to the nearest: exp(−(dᵢ − d_min)/2σ²). When 2σ²
    // underflows (σ → 0) this is the limit itself — the nearest samples, ties averaged —
    // instead of 0/0.
    let nearest = distances.iter().copied().fold(f64::INFINITY, f64::min);
    let mut acc = vec![0f64; d];
    let mut total = 0f64;
    for (dist, y) in distances.iter().zip(ys.chunks_exact(d)) {
        let excess = dist - nearest;
        let w = if excess == 0.0 { 1.0 } else { (-excess / two_s2).exp() };
        total += w;
        acc.iter_mut().zip(y).for_each(|(a, &v)| *a += w * v as f64);
    }
    acc.iter().map(|&a| (a / total) as f32).collect()
}

/// The dense pass: GEMM-form logits with an online softmax (running max and sum per
/// query), streamed over the training set; the B×N matrix is never held. The dot
/// products x·yᵢ come from a float64 GEMM, or — for 8-bit training data on CPUs with
/// AMX, when the bound below allows — exactly from integer tiles (see `Digits`); the
/// second value says which.
pub fn dense(train: &TrainingSet, x: &[f32], two_s2: f64, tail: f64) -> (Vec<f32>, bool) {
    let d = train.dim();
    let n = train.len();
    let per_block = query_block(x.len() / d.max(1));
    let digits = Digits::for_pass(train, x, two_s2);
    let mut blocks: Vec<DenseBlock> = x.chunks(per_block * d).map(|x| DenseBlock::new(x, d, digits.as_ref())).collect();
    let (mut yc, mut y64, mut yy, mut pixels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in crate::sched::chunks(0..n, CHUNK) {
        train.rows(r.clone(), &mut yc);
        yy.resize(yc.len() / d, 0f64);
        yy.par_iter_mut().zip(yc.par_chunks_exact(d)).for_each(|(o, y)| *o = sq_norm(y));
        let dots = match &digits {
            Some(dg) => {
                dg.pad_pixels(train.x.row_bytes(r.start, r.end), r.len(), &mut pixels);
                DotSource::Pixels(&pixels)
            }
            None => {
                y64.resize(yc.len(), 0f64);
                y64.par_chunks_mut(d * 64).zip(yc.par_chunks(d * 64)).for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = v as f64));
                DotSource::Float64(&y64)
            }
        };
        blocks.par_iter_mut().for_each(|blk| blk.absorb(&dots, &yc, &yy, two_s2, tail));
    }
    (blocks.iter().flat_map(|b| b.finish()).collect(), digits.is_some())
}

/// Where a chunk's dot products come from.
enum DotSource<'a> {
    /// The chunk in float64, row-major.
    Float64(&'a [f64]),
    /// The chunk's raw 8-bit rows, padded for the integer tiles (`Digits::pad_pixels`).
    Pixels(&'a [u8]),
}

/// Exact dot products with 8-bit training data. A training row is y = a·p + b with p its
/// pixels (0…255), so x·y = a·(x·p) + b·Σx, and b·Σx is the same for every training
/// point: the softmax drops it. Each query is scaled by s = max|xⱼ| and rounded to an
/// integer X = round(x·2^B/s), B = 7·count − 1, written in `count` base-128 digits (all
/// in 0…127 but the top one, in −64…64); x·p is then `count` integer products p·digit,
/// exact in 32-bit sums on the AMX tiles, recombined exactly in 64 bits. The only error
/// is the rounding of x: |x·p − x̃·p| ≤ ‖p‖₁·s·2^−(B+1), so a logit (x·y − ‖y‖²/2)/σ²
/// errs by at most a·P·d·s·2^−(B+1)/σ², P the largest pixel value. The dense pass uses
/// four or five digits where that is below MAX_DIGIT_LOGIT_ERROR (every σ the sampler
/// visits above about 0.5 for images); the screen uses three and widens its window by
/// the bound.
struct Digits {
    d: usize,
    /// d rounded up to the tiles' k step.
    k: usize,
    /// y = a·p + b.
    a: f64,
    /// Digits per query: X = round(x·2^(7·count − 1)/s).
    count: usize,
    /// The largest pixel value (the range's top: the data's maximum or 255).
    max_pixel: f64,
}

/// Digits of the dense pass's queries (at most 35 bits; 28 where the bound allows);
/// the screen needs fewer (21 bits).
const DIGITS: usize = 5;
const SCREEN_DIGITS: usize = 3;
const MAX_DIGIT_LOGIT_ERROR: f64 = 1e-6;
/// Training points per tile product: their 32-bit results (points × 5·queries) stay in L2.
const DIGIT_POINTS: usize = 256;

impl Digits {
    /// The tiles apply: 8-bit data, AMX, and sums that fit 32 bits.
    fn new(train: &TrainingSet, count: usize) -> Option<Self> {
        let d = train.dim();
        if train.x.dtype != crate::data::DType::U8 || !crate::amx::available() || (d as u64) * 255 * 128 >= i32::MAX as u64 {
            return None;
        }
        // Model space: y = (p − lo)·2/(hi − lo) − 1.
        let a = 2.0 / (train.range.hi - train.range.lo) as f64;
        Some(Self { d, k: d.next_multiple_of(crate::amx::K_STEP), a, count, max_pixel: (train.range.hi as f64).min(255.0) })
    }

    /// The fewest digits (four or five) whose bound meets MAX_DIGIT_LOGIT_ERROR for every
    /// query of the pass, if any.
    fn for_pass(train: &TrainingSet, x: &[f32], two_s2: f64) -> Option<Self> {
        if !x.iter().all(|v| v.is_finite()) {
            return None;
        }
        let s = x.iter().fold(0f32, |m, &v| m.max(v.abs())) as f64;
        [DIGITS - 1, DIGITS].into_iter().find_map(|count| {
            let digits = Self::new(train, count)?;
            (digits.rounding(s) / (two_s2 / 2.0) <= MAX_DIGIT_LOGIT_ERROR).then_some(digits)
        })
    }

    fn scale_bits(&self) -> i32 {
        7 * self.count as i32 - 1
    }

    /// The bound on |a·(x·p) − a·(x̃·p)| for a query of largest magnitude s.
    fn rounding(&self, s: f64) -> f64 {
        self.a * self.max_pixel * self.d as f64 * s * 2f64.powi(-self.scale_bits() - 1)
    }

    /// The queries (rows of x) in digits, packed for the tiles.
    fn pack_queries(&self, x: &[f32]) -> PackedQueries {
        let rows = x.len() / self.d;
        let plane = rows.next_multiple_of(crate::amx::MN_STEP);
        let cols = plane * self.count;
        let mut b = vec![0i8; self.k * cols];
        let mut factor = vec![0f64; rows];
        let mut scale = vec![0f64; rows];
        for (q, xq) in x.chunks_exact(self.d).enumerate() {
            let s = xq.iter().fold(0f32, |m, &v| m.max(v.abs())) as f64;
            scale[q] = s;
            if s == 0.0 {
                continue;
            }
            let unit = 2f64.powi(self.scale_bits()) / s;
            factor[q] = self.a / unit;
            for (j, &v) in xq.iter().enumerate() {
                let mut big = (v as f64 * unit).round() as i64;
                for digit in 0..self.count {
                    let value = if digit + 1 < self.count { big & 127 } else { big };
                    b[j * cols + digit * plane + q] = value as i8;
                    big = (big - value) >> 7;
                }
            }
        }
        PackedQueries { b: crate::amx::pack_b(&b, self.k, cols), factor, scale, rows, count: self.count, results: vec![0; DIGIT_POINTS * cols] }
    }

    /// A chunk's pixel rows with each row padded to k bytes and the rows to a multiple
    /// of DIGIT_POINTS.
    fn pad_pixels(&self, bytes: &[u8], count: usize, out: &mut Vec<u8>) {
        let padded_rows = count.next_multiple_of(DIGIT_POINTS);
        out.clear();
        out.resize(padded_rows * self.k, 0);
        out.par_chunks_mut(self.k).zip(bytes.par_chunks_exact(self.d)).for_each(|(o, p)| o[..self.d].copy_from_slice(p));
    }
}

/// Queries in digits (`count` digit planes of the padded query count, k = d padded),
/// packed for the tiles, with each query's factor a·s·2^−bits and its s.
struct PackedQueries {
    b: Vec<i8>,
    factor: Vec<f64>,
    scale: Vec<f64>,
    rows: usize,
    count: usize,
    /// Tile results of DIGIT_POINTS training points.
    results: Vec<i32>,
}

impl PackedQueries {
    /// Bytes per padded pixel row.
    fn k(&self) -> usize {
        self.b.len() / (self.rows.next_multiple_of(crate::amx::MN_STEP) * self.count)
    }

    /// out[i·rows + q] = a·(x̃_q·pᵢ), exact for the rounded queries, for a chunk's nc
    /// points (their pixel rows as `Digits::pad_pixels` lays them out).
    fn dots(&mut self, pixels: &[u8], nc: usize, out: &mut [f64]) {
        let plane = self.rows.next_multiple_of(crate::amx::MN_STEP);
        let cols = plane * self.count;
        let k = self.k();
        for i0 in (0..nc).step_by(DIGIT_POINTS) {
            crate::amx::gemm_u8_i8(&pixels[i0 * k..], k, &self.b, &mut self.results, cols, (DIGIT_POINTS, k, cols));
            let points = DIGIT_POINTS.min(nc - i0);
            for (c, o) in self.results.chunks_exact(cols).zip(out[i0 * self.rows..(i0 + points) * self.rows].chunks_exact_mut(self.rows)) {
                recombine_digits(c, plane, self.count, &self.factor, o);
            }
        }
    }
}

/// out[q] = factor[q]·Σ 128^digit · C[digit·plane + q] for one training point's row of
/// tile results (`count` digit planes of `plane` columns): the exact integer in 64 bits,
/// then scaled.
fn recombine_digits(c: &[i32], plane: usize, count: usize, factor: &[f64], out: &mut [f64]) {
    // The digit count fixed at compile time, so the loop over queries vectorizes.
    #[inline(always)]
    fn body<const COUNT: usize>(c: &[i32], plane: usize, factor: &[f64], out: &mut [f64]) {
        let rows = out.len();
        let planes: [&[i32]; COUNT] = std::array::from_fn(|digit| &c[digit * plane..digit * plane + rows]);
        for (q, o) in out.iter_mut().enumerate() {
            let mut whole = planes[COUNT - 1][q] as i64;
            for digit in (0..COUNT - 1).rev() {
                whole = (whole << 7) + planes[digit][q] as i64;
            }
            *o = whole as f64 * factor[q];
        }
    }
    match count {
        SCREEN_DIGITS => crate::simd::dispatch(#[inline(always)] || body::<SCREEN_DIGITS>(c, plane, factor, out)),
        4 => crate::simd::dispatch(#[inline(always)] || body::<4>(c, plane, factor, out)),
        DIGITS => crate::simd::dispatch(#[inline(always)] || body::<DIGITS>(c, plane, factor, out)),
        _ => unreachable!("digit counts are 3, 4 or 5"),
    }
}

/// A block of queries in the dense pass. Per-chunk buffers are points × queries, so the
/// per-query softmax bookkeeping runs across contiguous queries.
struct DenseBlock {
    rows: usize,
    d: usize,
    x: Vec<f64>,
    max: Vec<f64>,
    sum: Vec<f64>,
    acc: Vec<f64>,
    /// This chunk's dot products, then logits (float64), then weights (float32).
    g: Vec<f64>,
    w: Vec<f32>,
    part: Vec<f32>,
    chunk_max: Vec<f64>,
    /// The integer path: the queries in digits.
    digits: Option<PackedQueries>,
}

/// Logits (2x·yᵢ − ‖yᵢ‖²)/2σ² in place of the dot products of one training point with
/// every query, and the running per-query maxima.
#[inline(always)]
fn logits_and_max(g: &mut [f64], yy: f64, inv_two_s2: f64, top: &mut [f64]) {
    for (gi, t) in g.iter_mut().zip(top.iter_mut()) {
        *gi = (2.0 * *gi - yy) * inv_two_s2;
        *t = t.max(*gi);
    }
}

/// One training point's weights e^(logit − m) for every query (0 beyond `tail` below
/// m); adds them to the per-query sums and returns how many are nonzero. The exponent
/// is taken in float32 (relative error < 3e-7 in each weight, the precision the
/// weighted sum keeps anyway); the logit difference itself is formed in float64.
#[inline(always)]
fn weights(g: &[f64], m: &[f64], tail: f64, w: &mut [f32], sums: &mut [f64]) -> usize {
    let mut nonzero = 0usize;
    for (((wi, &gi), &mq), s) in w.iter_mut().zip(g).zip(m).zip(sums.iter_mut()) {
        let t = gi - mq;
        let e = crate::simd::exp_f32(t as f32);
        *wi = if t >= -tail { e } else { 0.0 };
        *s += *wi as f64;
        // e^−tail is far above float32's smallest normal, so kept weights are never 0.
        nonzero += (*wi != 0.0) as usize;
    }
    nonzero
}

impl DenseBlock {
    fn new(x: &[f32], d: usize, digits: Option<&Digits>) -> Self {
        let rows = x.len() / d;
        Self {
            rows,
            d,
            x: if digits.is_some() { Vec::new() } else { x.iter().map(|&v| v as f64).collect() },
            max: vec![f64::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: vec![0.0; rows * d],
            g: Vec::new(),
            w: Vec::new(),
            part: vec![0.0; rows * d],
            chunk_max: vec![0.0; rows],
            digits: digits.map(|dg| dg.pack_queries(x)),
        }
    }

    /// g[i·rows + q] = x_q·yᵢ (up to a per-query constant) for the chunk's nc points.
    fn dots(&mut self, source: &DotSource, nc: usize) {
        let (rows, d) = (self.rows, self.d);
        self.g.resize(nc * rows, 0.0);
        match source {
            DotSource::Float64(y) => {
                // SAFETY: strides describe the buffers exactly; g is written points × queries.
                unsafe {
                    gemm_strided((rows, d, nc), self.x.as_ptr(), (d as isize, 1), y.as_ptr(), (1, d as isize), false, self.g.as_mut_ptr(), (1, rows as isize));
                }
            }
            DotSource::Pixels(pixels) => self.digits.as_mut().expect("digits packed for the integer path").dots(pixels, nc, &mut self.g),
        }
    }

    fn absorb(&mut self, source: &DotSource, y32: &[f32], yy: &[f64], two_s2: f64, tail: f64) {
        let (rows, d, nc) = (self.rows, self.d, yy.len());
        self.dots(source, nc);
        self.w.resize(nc * rows, 0.0);
        let inv_two_s2 = 1.0 / two_s2;
        // Logits up to the per-query constant −‖x‖²/2σ², which cancels.
        self.chunk_max.iter_mut().for_each(|m| *m = f64::NEG_INFINITY);
        for (gi, &yi) in self.g.chunks_exact_mut(rows).zip(yy) {
            let top = &mut self.chunk_max;
            crate::simd::dispatch(#[inline(always)] || logits_and_max(gi, yi, inv_two_s2, top));
        }
        for q in 0..rows {
            let m = self.max[q].max(self.chunk_max[q]);
            if m > self.max[q] {
                let rescale = if self.max[q] == f64::NEG_INFINITY { 0.0 } else { (self.max[q] - m).exp() };
                self.sum[q] *= rescale;
                self.acc[q * d..(q + 1) * d].iter_mut().for_each(|a| *a *= rescale);
                self.max[q] = m;
            }
        }
        let mut nonzero = 0usize;
        for (gi, wi) in self.g.chunks_exact(rows).zip(self.w.chunks_exact_mut(rows)) {
            let (m, sums) = (&self.max, &mut self.sum);
            nonzero += crate::simd::dispatch(#[inline(always)] || weights(gi, m, tail, wi, sums));
        }
        if nonzero * 8 > rows * nc {
            // acc += Wᵀ · Y with the weights (in [0, 1]) and the chunk in float32, summed
            // in float64 every PRODUCT_DEPTH points: a float32 sum of k non-negative-
            // weighted terms errs by at most k·u·Σ wᵢ|yᵢ| (3e-5 relative for k = 512), so
            // the exact logits are where the precision goes.
            for k0 in (0..nc).step_by(PRODUCT_DEPTH) {
                let k = PRODUCT_DEPTH.min(nc - k0);
                // SAFETY: W's points k0..k0+k (points × queries, so a query's weights
                // are `rows` apart) and Y's rows k0..k0+k.
                unsafe {
                    gemm_strided((rows, k, d), self.w.as_ptr().add(k0 * rows), (1, rows as isize), y32.as_ptr().add(k0 * d), (d as isize, 1), false, self.part.as_mut_ptr(), (d as isize, 1));
                }
                self.acc.iter_mut().zip(&self.part).for_each(|(a, &p)| *a += p as f64);
            }
        } else {
            for (i, wi) in self.w.chunks_exact(rows).enumerate() {
                let y = &y32[i * d..(i + 1) * d];
                for (q, &w) in wi.iter().enumerate() {
                    if w != 0.0 {
                        let w = w as f64;
                        self.acc[q * d..(q + 1) * d].iter_mut().zip(y).for_each(|(a, &v)| *a += w * v as f64);
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
