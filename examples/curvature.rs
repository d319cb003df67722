//! Per-sample input curvature as a memorization score (ALGORITHMS.md §2): train an MLP
//! on digits with 10% noisy labels, score every checkpoint, and see how well the
//! averaged score finds the mislabelled samples.
//!
//!     cargo run --release --example curvature

use rote::curvature::run::{CurvatureJob, Selection, Source};
use rote::curvature::{Estimator, ScoreConfig, Statistic};
use rote::device::Backend;
use rote::nn::train::{self, Schedule, TrainConfig};

fn main() -> anyhow::Result<()> {
    let recipe = TrainConfig { epochs: 60, batch: 64, lr: 0.1, schedule: Schedule::Constant, label_noise: 0.1, ..TrainConfig::recipe("digits", "mlp:64-256-10,act=gelu") };
    let (cfg, ds) = recipe.for_data("auto")?;
    let dir = tempfile::tempdir()?;
    let run = dir.path().join("run");
    train::train(&ds, &cfg, &run, &Backend::Cpu, false, &|_, _| {})?;
    println!("trained: {:?}", train::final_metrics(&run)?);

    let score_cfg = ScoreConfig { estimator: Estimator::Hutchinson, statistic: Statistic::Paper, probes: 10, h: 1e-3, seed: 0 };
    let selection = Selection { pattern: None, every: 1, allow_incomplete: false };
    let mut job = CurvatureJob::open(&Source::Run(run), None, &selection, &score_cfg, &|w| eprintln!("warning: {w}"))?;
    let s = job.score(&Backend::Cpu, Default::default(), 256, &score_cfg, None, &|_| {})?;
    println!("{} samples × {} checkpoints in {:.2} s; {} corrupted, AUROC {:.3}", s.score.len(), job.samples.checkpoints.len(), s.seconds, s.corrupted, s.auroc.unwrap_or(f64::NAN));
    Ok(())
}
