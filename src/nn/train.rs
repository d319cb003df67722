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
//!   optimizer.safetensors  the SGD momentum after the last finished epoch (`--resume`)
//!   complete.json       written last: the run finished (an interrupted run lacks it)

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

impl TrainConfig {
    /// Rejects settings training cannot use, before anything is written.
    pub fn validate(&self) -> Result<()> {
        super::mlp::parse_spec(&self.model)?;
        if self.epochs == 0 || self.batch == 0 {
            bail!("--epochs and --batch must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive finite number, got {}", self.lr);
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            bail!("--momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!("--weight-decay must be a finite number ≥ 0, got {}", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.label_noise) {
            bail!("--label-noise must be in [0, 1), got {}", self.label_noise);
        }
        Ok(())
    }
}

/// SGD's momentum buffers, one per weight matrix and bias vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Momentum {
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<Vec<f32>>,
}

impl Momentum {
    pub fn zeros(m: &Mlp) -> Self {
        Self { weights: m.weights.iter().map(|w| vec![0.0; w.len()]).collect(), biases: m.biases.iter().map(|b| vec![0.0; b.len()]).collect() }
    }
}

/// What `complete.json` records.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub epochs: usize,
    pub seconds: f64,
}

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const COMPLETE_FILE: &str = "complete.json";

