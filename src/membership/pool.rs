//! A pool of models trained on random subsets, stored as their logits (ALGORITHMS.md §5).
//!
//! Member k trains exactly as `rote train` would on its subset S_k = {i : keep[k, i] = 1}
//! of the training examples (the recipe's corruption applied once, for the whole pool),
//! with its own seed (a Philox word of the pool's seed and k) for initialization, batch
//! order and augmentation. Members train in parallel across cores. A pool directory:
//!
//!   pool.json                   settings, example counts, classes, queries
//!   keep.npy                    uint8 (K, n): 1 where training example i is in S_k
//!   labels.npy                  int64 (n + t): training labels as used, then test labels
//!   sources.npy, corrupted.npy  as a run's (the dataset row and corruption of each
//!                               training example)
//!   logits/model-KKKKK.npy      float32 (Q, n + t, C): member k's logits of every
//!                               training and test example for each query (the image,
//!                               and its horizontal mirror); written last, atomically, so
//!                               its presence means the member is finished
//!   models/model-KKKKK.safetensors   the member's weights (with `save_models`)
//!
//! Training skips finished members, so an interrupted pool continues where it stopped and
//! shards (`--shard I/N` over models) may share one directory or be joined by `merge`.

use super::keep_matrix;
use crate::data::Dataset;
use crate::nn::network::{self, Network};
use crate::nn::train::{self, TrainConfig, TrainingSet};
use crate::rng::Philox;
use crate::sched::Shard;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const POOL_FILE: &str = "pool.json";
const STREAM_MEMBER: u64 = 0x9001_5EED;

/// What a pool is trained with.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PoolConfig {
    /// Every member's recipe; its seed is the pool's (keep matrix, corruption, members' seeds).
    pub recipe: TrainConfig,
    pub models: usize,
    pub keep: f64,
    /// Also query the horizontal mirror of image inputs.
    pub mirror: bool,
}

/// pool.json.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PoolInfo {
    pub config: PoolConfig,
    /// Training examples (the subsets are drawn from these) and test examples.
    pub examples: usize,
    pub test_examples: usize,
    pub classes: usize,
    pub queries: Vec<String>,
}

impl PoolInfo {
    pub fn total_examples(&self) -> usize {
        self.examples + self.test_examples
    }
}

/// Member k's seed.
pub fn member_seed(pool_seed: u64, k: usize) -> u64 {
    Philox::new(pool_seed, STREAM_MEMBER).key64(k as u64)
}

pub fn logits_path(dir: &Path, k: usize) -> PathBuf {
    dir.join("logits").join(format!("model-{k:05}.npy"))
}

pub fn model_path(dir: &Path, k: usize) -> PathBuf {
    dir.join("models").join(format!("model-{k:05}.safetensors"))
}

/// What one call of `train_pool` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainSummary {
    pub trained: Vec<usize>,
    pub skipped: Vec<usize>,
    pub seconds: f64,
}

fn check_config(cfg: &PoolConfig) -> Result<()> {
    cfg.recipe.validate()?;
    super::in_count(cfg.models, cfg.keep)?;
    Ok(())
}

