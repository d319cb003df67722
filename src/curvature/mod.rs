//! Per-sample input curvature (Garg, Ravikumar, Roy; ALGORITHMS.md §2): for
//! L(x) = CE(f(x), y) and H = ∇²ₓL, the score tr(H²) = E‖Hv‖² (Rademacher v) and
//! tr(H) = E vᵀHv, estimated with exact or finite-difference Hessian-vector products,
//! or computed exactly without probes for piecewise-linear networks:
//! H = Jᵀ(diag p − ppᵀ)J, tr(H²) = tr((AG)²), tr(H) = tr(AG), G = JJᵀ.

use crate::nn::mlp::Mlp;
use crate::rng::Philox;
use anyhow::{bail, Result};

pub mod cnn;
pub mod gallery;
pub mod run;
mod hutchinson;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Probe-free Jᵀ A J for piecewise-linear networks; Hutchinson with exact HVPs
    /// (plus the exact Gauss–Newton part) otherwise.
    Exact,
    /// Hutchinson with exact (forward-over-reverse) HVPs.
    Hutchinson,
    /// Hutchinson with finite-difference HVPs, (∇L(x + hv) − ∇L(x))/h.
    Fd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Statistic {
    /// The paper's definition: mean over probes of ‖Hv‖².
    Paper,
    /// The released code's statistic: mean over probes of the unsquared norm
    /// ‖∇L(x + hv) − ∇L(x)‖ (finite differences, not divided by h; per-sample loss,
    /// without the code's 1/B batch-mean scaling).
    ReleasedCode,
}

impl Estimator {
    /// The estimator when none is asked for: finite differences for the released code's
    /// statistic (it is defined on them), exact otherwise.
    pub fn default_for(statistic: Statistic) -> Self {
        if statistic == Statistic::ReleasedCode {
            Estimator::Fd
        } else {
            Estimator::Exact
        }
    }
}

/// Scores of a batch of samples.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    /// tr(H²) (or the chosen statistic).
    pub score: Vec<f32>,
    /// tr(H).
    pub trace: Vec<f32>,
    /// tr((Jᵀ A J)²), the exact Gauss–Newton part, when computed.
    pub gauss_newton: Option<Vec<f32>>,
}

impl Scores {
    /// The scores of consecutive row ranges, as one.
    pub fn join(parts: Vec<Scores>) -> Scores {
        let mut out = Scores { score: vec![], trace: vec![], gauss_newton: None };
        for p in parts {
            out.append(p);
        }
        out
    }
}

/// Probe j of sample `global` (its index in the training set): Rademacher signs keyed
/// by (seed, sample, probe), so any shard or device draws the same.
pub fn probe(seed: u64, global: u64, j: usize, d: usize, out: &mut [f32]) {
    Philox::new(seed ^ PROBE_KEY, global).fill_sign((j * d) as u64, out);
}

/// Probe j of sample `global` as bits: bit i of out[i / 64] is set where sign i is +1
/// (the draws of `probe`); bits past d are zero.
pub fn probe_words(seed: u64, global: u64, j: usize, d: usize, out: &mut [u64]) {
    let rng = Philox::new(seed ^ PROBE_KEY, global);
    let start = (j * d) as u64;
    let out = &mut out[..d.div_ceil(64)];
    out.fill(0);
    let mut place = |value: u64, at: usize| {
        out[at / 64] |= value << (at % 64);
        if at % 64 != 0 && at / 64 + 1 < out.len() {
            out[at / 64 + 1] |= value >> (64 - at % 64);
        }
    };
    let mut i = 0;
    while i < d {
        let index = start + i as u64;
        let w = rng.block(index / 128);
        let first = (index % 128) as usize;
        let take = (128 - first).min(d - i);
        let bits = ((w[0] as u128) | (w[1] as u128) << 32 | (w[2] as u128) << 64 | (w[3] as u128) << 96) >> first;
        let bits = if take < 128 { bits & ((1u128 << take) - 1) } else { bits };
        place(bits as u64, i);
        if take > 64 {
            place((bits >> 64) as u64, i + 64);
        }
        i += take;
    }
}

/// Mixed into the seed of the probe stream (kernels/curvature.cu draws the same).
pub const PROBE_KEY: u64 = 0x9B0B_E5;

