//! `rote pool …`, `rote mem`, `rote mia`, `rote choi`: pools of models on random subsets
//! and the memorization and membership scores computed from them.

use super::classifier::RecipeArgs;
use super::print_json;
use anyhow::Result;
use clap::{Args, Subcommand};
use rote::data;
use rote::membership::attack::{self, AttackKind, AttackSpec, Selection, Targets};
use rote::membership::pool::{self, Pool, PoolConfig};
use rote::membership::roc::{Metrics, FPRS};
use rote::membership::Centre;
use rote::report::{self, plot};
use rote::sched::{self, Shard};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Train K models, each on a random subset of the training examples (every example
    /// IN for exactly ⌊keep·K⌋ of them), and store every model's logits of every
    /// training and test example. Finished models are skipped, so rerunning continues.
    Train(PoolTrainArgs),
    /// A pool's settings and how many of its models are finished.
    Info {
        pool: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct PoolTrainArgs {
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Models in the pool (K).
    #[arg(long, default_value_t = 16, conflicts_with = "resume")]
    models: usize,
    /// Fraction of models each example is IN for (0.5 for LiRA, 0.7 for Feldman–Zhang).
    #[arg(long, default_value_t = 0.5, conflicts_with = "resume")]
    keep: f64,
    /// Query only the original images (by default image data is also queried mirrored).
    #[arg(long, conflicts_with = "resume")]
    no_mirror: bool,
    /// Also keep every model's weights (models/model-KKKKK.safetensors).
    #[arg(long)]
    save_models: bool,
    /// Train only part I of N of the models (0-based); parts may share --out or be joined
    /// with `rote merge`.
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    /// Continue the pool in --out with the settings it was started with (its pool.json).
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn pool_cmd(cmd: PoolCommand) -> Result<()> {
    match cmd {
        PoolCommand::Train(a) => pool_train_cmd(a),
        PoolCommand::Info { pool, json } => {
            let p = Pool::open(&pool)?;
            let finished = p.finished();
            let c = &p.info.config;
            if json {
                print_json(&serde_json::json!({ "pool": pool, "info": p.info, "finished": finished.len(), "missing": (0..p.models()).filter(|k| !finished.contains(k)).collect::<Vec<_>>() }));
            } else {
                println!(
                    "{}: {} models ({} finished) of {} on {}, keep {}, {} training and {} test examples, queries {}",
                    pool.display(),
                    c.models,
                    finished.len(),
                    c.recipe.model,
                    c.recipe.data,
                    c.keep,
                    p.info.examples,
                    p.info.test_examples,
                    p.info.queries.join("+")
                );
            }
            Ok(())
        }
    }
}

fn pool_train_cmd(a: PoolTrainArgs) -> Result<()> {
    let (cfg, ds) = if a.resume {
        let stored = Pool::open(&a.out)?;
        let ds = data::open(&stored.info.config.recipe.data)?;
        (stored.info.config, ds)
    } else {
        let (recipe, ds) = a.recipe.config()?;
        (PoolConfig { recipe, models: a.models, keep: a.keep, mirror: !a.no_mirror && rote::nn::network::image_shape(ds.sample_shape()).is_ok() }, ds)
    };
    let bar = sched::progress(0, "training models", !a.json);
    let summary = pool::train_pool(&ds, &cfg, &a.out, a.shard, a.save_models, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if a.json {
        print_json(&serde_json::json!({ "pool": a.out, "models": cfg.models, "shard": a.shard.to_string(), "trained": summary.trained.len(), "skipped": summary.skipped.len(), "seconds": summary.seconds }));
    } else {
        println!(
            "trained {} models of {} on {} in {:.1} s ({} already finished) → {}",
            summary.trained.len(),
            cfg.recipe.model,
            cfg.recipe.data,
            summary.seconds,
            summary.skipped.len(),
            a.out.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct MemArgs {
    #[arg(long)]
    pool: PathBuf,
    /// Output directory (default: POOL/mem).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The influence matrix is written dense up to this size, else the top --top-k per
    /// test example.
    #[arg(long, default_value_t = 256)]
    dense_limit_mb: u64,
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Skip the influence on test examples.
    #[arg(long)]
    no_influence: bool,
    /// Rows of top.csv (the most memorized examples).
    #[arg(long, default_value_t = 100)]
    top: usize,
    /// A training run of the pool's data and model scored by `rote curvature`: report
    /// the cosine and rank correlation of its scores (--curvature-scores) with memorization.
    #[arg(long, requires = "curvature_scores")]
    curvature_run: Option<PathBuf>,
    /// The score.npy `rote curvature` wrote for --curvature-run.
    #[arg(long, requires = "curvature_run")]
    curvature_scores: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn mem_cmd(a: MemArgs) -> Result<()> {
    let p = Pool::open(&a.pool)?;
    let ds = data::open(&p.info.config.recipe.data)?;
    p.check_data(&ds)?;
    let out = a.out.clone().unwrap_or_else(|| a.pool.join("mem"));
    let t0 = std::time::Instant::now();
    let (m, correct) = attack::memorization(&p)?;
    let comparison = match (&a.curvature_run, &a.curvature_scores) {
        (Some(run), Some(scores)) => Some(attack::compare_with_curvature(&p, &m.mem, run, scores)?),
        _ => None,
    };
    let infl = (p.info.test_examples > 0 && !a.no_influence).then(|| attack::influence(&p, &correct, a.dense_limit_mb << 20, a.top_k)).transpose()?;
    let written = attack::write_memorization(&p, &ds, &m, infl.as_ref(), &out, a.top)?;
    let n = p.info.examples;
    let corrupted = p.corrupted.iter().filter(|&&c| c == 1).count();
    let means = m.group_means(&p.corrupted);
    let value = serde_json::json!({
        "pool": a.pool, "out": out, "models": p.models(), "examples": n, "seconds": t0.elapsed().as_secs_f64(),
        "mean_mem": means.all, "mean_mem_corrupted": means.corrupted, "mean_mem_clean": means.clean,
        "accuracy_in": m.accuracy_in, "accuracy_out": m.accuracy_out,
        "influence": written.influence, "gallery": written.gallery, "curvature": comparison,
    });
    if a.json {
        print_json(&value);
    } else {
        println!(
            "memorization of {n} examples from {} models: mean {:.4}; members' accuracy on their IN examples {:.4}, OUT {:.4} → {}",
            p.models(),
            value["mean_mem"].as_f64().unwrap_or(f64::NAN),
            m.accuracy_in,
            m.accuracy_out,
            out.display()
        );
        if corrupted > 0 {
            println!("corrupted examples: {corrupted} with mean mem {:.4}, clean {:.4}", value["mean_mem_corrupted"].as_f64().unwrap_or(f64::NAN), value["mean_mem_clean"].as_f64().unwrap_or(f64::NAN));
        }
        if let Some(c) = &comparison {
            println!("curvature against memorization over {} examples: cosine {:.4}, Spearman {:.4}", c.examples, c.cosine, c.spearman);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct AttackArgs {
    #[arg(long)]
    pool: PathBuf,
    #[arg(long, value_enum, default_value = "lira-online")]
    attack: AttackKind,
    /// One σ for all examples (LiRA; better with few shadow models).
    #[arg(long)]
    fixed_variance: bool,
    /// How LiRA's Gaussians are centred (tf-privacy: median).
    #[arg(long, value_enum, default_value = "median")]
    centre: Centre,
    /// RMIA's γ.
    #[arg(long, default_value_t = 2.0)]
    gamma: f64,
    /// Offline RMIA with this a (about 0.3); online when absent.
    #[arg(long)]
    offline_a: Option<f64>,
    /// RMIA's population: the first this many test examples (0: all).
    #[arg(long, default_value_t = 0)]
    population: usize,
}

impl AttackArgs {
    fn spec(&self) -> AttackSpec {
        AttackSpec { kind: self.attack, centre: self.centre, fixed_variance: self.fixed_variance, gamma: self.gamma, offline_a: self.offline_a, population: self.population }
    }

    fn label(&self) -> String {
        let name = serde_json::to_value(self.attack).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        format!("{name}{}", if self.fixed_variance && matches!(self.attack, AttackKind::LiraOnline | AttackKind::LiraOffline) { " (fixed variance)" } else { "" })
    }
}

#[derive(Args)]
pub struct MiaArgs {
    #[command(flatten)]
    attack: AttackArgs,
    /// Each of the first K models as the target against all the others, or every model
    /// (leave-one-out).
    #[arg(long, default_value = "leave-one-out")]
    targets: Targets,
    /// Shadow models per target: the first N other models (default: all others).
    #[arg(long)]
    shadows: Option<usize>,
    /// Bootstrap replicates for the confidence intervals (0: none).
    #[arg(long, default_value_t = 100)]
    bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory for scores.npy, members.npy, roc.png (+ CSV) and mia.json
    /// (default: POOL/mia-ATTACK).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    serde_json::json!({ "auc": m.auc, "tpr_at_0.1%_fpr": m.tpr_at_fpr[0], "tpr_at_0.01%_fpr": m.tpr_at_fpr[1], "tpr_at_1%_fpr": m.tpr_at_fpr[2], "balanced_accuracy": m.balanced_accuracy })
}

pub fn mia_cmd(a: MiaArgs) -> Result<()> {
    let p = Pool::open(&a.attack.pool)?;
    let t0 = std::time::Instant::now();
    let (result, shadows, scored) = attack::attack_pool(&p, &a.attack.spec(), a.targets, a.shadows)?;
    let targets = &result.targets;
    let roc = result.roc(None)?;
    let metrics = roc.metrics(None)?;
    let ci = (a.bootstrap > 0).then(|| roc.bootstrap(a.bootstrap, a.seed)).transpose()?;
    let name = serde_json::to_value(a.attack.attack)?.as_str().unwrap_or("attack").to_string();
    let out = a.out.clone().unwrap_or_else(|| a.attack.pool.join(format!("mia-{name}{}", if a.attack.fixed_variance { "-fixed" } else { "" })));
    report::create_out_dir(&out)?;
    let n = p.info.examples;
    report::write_npy(&out.join("scores.npy"), &[targets.len(), n], &result.scores.iter().map(|&v| v as f32).collect::<Vec<f32>>())?;
    report::write_npy(&out.join("members.npy"), &[targets.len(), n], &result.members.iter().map(|&v| v as u8).collect::<Vec<u8>>())?;
    let curve = roc.curve(None)?;
    plot::lines(&out.join("roc.png"), &format!("{} on {} targets", a.attack.label(), targets.len()), "false-positive rate", "true-positive rate", &[plot::Series { name: a.attack.label(), points: thin(&curve) }], plot::Axes::LogLog, None, None)?;
    let value = serde_json::json!({
        "pool": a.attack.pool, "attack": a.attack.label(), "settings": a.attack.spec(), "targets": targets.len(), "shadows": shadows, "scored": scored, "examples": n,
        "pairs": result.scores.len(), "metrics": metrics_json(&metrics),
        "ci95": ci.as_ref().map(|(lo, hi)| serde_json::json!({ "low": metrics_json(lo), "high": metrics_json(hi), "replicates": a.bootstrap })),
        "seconds": t0.elapsed().as_secs_f64(), "out": out,
    });
    report::write_json(&out.join("mia.json"), &value)?;
    if a.json {
        print_json(&value);
    } else {
        let ci_of = |f: &dyn Fn(&Metrics) -> f64| ci.as_ref().map(|(lo, hi)| format!(" [{:.4}, {:.4}]", f(lo), f(hi))).unwrap_or_default();
        println!("{} over {} targets × {n} examples, {shadows} shadow models each:", a.attack.label(), targets.len());
        if scored < 1.0 {
            println!("  {:.1}% of the pairs scored (the others lack IN or OUT shadows)", 100.0 * scored);
        }
        println!("  AUC {:.4}{}", metrics.auc, ci_of(&|m| m.auc));
        for (j, fpr) in FPRS.iter().enumerate() {
            println!("  TPR at {}% FPR {:.4}{}", fpr * 100.0, metrics.tpr_at_fpr[j], ci_of(&|m| m.tpr_at_fpr[j]));
        }
        println!("  balanced accuracy {:.4}{}", metrics.balanced_accuracy, ci_of(&|m| m.balanced_accuracy));
        println!("→ {}", out.display());
    }
    Ok(())
}

/// At most a few thousand ROC points for the chart, kept dense at low FPR (every point
/// below 1%, then evenly spaced).
fn thin(curve: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let step = (curve.len() / 2000).max(1);
    curve.iter().enumerate().filter(|(i, p)| p.0 < 0.01 || i % step == 0 || *i == curve.len() - 1).map(|(_, p)| *p).collect()
}

#[derive(Args)]
pub struct ChoiArgs {
    #[command(flatten)]
    attack: AttackArgs,
    /// The examples targeted: top:Q% most memorized, or mem>T (Feldman–Zhang from the pool).
    #[arg(long, default_value = "top:10%")]
    select: Selection,
    /// Shadow-model counts (comma-separated; default 2, 4, 8, …, K − 1).
    #[arg(long)]
    shadows: Option<String>,
    /// Targets: the first K models, or leave-one-out.
    #[arg(long, default_value = "leave-one-out")]
    targets: Targets,
    /// Output directory for choi.csv, choi.png and choi.json (default: POOL/choi).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn choi_cmd(a: ChoiArgs) -> Result<()> {
    let p = Pool::open(&a.attack.pool)?;
    let counts: Vec<usize> = match &a.shadows {
        None => attack::shadow_counts(p.models()),
        Some(text) => text.split(',').map(|c| c.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("--shadows {text}: '{c}' is not a number"))).collect::<Result<_>>()?,
    };
    let targets = a.targets.models(p.models());
    let bar = sched::progress(counts.len() as u64, "attacking", !a.json);
    let (points, chosen) = attack::choi(&p, &a.attack.spec(), &a.select, Some(&counts), a.targets, &|d| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    let out = a.out.clone().unwrap_or_else(|| a.attack.pool.join("choi"));
    report::create_out_dir(&out)?;
    attack::write_choi(&out, &points, &a.attack.label())?;
    let value = serde_json::json!({
        "pool": a.attack.pool, "attack": a.attack.label(), "selection": a.select, "selected": chosen, "examples": p.info.examples,
        "targets": targets.len(), "points": points.iter().map(|q| serde_json::json!({ "shadows": q.shadows, "all": q.all.as_ref().map(metrics_json), "selected": q.selected.as_ref().map(metrics_json), "scored": q.scored })).collect::<Vec<_>>(),
        "out": out,
    });
    report::write_json(&out.join("choi.json"), &value)?;
    if a.json {
        print_json(&value);
    } else {
        println!("{} on {} targets; {chosen} selected examples ({:?}):", a.attack.label(), targets.len(), a.select);
        println!("  shadows  TPR@0.1%FPR all  selected   AUC all  selected  scored");
        for q in &points {
            let at = |m: &Option<Metrics>, f: &dyn Fn(&Metrics) -> f64| m.as_ref().map_or(f64::NAN, f);
            println!(
                "  {:>7}  {:>15.4}  {:>8.4}  {:>8.4}  {:>8.4}  {:>6.3}",
                q.shadows,
                at(&q.all, &|m| m.tpr_at_fpr[0]),
                at(&q.selected, &|m| m.tpr_at_fpr[0]),
                at(&q.all, &|m| m.auc),
                at(&q.selected, &|m| m.auc),
                q.scored
            );
        }
        println!("→ {}", out.display());
    }
    Ok(())
}

/// `rote merge` of pool directories.
pub fn merge_pools(parts: &[PathBuf], out: &Path, json: bool) -> Result<()> {
    let copied = pool::merge(parts, out)?;
    let p = Pool::open(out)?;
    if json {
        print_json(&serde_json::json!({ "parts": parts.len(), "models": copied, "of": p.models(), "out": out }));
    } else {
        println!("merged {} pool parts: {copied} of {} models finished → {}", parts.len(), p.models(), out.display());
    }
    Ok(())
}