/// Trains the members of `shard` (over models) not yet finished in `dir`, creating the
/// pool when `dir` holds none; an existing pool must have been started with the same
/// settings. `progress(models_done, models_total)` after each member.
pub fn train_pool(ds: &Dataset, cfg: &PoolConfig, dir: &Path, shard: Shard, save_models: bool, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<TrainSummary> {
    check_config(cfg)?;
    let recipe = &cfg.recipe;
    let probe = Network::build(&recipe.model, ds.sample_shape(), recipe.seed).with_context(|| format!("model '{}' on '{}'", recipe.model, recipe.data))?;
    probe.check_labels(&recipe.model, ds.train.y.iter().chain(ds.test.iter().flat_map(|t| &t.y)))?;
    let classes = probe.classes();
    drop(probe);
    let chw = train::planes_of(ds);
    let mirror = cfg.mirror && network::image_shape(ds.sample_shape()).is_ok();
    if cfg.mirror && !mirror {
        bail!("--mirror needs image data (C×H×W samples); {} has samples of shape {:?}", recipe.data, ds.sample_shape());
    }
    if !train::Augment::parse(&recipe.augment)?.is_none() {
        network::image_shape(ds.sample_shape()).context("--augment")?;
    }
    let set = train::corrupt(&ds.train, classes, recipe.label_noise, recipe.duplicate_conflicts, recipe.seed)?;
    let n = set.sources.len();
    let test_examples = ds.test.as_ref().map_or(0, |t| t.len());
    let info = PoolInfo {
        config: cfg.clone(),
        examples: n,
        test_examples,
        classes,
        queries: if mirror { vec!["original".into(), "mirror".into()] } else { vec!["original".into()] },
    };
    let logits_bytes = crate::resources::product(&[info.queries.len(), n + test_examples, classes, 4]);
    crate::resources::check_memory(&[("one member's logits", logits_bytes.saturating_mul(rayon::current_num_threads() as u64))], "--models or the data")?;
    let keep = keep_matrix(recipe.seed, cfg.models, n, cfg.keep)?;
    let fresh = if dir.join(POOL_FILE).exists() {
        let stored = Pool::open(dir)?;
        if serde_json::to_value(&stored.info)? != serde_json::to_value(&info)? {
            bail!(
                "{} holds a pool with other settings ({}); train into another --out, or continue it with its own settings (--resume)",
                dir.display(),
                serde_json::to_string(&stored.info.config)?
            );
        }
        None
    } else {
        let fresh = crate::report::FreshDir::create(dir)?;
        crate::report::create_out_dir(&dir.join("logits"))?;
        crate::report::write_npy(&dir.join("keep.npy"), &[cfg.models, n], &keep)?;
        let mut labels = set.labels.clone();
        labels.extend(ds.test.iter().flat_map(|t| t.y.iter().copied()));
        crate::report::write_npy(&dir.join("labels.npy"), &[labels.len()], &labels)?;
        crate::report::write_npy(&dir.join("sources.npy"), &[n], &set.sources)?;
        crate::report::write_npy(&dir.join("corrupted.npy"), &[n], &set.corrupted)?;
        crate::report::write_json(&dir.join(POOL_FILE), &info)?;
        Some(fresh)
    };
    if save_models {
        crate::report::create_out_dir(&dir.join("models"))?;
    }
    let mine: Vec<usize> = shard.range(cfg.models).collect();
    let (skipped, todo): (Vec<usize>, Vec<usize>) = mine.iter().partition(|&&k| logits_path(dir, k).is_file());
    let done = AtomicU64::new(skipped.len() as u64);
    let total = mine.len() as u64;
    progress(done.load(Ordering::Relaxed), total);
    let t0 = std::time::Instant::now();
    todo.par_iter().try_for_each(|&k| -> Result<()> {
        let subset: Vec<usize> = (0..n).filter(|&i| keep[k * n + i] == 1).collect();
        let member = TrainingSet {
            sources: subset.iter().map(|&i| set.sources[i]).collect(),
            labels: subset.iter().map(|&i| set.labels[i]).collect(),
            corrupted: subset.iter().map(|&i| set.corrupted[i]).collect(),
        };
        let member_recipe = TrainConfig { seed: member_seed(recipe.seed, k), ..recipe.clone() };
        let net = train_member(ds, &member_recipe, chw, &member).with_context(|| format!("pool member {k}"))?;
        if save_models {
            net.save(&model_path(dir, k), (recipe.epochs * member.sources.len().div_ceil(recipe.batch)) as u64)?;
        }
        let logits = query_logits(ds, recipe, &net, &set.sources, chw, mirror)?;
        crate::report::write_npy(&logits_path(dir, k), &[info.queries.len(), n + test_examples, classes], &logits)?;
        progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
        Ok(())
    })?;
    fresh.map(|d| d.keep());
    Ok(TrainSummary { trained: todo, skipped, seconds: t0.elapsed().as_secs_f64() })
}

/// Trains one member from its seed's initialization.
fn train_member(ds: &Dataset, recipe: &TrainConfig, chw: [usize; 3], set: &TrainingSet) -> Result<Network> {
    let mut net = Network::build(&recipe.model, ds.sample_shape(), recipe.seed)?;
    let mut momentum = net.zero_momentum();
    for epoch in 0..recipe.epochs {
        train::fit_epoch(&ds.train.x, recipe, chw, set, &mut net, epoch, &mut momentum, &mut |_| {})?;
    }
    if net.parameters_mut().iter().any(|w| w.iter().any(|v| !v.is_finite())) {
        bail!("training diverged (non-finite weights); try a smaller --lr than {}", recipe.lr);
    }
    Ok(net)
}

/// Logits (Q, n + t, C) of the training examples (dataset rows `sources`) and the test
/// split, for the original inputs and, with `mirror`, their horizontal mirror.
fn query_logits(ds: &Dataset, recipe: &TrainConfig, net: &Network, sources: &[u32], chw: [usize; 3], mirror: bool) -> Result<Vec<f32>> {
    const CHUNK: usize = 512;
    let test_rows: Vec<u32> = (0..ds.test.as_ref().map_or(0, |t| t.len()) as u32).collect();
    let mut out = Vec::new();
    let mut xb = Vec::new();
    for flip in [false, true].into_iter().take(1 + mirror as usize) {
        for (split, rows) in [(Some(&ds.train), sources), (ds.test.as_ref(), &test_rows[..])] {
            let Some(split) = split else { continue };
            for part in rows.chunks(CHUNK) {
                xb.resize(part.len() * split.features(), 0.0);
                train::gather_into(&split.x, part, recipe.input_scale, &mut xb);
                if flip {
                    xb.chunks_mut(chw[2]).for_each(|row| row.reverse());
                }
                recipe.normalization.apply(&mut xb, chw[1] * chw[2]);
                out.extend(net.logits(&xb, part.len())?);
            }
        }
    }
    Ok(out)
}

/// A pool on disk.
pub struct Pool {
    pub dir: PathBuf,
    pub info: PoolInfo,
    /// (K, n)
    pub keep: Vec<u8>,
    /// n + t
    pub labels: Vec<i64>,
    pub corrupted: Vec<u8>,
    pub sources: Vec<u32>,
}

impl Pool {
    pub fn open(dir: &Path) -> Result<Self> {
        let file = dir.join(POOL_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| format!("{} is not a pool directory (no {POOL_FILE}; make one with `rote pool train`)", dir.display()))?;
        let info: PoolInfo = serde_json::from_str(&text).with_context(|| format!("{} is not a pool description", file.display()))?;
        let (k, n, t) = (info.config.models, info.examples, info.test_examples);
        let read = |name: &str, shape: &[usize]| -> Result<crate::data::Array> {
            let path = dir.join(name);
            let a = crate::data::Array::open_npy(&path)?;
            if a.shape != shape {
                bail!("{} has shape {:?}; {} says {:?}", path.display(), a.shape, file.display(), shape);
            }
            Ok(a)
        };
        let keep = read("keep.npy", &[k, n])?.bytes().to_vec();
        let labels = read("labels.npy", &[n + t])?.to_i64()?;
        let corrupted = read("corrupted.npy", &[n])?.bytes().to_vec();
        let sources = bytemuck::cast_slice::<u8, u32>(read("sources.npy", &[n])?.bytes()).to_vec();
        if let Some(bad) = labels.iter().position(|&y| y < 0 || y as usize >= info.classes) {
            bail!("{}: label {} of example {bad} is outside the pool's {} classes", dir.join("labels.npy").display(), labels[bad], info.classes);
        }
        Ok(Self { dir: dir.to_path_buf(), info, keep, labels, corrupted, sources })
    }

    pub fn models(&self) -> usize {
        self.info.config.models
    }

    /// Errors unless `ds` is the data this pool was trained on: every training example's
    /// dataset row exists with the pool's label (where the pool did not corrupt it), and
    /// the test split has the pool's labels.
    pub fn check_data(&self, ds: &Dataset) -> Result<()> {
        let spec = &self.info.config.recipe.data;
        let n = self.info.examples;
        let differs = (0..n).find(|&i| {
            let r = self.sources[i] as usize;
            r >= ds.train.len() || (self.corrupted[i] == 0 && ds.train.y[r] != self.labels[i])
        });
        let test = ds.test.as_ref().map_or(&[][..], |t| &t.y[..]);
        if let Some(i) = differs {
            bail!("{}: '{spec}' now has other training data than the pool was trained on (example {i}, dataset row {})", self.dir.display(), self.sources[i]);
        }
        if test != &self.labels[n..] {
            bail!("{}: '{spec}' now has {} test examples or other labels than the pool's {}", self.dir.display(), test.len(), self.info.test_examples);
        }
        Ok(())
    }

    pub fn queries(&self) -> usize {
        self.info.queries.len()
    }

    pub fn finished(&self) -> Vec<usize> {
        (0..self.models()).filter(|&k| logits_path(&self.dir, k).is_file()).collect()
    }

    /// Errors unless every member is finished, saying how many are.
    pub fn require_complete(&self) -> Result<()> {
        let done = self.finished().len();
        if done < self.models() {
            bail!(
                "{} has {done} of {} members finished; run `rote pool train --resume --out {}` (or the missing shards) to finish it",
                self.dir.display(),
                self.models(),
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Member k's logits (Q, n + t, C), checked against pool.json.
    pub fn logits(&self, k: usize) -> Result<crate::data::Array> {
        let path = logits_path(&self.dir, k);
        let a = crate::data::Array::open_npy(&path)?;
        let want = [self.queries(), self.info.total_examples(), self.info.classes];
        if a.shape != want || a.dtype != crate::data::DType::F32 {
            bail!("{} holds {} {:?}; the pool's members have float32 {:?}", path.display(), a.dtype.name(), a.shape, want);
        }
        Ok(a)
    }

    /// `value(logits, label)` of every (member of `models`, query of `queries`, example of
    /// `examples`), indices into the pool's n + t examples: (|models|, |queries|, |examples|).
    pub fn values(&self, models: &[usize], queries: Range<usize>, examples: Range<usize>, value: &(dyn Fn(&[f32], usize) -> f64 + Sync)) -> Result<Vec<f64>> {
        let (total, c) = (self.info.total_examples(), self.info.classes);
        if queries.end > self.queries() || examples.end > total {
            bail!("internal error: queries {queries:?} of {}, examples {examples:?} of {total}", self.queries());
        }
        let per_model = queries.len() * examples.len();
        let mut out = vec![0f64; models.len() * per_model];
        out.par_chunks_mut(per_model.max(1)).zip(models.par_iter()).try_for_each(|(row, &k)| -> Result<()> {
            let a = self.logits(k)?;
            let logits: &[f32] = bytemuck::cast_slice(a.bytes());
            for (qi, q) in queries.clone().enumerate() {
                let part = &logits[(q * total + examples.start) * c..(q * total + examples.end) * c];
                for ((v, l), i) in row[qi * examples.len()..(qi + 1) * examples.len()].iter_mut().zip(part.chunks(c)).zip(examples.clone()) {
                    *v = value(l, self.labels[i] as usize);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The keep rows of `models`: (|models|, n).
    pub fn keep_of(&self, models: &[usize]) -> Vec<u8> {
        let n = self.info.examples;
        models.iter().flat_map(|&k| self.keep[k * n..(k + 1) * n].iter().copied()).collect()
    }
}

/// Joins pools trained in parts (`--shard I/N` into separate directories) into `out`:
/// the parts must have the same pool.json and keep matrix; each member's files are
/// copied from the part that finished it.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<usize> {
    let Some(first) = parts.first() else { bail!("nothing to merge") };
    let base = Pool::open(first)?;
    let base_json = serde_json::to_value(&base.info)?;
    let mut owner: Vec<Option<&PathBuf>> = vec![None; base.models()];
    for p in parts {
        let pool = Pool::open(p)?;
        if serde_json::to_value(&pool.info)? != base_json || pool.keep != base.keep {
            bail!("{} is a pool with other settings than {}; only parts of one pool can be merged", p.display(), first.display());
        }
        for k in pool.finished() {
            owner[k].get_or_insert(p);
        }
    }
    if out.join(POOL_FILE).exists() {
        bail!("{} already holds a pool; merge into a new directory", out.display());
    }
    let fresh = crate::report::FreshDir::create(out)?;
    crate::report::create_out_dir(&out.join("logits"))?;
    for name in ["keep.npy", "labels.npy", "sources.npy", "corrupted.npy", POOL_FILE] {
        std::fs::copy(first.join(name), out.join(name)).with_context(|| format!("cannot copy {} into {}", first.join(name).display(), out.display()))?;
    }
    let mut copied = 0;
    for (k, from) in owner.iter().enumerate() {
        let Some(from) = from else { continue };
        if model_path(from, k).is_file() {
            crate::report::create_out_dir(&out.join("models"))?;
            std::fs::copy(model_path(from, k), model_path(out, k))?;
        }
        std::fs::copy(logits_path(from, k), logits_path(out, k)).with_context(|| format!("cannot copy member {k} from {}", from.display()))?;
        copied += 1;
    }
    fresh.keep();
    Ok(copied)
}
