//! Memorization and membership inference from a pool of models trained on random
//! subsets (ALGORITHMS.md §5): the keep matrix, Feldman–Zhang memorization, LiRA's
//! stable confidence φ and its Gaussian tests (online, offline one-sided, fixed
//! variance, global threshold), and the attack metrics (ROC, AUC, TPR at low FPR,
//! balanced accuracy).
//!
//! Layout: per-model arrays are model-major, `(K, n)` — row k is model k — so a pool
//! gathered shard by shard is the concatenation of its shards' rows.

pub mod attack;
pub mod pool;
pub mod roc;

use crate::rng::Philox;
use anyhow::{bail, Result};

const STREAM_KEEP: u64 = 0x4B33_5000;

/// How many models each example is IN for: ⌊keep·K⌋, as tf-privacy's
/// `int(pkeep * num_experiments)`. Both IN and OUT need at least one model.
pub fn in_count(models: usize, keep: f64) -> Result<usize> {
    if !(keep > 0.0 && keep < 1.0) {
        bail!("--keep must be strictly between 0 and 1, got {keep}");
    }
    if models < 2 {
        bail!("a pool needs at least 2 models (--models {models}): every example must be IN for one and OUT for another");
    }
    let m = (keep * models as f64).floor() as usize;
    if m == 0 || m == models {
        bail!("--keep {keep} with --models {models} makes every example IN for {m} of {models} models; choose them so that 0 < ⌊keep·K⌋ < K");
    }
    Ok(m)
}

/// The keep matrix (K, n): 1 where example i is in model k's training subset.
/// tf-privacy's construction: per example, K uniforms ranked; the models whose rank is
/// below ⌊keep·K⌋ are IN, so every example is IN for exactly that many models. The
/// uniforms are Philox words keyed by (seed, example, model), so the matrix does not
/// depend on thread count, device or shard split.
pub fn keep_matrix(seed: u64, models: usize, n: usize, keep: f64) -> Result<Vec<u8>> {
    let m = in_count(models, keep)?;
    let rng = Philox::new(seed, STREAM_KEEP);
    let mut out = vec![0u8; models * n];
    let mut order: Vec<(u64, usize)> = Vec::with_capacity(models);
    for i in 0..n {
        order.clear();
        order.extend((0..models).map(|k| (rng.key64((i * models + k) as u64), k)));
        order.sort_unstable();
        for &(_, k) in &order[..m] {
            out[k * n + i] = 1;
        }
    }
    Ok(out)
}

/// One pass over a row of logits in float64, shifted by their maximum (so nothing
/// overflows): (e^{l_y − max}, Σ_{j≠y} e^{l_j − max}, Σ_j e^{l_j − max}). No allocation:
/// it runs once per (model, query, example) of a pool.
fn shifted_exponentials(logits: &[f32], y: usize) -> (f64, f64, f64) {
    let max = logits.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
    let (mut label, mut rest, mut total) = (0f64, 0f64, 0f64);
    for (j, &v) in logits.iter().enumerate() {
        let e = (v as f64 - max).exp();
        total += e;
        if j == y { label = e } else { rest += e }
    }
    (label, rest, total)
}

/// LiRA's stable confidence (tf-privacy's mi_lira_2021): with p = softmax(logits − max)
/// in float64, φ = log(p_y + 1e-45) − log(Σ_{j≠y} p_j + 1e-45). The sum over the other
/// classes is taken directly (not as 1 − p_y), so confident models keep their precision.
pub fn phi(logits: &[f32], y: usize) -> f64 {
    let (label, rest, total) = shifted_exponentials(logits, y);
    (label / total + 1e-45).ln() - (rest / total + 1e-45).ln()
}

/// Probability of the label under softmax, in float64.
pub fn label_probability(logits: &[f32], y: usize) -> f64 {
    let (label, _, total) = shifted_exponentials(logits, y);
    label / total
}

/// 1 when the predicted class (the first largest logit) is the label.
pub fn correct(logits: &[f32], y: usize) -> f64 {
    (crate::nn::layers::dense::argmax(logits) == y) as u8 as f64
}

