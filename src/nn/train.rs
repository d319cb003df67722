//! Training classifiers — MLPs and convolutional networks (nn/network.rs) — with SGD
//! (momentum, weight decay, step, late-step, cosine or constant schedule), optional
//! augmentation (random crop with zero padding, horizontal flip; Philox-keyed, so a run
//! is reproducible) and per-channel input normalization for CNNs, and optional
//! injected corruption: symmetric label noise and duplicated samples with a
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

use super::network::{self, Network};
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
    /// ×0.1 at 60% and at 80% of the epochs (the curvature authors' schedule).
    StepLate,
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
    /// Per-channel normalization after the scale (CNNs; empty: none).
    #[serde(default)]
    pub normalization: super::network::Normalization,
    /// Training-batch augmentation: "", "flip", "crop:P" or "crop:P,flip".
    #[serde(default)]
    pub augment: String,
}

impl TrainConfig {
    /// Rejects settings training cannot use, before anything is written.
    pub fn validate(&self) -> Result<()> {
        if !super::models::is_graph_spec(&self.model) {
            super::mlp::parse_spec(&self.model)?;
        }
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
        Augment::parse(&self.augment)?;
        Ok(())
    }

    /// The recipe `rote train` uses when given only data and a model: 20 epochs of
    /// batches of 128, SGD with learning rate 0.05 (step schedule), momentum 0.9, weight
    /// decay 5·10⁻⁴, clean labels, seed 0, no augmentation. Change fields with struct
    /// update syntax, then call `for_data`.
    pub fn recipe(data: &str, model: &str) -> Self {
        TrainConfig {
            data: data.to_string(),
            model: model.to_string(),
            epochs: 20,
            batch: 128,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Step,
            label_noise: 0.0,
            duplicate_conflicts: 0,
            seed: 0,
            input_scale: 1.0,
            normalization: Default::default(),
            augment: String::new(),
        }
    }

    /// This recipe made ready to train on the data it names: validated, the data opened,
    /// the input scale read from it (1/max pixel for uint8 data) and the per-channel
    /// normalization resolved from `normalize` (auto, data, none, cifar10, cifar100,
    /// imagenet or MEAN,…/STD,…; see [`normalization_for`]). `rote train`, `rote pool
    /// train` and Python's `rote.train` all start here.
    pub fn for_data(mut self, normalize: &str) -> Result<(TrainConfig, Dataset)> {
        self.validate()?;
        let ds = crate::data::open(&self.data)?;
        self.input_scale = input_scale_for(&ds);
        self.normalization = normalization_for(&self.model, normalize, &ds, self.input_scale)?;
        Ok((self, ds))
    }
}

/// How one checkpoint scores on a dataset (`rote eval`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointEval {
    pub checkpoint: PathBuf,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
}

/// `rote eval`: mean loss and accuracy of each checkpoint of `weights` (a path or a
/// pattern with '*' in the file name) for `model` on the splits of the data spec `data`,
/// inputs scaled (unless `no_scale`: uint8 / max) and normalized by `normalize` as in
/// training. Returns the checkpoints' results with the normalization and scale used;
/// `progress(done)` after each checkpoint.
pub fn evaluate_checkpoints(model: &str, weights: &str, data: &str, normalize: &str, no_scale: bool, progress: &dyn Fn(usize)) -> Result<(Vec<CheckpointEval>, network::Normalization, f32)> {
    let ds = crate::data::open(data)?;
    let files = crate::nn::runs::checkpoint_files(weights)?;
    let mut net = Network::build(model, ds.sample_shape(), 0).with_context(|| format!("model '{model}' on '{data}'"))?;
    net.check_labels(model, ds.train.y.iter().chain(ds.test.iter().flat_map(|t| &t.y)))?;
    let input_scale = if no_scale { 1.0 } else { input_scale_for(&ds) };
    let normalization = normalization_for(model, normalize, &ds, input_scale)?;
    let mut rows = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        net.load_weights(f)?;
        let (train_loss, train_accuracy) = evaluate_split(&net, &ds.train, input_scale, &normalization, ds.sample_shape())?;
        let test = ds.test.as_ref().map(|t| evaluate_split(&net, t, input_scale, &normalization, ds.sample_shape())).transpose()?;
        rows.push(CheckpointEval { checkpoint: f.clone(), train_loss, train_accuracy, test_loss: test.map(|t| t.0), test_accuracy: test.map(|t| t.1) });
        progress(i + 1);
    }
    Ok((rows, normalization, input_scale))
}

