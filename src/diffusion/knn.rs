//! Exact k nearest neighbours on the CPU, and the memorization ratio built on them.
//!
//! A float32 GEMM pass screens: per query it keeps every training point whose screened
//! cost is within 2δ of the running k-th best, δ a rigorous bound on the GEMM's error,
//! so the true k nearest are always kept. The candidates are then ranked by exact
//! float64 distances (`exact_sq_dist`, `exact_dot`: the values the GPU computes, bit
//! for bit) with ties broken by the lower index, so CPU and GPU agree exactly.

use super::{exact_dot, exact_sq_dist, f32_dot_error_factor, sq_norm, TrainingSet};
use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Squared Euclidean distance, smallest first.
    L2,
    /// Inner product, largest first.
    Ip,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Neighbours {
    pub k: usize,
    /// Q×k training-row indices, best first.
    pub indices: Vec<u32>,
    /// Q×k squared distances (l2) or inner products (ip), exact in float64.
    pub values: Vec<f64>,
}

const QUERY_BLOCK: usize = 64;
const CHUNK: usize = 4096;

pub fn check_k(k: usize, n: usize) -> Result<()> {
    if k == 0 || k > n {
        bail!("k = {k}: need 1 ≤ k ≤ {n} (the number of training samples)");
    }
    Ok(())
}

/// The exact value ranked on for one pair: the cost (smaller is nearer) and the value reported.
pub fn exact_cost(metric: Metric, x: &[f32], y: &[f32]) -> (f64, f64) {
    match metric {
        Metric::L2 => {
            let d = exact_sq_dist(x, y);
            (d, d)
        }
        Metric::Ip => {
            let p = exact_dot(x, y);
            (-p, p)
        }
    }
}

pub fn knn(train: &TrainingSet, queries: &[f32], k: usize, metric: Metric) -> Result<Neighbours> {
    let d = train.dim();
    let n = train.len();
    let q = train.check_queries(queries.len(), "kNN queries")?;
    check_k(k, n)?;
    if train.x.dtype == crate::data::DType::U8 && train.range == super::PixelRange::MODEL && super::knn_u8::available() && super::knn_u8::fits(d) {
        if let Some(pixels) = as_pixels(queries) {
            let x = train.x;
            return super::knn_u8::knn(&|r| x.row_bytes(r.start, r.end).to_vec(), n, d, &pixels, k, metric);
        }
    }
    let kappa = f32_dot_error_factor(d);
    // The screen runs on values scaled by a power of two (exact) into float32's
    // comfortable range; the ranking below uses the values as given.
    let scale = screen_scale(train, queries);
    let scaled_queries: Vec<f32>;
    let screen_queries = if scale == 1.0 {
        queries
    } else {
        scaled_queries = queries.iter().map(|&v| (v as f64 * scale) as f32).collect();
        &scaled_queries
    };
    let max_norm = train.max_sq_norm.sqrt() * scale;
    let mut blocks: Vec<Screen> = screen_queries.chunks(QUERY_BLOCK * d).map(|x| Screen::new(x, d, k, metric, kappa * max_norm)).collect();
    let mut yc = Vec::new();
    for r in crate::sched::chunks(0..n, CHUNK) {
        train.rows(r.clone(), &mut yc);
        if scale != 1.0 {
            yc.par_iter_mut().for_each(|v| *v = (*v as f64 * scale) as f32);
        }
        let yy: Vec<f64> = yc.chunks_exact(d).map(sq_norm).collect();
        blocks.par_iter_mut().for_each(|b| b.absorb(r.start, &yc, &yy));
    }
    let mut lists = Vec::with_capacity(q);
    for (bi, b) in blocks.iter_mut().enumerate() {
        for i in 0..b.rows {
            let row = bi * QUERY_BLOCK + i;
            lists.push((&queries[row * d..(row + 1) * d], b.final_candidates(i)));
        }
    }
    let ranked: Vec<Vec<(f64, u32, f64)>> = lists
        .into_par_iter()
        .map(|(x, c)| {
            let mut y = Vec::with_capacity(d);
            let mut exact: Vec<(f64, u32, f64)> = c
                .iter()
                .map(|&(i, _)| {
                    train.rows(i as usize..i as usize + 1, &mut y);
                    let (cost, value) = exact_cost(metric, x, &y);
                    (cost, i, value)
                })
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            exact.truncate(k);
            exact
        })
        .collect();
    let mut out = Neighbours { k, indices: Vec::with_capacity(q * k), values: Vec::with_capacity(q * k) };
    for r in ranked {
        for (_, i, v) in r {
            out.indices.push(i);
            out.values.push(v);
        }
    }
    Ok(out)
}

/// Magnitudes (of a row's norm) the float32 screen takes as they are: within them no
/// product or sum of the GEMM overflows, and underflow costs far less than the slack.
const SCREEN_NORM_RANGE: (f64, f64) = (1.0 / (1u64 << 40) as f64, (1u64 << 40) as f64);

/// 1, or the power of two that brings the largest row norm of the training set and the
/// queries near 1 when it lies outside `SCREEN_NORM_RANGE` (values up to f32::MAX
/// would overflow the float32 products, tiny ones underflow them).
pub fn screen_scale(train: &TrainingSet, queries: &[f32]) -> f64 {
    let d = train.dim().max(1);
    let queries_max = queries.par_chunks(d).map(sq_norm).reduce(|| 0.0, f64::max);
    let largest = train.max_sq_norm.max(queries_max).sqrt();
    if largest == 0.0 || !largest.is_finite() || (SCREEN_NORM_RANGE.0..=SCREEN_NORM_RANGE.1).contains(&largest) {
        return 1.0;
    }
    f64::powi(2.0, -(largest.log2().round() as i32))
}

