//! Retrieval-augmented prediction (kNN-LM; RetroPrompt): a store of keys (training
//! embeddings) with their labels; for a query, its k nearest keys — rote's exact kNN —
//! give a distribution over labels,
//!   p_knn(c) = Σ_{j ∈ top-k, y_j = c} softmax_j(s_j / T),
//! with s_j the inner product (`ip`) or minus the squared L2 distance (`l2`, as faiss
//! reports it and kNN-LM uses it), which is interpolated with the model's probabilities.

use crate::diffusion::knn::{Metric, Neighbours};
use anyhow::{bail, Result};

/// How the model's and the retrieved distributions are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// p = (1 − λ)·p_model + λ·p_knn: a distribution.
    Standard,
    /// RetroPrompt's code: log((1 − λ)·e^{p_model} + λ·e^{p_knn}) of the probabilities
    /// themselves — a quirk (not a distribution); its argmax is the prediction.
    Retroprompt,
}

/// p_knn (Q, C) from the neighbours of Q queries, the store's labels and temperature T.
pub fn knn_probabilities(neighbours: &Neighbours, metric: Metric, labels: &[i64], classes: usize, temperature: f64) -> Result<Vec<f64>> {
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("--temperature must be a positive number, got {temperature}");
    }
    let k = neighbours.k;
    let q = neighbours.indices.len() / k.max(1);
    let mut out = vec![0f64; q * classes];
    for (r, row) in out.chunks_mut(classes).enumerate() {
        let idx = &neighbours.indices[r * k..(r + 1) * k];
        let s: Vec<f64> = neighbours.values[r * k..(r + 1) * k].iter().map(|&v| if metric == Metric::Ip { v } else { -v } / temperature).collect();
        let max = s.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
        let weights: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for (&j, w) in idx.iter().zip(&weights) {
            let y = labels[j as usize];
            if y < 0 || y as usize >= classes {
                bail!("label {y} of store entry {j} is outside 0..{classes}");
            }
            row[y as usize] += w / total;
        }
    }
    Ok(out)
}

/// Combines p_model and p_knn (both (Q, C)) with weight λ on the retrieved one.
pub fn combine(p_model: &[f64], p_knn: &[f64], lambda: f64, how: Combine) -> Result<Vec<f64>> {
    if !(0.0..=1.0).contains(&lambda) {
        bail!("--lambda must be in [0, 1], got {lambda}");
    }
    if p_model.len() != p_knn.len() {
        bail!("the model gives {} probabilities and retrieval {}; they must have the same (queries, classes) shape", p_model.len(), p_knn.len());
    }
    Ok(p_model
        .iter()
        .zip(p_knn)
        .map(|(&m, &r)| match how {
            Combine::Standard => (1.0 - lambda) * m + lambda * r,
            Combine::Retroprompt => ((1.0 - lambda) * m.exp() + lambda * r.exp()).ln(),
        })
        .collect())
}

/// What a retrieval-augmented prediction is computed with.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub k: usize,
    pub metric: Metric,
    pub temperature: f64,
    pub lambda: f64,
    pub combine: Combine,
}

/// For queries (Q, d) against a store of keys (N, d) with labels: p_knn (Q, C) from the
/// exact k nearest, and its combination with the model's probabilities `p_model`
/// (Q, C; without them the combination is p_knn itself).
pub fn classify(backend: &crate::device::Backend, keys: &crate::data::Array, labels: &[i64], queries: &[f32], p_model: Option<&[f64]>, classes: usize, s: &Settings) -> Result<(Vec<f64>, Vec<f64>)> {
    let store = crate::diffusion::TrainingSet::new(keys, crate::diffusion::PixelRange::MODEL)?;
    let neighbours = crate::diffusion::knn_on(backend, &store, queries, s.k, s.metric)?;
    let p_knn = knn_probabilities(&neighbours, s.metric, labels, classes, s.temperature)?;
    let combined = match p_model {
        Some(m) => combine(m, &p_knn, s.lambda, s.combine)?,
        None => p_knn.clone(),
    };
    Ok((p_knn, combined))
}

/// The argmax of each row (the first of equal maxima).
pub fn predictions(p: &[f64], classes: usize) -> Vec<usize> {
    p.chunks(classes).map(|row| (0..classes).fold(0, |b, j| if row[j] > row[b] { j } else { b })).collect()
}
