//! Scoring a series of checkpoints: a `rote train` run directory or checkpoints trained
//! elsewhere, averaged over the checkpoints as the curvature paper's memorization score
//! is. `rote curvature` and the Python package both call [`CurvatureJob`].

use super::ScoreConfig;
use crate::data::{self, Dataset};
use crate::device::Backend;
use crate::nn::network::Network;
use crate::nn::runs::Scored;
use crate::nn::train::{self, TrainConfig};
use crate::sched::Shard;
use anyhow::{bail, Context, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where the checkpoints come from.
pub enum Source {
    /// A run directory written by `rote train` (its run.json, labels, checkpoints/).
    Run(PathBuf),
    /// Checkpoints trained elsewhere (`dir/*.safetensors`), of `model`, trained with the
    /// per-channel `normalize` rule, scored on the data's own samples and labels.
    Series { weights: String, model: String, normalize: String },
}

/// Which checkpoints of the source are scored.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// File-name pattern ('*' wildcards); all when `None`.
    pub pattern: Option<String>,
    /// Every K-th of the matching checkpoints (K, 2K, …); 0 is refused, 1 keeps all.
    pub every: usize,
    /// Score a run that did not finish (refused otherwise).
    pub allow_incomplete: bool,
}

/// A checkpoint series opened, checked (every checkpoint read: tensor names, shapes,
/// finite values) and ready to score.
pub struct CurvatureJob {
    pub config: TrainConfig,
    pub data: Dataset,
    pub network: Network,
    pub samples: Scored,
    /// The run directory or the weights pattern, for messages and shard records.
    pub source_name: String,
    /// What runs, e.g. "exact (Hessian, relu: Gauss–Newton only)".
    pub estimator: String,
}

/// The scores averaged over the checkpoints, for the rows scored.
pub struct RunScores {
    pub score: Vec<f32>,
    pub trace: Vec<f32>,
    pub gauss_newton: Option<Vec<f32>>,
    /// The rows scored (the shard's).
    pub rows: Range<usize>,
    /// How many of them a run corrupted (noisy label or conflicting duplicate).
    pub corrupted: usize,
    /// AUROC of the averaged score against the corrupted samples, when there are both.
    pub auroc: Option<f64>,
    /// Precision among the `corrupted` highest scores, when some were corrupted.
    pub precision_at_k: Option<f64>,
    pub seconds: f64,
    pub device: String,
}

impl CurvatureJob {
    /// Opens `source` (its data, or `data` instead: the same samples, e.g. a local
    /// copy), selects checkpoints and checks them all before anything is scored.
    /// `warn` receives what a user should know but that does not stop the job.
    pub fn open(source: &Source, data: Option<&str>, selection: &Selection, score_cfg: &ScoreConfig, warn: &dyn Fn(&str)) -> Result<Self> {
        let (config, ds, source_name) = match source {
            Source::Run(run) => {
                let config = train::open_run(run)?;
                let ds = data::open(data.unwrap_or(&config.data))?;
                (config, ds, run.display().to_string())
            }
            Source::Series { weights, model, normalize } => {
                let Some(spec) = data else { bail!("checkpoints trained elsewhere are scored on a dataset: give one (--data)") };
                let ds = data::open(spec)?;
                let config = crate::nn::runs::series_config(spec, model, &ds, normalize)?;
                (config, ds, weights.clone())
            }
        };
        if let Source::Run(run) = source {
            if let Err(why) = train::check_complete(run, &config) {
                if !selection.allow_incomplete {
                    return Err(why.context("pass --allow-incomplete to score the checkpoints it has"));
                }
                warn(&format!("{why:#}; scoring the checkpoints it has (--allow-incomplete)"));
            }
        }
        let mut network = Network::build(&config.model, ds.sample_shape(), 0).with_context(|| format!("the model '{}' on its data", config.model))?;
        let activation = super::check_network(&network, score_cfg).with_context(|| format!("model '{}'", config.model))?;
        // The samples scored: a run's (its labels, the dataset rows, which were
        // corrupted), or the data's own for a series trained elsewhere.
        let mut samples = match source {
            Source::Run(run) => Scored::of_run(run, &ds)?,
            Source::Series { weights, .. } => Scored::of_series(weights, &ds, &config.model, &network)?,
        };
        samples.select(selection.pattern.as_deref(), selection.every)?;
        if samples.checkpoints.is_empty() {
            bail!("no checkpoints selected in {source_name}");
        }
        for ck in &samples.checkpoints {
            network.load_weights(ck)?;
        }
        Ok(Self { config, data: ds, network, samples, source_name, estimator: score_cfg.describe(activation).to_string() })
    }

    /// The samples a whole run scores.
    pub fn len(&self) -> usize {
        self.samples.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.labels.is_empty()
    }

    /// `backend` if this job runs there, else the CPU with the reason: the
    /// finite-difference estimator, the released-code statistic and convolutional
    /// networks run on the CPU.
    pub fn backend_for(&self, backend: Backend, score_cfg: &ScoreConfig) -> (Backend, Option<&'static str>) {
        let gpu = matches!(backend, Backend::Cuda(_));
        if gpu && !(super::runs_on_gpu(score_cfg) && matches!(self.network, Network::Mlp(_))) {
            return (Backend::Cpu, Some("the finite-difference estimator, the released-code statistic and convolutional networks run on the CPU"));
        }
        (backend, None)
    }

