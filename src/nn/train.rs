//! Training MLPs with SGD (momentum, weight decay, step or cosine schedule), with
//! optional injected corruption: symmetric label noise and duplicated samples with a
//! different label. A run directory holds everything the curvature scores need:
//!
//!   run.json            the configuration (data spec, model spec, …)
//!   labels.npy          int64 training labels as used (noise applied, duplicates appended)
//!   sources.npy         uint32 dataset row of every training sample (duplicates repeat one)
//!   corrupted.npy       uint8 mask: 1 where the label was flipped or the row is a duplicate
//!   metrics.csv         per epoch: loss and accuracy (train, test), learning rate, seconds
//!   checkpoints/epoch-NNN.safetensors

use super::{checkpoint, mlp::Mlp};
use crate::data::{Dataset, Split};
use crate::rng::Philox;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// ×0.1 at 50% and at 75% of the epochs.
    Step,
    Cosine,
    Constant,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub data: String,
    pub model: String,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    pub label_noise: f64,
    pub duplicate_conflicts: usize,
    pub seed: u64,
    /// Inputs are multiplied by this (1/max pixel for uint8 data).
    #[serde(default)]
    pub input_scale: f32,
}

/// The training set as used: dataset rows (with repeats) and labels.
pub struct TrainingSet {
    pub sources: Vec<u32>,
    pub labels: Vec<i64>,
    pub corrupted: Vec<u8>,
}

const STREAM_CORRUPT: u64 = 0xBAD;
const STREAM_EPOCH: u64 = 0xE90C;

/// Applies the corruption of `cfg` to `train`: a fixed random fraction of labels is
/// replaced by a different class, and K samples are appended again with a different
/// label. Deterministic from the seed.
pub fn corrupt(train: &Split, classes: usize, label_noise: f64, duplicates: usize, seed: u64) -> Result<TrainingSet> {
    let n = train.len();
    if !(0.0..1.0).contains(&label_noise) {
        bail!("--label-noise must be in [0, 1), got {label_noise}");
    }
    if duplicates > n {
        bail!("--duplicate-conflicts {duplicates} exceeds the {n} training samples");
    }
    if classes < 2 && (label_noise > 0.0 || duplicates > 0) {
        bail!("corruption needs at least two classes");
    }
    let order = Philox::new(seed, STREAM_CORRUPT).permutation(n);
    let pick = Philox::new(seed, STREAM_CORRUPT + 1);
    let other = |label: i64, k: u64| -> i64 {
        let shift = 1 + (pick.word(k) as u64 % (classes as u64 - 1)) as i64;
        (label + shift).rem_euclid(classes as i64)
    };
    let flips = (label_noise * n as f64).round() as usize;
    let mut labels = train.y.clone();
    let mut corrupted = vec![0u8; n];
    for &i in &order[..flips] {
        labels[i as usize] = other(train.y[i as usize], i as u64);
        corrupted[i as usize] = 1;
    }
    let mut sources: Vec<u32> = (0..n as u32).collect();
    // Duplicates come from samples whose label was not flipped.
    for (k, &i) in order[flips..].iter().take(duplicates).enumerate() {
        sources.push(i);
        labels.push(other(train.y[i as usize], (n + k) as u64));
        corrupted.push(1);
    }
    Ok(TrainingSet { sources, labels, corrupted })
}

/// Scaled float inputs of dataset rows `rows`.
pub fn gather(x: &crate::data::Array, rows: &[u32], scale: f32) -> Vec<f32> {
    let d = x.row_len();
    let mut out = vec![0f32; rows.len() * d];
    for (o, &r) in out.chunks_mut(d).zip(rows) {
        x.rows_f32_into(r as usize, r as usize + 1, o);
        if scale != 1.0 {
            o.iter_mut().for_each(|v| *v *= scale);
        }
    }
    out
}

