//! `rote train`, `rote eval` and `rote curvature`: classifiers and their input curvature.

use super::{open_device, print_json, DeviceArg};
use anyhow::Result;
use clap::Args;
use rote::data::{self, DataSpec};
use rote::sched::{self, Shard};
use std::path::PathBuf;
use std::time::Instant;

/// A training recipe: `rote train`'s and every member's of `rote pool train`.
#[derive(Args)]
pub struct RecipeArgs {
    #[arg(value_parser = crate::data_spec(), long, required_unless_present = "resume", conflicts_with = "resume")]
    pub data: Option<DataSpec>,
    /// e.g. mlp:784-512-512-10,act=relu (relu, gelu, tanh, softplus).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub model: Option<String>,
    #[arg(long, default_value_t = 20, conflicts_with = "resume")]
    pub epochs: usize,
    #[arg(long, default_value_t = 128, conflicts_with = "resume")]
    pub batch: usize,
    #[arg(long, default_value_t = 0.05, conflicts_with = "resume")]
    pub lr: f32,
    #[arg(long, default_value_t = 0.9, conflicts_with = "resume")]
    pub momentum: f32,
    #[arg(long, default_value_t = 5e-4, conflicts_with = "resume")]
    pub weight_decay: f32,
    #[arg(long, value_enum, default_value = "step", conflicts_with = "resume")]
    pub schedule: rote::nn::train::Schedule,
    /// Fraction of training labels replaced by a different random class.
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume")]
    pub label_noise: f64,
    /// Samples duplicated with a different label.
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    pub duplicate_conflicts: usize,
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    pub seed: u64,
    /// Training-batch augmentation for image models: crop:P (random shifts with P
    /// pixels of zero padding), flip, or both (crop:4,flip).
    #[arg(long, default_value = "", conflicts_with = "resume")]
    pub augment: String,
    /// Per-channel input normalization: auto (from the training split for CNNs, none
    /// for MLPs), data, none, cifar10, cifar100, imagenet, or MEAN,…/STD,….
    #[arg(long, default_value = "auto", conflicts_with = "resume")]
    pub normalize: String,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Continue the unfinished run in --out from its last saved epoch, with the
    /// settings it was started with (its run.json).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The architecture: mlp:…, cnn:…, resnet18-cifar[:classes=C,width=W], resnet18[:classes=C].
    #[arg(long)]
    pub model: String,
    /// Checkpoint files: a path, or a pattern with '*' in the file name
    /// ('ckpts/*.safetensors').
    #[arg(long)]
    pub weights: String,
    #[arg(value_parser = crate::data_spec(), long)]
    pub data: DataSpec,
    /// Per-channel input normalization the weights were trained with: none, cifar10,
    /// cifar100, imagenet, data (from this training split) or MEAN,…/STD,….
    #[arg(long, default_value = "none")]
    pub normalize: String,
    /// Divide uint8 inputs by their largest value (255 for 8-bit images) first, as
    /// `rote train` and torchvision's ToTensor do; --no-scale keeps raw values.
    #[arg(long)]
    pub no_scale: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CurvatureArgs {
    /// A run directory written by `rote train`.
    #[arg(long, required_unless_present = "weights", conflicts_with_all = ["weights", "model", "normalize"])]
    pub run: Option<PathBuf>,
    /// Instead of --run: a series of checkpoints trained elsewhere ('dir/*.safetensors'),
    /// scored on --data with its labels (needs --model).
    #[arg(long, requires_all = ["model", "data"])]
    pub weights: Option<String>,
    /// The architecture of --weights (mlp:…, cnn:…, resnet18-cifar…, resnet18…).
    #[arg(long)]
    pub model: Option<String>,
    /// The per-channel normalization --weights were trained with (none, cifar10,
    /// cifar100, imagenet, data, MEAN,…/STD,…); inputs are uint8 / max first.
    #[arg(long)]
    pub normalize: Option<String>,
    /// Only checkpoints whose file name matches this pattern ('*' wildcards).
    #[arg(long)]
    pub checkpoints: Option<String>,
    /// Every K-th checkpoint (K, 2K, …).
    #[arg(long, default_value_t = 1)]
    pub every: usize,
    #[arg(long, default_value_t = 10)]
    pub probes: usize,
    /// exact (default), hutchinson or fd; fd is the default with --statistic released-code.
    #[arg(long, value_enum)]
    pub estimator: Option<rote::curvature::Estimator>,
    #[arg(long, value_enum, default_value = "paper")]
    pub statistic: rote::curvature::Statistic,
    /// Finite-difference step.
    #[arg(long, default_value_t = 1e-3)]
    pub h: f32,
    /// Score this data instead of the run's (same samples, e.g. a local copy).
    #[arg(value_parser = crate::data_spec(), long)]
    pub data: Option<DataSpec>,
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    /// Samples per batch (each becomes probes rows).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Seed of the Rademacher probes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArg,
    #[arg(long)]
    pub out: PathBuf,
    /// Write the highest- and lowest-scoring training images.
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    /// Score the checkpoints of a run that did not finish (it is refused otherwise).
    #[arg(long)]
    pub allow_incomplete: bool,
    #[arg(long)]
    pub json: bool,
}

impl RecipeArgs {
    /// The recipe as a training configuration, with the data it names opened (its input
    /// scale and normalization read from it).
    pub fn config(&self) -> Result<(rote::nn::train::TrainConfig, data::Dataset)> {
        rote::nn::train::TrainConfig {
            data: self.data.as_ref().map(|d| d.text().map(String::from)).transpose()?.unwrap_or_default(),
            model: self.model.clone().unwrap_or_default(),
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            label_noise: self.label_noise,
            duplicate_conflicts: self.duplicate_conflicts,
            seed: self.seed,
            input_scale: 1.0,
            normalization: Default::default(),
            augment: self.augment.clone(),
        }
        .for_data(&self.normalize)
    }
}

pub fn train_cmd(a: TrainArgs) -> Result<()> {
    use rote::nn::train;
    let (cfg, ds) = if a.resume { train::open_run_and_data(&a.out)? } else { a.recipe.config()? };
    let (backend, note) = train::backend_for(&cfg, open_device(a.device.device)?);
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let bar = sched::progress(0, "training", !a.json);
    let t0 = Instant::now();
    train::train(&ds, &cfg, &a.out, &backend, a.resume, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let last = train::final_metrics(&a.out)?;
    let value = serde_json::json!({
        "run": a.out, "epochs": cfg.epochs, "resumed": a.resume, "seconds": t0.elapsed().as_secs_f64(),
        "train_loss": last.train_loss, "train_accuracy": last.train_accuracy, "test_accuracy": last.test_accuracy,
        "device": backend.device(),
    });
    if a.json {
        print_json(&value);
    } else {
        println!(
            "trained {} for {} epochs in {:.1} s: train accuracy {}, test accuracy {} → {}",
            cfg.model,
            cfg.epochs,
            t0.elapsed().as_secs_f64(),
            last.train_accuracy.map(|v| v.to_string()).unwrap_or_default(),
            last.test_accuracy.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into()),
            a.out.display()
        );
    }
    Ok(())
}

pub fn eval_cmd(a: EvalArgs) -> Result<()> {
    let total = rote::nn::runs::checkpoint_files(&a.weights)?.len();
    let bar = sched::progress(total as u64, "evaluating", !a.json);
    let (rows, normalization, input_scale) = rote::nn::train::evaluate_checkpoints(&a.model, &a.weights, a.data.text()?, &a.normalize, a.no_scale, &|d| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    if a.json {
        print_json(&serde_json::json!({ "model": a.model, "data": a.data, "normalization": normalization, "input_scale": input_scale, "checkpoints": rows }));
    } else {
        let pct = |v: Option<f64>| v.map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "n/a".into());
        for r in &rows {
            println!("{}: train accuracy {} (loss {:.4}), test accuracy {}", r.checkpoint.display(), pct(Some(r.train_accuracy)), r.train_loss, pct(r.test_accuracy));
        }
    }
    Ok(())
}

pub fn curvature_cmd(a: CurvatureArgs) -> Result<()> {
    use rote::curvature::run::{CurvatureJob, Selection, Source};
    use rote::curvature::{Estimator, ScoreConfig};
    let source = match (&a.run, &a.weights) {
        (Some(run), _) => Source::Run(run.clone()),
        (None, Some(weights)) => Source::Series {
            weights: weights.clone(),
            model: a.model.clone().unwrap_or_default(),
            normalize: a.normalize.clone().unwrap_or_else(|| "none".into()),
        },
        _ => unreachable!("clap requires --run or --weights"),
    };
    let estimator = a.estimator.unwrap_or_else(|| Estimator::default_for(a.statistic));
    let score_cfg = ScoreConfig { estimator, statistic: a.statistic, probes: a.probes, h: a.h, seed: a.seed };
    if a.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let data = a.data.as_ref().map(|d| d.text().map(String::from)).transpose()?;
    let selection = Selection { pattern: a.checkpoints.clone(), every: a.every, allow_incomplete: a.allow_incomplete };
    let mut job = CurvatureJob::open(&source, data.as_deref(), &selection, &score_cfg, &|w| eprintln!("warning: {w}"))?;
    let (backends, note) = job.backends_for(super::open_devices(a.device.device)?, &score_cfg);
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    eprintln!("estimator: {}", job.estimator);
    let range = a.shard.range(job.len());
    let bar = sched::progress((job.samples.checkpoints.len() * range.len()) as u64, "curvature", !a.json);
    let s = job.score_on(&backends, a.shard, a.batch, &score_cfg, Some(&a.out), &|k| bar.inc(k))?;
    bar.finish_and_clear();
    if let Some(g) = &a.gallery {
        let shape = job.data.sample_shape().to_vec();
        let rows: Vec<u32> = job.samples.sources[range.clone()].to_vec();
        rote::curvature::gallery::draw(&job.data.train.x, &rows, &job.samples.labels[range.clone()], &s.score, &shape, "curvature", g)?;
    }
    let checkpoints = job.samples.checkpoints.len();
    let value = serde_json::json!({
        "samples": range.len(), "checkpoints": checkpoints, "probes": job.probes_used(&score_cfg),
        "estimator": job.estimator, "statistic": a.statistic, "seconds": s.seconds, "device": s.device,
        "auroc": s.auroc, "precision_at_k": s.precision_at_k, "corrupted": s.corrupted, "out": a.out,
    });
    if a.json {
        print_json(&value);
    } else {
        println!("scored {} samples × {checkpoints} checkpoints in {:.2} s on {} ({}) → {}", range.len(), s.seconds, s.device, job.estimator, a.out.display());
        if let (Some(au), Some(p)) = (s.auroc, s.precision_at_k) {
            println!("corrupted samples: {}; AUROC of the averaged score {au:.4}; precision among the top {}: {p:.4}", s.corrupted, s.corrupted);
        }
    }
    Ok(())
}