    /// `backend_for` over several devices: all of them when the job runs on GPUs, else
    /// the CPU alone with the reason.
    pub fn backends_for(&self, backends: Vec<Backend>, score_cfg: &ScoreConfig) -> (Vec<Backend>, Option<&'static str>) {
        let Some(first) = backends.first().cloned() else { return (vec![Backend::Cpu], None) };
        match self.backend_for(first, score_cfg) {
            (Backend::Cpu, note) => (vec![Backend::Cpu], note),
            _ => (backends, None),
        }
    }

    /// Scores the rows of `shard` at every selected checkpoint, `batch` samples at a
    /// time, and averages them (in float64). With `out`, each checkpoint's scores go to
    /// out/score-STEM.npy and trace-STEM.npy and the averages to score.npy, trace.npy
    /// (and gauss_newton.npy), with shard records for `rote merge` when the shard is a
    /// part. `progress` receives samples done (× checkpoints).
    pub fn score(&mut self, backend: &Backend, shard: Shard, batch: usize, score_cfg: &ScoreConfig, out: Option<&Path>, progress: &(dyn Fn(u64) + Sync)) -> Result<RunScores> {
        self.score_on(std::slice::from_ref(backend), shard, batch, score_cfg, out, progress)
    }

    /// `score` with the shard's rows split over several devices (`--device cuda:all`),
    /// each scoring its part of every checkpoint on its own thread; the result and the
    /// files equal a single device's.
    pub fn score_on(&mut self, backends: &[Backend], shard: Shard, batch: usize, score_cfg: &ScoreConfig, out: Option<&Path>, progress: &(dyn Fn(u64) + Sync)) -> Result<RunScores> {
        if batch == 0 {
            bail!("the batch must be at least 1 sample");
        }
        let range = shard.range(self.len());
        let t0 = std::time::Instant::now();
        let count = self.samples.checkpoints.len() as f64;
        let mut mean_score = vec![0f64; range.len()];
        let mut mean_trace = vec![0f64; range.len()];
        let mut mean_gn: Option<Vec<f64>> = None;
        if let Some(out) = out {
            crate::report::create_out_dir(out)?;
        }
        let accumulate = |acc: &mut [f64], values: &[f32]| acc.iter_mut().zip(values).for_each(|(m, &v)| *m += v as f64 / count);
        for ck in &self.samples.checkpoints {
            self.network.load_weights(ck)?;
            let job = &*self;
            let parts = crate::sched::split_over(backends, range.clone(), &|backend, rows| {
                super::score_checkpoint(backend, &job.network, &job.config, &job.data.train.x, job.data.sample_shape(), (&job.samples.sources, &job.samples.labels), rows, batch, score_cfg, progress)
            })
            .with_context(|| ck.display().to_string())?;
            let s = super::Scores::join(parts);
            if let Some(out) = out {
                let stem = ck.file_stem().unwrap_or_default().to_string_lossy().to_string();
                crate::report::write_npy(&out.join(format!("score-{stem}.npy")), &[s.score.len()], &s.score)?;
                crate::report::write_npy(&out.join(format!("trace-{stem}.npy")), &[s.trace.len()], &s.trace)?;
            }
            accumulate(&mut mean_score, &s.score);
            accumulate(&mut mean_trace, &s.trace);
            if let Some(gn) = s.gauss_newton.filter(|g| !g.is_empty()) {
                accumulate(mean_gn.get_or_insert_with(|| vec![0f64; range.len()]), &gn);
            }
        }
        let to_f32 = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
        let (score, trace, gauss_newton) = (to_f32(mean_score), to_f32(mean_trace), mean_gn.map(to_f32));
        if let Some(out) = out {
            let mut outputs = vec![("score.npy", &score), ("trace.npy", &trace)];
            if let Some(g) = &gauss_newton {
                outputs.push(("gauss_newton.npy", g));
            }
            for (name, values) in outputs {
                crate::sched::write_shard_npy(&out.join(name), values, shard, self.len(), &format!("{} {name}", self.source_name))?;
            }
        }
        let positives = &self.samples.corrupted[range.clone()];
        let corrupted = positives.iter().filter(|&&p| p).count();
        Ok(RunScores {
            auroc: super::auroc(&score, positives),
            precision_at_k: (corrupted > 0).then(|| super::precision_at_k(&score, positives, corrupted)),
            score,
            trace,
            gauss_newton,
            rows: range,
            corrupted,
            seconds: t0.elapsed().as_secs_f64(),
            device: Backend::describe(backends),
        })
    }

    /// Probes per sample as reported: none for the exact estimator.
    pub fn probes_used(&self, score_cfg: &ScoreConfig) -> usize {
        if self.estimator.starts_with("exact") {
            0
        } else {
            score_cfg.probes
        }
    }
}