/// The last row of a run's metrics.csv: how the final epoch scored.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FinalMetrics {
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
}

/// The final epoch's metrics of the run in `run`.
pub fn final_metrics(run: &Path) -> Result<FinalMetrics> {
    let path = run.join("metrics.csv");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let last: Vec<&str> = text.lines().skip(1).last().unwrap_or("").split(',').collect();
    let field = |i: usize| last.get(i).and_then(|v| v.parse::<f64>().ok());
    Ok(FinalMetrics { train_loss: field(1), train_accuracy: field(2), test_loss: field(3), test_accuracy: field(4) })
}

/// Training-batch augmentation, as torchvision's RandomCrop(padding = P) and
/// RandomHorizontalFlip on the scaled image before normalization: each sample of each
/// epoch is shifted by (dy, dx) ∈ [−P, P]² (zeros shifted in) and mirrored with
/// probability ½, from Philox words keyed by (seed, epoch, position in the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    pub crop: usize,
    pub flip: bool,
}

const STREAM_AUGMENT: u64 = 0xA06_0000;

impl Augment {
    pub fn parse(text: &str) -> Result<Self> {
        let mut a = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "flip" {
                a.flip = true;
            } else if let Some(p) = part.strip_prefix("crop:") {
                a.crop = p.parse().with_context(|| format!("--augment {text}: crop:{p} needs a padding in pixels"))?;
            } else {
                bail!("--augment {text}: '{part}' is not crop:P or flip");
            }
        }
        Ok(a)
    }

    pub fn is_none(&self) -> bool {
        self.crop == 0 && !self.flip
    }

    /// Augments the batch `x` of images (rows, C, H, W) at positions `first..` of
    /// epoch `epoch`'s order.
    pub fn apply(&self, x: &mut [f32], [c, h, w]: [usize; 3], seed: u64, epoch: usize, first: usize) {
        if self.is_none() {
            return;
        }
        let rng = Philox::new(seed, STREAM_AUGMENT + epoch as u64);
        let per = c * h * w;
        let mut copy = vec![0f32; per];
        for (k, sample) in x.chunks_mut(per).enumerate() {
            let word = rng.word((first + k) as u64);
            let span = 2 * self.crop as u32 + 1;
            let (dy, dx) = ((word % span) as isize - self.crop as isize, ((word / span) % span) as isize - self.crop as isize);
            let flip = self.flip && (word >> 31) == 1;
            copy.copy_from_slice(sample);
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        let (y, xx) = (i as isize + dy, j as isize + dx);
                        let xx = if flip { w as isize - 1 - xx } else { xx };
                        sample[(ch * h + i) * w + j] = if y >= 0 && y < h as isize && xx >= 0 && xx < w as isize { copy[(ch * h + y as usize) * w + xx as usize] } else { 0.0 };
                    }
                }
            }
        }
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