/// Pixels (uint8) are divided by the training split's largest value (255 for
/// Fashion-MNIST, 16 for digits), so inputs lie in [0, 1]; float data is used as is.
pub fn input_scale_for(ds: &Dataset) -> f32 {
    if ds.train.x.dtype != crate::data::DType::U8 {
        return 1.0;
    }
    let max = ds.train.x.bytes().iter().copied().max().unwrap_or(0);
    if max > 0 { 1.0 / max as f32 } else { 1.0 }
}

/// Mean loss and accuracy of `m` on (x rows, labels), in batches.
pub fn evaluate(m: &Mlp, x: &crate::data::Array, rows: &[u32], labels: &[i64], scale: f32) -> (f64, f64) {
    let c = m.classes();
    let mut loss = 0f64;
    let mut correct = 0usize;
    for (chunk, ys) in rows.chunks(2048).zip(labels.chunks(2048)) {
        let xb = gather(x, chunk, scale);
        let f = m.forward(&xb, chunk.len());
        loss += m.losses(&f, ys).iter().map(|&v| v as f64).sum::<f64>();
        for (r, &y) in ys.iter().enumerate() {
            let p = &f.probs[r * c..(r + 1) * c];
            let arg = (0..c).fold(0, |b, k| if p[k] > p[b] { k } else { b });
            correct += (arg as i64 == y) as usize;
        }
    }
    (loss / rows.len().max(1) as f64, correct as f64 / rows.len().max(1) as f64)
}

pub fn learning_rate(cfg: &TrainConfig, epoch: usize) -> f32 {
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Step => {
            let frac = epoch as f64 / cfg.epochs as f64;
            cfg.lr * if frac >= 0.75 { 0.01 } else if frac >= 0.5 { 0.1 } else { 1.0 }
        }
        Schedule::Cosine => cfg.lr * 0.5 * (1.0 + (std::f32::consts::PI * epoch as f32 / cfg.epochs as f32).cos()),
    }
}

pub fn checkpoint_path(run: &Path, epoch: usize) -> PathBuf {
    run.join("checkpoints").join(format!("epoch-{epoch:03}.safetensors"))
}

