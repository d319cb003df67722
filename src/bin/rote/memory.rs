//! `rote knn classify`: retrieval-augmented prediction over a store of embeddings.

use super::{open_device, print_json, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::Args;
use rote::data::Array;
use rote::diffusion::knn::Metric;
use rote::diffusion::{knn_on, PixelRange, TrainingSet};
use rote::memory::retrieval::{self, Combine};
use rote::report;
use std::path::PathBuf;

#[derive(Args)]
pub struct ClassifyArgs {
    /// Keys: the store's embeddings, float (N, d).
    #[arg(long)]
    store: PathBuf,
    /// The store's labels, integers (N,).
    #[arg(long)]
    labels: PathBuf,
    /// Query embeddings, float (Q, d).
    #[arg(long)]
    queries: PathBuf,
    /// The model's probabilities for the queries, (Q, C); without them the prediction is
    /// p_knn alone.
    #[arg(long)]
    probs: Option<PathBuf>,
    /// The queries' true labels (Q,): report accuracies.
    #[arg(long)]
    query_labels: Option<PathBuf>,
    #[arg(short, long, default_value_t = 16)]
    k: usize,
    /// Weight of the retrieved distribution.
    #[arg(long, default_value_t = 0.2)]
    lambda: f64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, value_enum, default_value = "ip")]
    metric: Metric,
    #[arg(long, value_enum, default_value = "standard")]
    combine: Combine,
    /// Output directory: p_knn.npy and combined.npy (float64, Q×C), predictions.npy.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

fn floats(path: &PathBuf, what: &str) -> Result<(Array, usize, usize)> {
    let a = Array::open_npy(path)?;
    if a.dtype.is_integer() || a.shape.len() != 2 {
        bail!("{}: {what} must be a float (rows, columns) array, got {} {:?}", path.display(), a.dtype.name(), a.shape);
    }
    if let Some((i, v)) = a.first_non_finite() {
        bail!("{}: {what} value {i} is {v}", path.display());
    }
    let (r, c) = (a.shape[0], a.shape[1]);
    Ok((a, r, c))
}

pub fn classify_cmd(a: ClassifyArgs) -> Result<()> {
    let (keys, n, d) = floats(&a.store, "the store's keys")?;
    let labels = Array::open_npy(&a.labels)?.to_i64().with_context(|| format!("{}: the store's labels", a.labels.display()))?;
    if labels.len() != n {
        bail!("{} has {} labels for the {n} keys of {}", a.labels.display(), labels.len(), a.store.display());
    }
    let (queries, q, qd) = floats(&a.queries, "the queries")?;
    if qd != d {
        bail!("{}: queries have {qd} dimensions, the store's keys {d}", a.queries.display());
    }
    let probs = a.probs.as_ref().map(|p| floats(p, "the model's probabilities")).transpose()?;
    let classes = match &probs {
        Some((_, r, c)) if *r != q => bail!("{}: {r} rows of probabilities for {q} queries", a.probs.as_ref().unwrap().display()),
        Some((_, _, c)) => *c,
        None => labels.iter().copied().max().unwrap_or(0).max(0) as usize + 1,
    };
    let truth = a.query_labels.as_ref().map(|p| Array::open_npy(p).and_then(|l| l.to_i64())).transpose()?;
    if let Some(t) = &truth {
        if t.len() != q {
            bail!("{}: {} labels for {q} queries", a.query_labels.as_ref().unwrap().display(), t.len());
        }
    }
    rote::diffusion::knn::check_k(a.k, n)?;
    let backend = open_device(a.device.device)?;
    let t0 = std::time::Instant::now();
    let store = TrainingSet::new(&keys, PixelRange::MODEL)?;
    let neighbours = knn_on(&backend, &store, &queries.to_f32(), a.k, a.metric)?;
    let p_knn = retrieval::knn_probabilities(&neighbours, a.metric, &labels, classes, a.temperature)?;
    let p_model: Option<Vec<f64>> = probs.as_ref().map(|(p, _, _)| p.to_f32().iter().map(|&v| v as f64).collect());
    let combined = match &p_model {
        Some(m) => retrieval::combine(m, &p_knn, a.lambda, a.combine)?,
        None => p_knn.clone(),
    };
    let seconds = t0.elapsed().as_secs_f64();
    let predicted = retrieval::predictions(&combined, classes);
    report::create_out_dir(&a.out)?;
    report::write_npy(&a.out.join("p_knn.npy"), &[q, classes], &p_knn)?;
    report::write_npy(&a.out.join("combined.npy"), &[q, classes], &combined)?;
    report::write_npy(&a.out.join("predictions.npy"), &[q], &predicted.iter().map(|&c| c as i64).collect::<Vec<_>>())?;
    let accuracy = |p: &[f64]| truth.as_ref().map(|t| retrieval::predictions(p, classes).iter().zip(t).filter(|(a, b)| **a as i64 == **b).count() as f64 / q as f64);
    let value = serde_json::json!({
        "queries": q, "store": n, "classes": classes, "k": a.k, "lambda": a.lambda, "temperature": a.temperature,
        "metric": a.metric, "combine": a.combine, "seconds": seconds, "device": backend.device().to_string(),
        "accuracy": accuracy(&combined), "accuracy_model": p_model.as_deref().and_then(accuracy), "accuracy_knn": accuracy(&p_knn), "out": a.out,
    });
    if a.json {
        print_json(&value);
    } else {
        println!("{q} queries against {n} stored keys (k = {}, λ = {}) in {seconds:.3} s → {}", a.k, a.lambda, a.out.display());
        if let Some(acc) = value["accuracy"].as_f64() {
            println!(
                "accuracy {:.4} (model alone {}, retrieval alone {:.4})",
                acc,
                value["accuracy_model"].as_f64().map_or("n/a".into(), |v| format!("{v:.4}")),
                value["accuracy_knn"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