/// Feldman–Zhang memorization of each example from per-model values (K, n) — 0/1
/// correctness or the label's probability — and the keep matrix (K, n):
///   mem(i) = mean_{k: i∈S_k} v_k(i) − mean_{k: i∉S_k} v_k(i),
/// with its standard error √(s²_in/n_in + s²_out/n_out) (sample variances).
pub fn feldman_zhang(values: &[f64], keep: &[u8], models: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if values.len() != models * n || keep.len() != models * n {
        bail!("internal error: {} values and {} keep flags for {models} models × {n} examples", values.len(), keep.len());
    }
    let mut mem = vec![0f64; n];
    let mut se = vec![0f64; n];
    for i in 0..n {
        let (mut s, mut ss, mut c) = ([0f64; 2], [0f64; 2], [0usize; 2]);
        for k in 0..models {
            let g = keep[k * n + i] as usize;
            let v = values[k * n + i];
            s[g] += v;
            ss[g] += v * v;
            c[g] += 1;
        }
        if c[0] == 0 || c[1] == 0 {
            bail!("example {i} is IN for {} and OUT for {} models; memorization needs both", c[1], c[0]);
        }
        let mean = [s[0] / c[0] as f64, s[1] / c[1] as f64];
        mem[i] = mean[1] - mean[0];
        let var = |g: usize| if c[g] > 1 { ((ss[g] - c[g] as f64 * mean[g] * mean[g]) / (c[g] - 1) as f64).max(0.0) } else { 0.0 };
        se[i] = (var(1) / c[1] as f64 + var(0) / c[0] as f64).sqrt();
    }
    Ok((mem, se))
}

/// How a Gaussian's centre is fitted to the shadow models' φ: tf-privacy uses the median.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Centre {
    Median,
    Mean,
}

/// The attacks on one target model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Attack {
    /// log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out).
    LiraOnline,
    /// One-sided: log Φ((φ − μ_out)/σ_out).
    LiraOffline,
    /// φ itself (one threshold for all examples).
    Global,
}

/// Gaussian fits of φ for one (example, query) over a set of shadow values.
fn centre(values: &mut [f64], how: Centre) -> f64 {
    match how {
        Centre::Mean => values.iter().sum::<f64>() / values.len() as f64,
        Centre::Median => {
            // numpy's median: the mean of the two middle values for an even count. A
            // selection, not a sort: it runs per example, query and target.
            let m = values.len();
            let (below, &mut upper, _) = values.select_nth_unstable_by(m / 2, |a, b| a.total_cmp(b));
            if m % 2 == 1 { upper } else { 0.5 * (below.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v)) + upper) }
        }
    }
}

/// Population standard deviation (numpy's default ddof = 0).
fn std_dev(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64).sqrt()
}

fn log_normal_density(x: f64, mu: f64, sigma: f64) -> f64 {
    let z = (x - mu) / sigma;
    -0.5 * z * z - sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
}

/// log Φ(z), accurate in the far lower tail (where Φ underflows) by its asymptotic series.
pub fn log_normal_cdf(z: f64) -> f64 {
    if z > -20.0 {
        (0.5 * libm::erfc(-z * std::f64::consts::FRAC_1_SQRT_2)).ln()
    } else {
        // Φ(z) = φ(z)/|z| · (1 − 1/z² + 3/z⁴ − 15/z⁶ + …)
        let z2 = z * z;
        -0.5 * z2 - (-z).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() + (1.0 - 1.0 / z2 + 3.0 / (z2 * z2) - 15.0 / (z2 * z2 * z2)).ln()
    }
}

/// φ of every (model, query, example) of a pool, stored example-major — (n, Q, K) — so
/// the shadows' values of one example, which every attack gathers, are contiguous.
pub struct Confidences {
    pub models: usize,
    pub queries: usize,
    pub n: usize,
    phi: Vec<f64>,
}