pub struct ScoreConfig {
    pub estimator: Estimator,
    pub statistic: Statistic,
    pub probes: usize,
    pub h: f32,
    pub seed: u64,
}

impl ScoreConfig {
    /// Rejects settings that cannot be computed as asked, before any work: probes, the
    /// finite-difference step, and the released-code statistic, which *is* a
    /// finite-difference estimate (it goes with `Estimator::Fd` only).
    pub fn validate(&self, activation: crate::nn::mlp::Activation) -> Result<()> {
        if self.statistic == Statistic::ReleasedCode && self.estimator != Estimator::Fd {
            bail!(
                "--statistic released-code is the released code's finite-difference statistic; it goes with --estimator fd (its default), not --estimator {}",
                serde_json::to_value(self.estimator).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            );
        }
        if self.probes == 0 && !(self.estimator == Estimator::Exact && activation.piecewise_linear()) {
            bail!("--probes must be at least 1 (only the exact estimator on a piecewise-linear network needs none)");
        }
        if self.estimator == Estimator::Fd && !(self.h > 0.0 && self.h.is_finite()) {
            bail!("--h must be a positive step for finite differences (got {})", self.h);
        }
        Ok(())
    }

    /// What runs for this configuration on a network with `activation`, in words.
    pub fn describe(&self, activation: crate::nn::mlp::Activation) -> &'static str {
        match (self.estimator, activation.piecewise_linear(), self.statistic) {
            (_, _, Statistic::ReleasedCode) => "released-code statistic (finite differences, unsquared norm)",
            (Estimator::Exact, true, Statistic::Paper) => "exact (Jᵀ A J, probe-free)",
            (Estimator::Exact, _, _) => "hutchinson (exact HVP) + exact Gauss–Newton part",
            (Estimator::Hutchinson, _, _) => "hutchinson (exact HVP)",
            (Estimator::Fd, _, _) => "hutchinson (finite-difference HVP)",
        }
    }
}

/// Scores of samples `x` (rows, d) with labels `y`, whose training-set indices start
/// at `first_global`.
pub fn scores(m: &Mlp, x: &[f32], y: &[i64], first_global: u64, cfg: &ScoreConfig) -> Result<Scores> {
    let rows = y.len();
    cfg.validate(m.activation)?;
    let exact_gn = cfg.estimator == Estimator::Exact;
    if exact_gn && m.activation.piecewise_linear() && cfg.statistic == Statistic::Paper {
        return Ok(finish_low_rank(&low_rank_cpu(m, x, rows, None), true));
    }
    let p = cfg.probes;
    let use_fd = cfg.estimator == Estimator::Fd || cfg.statistic == Statistic::ReleasedCode;
    if use_fd && !(cfg.h > 0.0 && cfg.h.is_finite()) {
        bail!("--h must be a positive step for finite differences (got {})", cfg.h);
    }
    if !use_fd && m.activation.piecewise_linear() {
        return Ok(finish_low_rank(&low_rank_cpu(m, x, rows, Some((cfg.seed, first_global, p))), exact_gn));
    }
    if !use_fd {
        return Ok(hutchinson::scores(m, x, y, first_global, cfg.seed, p, &hutchinson::prepared(m), exact_gn));
    }
    let released = cfg.statistic == Statistic::ReleasedCode;
    let mut s = hutchinson::fd_scores(m, x, y, first_global, cfg.seed, p, cfg.h, released, &hutchinson::prepared(m));
    s.gauss_newton = exact_gn.then(|| gauss_newton(m, x, rows).0);
    Ok(s)
}