/// An unfinished run's configuration with the data it names opened, to resume it.
pub fn open_run_and_data(run: &Path) -> Result<(TrainConfig, Dataset)> {
    let cfg = open_run(run)?;
    let ds = crate::data::open(&cfg.data)?;
    Ok((cfg, ds))
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

fn save_momentum(run: &Path, names: &[String], v: &[Vec<f32>], epoch: usize) -> Result<()> {
    use crate::report::safetensors::Tensor;
    let tensors: Vec<Tensor> = names.iter().zip(v).map(|(n, b)| Tensor::f32(format!("{n}.momentum"), vec![b.len()], b)).collect();
    let meta = std::collections::BTreeMap::from([("epoch".to_string(), epoch.to_string())]);
    crate::report::safetensors::save(&run.join(OPTIMIZER_FILE), &tensors, &meta)
}

fn load_momentum(run: &Path, names: &[String], zeros: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
    let file = crate::report::safetensors::Loaded::read(&run.join(OPTIMIZER_FILE))?;
    let view = file.view()?;
    let v = names
        .iter()
        .zip(zeros)
        .map(|(n, z)| Ok(view.floats(&format!("{n}.momentum"), Some(&[z.len()]), &|| "a damaged optimizer state".into())?.1))
        .collect::<Result<_>>()?;
    view.reject_unread("this model's optimizer state")?;
    Ok(v)
}

/// Stops the process at a named point when `ROTE_FAILPOINT` names it: how the tests
/// interrupt a run exactly where a kill -9 could (e.g. `after-checkpoint:2`).
pub(crate) fn failpoint(name: &str, at: usize) {
    if std::env::var("ROTE_FAILPOINT").is_ok_and(|v| v == format!("{name}:{at}")) {
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
    gather_into(x, rows, scale, &mut out);
    out
}

pub fn gather_into(x: &crate::data::Array, rows: &[u32], scale: f32, out: &mut [f32]) {
    let d = x.row_len();
    for (o, &r) in out.chunks_mut(d).zip(rows) {
        x.rows_f32_into(r as usize, r as usize + 1, o);
        if scale != 1.0 {
            o.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

/// Whether a CUDA backend runs the SGD steps of `cfg` (MLPs without augmentation);
/// other runs train on the CPU.
pub fn runs_on_gpu(cfg: &TrainConfig) -> bool {
    !super::models::is_graph_spec(&cfg.model) && Augment::parse(&cfg.augment).is_ok_and(|a| a.is_none())
}

/// `backend` if `cfg` trains there, else the CPU with the reason (see `runs_on_gpu`).
pub fn backend_for(cfg: &TrainConfig, backend: crate::device::Backend) -> (crate::device::Backend, Option<&'static str>) {
    if matches!(backend, crate::device::Backend::Cuda(_)) && !runs_on_gpu(cfg) {
        return (crate::device::Backend::Cpu, Some("convolutional models and augmented batches train on the CPU in this version"));
    }
    (backend, None)
}

/// `inputs` into a buffer.
fn fill(cfg: &TrainConfig, x: &crate::data::Array, rows: &[u32], plane: usize, out: &mut [f32]) {
    gather_into(x, rows, cfg.input_scale, out);
    cfg.normalization.apply(out, plane);
}

/// The network's inputs for dataset rows `rows`: scaled, then normalized per channel.
pub fn inputs(cfg: &TrainConfig, x: &crate::data::Array, rows: &[u32], plane: usize) -> Vec<f32> {
    let mut out = gather(x, rows, cfg.input_scale);
    cfg.normalization.apply(&mut out, plane);
    out
}

/// Mean cross-entropy and accuracy of `net` on a split, its inputs scaled by
/// `input_scale` and normalized by `normalization` (as training prepared them).
pub fn evaluate_split(net: &Network, split: &Split, input_scale: f32, normalization: &network::Normalization, sample_shape: &[usize]) -> Result<(f64, f64)> {
    let plane = network::image_shape(sample_shape).map(|[_, h, w]| h * w).unwrap_or(split.features());
    let rows: Vec<u32> = (0..split.len() as u32).collect();
    let cfg_fill = |r: std::ops::Range<usize>, out: &mut Vec<f32>| {
        gather_into(&split.x, &rows[r], input_scale, out);
        normalization.apply(out, plane);
    };
    net.evaluate(split.len(), split.features(), &split.y, &cfg_fill)
}

/// The per-channel normalization `rule` names for `model` on `ds`: `auto` is the
/// training split's statistics for convolutional models and none for MLPs; `data`,
/// `none`, presets and explicit values as `Normalization::parse` reads them. Checked
/// against the data's channels.
pub fn normalization_for(model: &str, rule: &str, ds: &Dataset, input_scale: f32) -> Result<network::Normalization> {
    let graph = super::models::is_graph_spec(model);
    let rule = match rule {
        "auto" if graph => "data",
        "auto" => "none",
        r => r,
    };
    if !graph && rule != "none" {
        bail!("--normalize {rule}: per-channel normalization is for convolutional models");
    }
    let normalization = match network::Normalization::parse(rule)? {
        Some(n) => n,
        None => channel_statistics(ds, input_scale)?,
    };
    if !normalization.is_identity() {
        let channels = network::image_shape(ds.sample_shape())?[0];
        if normalization.mean.len() != channels {
            bail!("--normalize {rule}: {} channels' statistics but the data has {channels} channels", normalization.mean.len());
        }
    }
    Ok(normalization)
}

/// Per-channel mean and standard deviation of the scaled training images.
pub fn channel_statistics(ds: &Dataset, input_scale: f32) -> Result<network::Normalization> {
    let [c, h, w] = network::image_shape(ds.sample_shape())?;
    let rows: Vec<u32> = (0..ds.train.len() as u32).collect();
    Ok(network::Normalization::of_samples(&gather(&ds.train.x, &rows, input_scale), c, h * w))
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

pub fn learning_rate(cfg: &TrainConfig, epoch: usize) -> f32 {
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Step | Schedule::StepLate => {
            let frac = epoch as f64 / cfg.epochs as f64;
            let (first, second) = if cfg.schedule == Schedule::Step { (0.5, 0.75) } else { (0.6, 0.8) };
            cfg.lr * if frac >= second { 0.01 } else if frac >= first { 0.1 } else { 1.0 }
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
pub fn train(ds: &Dataset, cfg: &TrainConfig, run: &Path, backend: &crate::device::Backend, resume: bool, progress: &dyn Fn(u64, u64)) -> Result<Network> {
    cfg.validate()?;
    let mut net = Network::build(&cfg.model, ds.sample_shape(), cfg.seed).with_context(|| format!("model '{}' on '{}'", cfg.model, cfg.data))?;
    let d = ds.train.features();
    let classes = net.classes();
    net.check_labels(&cfg.model, ds.train.y.iter())?;
    if !cfg.normalization.is_identity() {
        let channels = network::image_shape(ds.sample_shape())?[0];
        if cfg.normalization.mean.len() != channels {
            bail!("--normalize gives {} channels' statistics but the data has {channels} channels", cfg.normalization.mean.len());
        }
    }
    if !Augment::parse(&cfg.augment)?.is_none() {
        network::image_shape(ds.sample_shape()).context("--augment")?;
    }
    // Weights, gradients and momentum; a batch's activations, their derivatives and
    // gradients. (On a GPU the training set is uploaded too.)
    let parameters: u64 = net.parameters_mut().iter().map(|p| p.len() as u64).sum();
    let activations = match &net {
        Network::Mlp(m) => crate::resources::product(&[cfg.batch.min(ds.train.len().max(1)), m.sizes.iter().sum()]),
        Network::Graph(g) => crate::resources::product(&[cfg.batch.min(ds.train.len().max(1)), g.shapes(1)?.iter().map(|s| s.iter().product::<usize>()).sum()]),
    };
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
    if start_epoch > 0 {
        net.load_weights(&checkpoint_path(run, start_epoch))?;
    }
    train_epochs(ds, cfg, run, backend, &set, &mut net, start_epoch, progress)?;
    fresh.map(|d| d.keep());
    Ok(net)
}

/// The (C, H, W) augmentation and normalization work on, or a flat sample's (1, 1, d).
pub fn planes_of(ds: &Dataset) -> [usize; 3] {
    network::image_shape(ds.sample_shape()).unwrap_or([1, 1, ds.train.features()])
}

/// The order of the training set's positions in epoch `epoch`.
fn epoch_order(cfg: &TrainConfig, epoch: usize, n: usize) -> Vec<u32> {
    Philox::new(cfg.seed, STREAM_EPOCH + epoch as u64).permutation(n)
}

/// One epoch of SGD on the CPU over `set` (rows of `x`): batches in `epoch_order`,
/// gathered, scaled, augmented and normalized, one `train_step` each;
/// `batch_done(b)` after the b-th (from 1). The one training loop of every CPU
/// trainer: runs and the members of a model pool.
#[allow(clippy::too_many_arguments)]
pub fn fit_epoch(x: &crate::data::Array, cfg: &TrainConfig, chw: [usize; 3], set: &TrainingSet, net: &mut Network, epoch: usize, momentum: &mut [Vec<f32>], batch_done: &mut dyn FnMut(usize)) -> Result<()> {
    let augment = Augment::parse(&cfg.augment)?;
    let lr = learning_rate(cfg, epoch);
    let plane = chw[1] * chw[2];
    let mut xb = Vec::new();
    let mut rows = Vec::with_capacity(cfg.batch);
    let mut ys = Vec::with_capacity(cfg.batch);
    for (b, idx) in epoch_order(cfg, epoch, set.sources.len()).chunks(cfg.batch).enumerate() {
        rows.clear();
        rows.extend(idx.iter().map(|&i| set.sources[i as usize]));
        ys.clear();
        ys.extend(idx.iter().map(|&i| set.labels[i as usize]));
        xb.resize(rows.len() * x.row_len(), 0.0);
        gather_into(x, &rows, cfg.input_scale, &mut xb);
        augment.apply(&mut xb, chw, cfg.seed, epoch, b * cfg.batch);
        cfg.normalization.apply(&mut xb, plane);
        net.train_step(&xb, &ys, lr, cfg.momentum, cfg.weight_decay, momentum)?;
        batch_done(b + 1);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train_epochs(ds: &Dataset, cfg: &TrainConfig, run: &Path, backend: &crate::device::Backend, set: &TrainingSet, net: &mut Network, start_epoch: usize, progress: &dyn Fn(u64, u64)) -> Result<()> {
    let d = ds.train.features();
    let chw = planes_of(ds);
    let plane = chw[1] * chw[2];
    let names = net.parameter_names();
    let mut metrics = String::from("epoch,train_loss,train_accuracy,test_loss,test_accuracy,learning_rate,seconds\n");
    let (mut momentum, seconds_before) = if start_epoch == 0 {
        crate::report::create_out_dir(&run.join("checkpoints"))?;
        crate::report::write_json(&run.join("run.json"), cfg)?;
        crate::report::write_npy(&run.join("labels.npy"), &[set.labels.len()], &set.labels)?;
        crate::report::write_npy(&run.join("sources.npy"), &[set.sources.len()], &set.sources)?;
        crate::report::write_npy(&run.join("corrupted.npy"), &[set.corrupted.len()], &set.corrupted)?;
        (net.zero_momentum(), 0.0)
    } else {
        let v = load_momentum(run, &names, net.zero_momentum())?;
        let text = std::fs::read_to_string(run.join("metrics.csv")).with_context(|| format!("cannot read {}", run.join("metrics.csv").display()))?;
        let rows: Vec<&str> = text.lines().skip(1).take(start_epoch).collect();
        if rows.len() < start_epoch {
            bail!("{}: metrics.csv has {} rows but the optimizer state is from epoch {start_epoch}; the run is damaged", run.display(), rows.len());
        }
        rows.iter().for_each(|r| metrics.push_str(&format!("{r}\n")));
        let seconds = rows.last().and_then(|r| r.rsplit(',').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        (v, seconds)
    };
    let n = set.sources.len();
    let batches_per_epoch = n.div_ceil(cfg.batch);
    let total = (batches_per_epoch * cfg.epochs) as u64;
    let test_rows: Option<Vec<u32>> = ds.test.as_ref().map(|t| (0..t.len() as u32).collect());
    let mut device_trainer = match (backend, &*net) {
        (crate::device::Backend::Cuda(g), Network::Mlp(m)) if runs_on_gpu(cfg) => Some(g.trainer(m, &inputs(cfg, &ds.train.x, &set.sources, plane), d, &momentum)?),
        _ => None,
    };
    let t0 = Instant::now();
    for epoch in start_epoch..cfg.epochs {
        let lr = learning_rate(cfg, epoch);
        let first_batch = epoch * batches_per_epoch;
        if let (Some(t), Network::Mlp(m)) = (device_trainer.as_mut(), &mut *net) {
            for (b, idx) in epoch_order(cfg, epoch, n).chunks(cfg.batch).enumerate() {
                let ys: Vec<i64> = idx.iter().map(|&i| set.labels[i as usize]).collect();
                t.step(m, idx, &ys, lr, cfg.momentum, cfg.weight_decay)?;
                progress((first_batch + b + 1) as u64, total);
            }
            t.download(m, &mut momentum)?;
        } else {
            fit_epoch(&ds.train.x, cfg, chw, set, net, epoch, &mut momentum, &mut |b| progress((first_batch + b) as u64, total))?;
        }
        let fill_train = |r: std::ops::Range<usize>, out: &mut Vec<f32>| fill(cfg, &ds.train.x, &set.sources[r], plane, out);
        let (train_loss, train_acc) = net.evaluate(n, d, &set.labels, &fill_train)?;
        if !train_loss.is_finite() || net.parameters_mut().iter().any(|w| w.iter().any(|v| !v.is_finite())) {
            bail!(
                "epoch {}: the training loss became {train_loss} (diverged); try a smaller --lr than {}",
                epoch + 1,
                cfg.lr
            );
        }
        let (test_loss, test_acc) = match (&ds.test, &test_rows) {
            (Some(t), Some(rows)) => net.evaluate(rows.len(), d, &t.y, &|r: std::ops::Range<usize>, out: &mut Vec<f32>| fill(cfg, &t.x, &rows[r], plane, out))?,
            _ => (f64::NAN, f64::NAN),
        };
        // Saved in this order, so the optimizer state's epoch implies the other two.
        net.save(&checkpoint_path(run, epoch + 1), ((epoch + 1) * batches_per_epoch) as u64)?;
        failpoint("after-checkpoint", epoch + 1);
        metrics.push_str(&format!(
            "{},{train_loss:.6},{train_acc:.6},{},{},{lr},{:.3}\n",
            epoch + 1,
            if test_loss.is_nan() { String::new() } else { format!("{test_loss:.6}") },
            if test_acc.is_nan() { String::new() } else { format!("{test_acc:.6}") },
            seconds_before + t0.elapsed().as_secs_f64()
        ));
        crate::report::write_atomic(&run.join("metrics.csv"), |w| Ok(w.write_all(metrics.as_bytes())?))?;
        save_momentum(run, &names, &momentum, epoch + 1)?;
        failpoint("after-epoch", epoch + 1);
    }
    crate::report::write_json(&run.join(COMPLETE_FILE), &Completion { epochs: cfg.epochs, seconds: seconds_before + t0.elapsed().as_secs_f64() })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every augmented image is its source shifted by some (dy, dx) within the padding,
    /// zeros shifted in, and mirrored or not — found by trying them all.
    #[test]
    fn augmentation_shifts_and_mirrors_within_its_padding() {
        let (c, h, w) = (2, 5, 6);
        let per = c * h * w;
        let source: Vec<f32> = (0..32 * per).map(|i| 1.0 + i as f32).collect();
        for aug in [Augment { crop: 2, flip: false }, Augment { crop: 0, flip: true }, Augment { crop: 1, flip: true }] {
            let mut x = source.clone();
            aug.apply(&mut x, [c, h, w], 7, 3, 40);
            let (mut shifted, mut flipped) = (0, 0);
            for (k, out) in x.chunks(per).enumerate() {
                let src = &source[k * per..(k + 1) * per];
                let r = aug.crop as isize;
                let found = (-r..=r).flat_map(|dy| (-r..=r).map(move |dx| (dy, dx))).flat_map(|s| [(s, false), (s, true)]).find(|&((dy, dx), flip)| {
                    (flip <= aug.flip)
                        && (0..c).all(|ch| {
                            (0..h).all(|i| {
                                (0..w).all(|j| {
                                    let (y, xx) = (i as isize + dy, j as isize + dx);
                                    let xx = if flip { w as isize - 1 - xx } else { xx };
                                    let want = if y >= 0 && y < h as isize && xx >= 0 && xx < w as isize { src[(ch * h + y as usize) * w + xx as usize] } else { 0.0 };
                                    out[(ch * h + i) * w + j] == want
                                })
                            })
                        })
                });
                let ((dy, dx), flip) = found.unwrap_or_else(|| panic!("{aug:?}: sample {k} is no shift or mirror of its source"));
                shifted += ((dy, dx) != (0, 0)) as usize;
                flipped += flip as usize;
            }
            assert!(aug.crop == 0 || shifted > 0, "{aug:?}: nothing shifted");
            assert!(!aug.flip || (flipped > 4 && flipped < 28), "{aug:?}: {flipped} of 32 mirrored");
        }
        let mut x = source.clone();
        Augment::default().apply(&mut x, [c, h, w], 7, 3, 40);
        assert_eq!(x, source);
        assert!(Augment::parse("crop:4,flip").unwrap() == Augment { crop: 4, flip: true });
        assert!(Augment::parse("rotate:3").is_err());
    }
}