impl Confidences {
    /// From φ laid out model-major, `phi[(k·Q + q)·n + i]` (empty: no φ loaded).
    pub fn model_major(models: usize, queries: usize, n: usize, phi: Vec<f64>) -> Self {
        use rayon::prelude::*;
        let mut t = vec![0f64; phi.len()];
        if !phi.is_empty() {
            assert_eq!(phi.len(), models * queries * n, "internal error: φ for {models} models × {queries} queries × {n} examples");
            t.par_chunks_mut(queries * models).enumerate().for_each(|(i, row)| {
                for q in 0..queries {
                    for k in 0..models {
                        row[q * models + k] = phi[(k * queries + q) * n + i];
                    }
                }
            });
        }
        Self { models, queries, n, phi: t }
    }

    /// From logits (K, Q, n, C) and labels.
    pub fn from_logits(logits: &[f32], models: usize, queries: usize, n: usize, classes: usize, labels: &[i64]) -> Result<Self> {
        if logits.len() != models * queries * n * classes || labels.len() != n {
            bail!("internal error: {} logits for {models} models × {queries} queries × {n} examples × {classes} classes", logits.len());
        }
        let phi = logits.chunks(classes).enumerate().map(|(r, l)| phi(l, labels[r % n] as usize)).collect();
        Ok(Self::model_major(models, queries, n, phi))
    }

    /// φ of model k, query q, example i.
    pub fn at(&self, k: usize, q: usize, i: usize) -> f64 {
        self.phi[(i * self.queries + q) * self.models + k]
    }
}

/// Settings of the LiRA family.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LiraSettings {
    pub attack: Attack,
    pub centre: Centre,
    /// One σ for all examples: the standard deviation of every IN (resp. OUT) φ of the
    /// shadow models around their global mean, as tf-privacy computes it (which, as a
    /// quirk, also takes σ_out from the IN values; rote takes it from the OUT values).
    pub fixed_variance: bool,
    /// An example with too few IN or OUT shadows scores NaN instead of failing the
    /// attack (Choi et al.'s curve over small shadow counts leaves such examples out).
    pub skip_short: bool,
}

/// Scores of model `target`'s membership for every example, against the `shadows`
/// (which must not contain the target), averaged over queries; higher means "member".
/// Errors, naming the example, when one has fewer IN or OUT shadows than the attack needs
/// (online: 1 of each with a fixed variance, 2 otherwise; offline: OUT only).
pub fn lira_scores(conf: &Confidences, keep: &[u8], target: usize, shadows: &[usize], s: LiraSettings) -> Result<Vec<f64>> {
    let n = conf.n;
    if shadows.contains(&target) {
        bail!("internal error: the target model {target} is among its own shadows");
    }
    let need_in = s.attack == Attack::LiraOnline;
    let need = if s.fixed_variance { 1 } else { 2 };
    let fixed = if s.fixed_variance && s.attack != Attack::Global {
        let (mut ins, mut outs) = (vec![], vec![]);
        for &k in shadows {
            for q in 0..conf.queries {
                for i in 0..n {
                    if keep[k * n + i] == 1 { ins.push(conf.at(k, q, i)) } else { outs.push(conf.at(k, q, i)) }
                }
            }
        }
        if outs.is_empty() || (need_in && ins.is_empty()) {
            bail!("the shadow models give no {} values for a fixed variance", if outs.is_empty() { "OUT" } else { "IN" });
        }
        Some((if ins.is_empty() { f64::NAN } else { std_dev(&ins) }, std_dev(&outs)))
    } else {
        None
    };
    // Examples in parallel, each worker with its own IN/OUT buffers.
    let score = |i: usize, (ins, outs): &mut (Vec<f64>, Vec<f64>)| -> Result<f64> {
        let mut total = 0f64;
        for q in 0..conf.queries {
            let x = conf.at(target, q, i);
            if s.attack == Attack::Global {
                total += x;
                continue;
            }
            ins.clear();
            outs.clear();
            for &k in shadows {
                if keep[k * n + i] == 1 { ins.push(conf.at(k, q, i)) } else { outs.push(conf.at(k, q, i)) }
            }
            if outs.len() < need || (need_in && ins.len() < need) {
                if s.skip_short {
                    return Ok(f64::NAN);
                }
                bail!(
                    "example {i} has {} IN and {} OUT shadow models; {:?} needs at least {need} of each{} — use more models{}",
                    ins.len(),
                    outs.len(),
                    s.attack,
                    if need_in { "" } else { " OUT" },
                    if s.fixed_variance { "" } else { " or --fixed-variance" }
                );
            }
            let (sd_in, sd_out) = fixed.unwrap_or_else(|| (if need_in { std_dev(ins) } else { f64::NAN }, std_dev(outs)));
            let mu_out = centre(outs, s.centre);
            total += match s.attack {
                Attack::LiraOnline => {
                    let mu_in = centre(ins, s.centre);
                    log_normal_density(x, mu_in, sd_in + 1e-30) - log_normal_density(x, mu_out, sd_out + 1e-30)
                }
                Attack::LiraOffline => log_normal_cdf((x - mu_out) / (sd_out + 1e-30)),
                Attack::Global => unreachable!(),
            };
        }
        Ok(total / conf.queries as f64)
    };
    use rayon::prelude::*;
    let scores: Vec<f64> = (0..n).into_par_iter().map_init(|| (Vec::with_capacity(shadows.len()), Vec::with_capacity(shadows.len())), |buf, i| score(i, buf)).collect::<Result<_>>()?;
    Ok(scores)
}