/// Hutchinson with exact HVPs for piecewise-linear networks, where H = JᵀAJ has rank
/// ≤ C: with u = Jv and w = Au, ‖Hv‖² = wᵀGw (G = JJᵀ) and vᵀHv = uᵀw, so each probe
/// costs C·d instead of two passes through the network. The values are those of the
/// forward-over-reverse HVP (up to rounding); only the arithmetic is cheaper.
///
/// The CPU builds each sample's logit Jacobian J = W_L D_{L−1} W_{L−1} ⋯ D_1 W_1 (D_l =
/// diag σ′(z_l)) from the output side, through only the units with σ′ ≠ 0 (for relu, the
/// ones the sample switches on: about half the work of a dense backward pass), then
/// takes G = JJᵀ and the projections u_k = J v_k while J is still in cache. `probes` is
/// (seed, index of the first sample in the training set, probes per sample).
fn low_rank_cpu(m: &Mlp, x: &[f32], rows: usize, probes: Option<(u64, u64, usize)>) -> LowRank {
    use crate::nn::linalg::active_rows_product;
    use rayon::prelude::*;
    /// Samples per task: each layer's step runs for the whole group before the next
    /// layer's, so one weight matrix at a time stays in this core's L2 cache.
    const GROUP: usize = 16;
    /// Columns of a weight matrix per pass over the group: 128 columns of a 512-row
    /// matrix are 256 KiB, which stay in L2 while every sample of the group uses them.
    const COLUMN_BLOCK: usize = 128;
    struct Scratch {
        g: Vec<f32>,
        next: Vec<f32>,
        compact: Vec<f32>,
        active: Vec<Vec<u32>>,
        slope: Vec<f32>,
        bits: Vec<u64>,
        ones: Vec<f32>,
    }
    // Forward in fixed blocks: a sample's scores must not depend on its batch.
    let f = m.forward_blocked(x, rows, 64);
    let (c, d, layers) = (m.classes(), m.input_dim(), m.layers());
    let widest = *m.sizes.iter().max().unwrap();
    let p = probes.map_or(0, |t| t.2);
    let scratch = || Scratch {
        g: vec![0f32; GROUP * c * widest],
        next: vec![0f32; GROUP * c * widest],
        compact: vec![0f32; GROUP * c * widest],
        active: vec![Vec::with_capacity(widest); GROUP],
        slope: Vec::with_capacity(widest),
        bits: vec![0u64; d.div_ceil(64)],
        ones: if p > 0 { vec![1f32; d] } else { vec![] },
    };
    let groups = rows.div_ceil(GROUP);
    // A few groups per task: each task allocates (and faults in) its own scratch.
    let per_task = groups.div_ceil(4 * rayon::current_num_threads()).max(1);
    let per_group: Vec<(Vec<f64>, Vec<f64>)> = (0..groups)
        .into_par_iter()
        .with_min_len(per_task)
        .map_init(scratch, |sc, group| {
            let samples = group * GROUP..((group + 1) * GROUP).min(rows);
            let mut width = m.sizes[layers - 1];
            for t in 0..samples.len() {
                sc.g[t * c * widest..][..c * width].copy_from_slice(&m.weights[layers - 1]);
            }
            for l in (0..layers - 1).rev() {
                let n = m.sizes[l];
                for (t, s) in samples.clone().enumerate() {
                    let (active, slope) = (&mut sc.active[t], &mut sc.slope);
                    active.clear();
                    slope.clear();
                    for (i, &z) in f.z[l][s * width..(s + 1) * width].iter().enumerate() {
                        let sl = m.activation.eval(z).1;
                        if sl != 0.0 {
                            active.push(i as u32);
                            slope.push(sl);
                        }
                    }
                    let k = active.len();
                    let (g, compact) = (&sc.g[t * c * widest..][..c * width], &mut sc.compact[t * c * widest..][..c * k]);
                    for (src, dst) in g.chunks_exact(width).zip(compact.chunks_exact_mut(k.max(1))) {
                        for ((o, &i), &sl) in dst.iter_mut().zip(active.iter()).zip(slope.iter()) {
                            *o = src[i as usize] * sl;
                        }
                    }
                }
                for c0 in (0..n).step_by(COLUMN_BLOCK) {
                    for t in 0..samples.len() {
                        let k = sc.active[t].len();
                        let (compact, out) = (&sc.compact[t * c * widest..][..c * k], &mut sc.next[t * c * widest..][..c * n]);
                        active_rows_product(compact, c, &sc.active[t], &m.weights[l], n, c0..(c0 + COLUMN_BLOCK).min(n), out);
                    }
                }
                std::mem::swap(&mut sc.g, &mut sc.next);
                width = n;
            }
            // The dot products vectorize inside `dispatch`.
            let js: Vec<&[f32]> = (0..samples.len()).map(|t| &sc.g[t * c * widest..][..c * d]).collect();
            crate::simd::dispatch(#[inline(always)] || gram_and_projections(&js, samples.start, c, d, probes, &mut sc.bits, &sc.ones))
        })
        .collect();
    let (gram, projections) = per_group.into_iter().fold((Vec::new(), Vec::new()), |(mut g, mut u), (gs, us)| {
        g.extend(gs);
        u.extend(us);
        (g, u)
    });
    LowRank { rows, classes: c, probes: p, gram, probs: f.probs, projections }
}

/// Per sample (logit Jacobian `js[t]` of sample first + t): G = JJᵀ, and J v_k for its
/// probes. Always inlined, so that it is compiled with the features `dispatch` enables.
#[inline(always)]
fn gram_and_projections(js: &[&[f32]], first: usize, c: usize, d: usize, probes: Option<(u64, u64, usize)>, bits: &mut [u64], ones: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let p = probes.map_or(0, |t| t.2);
    let (mut gram, mut u) = (Vec::with_capacity(js.len() * c * c), Vec::with_capacity(js.len() * p * c));
    for (t, j) in js.iter().enumerate() {
        if let Some((seed, first_global, _)) = probes {
            // With v = 2b − 1 (bits b), Jv = 2·Σ_{b=1} J − ΣJ: masked sums of J's rows,
            // the probe never expanded to floats.
            let row_sums: Vec<f64> = (0..c).map(|a| dot(&j[a * d..(a + 1) * d], ones)).collect();
            for k in 0..p {
                probe_words(seed, first_global + (first + t) as u64, k, d, bits);
                u.extend((0..c).map(|a| 2.0 * masked_sum(&j[a * d..(a + 1) * d], bits) - row_sums[a]));
            }
        }
        gram.extend(gram_of(j, c, d));
    }
    (gram, u)
}

/// Σ xᵢ over the i whose bit is set.
#[inline(always)]
fn masked_sum(x: &[f32], bits: &[u64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512f() {
        // SAFETY: AVX-512F was detected; `bits` covers x.len() bits.
        return unsafe { masked_sum_avx512(x, bits) };
    }
    x.iter().enumerate().filter(|&(i, _)| (bits[i / 64] >> (i % 64)) & 1 == 1).map(|(_, &v)| v as f64).sum()
}

/// `masked_sum` sixteen lanes at a time, each 16-bit piece of `bits` the add's mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn masked_sum_avx512(x: &[f32], bits: &[u64]) -> f64 {
    use std::arch::x86_64::*;
    assert!(bits.len() * 64 >= x.len());
    let mask = |chunk: usize| ((bits[chunk / 4] >> (16 * (chunk % 4))) & 0xFFFF) as u16;
    // Two accumulators, so consecutive adds do not wait on each other.
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let chunks = x.len() / 16;
    let mut ci = 0;
    while ci + 2 <= chunks {
        even = _mm512_mask_add_ps(even, mask(ci), even, _mm512_loadu_ps(x.as_ptr().add(16 * ci)));
        odd = _mm512_mask_add_ps(odd, mask(ci + 1), odd, _mm512_loadu_ps(x.as_ptr().add(16 * ci + 16)));
        ci += 2;
    }
    if ci < chunks {
        even = _mm512_mask_add_ps(even, mask(ci), even, _mm512_loadu_ps(x.as_ptr().add(16 * ci)));
    }
    let tail = x.len() - 16 * chunks;
    if tail > 0 {
        let lanes = mask(chunks) & crate::simd::first_lanes16(tail);
        odd = _mm512_mask_add_ps(odd, lanes, odd, _mm512_maskz_loadu_ps(crate::simd::first_lanes16(tail), x.as_ptr().add(16 * chunks)));
    }
    _mm512_reduce_add_ps(_mm512_add_ps(even, odd)) as f64
}

/// What the scores of a piecewise-linear network need, from either backend: per
/// sample the Gram matrix G = JJᵀ (C, C), the probabilities p (C), and the probe
/// projections u_k = J v_k (P, C).
pub struct LowRank {
    pub rows: usize,
    pub classes: usize,
    pub probes: usize,
    pub gram: Vec<f64>,
    pub probs: Vec<f32>,
    pub projections: Vec<f64>,
}

/// Scores from the low-rank pieces: with `probes` = 0 the exact tr((AG)²) and
/// tr(AG); otherwise Hutchinson (‖Hv‖² = wᵀGw, vᵀHv = uᵀw, w = Au), plus the exact
/// part when `with_gn`.
pub fn finish_low_rank(lr: &LowRank, with_gn: bool) -> Scores {
    use rayon::prelude::*;
    let (c, probes) = (lr.classes, lr.probes);
    let per_sample: Vec<(f32, f32, f32, f32)> = (0..lr.rows)
        .into_par_iter()
        .map(|s| {
            let p = &lr.probs[s * c..(s + 1) * c];
            let g = &lr.gram[s * c * c..(s + 1) * c * c];
            let ag = a_times(p, g, c);
            let (gn_sq, gn_tr) = (trace_sq_ag(&ag, c) as f32, (0..c).map(|a| ag[a * c + a]).sum::<f64>() as f32);
            let (mut sq, mut tr) = (0f64, 0f64);
            for k in 0..probes {
                let u = &lr.projections[(s * probes + k) * c..(s * probes + k + 1) * c];
                let pu: f64 = p.iter().zip(u).map(|(&pp, &uu)| pp as f64 * uu).sum();
                let w: Vec<f64> = (0..c).map(|a| p[a] as f64 * (u[a] - pu)).collect();
                sq += (0..c).map(|a| w[a] * (0..c).map(|b| g[a * c + b] * w[b]).sum::<f64>()).sum::<f64>();
                tr += u.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
            }
            let n = probes.max(1) as f64;
            ((sq / n) as f32, (tr / n) as f32, gn_sq, gn_tr)
        })
        .collect();
    if probes == 0 {
        let score: Vec<f32> = per_sample.iter().map(|t| t.2).collect();
        return Scores { gauss_newton: Some(score.clone()), score, trace: per_sample.iter().map(|t| t.3).collect() };
    }
    Scores {
        score: per_sample.iter().map(|t| t.0).collect(),
        trace: per_sample.iter().map(|t| t.1).collect(),
        gauss_newton: with_gn.then(|| per_sample.iter().map(|t| t.2).collect()),
    }
}

/// Σ a_i b_i with eight float32 partial sums (so it vectorizes), returned as f64.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    dot_in_lanes(a, b) as f64
}