/// Reads a run's configuration (run.json).
pub fn open_run(run: &Path) -> Result<TrainConfig> {
    let run_json = run.join("run.json");
    let text = std::fs::read_to_string(&run_json).with_context(|| format!("{} is not a training run (no run.json); make one with `rote train`", run.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a rote run description", run_json.display()))
}

/// Ok when the run finished; otherwise an error saying how far it got.
pub fn check_complete(run: &Path, cfg: &TrainConfig) -> Result<()> {
    if run.join(COMPLETE_FILE).is_file() {
        return Ok(());
    }
    let done = saved_epoch(run).ok().flatten().unwrap_or(0);
    bail!(
        "{} is an unfinished training run ({done} of {} epochs saved; it was interrupted or failed); continue it with `rote train --resume --out {}`",
        run.display(),
        cfg.epochs,
        run.display()
    )
}

/// The last epoch whose checkpoint, metrics and optimizer state were all saved.
fn saved_epoch(run: &Path) -> Result<Option<usize>> {
    let path = run.join(OPTIMIZER_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let file = crate::report::safetensors::Loaded::read(&path)?;
    let view = file.view()?;
    let epoch = view.metadata.get("epoch").and_then(|e| e.parse().ok()).with_context(|| format!("{}: no 'epoch' in its metadata", path.display()))?;
    Ok(Some(epoch))
}

fn save_momentum(run: &Path, v: &Momentum, epoch: usize) -> Result<()> {
    use crate::report::safetensors::Tensor;
    let mut tensors = vec![];
    for (l, (w, b)) in v.weights.iter().zip(&v.biases).enumerate() {
        tensors.push(Tensor::f32(format!("{}.weight.momentum", 2 * l), vec![w.len()], w));
        tensors.push(Tensor::f32(format!("{}.bias.momentum", 2 * l), vec![b.len()], b));
    }
    let meta = std::collections::BTreeMap::from([("epoch".to_string(), epoch.to_string())]);
    crate::report::safetensors::save(&run.join(OPTIMIZER_FILE), &tensors, &meta)
}

fn load_momentum(run: &Path, m: &Mlp) -> Result<Momentum> {
    let file = crate::report::safetensors::Loaded::read(&run.join(OPTIMIZER_FILE))?;
    let view = file.view()?;
    let mut v = Momentum::zeros(m);
    for l in 0..m.layers() {
        v.weights[l] = view.floats(&format!("{}.weight.momentum", 2 * l), Some(&[v.weights[l].len()]), &|| "a damaged optimizer state".into())?.1;
        v.biases[l] = view.floats(&format!("{}.bias.momentum", 2 * l), Some(&[v.biases[l].len()]), &|| "a damaged optimizer state".into())?.1;
    }
    view.reject_unread("this model's optimizer state")?;
    Ok(v)
}

/// Stops the process at a named point when `ROTE_FAILPOINT` names it: how the tests
/// interrupt a run exactly where a kill -9 could (e.g. `after-checkpoint:2`).
fn failpoint(name: &str, epoch: usize) {
    if std::env::var("ROTE_FAILPOINT").is_ok_and(|v| v == format!("{name}:{epoch}")) {
        std::process::abort();
    }
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
///
/// Everything is checked before the directory is created; a run that fails (diverges)
/// removes the directory it created. With `resume`, an unfinished run in `run` (same
/// configuration) continues from its last saved epoch and ends with the same bytes an
/// uninterrupted run writes.
pub fn train(ds: &Dataset, cfg: &TrainConfig, run: &Path, backend: &crate::device::Backend, resume: bool, progress: &dyn Fn(u64, u64)) -> Result<Mlp> {
    cfg.validate()?;
    let (sizes, activation) = super::mlp::parse_spec(&cfg.model)?;
    let d = ds.train.features();
    if sizes[0] != d {
        bail!("model '{}' takes {} inputs but '{}' has {} features per sample", cfg.model, sizes[0], cfg.data, d);
    }
    let classes = *sizes.last().unwrap();
    if let Some(&bad) = ds.train.y.iter().find(|&&y| y as usize >= classes) {
        bail!("model '{}' has {classes} outputs but the data has label {bad}", cfg.model);
    }
    // Weights, gradients and momentum; a batch's activations, their derivatives and
    // gradients. (On a GPU the training set is uploaded too.)
    let parameters: u64 = sizes.windows(2).map(|w| crate::resources::product(&[w[0] + 1, w[1]])).fold(0, u64::saturating_add);
    let activations = crate::resources::product(&[cfg.batch.min(ds.train.len().max(1)), sizes.iter().fold(0usize, |a, &s| a.saturating_add(s))]);
    crate::resources::check_memory(
        &[("parameters, gradients and momentum", parameters.saturating_mul(12)), ("a batch's activations", activations.saturating_mul(16))],
        "the layer sizes of --model or --batch",
    )?;
    let set = corrupt(&ds.train, classes, cfg.label_noise, cfg.duplicate_conflicts, cfg.seed)?;
    crate::resources::check_device_memory(
        backend,
        &[("the training set", crate::resources::product(&[set.sources.len(), d, 4])), ("parameters, gradients and momentum", parameters.saturating_mul(12)), ("a batch's activations", activations.saturating_mul(16))],
        "the layer sizes of --model or --batch",
    )?;
    let start_epoch = if resume {
        let stored = open_run(run)?;
        if serde_json::to_value(&stored)? != serde_json::to_value(cfg)? {
            bail!("{} was started with other settings ({}); --resume continues it only with the same ones", run.display(), serde_json::to_string(&stored)?);
        }
        if run.join(COMPLETE_FILE).is_file() {
            bail!("{} is a finished run; there is nothing to resume", run.display());
        }
        saved_epoch(run)?.unwrap_or(0)
    } else {
        if run.join("run.json").exists() {
            bail!("{} already holds a training run; choose another --out, or continue an unfinished one with --resume", run.display());
        }
        0
    };
    // A failed fresh run leaves nothing behind to block the rerun; a failed resume
    // keeps what it had.
    let fresh = if resume { None } else { Some(crate::report::FreshDir::create(run)?) };
    let m = train_epochs(ds, cfg, run, backend, &set, (sizes, activation), start_epoch, progress)?;
    fresh.map(|d| d.keep());
    Ok(m)
}

#[allow(clippy::too_many_arguments)]
fn train_epochs(ds: &Dataset, cfg: &TrainConfig, run: &Path, backend: &crate::device::Backend, set: &TrainingSet, (sizes, activation): (Vec<usize>, super::mlp::Activation), start_epoch: usize, progress: &dyn Fn(u64, u64)) -> Result<Mlp> {
    let d = ds.train.features();
    let mut metrics = String::from("epoch,train_loss,train_accuracy,test_loss,test_accuracy,learning_rate,seconds\n");
    let (mut m, mut momentum, seconds_before) = if start_epoch == 0 {
        crate::report::create_out_dir(&run.join("checkpoints"))?;
        crate::report::write_json(&run.join("run.json"), cfg)?;
        crate::report::write_npy(&run.join("labels.npy"), &[set.labels.len()], &set.labels)?;
        crate::report::write_npy(&run.join("sources.npy"), &[set.sources.len()], &set.sources)?;
        crate::report::write_npy(&run.join("corrupted.npy"), &[set.corrupted.len()], &set.corrupted)?;
        let m = Mlp::init(&sizes, activation, cfg.seed);
        let v = Momentum::zeros(&m);
        (m, v, 0.0)
    } else {
        let m = checkpoint::load(&checkpoint_path(run, start_epoch), &sizes, activation)?;
        let v = load_momentum(run, &m)?;
        let text = std::fs::read_to_string(run.join("metrics.csv")).with_context(|| format!("cannot read {}", run.join("metrics.csv").display()))?;
        let rows: Vec<&str> = text.lines().skip(1).take(start_epoch).collect();
        if rows.len() < start_epoch {
            bail!("{}: metrics.csv has {} rows but the optimizer state is from epoch {start_epoch}; the run is damaged", run.display(), rows.len());
        }
        rows.iter().for_each(|r| metrics.push_str(&format!("{r}\n")));
        let seconds = rows.last().and_then(|r| r.rsplit(',').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        (m, v, seconds)
    };
    let n = set.sources.len();
    let batches_per_epoch = n.div_ceil(cfg.batch);
    let total = (batches_per_epoch * cfg.epochs) as u64;
    let test_rows: Option<Vec<u32>> = ds.test.as_ref().map(|t| (0..t.len() as u32).collect());
    let mut device_trainer = match backend {
        crate::device::Backend::Cuda(g) => Some(g.trainer(&m, &gather(&ds.train.x, &set.sources, cfg.input_scale), d, &momentum)?),
        crate::device::Backend::Cpu => None,
    };
    let t0 = Instant::now();
    for epoch in start_epoch..cfg.epochs {
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
                sgd_step(&mut m.weights[l], &dw[l], &mut momentum.weights[l], lr, cfg.momentum, cfg.weight_decay);
                sgd_step(&mut m.biases[l], &db[l], &mut momentum.biases[l], lr, cfg.momentum, cfg.weight_decay);
            }
            progress((epoch * batches_per_epoch + b + 1) as u64, total);
        }
        if let Some(t) = &device_trainer {
            t.download(&mut m, &mut momentum)?;
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
        // Saved in this order, so the optimizer state's epoch implies the other two.
        checkpoint::save(&m, &checkpoint_path(run, epoch + 1))?;
        failpoint("after-checkpoint", epoch + 1);
        metrics.push_str(&format!(
            "{},{train_loss:.6},{train_acc:.6},{},{},{lr},{:.3}\n",
            epoch + 1,
            if test_loss.is_nan() { String::new() } else { format!("{test_loss:.6}") },
            if test_acc.is_nan() { String::new() } else { format!("{test_acc:.6}") },
            seconds_before + t0.elapsed().as_secs_f64()
        ));
        crate::report::write_atomic(&run.join("metrics.csv"), |w| Ok(w.write_all(metrics.as_bytes())?))?;
        save_momentum(run, &momentum, epoch + 1)?;
        failpoint("after-epoch", epoch + 1);
    }
    crate::report::write_json(&run.join(COMPLETE_FILE), &Completion { epochs: cfg.epochs, seconds: seconds_before + t0.elapsed().as_secs_f64() })?;
    Ok(m)
}

/// PyTorch's SGD: v ← μv + (g + λw); w ← w − ηv.
fn sgd_step(w: &mut [f32], g: &[f32], v: &mut [f32], lr: f32, momentum: f32, wd: f32) {
    for ((wi, gi), vi) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *vi = momentum * *vi + gi + wd * *wi;
        *wi -= lr * *vi;
    }
}
