//! Attack metrics over (score, is-member) pairs: the ROC curve with tied scores taken
//! as one step (so the AUC counts a tie as half, as the Mann–Whitney statistic does),
//! AUC, TPR at FPR ≤ α, balanced accuracy max(1 − (FPR + 1 − TPR)/2), and bootstrap
//! confidence intervals from Poisson(1) resampling weights (Philox-keyed).

use crate::rng::Philox;
use anyhow::{bail, Result};

/// The low false-positive rates the field reports.
pub const FPRS: [f64; 3] = [1e-3, 1e-4, 1e-2];

#[derive(Clone, Debug, serde::Serialize)]
pub struct Metrics {
    pub auc: f64,
    /// TPR at FPR ≤ 0.1%, 0.01%, 1% (FPRS).
    pub tpr_at_fpr: [f64; 3],
    pub balanced_accuracy: f64,
}

/// Pairs sorted by descending score, with the boundaries of groups of equal scores.
pub struct Roc {
    order: Vec<u32>,
    members: Vec<bool>,
    group_ends: Vec<usize>,
}

impl Roc {
    pub fn new(scores: &[f64], members: &[bool]) -> Result<Self> {
        if scores.len() != members.len() {
            bail!("internal error: {} scores for {} membership labels", scores.len(), members.len());
        }
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            bail!("score {i} is NaN");
        }
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
        let mut group_ends = vec![];
        for p in 1..=order.len() {
            if p == order.len() || scores[order[p] as usize] != scores[order[p - 1] as usize] {
                group_ends.push(p);
            }
        }
        Ok(Self { order, members: members.to_vec(), group_ends })
    }

    /// The ROC points (FPR, TPR), from (0, 0) to (1, 1), with pair weights (1 each by
    /// default).
    pub fn curve(&self, weights: Option<&[f64]>) -> Result<Vec<(f64, f64)>> {
        let w = |i: usize| weights.map_or(1.0, |w| w[i]);
        let (mut pos, mut neg) = (0f64, 0f64);
        for (i, &m) in self.members.iter().enumerate() {
            if m { pos += w(i) } else { neg += w(i) }
        }
        if pos == 0.0 || neg == 0.0 {
            bail!("the attack needs both members and non-members ({pos} and {neg})");
        }
        let mut points = Vec::with_capacity(self.group_ends.len() + 1);
        points.push((0.0, 0.0));
        let (mut tp, mut fp, mut start) = (0f64, 0f64, 0);
        for &end in &self.group_ends {
            for &i in &self.order[start..end] {
                let i = i as usize;
                if self.members[i] { tp += w(i) } else { fp += w(i) }
            }
            start = end;
            points.push((fp / neg, tp / pos));
        }
        Ok(points)
    }

    pub fn metrics(&self, weights: Option<&[f64]>) -> Result<Metrics> {
        let points = self.curve(weights)?;
        let auc = points.windows(2).map(|p| (p[1].0 - p[0].0) * 0.5 * (p[1].1 + p[0].1)).sum();
        let tpr_at = |alpha: f64| points.iter().filter(|p| p.0 <= alpha).map(|p| p.1).fold(0.0, f64::max);
        let balanced_accuracy = points.iter().map(|&(f, t)| 1.0 - (f + 1.0 - t) / 2.0).fold(0.0, f64::max);
        Ok(Metrics { auc, tpr_at_fpr: FPRS.map(tpr_at), balanced_accuracy })
    }

    /// The 2.5% and 97.5% quantiles of each metric over `replicates` bootstrap
    /// resamples of the pairs.
    pub fn bootstrap(&self, replicates: usize, seed: u64) -> Result<(Metrics, Metrics)> {
        if replicates == 0 {
            bail!("--bootstrap needs at least 1 replicate");
        }
        let n = self.members.len();
        let mut samples: Vec<Metrics> = Vec::with_capacity(replicates);
        for r in 0..replicates {
            let rng = Philox::new(seed, 0xB007_0000 + r as u64);
            let weights: Vec<f64> = (0..n).map(|i| poisson_one(rng.uniform(i as u64) as f64)).collect();
            samples.push(self.metrics(Some(&weights))?);
        }
        let quantile = |f: &dyn Fn(&Metrics) -> f64, q: f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_unstable_by(|a, b| a.total_cmp(b));
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        let at = |q: f64| Metrics {
            auc: quantile(&|m| m.auc, q),
            tpr_at_fpr: [0, 1, 2].map(|j| quantile(&|m: &Metrics| m.tpr_at_fpr[j], q)),
            balanced_accuracy: quantile(&|m| m.balanced_accuracy, q),
        };
        Ok((at(0.025), at(0.975)))
    }
}

/// A Poisson(1) draw from a uniform by inverting its CDF.
fn poisson_one(u: f64) -> f64 {
    let (mut k, mut p, mut cdf) = (0usize, (-1f64).exp(), (-1f64).exp());
    while u > cdf && k < 20 {
        k += 1;
        p /= k as f64;
        cdf += p;
    }
    k as f64
}