/// Σ a_i b_i in eight partial sums (a plain sum would not vectorize), added up at the
/// end with the remainder's products.
#[inline(always)]
fn dot_in_lanes<T>(a: &[T], b: &[T]) -> T
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T> + std::iter::Sum,
{
    let mut acc = [T::default(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| *x * *y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = acc[k] + x[k] * y[k];
        }
    }
    acc.iter().copied().sum::<T>() + tail
}

/// G = J Jᵀ (C, C) in float64 from one sample's logit Jacobian (C, d).
#[inline(always)]
fn gram_of(js: &[f32], c: usize, d: usize) -> Vec<f64> {
    let mut g = vec![0f64; c * c];
    for a in 0..c {
        for b in a..c {
            let v = dot(&js[a * d..(a + 1) * d], &js[b * d..(b + 1) * d]);
            g[a * c + b] = v;
            g[b * c + a] = v;
        }
    }
    g
}

/// (diag p − ppᵀ) G.
fn a_times(p: &[f32], g: &[f64], c: usize) -> Vec<f64> {
    let mut ag = vec![0f64; c * c];
    for a in 0..c {
        for b in 0..c {
            let pg: f64 = (0..c).map(|k| p[k] as f64 * g[k * c + b]).sum();
            ag[a * c + b] = p[a] as f64 * (g[a * c + b] - pg);
        }
    }
    ag
}