/// Trains and writes the run directory. `progress(batches_done, total)` is called as it
/// goes. On a CUDA backend the SGD steps run on the device (same batches, same update);
/// evaluation and checkpoints use the parameters copied back after each epoch.
pub fn train(ds: &Dataset, cfg: &TrainConfig, run: &Path, backend: &crate::device::Backend, progress: &dyn Fn(u64, u64)) -> Result<Mlp> {
    let (sizes, activation) = super::mlp::parse_spec(&cfg.model)?;
    let d = ds.train.features();
    if sizes[0] != d {
        bail!("model '{}' takes {} inputs but '{}' has {} features per sample", cfg.model, sizes[0], cfg.data, d);
    }
    let classes = *sizes.last().unwrap();
    if let Some(&bad) = ds.train.y.iter().find(|&&y| y as usize >= classes) {
        bail!("model '{}' has {classes} outputs but the data has label {bad}", cfg.model);
    }
    if cfg.epochs == 0 || cfg.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    if run.join("run.json").exists() {
        bail!("{} already holds a training run; choose another --out", run.display());
    }
    let set = corrupt(&ds.train, classes, cfg.label_noise, cfg.duplicate_conflicts, cfg.seed)?;
    std::fs::create_dir_all(run.join("checkpoints")).with_context(|| format!("cannot create {}", run.display()))?;
    crate::report::write_json(&run.join("run.json"), cfg)?;
    crate::report::write_npy(&run.join("labels.npy"), &[set.labels.len()], &set.labels)?;
    crate::report::write_npy(&run.join("sources.npy"), &[set.sources.len()], &set.sources)?;
    crate::report::write_npy(&run.join("corrupted.npy"), &[set.corrupted.len()], &set.corrupted)?;

    let mut m = Mlp::init(&sizes, activation, cfg.seed);
    let mut vel_w: Vec<Vec<f32>> = m.weights.iter().map(|w| vec![0.0; w.len()]).collect();
    let mut vel_b: Vec<Vec<f32>> = m.biases.iter().map(|b| vec![0.0; b.len()]).collect();
    let n = set.sources.len();
    let batches_per_epoch = n.div_ceil(cfg.batch);
    let total = (batches_per_epoch * cfg.epochs) as u64;
    let mut metrics = String::from("epoch,train_loss,train_accuracy,test_loss,test_accuracy,learning_rate,seconds\n");
    let test_rows: Option<Vec<u32>> = ds.test.as_ref().map(|t| (0..t.len() as u32).collect());
    let mut device_trainer = match backend {
        crate::device::Backend::Cuda(g) => Some(g.trainer(&m, &gather(&ds.train.x, &set.sources, cfg.input_scale), d)?),
        crate::device::Backend::Cpu => None,
    };
    let t0 = Instant::now();
    for epoch in 0..cfg.epochs {
        let lr = learning_rate(cfg, epoch);
        let order = Philox::new(cfg.seed, STREAM_EPOCH + epoch as u64).permutation(n);
        for (b, idx) in order.chunks(cfg.batch).enumerate() {
            let ys: Vec<i64> = idx.iter().map(|&i| set.labels[i as usize]).collect();
            if let Some(t) = device_trainer.as_mut() {
                t.step(&m, idx, &ys, lr, cfg.momentum, cfg.weight_decay)?;
                progress((epoch * batches_per_epoch + b + 1) as u64, total);
                continue;
            }
            let rows: Vec<u32> = idx.iter().map(|&i| set.sources[i as usize]).collect();
            let xb = gather(&ds.train.x, &rows, cfg.input_scale);
            let f = m.forward(&xb, rows.len());
            let (gz, _) = m.backward(&f, &ys, 1.0 / rows.len() as f32);
            let (dw, db) = m.param_grads(&f, &xb, &gz);
            for l in 0..m.layers() {
                sgd_step(&mut m.weights[l], &dw[l], &mut vel_w[l], lr, cfg.momentum, cfg.weight_decay);
                sgd_step(&mut m.biases[l], &db[l], &mut vel_b[l], lr, cfg.momentum, cfg.weight_decay);
            }
            progress((epoch * batches_per_epoch + b + 1) as u64, total);
        }
        if let Some(t) = &device_trainer {
            t.download(&mut m)?;
        }
        let (train_loss, train_acc) = evaluate(&m, &ds.train.x, &set.sources, &set.labels, cfg.input_scale);
        if !train_loss.is_finite() || m.weights.iter().any(|w| w.iter().any(|v| !v.is_finite())) {
            bail!(
                "epoch {}: the training loss became {train_loss} (diverged); try a smaller --lr than {}",
                epoch + 1,
                cfg.lr
            );
        }
        let (test_loss, test_acc) = match (&ds.test, &test_rows) {
            (Some(t), Some(rows)) => evaluate(&m, &t.x, rows, &t.y, cfg.input_scale),
            _ => (f64::NAN, f64::NAN),
        };
        checkpoint::save(&m, &checkpoint_path(run, epoch + 1))?;
        metrics.push_str(&format!(
            "{},{train_loss:.6},{train_acc:.6},{},{},{lr},{:.3}\n",
            epoch + 1,
            if test_loss.is_nan() { String::new() } else { format!("{test_loss:.6}") },
            if test_acc.is_nan() { String::new() } else { format!("{test_acc:.6}") },
            t0.elapsed().as_secs_f64()
        ));
        crate::report::write_atomic(&run.join("metrics.csv"), |w| Ok(w.write_all(metrics.as_bytes())?))?;
    }
    Ok(m)
}

/// PyTorch's SGD: v ← μv + (g + λw); w ← w − ηv.
fn sgd_step(w: &mut [f32], g: &[f32], v: &mut [f32], lr: f32, momentum: f32, wd: f32) {
    for ((wi, gi), vi) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *vi = momentum * *vi + gi + wd * *wi;
        *wi -= lr * *vi;
    }
}