/// RMIA (Zarifzadeh, Liu, Shokri, ICML 2024). From the label probabilities of every model
/// on the audited examples `p_x` (K, n) and on population samples `p_z` (K, m) — examples
/// no model trained on — the score of example x against model `target` is
///   Pr_z[ LR(x, z) > γ ],  LR(x, z) = (p(x|θ)/p(x)) / (p(z|θ)/p(z)),
/// with p(·) the mean over the shadow models (online) or, offline (`offline_a = Some(a)`),
/// ½((1 + a)·p_OUT(·) + (1 − a)) from the OUT shadows only. Population samples are OUT
/// for every shadow, so their p(z) follows the same rule.
pub fn rmia_scores(p_x: &[f64], keep: &[u8], p_z: &[f64], models: usize, target: usize, shadows: &[usize], gamma: f64, offline_a: Option<f64>) -> Result<Vec<f64>> {
    let n = keep.len() / models.max(1);
    let m = p_z.len() / models.max(1);
    if p_x.len() != models * n || p_z.len() != models * m || m == 0 {
        bail!("internal error: RMIA needs (K, n) and (K, m > 0) probabilities, got {} and {}", p_x.len(), p_z.len());
    }
    if !(gamma.is_finite() && gamma > 0.0) {
        bail!("--gamma must be a positive number, got {gamma}");
    }
    if shadows.is_empty() || shadows.contains(&target) {
        bail!("RMIA needs at least one reference model other than the target");
    }
    let marginal = |probs: &[f64], cols: usize, j: usize, member: &dyn Fn(usize) -> bool| -> Result<f64> {
        match offline_a {
            None => Ok(shadows.iter().map(|&k| probs[k * cols + j]).sum::<f64>() / shadows.len() as f64),
            Some(a) => {
                let outs: Vec<f64> = shadows.iter().filter(|&&k| !member(k)).map(|&k| probs[k * cols + j]).collect();
                if outs.is_empty() {
                    bail!("example {j} has no OUT reference model; offline RMIA needs one");
                }
                let p_out = outs.iter().sum::<f64>() / outs.len() as f64;
                Ok(0.5 * ((1.0 + a) * p_out + (1.0 - a)))
            }
        }
    };
    let mut ratio_z: Vec<f64> = (0..m).map(|j| Ok(p_z[target * m + j] / marginal(p_z, m, j, &|_| false)?)).collect::<Result<_>>()?;
    ratio_z.sort_unstable_by(|a, b| a.total_cmp(b));
    (0..n)
        .map(|i| {
            let ratio_x = p_x[target * n + i] / marginal(p_x, n, i, &|k| keep[k * n + i] == 1)?;
            // LR > γ ⟺ ratio_z < ratio_x / γ.
            let below = ratio_z.partition_point(|&r| r < ratio_x / gamma);
            Ok(below as f64 / m as f64)
        })
        .collect()
}