/// tr(M²) = Σ_ab M_ab M_ba.
fn trace_sq_ag(ag: &[f64], c: usize) -> f64 {
    (0..c).flat_map(|a| (0..c).map(move |b| (a, b))).map(|(a, b)| ag[a * c + b] * ag[b * c + a]).sum()
}

/// (tr((AG)²), tr(AG)) per sample: the exact scores of H = JᵀAJ.
pub fn gauss_newton(m: &Mlp, x: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
    let s = finish_low_rank(&low_rank_cpu(m, x, rows, None), true);
    (s.score, s.trace)
}

/// `scores` on `backend`. On the GPU: exact and Hutchinson scores with the paper's
/// statistic (finite differences and the released code's statistic run on the CPU).
pub fn scores_on(backend: &crate::device::Backend, m: &Mlp, x: &[f32], y: &[i64], first_global: u64, cfg: &ScoreConfig) -> Result<Scores> {
    cfg.validate(m.activation)?;
    let crate::device::Backend::Cuda(g) = backend else {
        return scores(m, x, y, first_global, cfg);
    };
    if !runs_on_gpu(cfg) {
        return scores(m, x, y, first_global, cfg);
    }
    let exact = cfg.estimator == Estimator::Exact;
    // The low-rank scores (all of them for piecewise-linear networks, the Gauss–Newton
    // part otherwise), finished on the device when it can.
    let low_rank = |probes: usize| -> Result<Scores> {
        let seed = cfg.seed ^ PROBE_KEY;
        Ok(match g.curvature_low_rank_scores(m, x, y.len(), probes, seed, first_global)? {
            Some([score, trace, gn]) => Scores { score, trace, gauss_newton: exact.then_some(gn) },
            None => finish_low_rank(&g.curvature_low_rank(m, x, y.len(), probes, seed, first_global)?, exact),
        })
    };
    if m.activation.piecewise_linear() {
        return low_rank(if exact { 0 } else { cfg.probes });
    }
    if cfg.probes == 0 {
        bail!("--probes must be at least 1 for this estimator");
    }
    let p = cfg.probes;
    let (sq, vd) = g.curvature_hvp(m, x, y, p, cfg.seed ^ PROBE_KEY, first_global)?;
    let mean = |v: &[f32], s: usize| (v[s * p..(s + 1) * p].iter().map(|&t| t as f64).sum::<f64>() / p as f64) as f32;
    let gauss_newton = if exact { low_rank(0)?.gauss_newton } else { None };
    Ok(Scores { score: (0..y.len()).map(|s| mean(&sq, s)).collect(), trace: (0..y.len()).map(|s| mean(&vd, s)).collect(), gauss_newton })
}