/// The queries as pixels, when every value is an integer in 0…255.
fn as_pixels(x: &[f32]) -> Option<Vec<u8>> {
    x.iter().map(|&v| (v >= 0.0 && v <= 255.0 && v.fract() == 0.0).then_some(v as u8)).collect()
}

struct Screen {
    rows: usize,
    d: usize,
    k: usize,
    metric: Metric,
    x: Vec<f32>,
    /// 2δ per query.
    slack: Vec<f64>,
    /// The k smallest screened costs so far, ascending.
    best: Vec<Vec<f64>>,
    candidates: Vec<Vec<(u32, f64)>>,
    pruned_at: Vec<usize>,
    g: Vec<f32>,
}

impl Screen {
    fn new(x: &[f32], d: usize, k: usize, metric: Metric, kappa_max_norm: f64) -> Self {
        let rows = x.len() / d;
        // |fl(x·y) − x·y| ≤ κ‖x‖‖y‖; the l2 cost ‖y‖² − 2x·y carries it twice.
        let per_error = if metric == Metric::L2 { 2.0 } else { 1.0 };
        // Products that underflow float32 are off by at most 2⁻¹⁴⁹ each, beyond the
        // relative bound: d of them per dot product.
        let underflow = per_error * (d as f64 + 1.0) * f64::powi(2.0, -148);
        let slack = x.chunks_exact(d).map(|r| 2.0 * (per_error * kappa_max_norm * sq_norm(r).sqrt() * 1.01 + underflow) + 1e-300).collect();
        Self {
            rows,
            d,
            k,
            metric,
            x: x.to_vec(),
            slack,
            best: vec![Vec::with_capacity(k + 1); rows],
            candidates: vec![Vec::new(); rows],
            pruned_at: vec![0; rows],
            g: Vec::new(),
        }
    }

    fn absorb(&mut self, start: usize, yc: &[f32], yy: &[f64]) {
        let nc = yy.len();
        self.g.resize(self.rows * nc, 0.0);
        crate::nn::linalg::gemm_serial(&self.x, self.rows, self.d, yc, nc, true, false, &mut self.g);
        for q in 0..self.rows {
            let g = &self.g[q * nc..(q + 1) * nc];
            let slack = self.slack[q];
            let best = &mut self.best[q];
            let list = &mut self.candidates[q];
            let mut kth = if best.len() == self.k { best[self.k - 1] } else { f64::INFINITY };
            for (i, (&gi, &yi)) in g.iter().zip(yy).enumerate() {
                let cost = match self.metric {
                    Metric::L2 => yi - 2.0 * gi as f64,
                    Metric::Ip => -(gi as f64),
                };
                if cost <= kth + slack {
                    list.push(((start + i) as u32, cost));
                    if cost < kth {
                        let at = best.partition_point(|&b| b <= cost);
                        best.insert(at, cost);
                        best.truncate(self.k);
                        if best.len() == self.k {
                            kth = best[self.k - 1];
                        }
                    }
                }
            }
            if list.len() > 2 * self.pruned_at[q] + 64 {
                list.retain(|&(_, c)| c <= kth + slack);
                self.pruned_at[q] = list.len();
            }
        }
    }

    fn final_candidates(&mut self, q: usize) -> Vec<(u32, f64)> {
        let kth = self.best[q].last().copied().unwrap_or(f64::INFINITY);
        let limit = kth + self.slack[q];
        let mut c = std::mem::take(&mut self.candidates[q]);
        c.retain(|&(_, cost)| cost <= limit);
        c
    }
}

/// The memorization ratio of generated samples (ALGORITHMS.md §3): sample x is
/// memorized when ‖x − NN1‖ / ‖x − NN2‖ < threshold.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemorizationRatio {
    pub memorization_ratio: f64,
    pub samples: usize,
    pub memorized: usize,
    pub threshold: f64,
    /// ‖x − NN1‖ / ‖x − NN2‖ per sample (0 when both are 0: a copy of a duplicated image).
    #[serde(skip)]
    pub ratios: Vec<f64>,
    #[serde(skip)]
    pub neighbours: Neighbours,
}

pub fn memorization_ratio(neighbours: Neighbours, threshold: f64) -> Result<MemorizationRatio> {
    if neighbours.k < 2 {
        bail!("the memorization ratio needs the two nearest neighbours (k = 2)");
    }
    if !(threshold > 0.0) {
        bail!("--threshold must be positive (got {threshold})");
    }
    let k = neighbours.k;
    let ratios: Vec<f64> = neighbours
        .values
        .chunks_exact(k)
        .map(|v| if v[1] > 0.0 { (v[0] / v[1]).sqrt() } else { 0.0 })
        .collect();
    let memorized = ratios.iter().filter(|&&r| r < threshold).count();
    Ok(MemorizationRatio {
        memorization_ratio: memorized as f64 / ratios.len().max(1) as f64,
        samples: ratios.len(),
        memorized,
        threshold,
        ratios,
        neighbours,
    })
}