/// Whether `scores_on` uses the GPU for this configuration.
pub fn runs_on_gpu(cfg: &ScoreConfig) -> bool {
    cfg.estimator != Estimator::Fd && cfg.statistic == Statistic::Paper
}

/// Area under the ROC curve of `score` for finding `positive` samples (ties counted
/// half), by the rank-sum formula.
pub fn auroc(score: &[f32], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[a].partial_cmp(&score[b]).unwrap_or(std::cmp::Ordering::Equal));
    let (np, nn) = (positive.iter().filter(|&&p| p).count(), positive.iter().filter(|&&p| !p).count());
    if np == 0 || nn == 0 {
        return None;
    }
    // Average ranks over ties.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    Some((rank_sum - (np * (np + 1)) as f64 / 2.0) / (np as f64 * nn as f64))
}

/// Fraction of positives among the k highest scores.
pub fn precision_at_k(score: &[f32], positive: &[bool], k: usize) -> f64 {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[b].partial_cmp(&score[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let k = k.min(idx.len()).max(1);
    idx[..k].iter().filter(|&&i| positive[i]).count() as f64 / k as f64
}

/// What the estimators can do with `net` under `cfg`, checked before any work: the
/// activation that decides it (a CNN's: relu when every activation is piecewise
/// linear), or an error.
pub fn check_network(net: &crate::nn::network::Network, cfg: &ScoreConfig) -> Result<crate::nn::mlp::Activation> {
    use crate::nn::{mlp::Activation, network::Network};
    let activation = match net {
        Network::Mlp(m) => m.activation,
        Network::Graph(g) => if cnn::piecewise_linear(g) { Activation::Relu } else { Activation::Tanh },
    };
    cfg.validate(activation)?;
    if matches!(net, Network::Graph(_)) && cfg.estimator != Estimator::Fd && activation != Activation::Relu {
        bail!("exact Hessian-vector products of a convolutional network with smooth activations are not there yet; use --estimator fd");
    }
    Ok(activation)
}

/// Scores of the training-set samples `range` of a run or series (dataset rows
/// `sources`, labels `labels`) under one checkpoint loaded into `net`, in batches of
/// `batch`, inputs prepared as `train_cfg` trained them; CNNs in evaluation mode with
/// BatchNorm folded. A checkpoint whose scores are not all finite is an error.
#[allow(clippy::too_many_arguments)]
pub fn score_checkpoint(
    backend: &crate::device::Backend,
    net: &crate::nn::network::Network,
    train_cfg: &crate::nn::train::TrainConfig,
    x: &crate::data::Array,
    sample_shape: &[usize],
    (sources, labels): (&[u32], &[i64]),
    range: std::ops::Range<usize>,
    batch: usize,
    cfg: &ScoreConfig,
    progress: &dyn Fn(u64),
) -> Result<Scores> {
    let folded = fold(net)?;
    let plane = crate::nn::network::image_shape(sample_shape).map(|[_, h, w]| h * w).unwrap_or(x.row_len());
    let mut out = Scores { score: Vec::with_capacity(range.len()), trace: Vec::with_capacity(range.len()), gauss_newton: None };
    for chunk in crate::sched::chunks(range, batch.max(1)) {
        let inputs = crate::nn::train::inputs(train_cfg, x, &sources[chunk.clone()], plane);
        out.append(score_batch(backend, net, folded.as_ref(), &inputs, &labels[chunk.clone()], chunk.start as u64, cfg)?);
        progress(chunk.len() as u64);
    }
    check_finite(net, out)
}

/// Scores rows of prepared inputs (scaled and normalized as the network saw them in
/// training; `sample_shape` each) with their labels, in batches of `batch`: what
/// `score_checkpoint` does for a run, for inputs and weights from elsewhere (Python).
/// Row i is sample `first_index + i` for the probes' random streams.
#[allow(clippy::too_many_arguments)]
pub fn score_inputs(
    backend: &crate::device::Backend,
    net: &crate::nn::network::Network,
    inputs: &[f32],
    labels: &[i64],
    first_index: u64,
    batch: usize,
    cfg: &ScoreConfig,
    progress: &dyn Fn(u64),
) -> Result<Scores> {
    let rows = labels.len();
    if rows == 0 || inputs.len() % rows != 0 {
        bail!("{} input values for {rows} labels: give one row of inputs per label", inputs.len());
    }
    let row = inputs.len() / rows;
    let folded = fold(net)?;
    let mut out = Scores { score: Vec::with_capacity(rows), trace: Vec::with_capacity(rows), gauss_newton: None };
    for chunk in crate::sched::chunks(0..rows, batch.max(1)) {
        let x = &inputs[chunk.start * row..chunk.end * row];
        out.append(score_batch(backend, net, folded.as_ref(), x, &labels[chunk.clone()], first_index + chunk.start as u64, cfg)?);
        progress(chunk.len() as u64);
    }
    check_finite(net, out)
}

fn fold(net: &crate::nn::network::Network) -> Result<Option<crate::nn::graph::Graph>> {
    Ok(match net {
        crate::nn::network::Network::Graph(g) => Some(g.folded()?),
        crate::nn::network::Network::Mlp(_) => None,
    })
}

fn score_batch(
    backend: &crate::device::Backend,
    net: &crate::nn::network::Network,
    folded: Option<&crate::nn::graph::Graph>,
    inputs: &[f32],
    labels: &[i64],
    first: u64,
    cfg: &ScoreConfig,
) -> Result<Scores> {
    use crate::nn::network::Network;
    match (net, folded) {
        (Network::Mlp(m), _) => scores_on(backend, m, inputs, labels, first, cfg),
        (_, Some(g)) => cnn::scores(g, inputs, labels, first, cfg),
        _ => unreachable!("a graph network is folded first"),
    }
}

impl Scores {
    fn append(&mut self, s: Scores) {
        self.score.extend(s.score);
        self.trace.extend(s.trace);
        if let Some(g) = s.gauss_newton {
            self.gauss_newton.get_or_insert_with(Vec::new).extend(g);
        }
    }
}

fn check_finite(net: &crate::nn::network::Network, out: Scores) -> Result<Scores> {
    let not_finite = out.score.iter().chain(&out.trace).chain(out.gauss_newton.iter().flatten()).filter(|v| !v.is_finite()).count();
    if not_finite > 0 {
        let largest = net.clone().parameters_mut().iter().flat_map(|p| p.iter()).fold(0f32, |a, &w| a.max(w.abs()));
        bail!("{not_finite} scores are not finite (the network's float32 arithmetic overflows: its largest parameter is {largest:e}); no scores of it were written");
    }
    Ok(out)
}
