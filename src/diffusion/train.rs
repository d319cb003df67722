//! Training score-matching denoisers with EDM's preconditioning and loss (ALGORITHMS.md
//! §3): σ_data = 0.5, ln σ ~ N(−1.2, 1.2²), loss λ(σ)‖D(y + σε; σ) − y‖², Adam, an EMA
//! of the weights. Because λ(σ)·c_out² = 1 the loss is ‖F − (y − c_skip·x)/c_out‖², the
//! form used here. A run directory holds:
//!
//!   run.json            the configuration (command "denoise train", data, subset, …)
//!   labels.npy          int64 conditioning labels of the training samples (conditional runs)
//!   metrics.csv         step, mean loss since the last row, seconds
//!   checkpoints/step-NNNNNNN.safetensors   EMA weights every --checkpoint-every steps
//!   ema.safetensors     the final EMA weights (what sampling uses)
//!   state.safetensors   parameters, EMA and Adam's moments of an unfinished run (`--resume`)

use super::net::{self, Layout};
use super::PixelRange;
use crate::data::Split;
use crate::rng::Philox;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const COMMAND: &str = "denoise train";

/// Conditioning: none, the true labels, or labels drawn uniformly from C classes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    None,
    True,
    Random(usize),
}

impl Labels {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "true" => Ok(Self::True),
            _ => match s.strip_prefix("random:").map(|c| c.parse::<usize>()) {
                Some(Ok(c)) if c >= 1 => Ok(Self::Random(c)),
                _ => bail!("--labels {s}: use none, true or random:C (C ≥ 1 classes)"),
            },
        }
    }
}

impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => write!(f, "none"),
            Self::True => write!(f, "true"),
            Self::Random(c) => write!(f, "random:{c}"),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DenoiserConfig {
    pub command: String,
    pub data: String,
    pub subset: Option<usize>,
    pub labels: Labels,
    #[serde(flatten)]
    pub recipe: Recipe,
    pub checkpoint_every: usize,
    pub pixel_range: PixelRange,
    pub sample_shape: Vec<usize>,
    /// Label classes the network is conditioned on (0 when unconditional).
    pub classes: usize,
    pub training_samples: usize,
}

/// How a denoiser is trained: the network and the optimization, apart from the data.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    pub model: String,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// EMA decay per step.
    pub ema: f64,
    pub seed: u64,
}

impl DenoiserConfig {
    /// A `denoise train` run of `recipe` on `train` (`subset` of `data`, samples of
    /// `sample_shape` mapped to model space by `pixel_range`); the conditioning classes
    /// and the training-set size come from `train` and `labels`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(data: &str, subset: Option<usize>, labels: Labels, recipe: Recipe, train: &Split, sample_shape: &[usize], pixel_range: PixelRange, checkpoint_every: usize) -> Result<Self> {
        let (classes, _) = conditioning_labels(train, labels, recipe.seed);
        let cfg = Self {
            command: COMMAND.into(),
            data: data.into(),
            subset,
            labels,
            recipe,
            checkpoint_every,
            pixel_range,
            sample_shape: sample_shape.to_vec(),
            classes,
            training_samples: train.len(),
        };
        cfg.layout()?;
        Ok(cfg)
    }

    pub fn layout(&self) -> Result<Layout> {
        Layout::for_model(&self.recipe.model, &self.sample_shape, self.classes, self.recipe.seed)
    }
}

const STREAM_BATCH: u64 = 0xBA7C;
const STREAM_SIGMA: u64 = 0x516A;
const STREAM_NOISE: u64 = 0x2015E;
const STREAM_LABELS: u64 = 0x1ABE1;
const STREAM_DROPOUT: u64 = 0xD0D0;

/// The conditioning labels of the training samples.
pub fn conditioning_labels(train: &Split, labels: Labels, seed: u64) -> (usize, Vec<i64>) {
    match labels {
        Labels::None => (0, vec![]),
        Labels::True => {
            let classes = train.y.iter().copied().max().map(|m| m as usize + 1).unwrap_or(1);
            (classes, train.y.clone())
        }
        Labels::Random(c) => {
            let rng = Philox::new(seed, STREAM_LABELS);
            (c, (0..train.len()).map(|i| (rng.word(i as u64) % c as u32) as i64).collect())
        }
    }
}

/// Buffers a CPU training step reuses.
#[derive(Default)]
pub struct StepBuffers {
    /// One gradient per thread; their sum is the batch's gradient.
    pub partials: Vec<Vec<f32>>,
    /// The weight matrices transposed (`net::transposed_weights`).
    pub transposed: Vec<f32>,
}

/// The mean of (F − target)² over the batch, and its gradient as the sum of the
/// vectors left in `buffers.partials`: the batch is split into one slice per thread,
/// each running forward and backward serially into its own vector (Adam adds them up
/// as it reads them, so no serial reduction runs here).
/// A U-Net runs its whole batch at once (its layers are parallel over samples) into the
/// first partial, drawing dropout from `dropout_seed`.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_gradient(l: &Layout, p: &[f32], x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>, target: &[f32], dropout_seed: u64, buffers: &mut StepBuffers) -> Result<f64> {
    use rayon::prelude::*;
    if let Some(u) = &l.unet {
        buffers.partials.resize_with(1, Vec::new);
        return u.loss_and_gradient(p, x_in, c_noise, labels, target, dropout_seed, &mut buffers.partials[0]);
    }
    let (b, d) = (c_noise.len(), l.dim);
    let scale = 2.0 / (b * d) as f32;
    let per = b.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let starts: Vec<usize> = (0..b).step_by(per).collect();
    let StepBuffers { partials, transposed } = buffers;
    partials.resize_with(starts.len(), || vec![0f32; p.len()]);
    net::transposed_weights_into(l, p, transposed);
    let pt = &transposed[..];
    let losses: Vec<f64> = starts
        .into_par_iter()
        .zip(partials.par_iter_mut())
        .map(|(r0, g)| {
            let r1 = (r0 + per).min(b);
            let act = net::forward_with(l, p, pt, &x_in[r0 * d..r1 * d], &c_noise[r0..r1], labels.map(|y| &y[r0..r1]));
            let mut loss = 0f64;
            let dout: Vec<f32> = act
                .out
                .iter()
                .zip(&target[r0 * d..r1 * d])
                .map(|(&f, &t)| {
                    loss += ((f - t) as f64).powi(2);
                    scale * (f - t)
                })
                .collect();
            net::backward(l, p, &x_in[r0 * d..r1 * d], labels.map(|y| &y[r0..r1]), &act, &dout, g);
            loss
        })
        .collect();
    Ok(losses.iter().sum::<f64>() / (b * d) as f64)
}

/// Adam (β = 0.9, 0.999, ε = 1e-8) with bias correction.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    /// One Adam step on `p` with the gradient Σ `partials`, then ema ← decay·ema +
    /// (1 − decay)·p; in parallel chunks, each summing its piece of the partials first
    /// (into the first of them) while it is in cache.
    fn step(&mut self, p: &mut [f32], partials: &mut [Vec<f32>], lr: f64, ema: &mut [f32], decay: f32) {
        use rayon::prelude::*;
        self.t += 1;
        let (b1, b2) = (0.9f32, 0.999f32);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        let step = lr as f32 * c2.sqrt() / c1;
        let eps = 1e-8 * c2.sqrt();
        const CHUNK: usize = 1 << 14;
        let (sum, rest) = partials.split_first_mut().expect("at least one gradient");
        let rest: &[Vec<f32>] = rest;
        p.par_chunks_mut(CHUNK)
            .zip(sum.par_chunks_mut(CHUNK).enumerate())
            .zip(self.m.par_chunks_mut(CHUNK).zip(self.v.par_chunks_mut(CHUNK)))
            .zip(ema.par_chunks_mut(CHUNK))
            .for_each(|(((p, (i, g)), (m, v)), e)| {
                for other in rest {
                    add_into(g, &other[i * CHUNK..]);
                }
                adam_ema_chunk(p, g, m, v, e, step, eps, decay)
            });
    }
}

/// acc += x (x at least as long), vectorized through `simd::dispatch`.
fn add_into(acc: &mut [f32], x: &[f32]) {
    #[inline(always)]
    fn body(acc: &mut [f32], x: &[f32]) {
        acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
    }
    crate::simd::dispatch(#[inline(always)] || body(acc, x))
}

/// One chunk of the Adam + EMA update, through `simd::dispatch` so the square roots and
/// divisions vectorize (same IEEE results as scalar code).
#[allow(clippy::too_many_arguments)]
fn adam_ema_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], e: &mut [f32], step: f32, eps: f32, decay: f32) {
    crate::simd::dispatch(#[inline(always)] || adam_ema_body(p, g, m, v, e, step, eps, decay))
}

/// The loop of `adam_ema_chunk`; always inlined, so that it is compiled with the
/// features `dispatch` enables (a closure body the inliner leaves out is not).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn adam_ema_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], e: &mut [f32], step: f32, eps: f32, decay: f32) {
    let (b1, b2) = (0.9f32, 0.999f32);
    let n = p.len();
    let (g, m, v, e) = (&g[..n], &mut m[..n], &mut v[..n], &mut e[..n]);
    for i in 0..n {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= step * m[i] / (v[i].sqrt() + eps);
        e[i] = decay * e[i] + (1.0 - decay) * p[i];
    }
}

pub fn checkpoint_path(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:07}.safetensors"))
}

pub fn save_weights(l: &Layout, p: &[f32], cfg: &DenoiserConfig, path: &Path) -> Result<()> {
    use crate::report::safetensors::Tensor;
    let tensors: Vec<Tensor> = l
        .tensors
        .iter()
        .map(|(name, shape, at)| Tensor::f32(name.clone(), shape.clone(), &p[*at..*at + shape.iter().product::<usize>()]))
        .collect();
    let meta = std::collections::BTreeMap::from([
        ("model".to_string(), cfg.recipe.model.clone()),
        ("classes".to_string(), cfg.classes.to_string()),
        ("dim".to_string(), l.dim.to_string()),
    ]);
    crate::report::safetensors::save(path, &tensors, &meta)
}

pub fn load_weights(l: &Layout, path: &Path) -> Result<Vec<f32>> {
    let file = crate::report::safetensors::Loaded::read(path)?;
    let st = file.view()?;
    let mut p = vec![0f32; l.total];
    for (name, shape, at) in &l.tensors {
        let (_, v) = st.floats(name, Some(shape), &|| "a different --model?".to_string())?;
        p[*at..*at + v.len()].copy_from_slice(&v);
    }
    st.reject_unread("this --model")?;
    Ok(p)
}

/// A denoiser run's configuration (its run.json); `missing` says what to do without one.
fn read_config(run: &Path, missing: &str) -> Result<DenoiserConfig> {
    let path = run.join("run.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a denoiser run (no run.json); {missing}", run.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if v["command"] != COMMAND {
        bail!("{} was written by another command ({}), not `rote denoise train`", run.display(), v.get("command").map(|c| c.to_string()).unwrap_or_else(|| "`rote train`".into()));
    }
    serde_json::from_value(v).with_context(|| format!("{} is not a denoiser run description", path.display()))
}

/// Reads a run directory written by `denoise train`.
pub fn open_run(run: &Path) -> Result<(DenoiserConfig, Layout, Vec<f32>)> {
    let cfg = read_config(run, "make one with `rote denoise train`")?;
    let layout = cfg.layout()?;
    let weights = load_weights(&layout, &run.join("ema.safetensors"))?;
    Ok((cfg, layout, weights))
}

/// The mean loss of the last row of a denoiser run's metrics.csv (NaN when it has none).
pub fn final_loss(run: &Path) -> Result<f64> {
    let path = run.join("metrics.csv");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().skip(1).last().and_then(|l| l.split(',').nth(1)).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN))
}

/// Training state saved every `state_every` steps: what `--resume` continues from.
pub const STATE_FILE: &str = "state.safetensors";

/// Steps between saved training states when no `--checkpoint-every` is given.
pub const STATE_EVERY: usize = 1000;

/// Everything a step needs from the steps before it, so that a resumed run goes on
/// exactly as the uninterrupted one would (batches, σ, noise and dropout are drawn from
/// the step number).
struct TrainState {
    step: usize,
    p: Vec<f32>,
    ema: Vec<f32>,
    adam: Adam,
    /// The loss accumulated since the last metrics row.
    loss_sum: f64,
    loss_count: usize,
    /// Training seconds before this state was saved (metrics.csv's clock goes on).
    seconds: f64,
}

impl TrainState {
    fn fresh(layout: &Layout, seed: u64) -> Self {
        let p = layout.init(seed);
        let n = p.len();
        Self { step: 0, ema: p.clone(), p, adam: Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0 }, loss_sum: 0.0, loss_count: 0, seconds: 0.0 }
    }

    fn save(&self, path: &Path) -> Result<()> {
        use crate::report::safetensors::Tensor;
        let n = self.p.len();
        let tensors = [("params", &self.p), ("ema", &self.ema), ("adam.m", &self.adam.m), ("adam.v", &self.adam.v)].map(|(name, v)| Tensor::f32(name, vec![n], v));
        let meta = std::collections::BTreeMap::from([
            ("step".to_string(), self.step.to_string()),
            ("adam_t".to_string(), self.adam.t.to_string()),
            ("loss_sum".to_string(), self.loss_sum.to_string()),
            ("loss_count".to_string(), self.loss_count.to_string()),
            ("seconds".to_string(), self.seconds.to_string()),
        ]);
        crate::report::safetensors::save(path, &tensors, &meta)
    }

    fn load(path: &Path, layout: &Layout) -> Result<Self> {
        let file = crate::report::safetensors::Loaded::read(path)?;
        let view = file.view()?;
        let n = layout.total;
        let damaged = || "a damaged training state".to_string();
        let read = |name: &str| view.floats(name, Some(&[n]), &damaged).map(|(_, v)| v);
        let (p, ema, m, v) = (read("params")?, read("ema")?, read("adam.m")?, read("adam.v")?);
        view.reject_unread("this model's training state")?;
        let meta = |key: &str| view.metadata.get(key).with_context(|| format!("{}: no '{key}' in its metadata ({})", path.display(), damaged()));
        fn parsed<T: std::str::FromStr>(path: &Path, key: &str, v: &str) -> Result<T> {
            v.parse().map_err(|_| anyhow::anyhow!("{}: metadata '{key}' is '{v}', not a number", path.display()))
        }
        Ok(Self {
            step: parsed(path, "step", meta("step")?)?,
            p,
            ema,
            adam: Adam { m, v, t: parsed(path, "adam_t", meta("adam_t")?)? },
            loss_sum: parsed(path, "loss_sum", meta("loss_sum")?)?,
            loss_count: parsed(path, "loss_count", meta("loss_count")?)?,
            seconds: parsed(path, "seconds", meta("seconds")?)?,
        })
    }
}

/// Steps finished in an unfinished run: those of its last saved state (0 without one),
/// from the state file's header alone.
pub fn saved_steps(run: &Path) -> usize {
    crate::report::safetensors::read_metadata(&run.join(STATE_FILE)).ok().and_then(|m| m.get("step").and_then(|s| s.parse().ok())).unwrap_or(0)
}

/// The configuration of an unfinished run, to resume it (a finished one is refused).
pub fn open_unfinished(run: &Path) -> Result<DenoiserConfig> {
    let cfg = read_config(run, "there is nothing to resume; start it without --resume")?;
    if run.join("ema.safetensors").exists() {
        bail!("{} is a finished run ({} steps); there is nothing to resume", run.display(), cfg.recipe.steps);
    }
    Ok(cfg)
}

/// An unfinished run's configuration with its training data opened, to resume it.
pub fn open_unfinished_and_data(run: &Path) -> Result<(DenoiserConfig, crate::data::Dataset)> {
    let cfg = open_unfinished(run)?;
    let ds = super::training_data(&cfg.data, cfg.subset)?;
    Ok((cfg, ds))
}

/// Whether `run` is an unfinished run of exactly `cfg`, so that training can resume it.
pub fn resumable(run: &Path, cfg: &DenoiserConfig) -> bool {
    open_unfinished(run).is_ok_and(|stored| same_settings(&stored, cfg))
}

fn same_settings(a: &DenoiserConfig, b: &DenoiserConfig) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Trains on `train` (rows in data units, converted with the config's pixel range) and
/// writes the run directory; the steps run on `backend` (on a GPU: cuBLAS products and
/// kernels/denoiser.cu), on the same batches either way. `progress(step)` after each step.
/// The state is saved every `--checkpoint-every` steps (every `STATE_EVERY` without
/// one); with `resume`, an unfinished run of the same configuration in `run` continues
/// from its last state and ends with the weights the uninterrupted run would have.
pub fn train(backend: &crate::device::Backend, train: &Split, cfg: &DenoiserConfig, run: &Path, resume: bool, progress: &dyn Fn(usize)) -> Result<Vec<f32>> {
    let recipe = &cfg.recipe;
    if recipe.steps == 0 || recipe.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    if !(recipe.lr > 0.0 && recipe.lr.is_finite()) || !(0.0..1.0).contains(&recipe.ema) {
        bail!("--lr must be positive and --ema in [0, 1) (got {} and {})", recipe.lr, recipe.ema);
    }
    let layout = cfg.layout()?;
    let state_path = run.join(STATE_FILE);
    // A failed fresh run leaves nothing behind; a failed resume keeps what it resumed.
    let (fresh_dir, state, mut metrics) = if resume {
        let stored = open_unfinished(run)?;
        if !same_settings(&stored, cfg) {
            bail!("{} was started with other settings ({}); --resume continues it only with the same ones", run.display(), serde_json::to_string(&stored)?);
        }
        let state = if state_path.exists() { TrainState::load(&state_path, &layout)? } else { TrainState::fresh(&layout, recipe.seed) };
        // The metrics rows up to the saved state; later ones are written again.
        let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap_or_default();
        let mut metrics = String::from("step,loss,seconds\n");
        for line in text.lines().skip(1) {
            if line.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s <= state.step) {
                metrics.push_str(line);
                metrics.push('\n');
            }
        }
        (None, state, metrics)
    } else {
        if run.join("run.json").exists() {
            if run.join("ema.safetensors").exists() {
                bail!("{} already holds a run; choose another --out", run.display());
            }
            bail!(
                "{} is an unfinished denoiser run ({} of {} steps saved; it was interrupted or failed); continue it with `rote denoise train --resume --out {}`",
                run.display(),
                saved_steps(run),
                recipe.steps,
                run.display()
            );
        }
        let dir = crate::report::FreshDir::create(run)?;
        crate::report::write_json(&run.join("run.json"), cfg)?;
        (Some(dir), TrainState::fresh(&layout, recipe.seed), String::from("step,loss,seconds\n"))
    };
    crate::report::create_out_dir(&run.join("checkpoints"))?;
    let d = layout.dim;
    let n = train.len();
    let mut y = vec![0f32; n * d];
    train.x.rows_f32_into(0, n, &mut y);
    cfg.pixel_range.to_model(&mut y);
    let (_, cond) = conditioning_labels(train, cfg.labels, recipe.seed);
    if cfg.classes > 0 {
        crate::report::write_npy(&run.join("labels.npy"), &[n], &cond)?;
    }
    let TrainState { step: start, mut p, mut ema, mut adam, mut loss_sum, mut loss_count, seconds: seconds_before } = state;
    let mut device_net = match backend {
        crate::device::Backend::Cuda(g) => Some(crate::device::cuda_denoiser::GpuDenoiserNet::resumed(g.clone(), layout.clone(), &p, &ema, &adam.m, &adam.v, adam.t)?),
        crate::device::Backend::Cpu => None,
    };
    let mut buffers = StepBuffers::default();
    let b = recipe.batch;
    let (batch_rng, sigma_rng, noise_rng) = (Philox::new(recipe.seed, STREAM_BATCH), Philox::new(recipe.seed, STREAM_SIGMA), Philox::new(recipe.seed, STREAM_NOISE));
    let state_every = if cfg.checkpoint_every > 0 { cfg.checkpoint_every } else { STATE_EVERY };
    let t0 = Instant::now();
    let seconds = || seconds_before + t0.elapsed().as_secs_f64();
    let mut z = vec![0f32; b];
    let mut eps = vec![0f32; b * d];
    progress(start);
    for step in start..recipe.steps {
        let idx: Vec<usize> = (0..b).map(|i| (batch_rng.key64((step * b + i) as u64) % n as u64) as usize).collect();
        sigma_rng.fill_normal((step * b) as u64, &mut z);
        noise_rng.fill_normal((step * b * d) as u64, &mut eps);
        let mut x_in = vec![0f32; b * d];
        let mut target = vec![0f32; b * d];
        let mut c_noise = vec![0f32; b];
        for r in 0..b {
            let sigma = (-1.2 + 1.2 * z[r] as f64).exp();
            let (c_skip, c_out, c_in, cn) = net::precondition(sigma);
            c_noise[r] = cn as f32;
            let yr = &y[idx[r] * d..(idx[r] + 1) * d];
            for j in 0..d {
                let x = yr[j] as f64 + sigma * eps[r * d + j] as f64;
                x_in[r * d + j] = (c_in * x) as f32;
                target[r * d + j] = ((yr[j] as f64 - c_skip * x) / c_out) as f32;
            }
        }
        let labels: Option<Vec<i64>> = (cfg.classes > 0).then(|| idx.iter().map(|&i| cond[i]).collect());
        let loss = match device_net.as_mut() {
            Some(net) => net.step(&x_in, &c_noise, labels.as_deref(), &target, recipe.lr, recipe.ema as f32)?,
            None => loss_and_gradient(&layout, &p, &x_in, &c_noise, labels.as_deref(), &target, Philox::new(recipe.seed, STREAM_DROPOUT).key64(step as u64), &mut buffers)?,
        };
        if !loss.is_finite() {
            bail!("step {}: the loss became {loss}; the run diverged — try a smaller --lr than {}", step + 1, recipe.lr);
        }
        if device_net.is_none() {
            adam.step(&mut p, &mut buffers.partials, recipe.lr, &mut ema, recipe.ema as f32);
        }
        loss_sum += loss;
        loss_count += 1;
        let done = step + 1;
        if done % 100 == 0 || done == recipe.steps {
            metrics.push_str(&format!("{done},{:.6},{:.3}\n", loss_sum / loss_count as f64, seconds()));
            crate::report::write_atomic(&run.join("metrics.csv"), |w| Ok(w.write_all(metrics.as_bytes())?))?;
            (loss_sum, loss_count) = (0.0, 0);
        }
        if done % state_every == 0 && done < recipe.steps {
            if let Some(net) = &device_net {
                (p, ema, adam.m, adam.v, adam.t) = net.download_state()?;
            }
            if cfg.checkpoint_every > 0 {
                save_weights(&layout, &ema, cfg, &checkpoint_path(run, done))?;
            }
            let state = TrainState { step: done, p, ema, adam, loss_sum, loss_count, seconds: seconds() };
            state.save(&state_path)?;
            crate::nn::train::failpoint("denoise-after-state", done);
            TrainState { p, ema, adam, .. } = state;
        }
        progress(done);
    }
    if let Some(net) = &device_net {
        ema = net.download()?.1;
    }
    if cfg.checkpoint_every > 0 && recipe.steps % cfg.checkpoint_every == 0 {
        save_weights(&layout, &ema, cfg, &checkpoint_path(run, recipe.steps))?;
    }
    save_weights(&layout, &ema, cfg, &run.join("ema.safetensors"))?;
    // A finished run keeps its weights, not the optimizer state.
    if state_path.exists() {
        std::fs::remove_file(&state_path).with_context(|| format!("cannot remove {}", state_path.display()))?;
    }
    if let Some(dir) = fresh_dir {
        dir.keep();
    }
    Ok(ema)
}

/// A trained denoiser as a sampler's `Denoiser`; conditional models take the labels of
/// the rows being sampled.
pub struct TrainedDenoiser {
    pub layout: Layout,
    pub weights: Vec<f32>,
    /// `net::transposed_weights` of `weights`.
    pub transposed: Vec<f32>,
    pub labels: Option<Vec<i64>>,
}

impl super::sampler::Denoiser for TrainedDenoiser {
    fn dim(&self) -> usize {
        self.layout.dim
    }

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>> {
        super::optimal::check_sigma(sigma)?;
        net::denoise(&self.layout, &self.weights, &self.transposed, x, sigma, self.labels.as_deref())
    }
}

/// Labels for generated samples of a conditional model: uniform over its classes,
/// Philox stream keyed by the sampling seed; sample k's label depends only on k.
pub fn sample_labels(classes: usize, seed: u64, count: usize) -> Vec<i64> {
    let rng = Philox::new(seed, STREAM_LABELS + 1);
    (0..count).map(|i| (rng.word(i as u64) % classes as u32) as i64).collect()
}

/// `count` samples from a trained model with the Heun sampler (model space); noise as
/// for the optimal denoiser, labels from `sample_labels` for conditional models.
pub fn sample_trained(
    cfg: &DenoiserConfig,
    layout: Layout,
    weights: Vec<f32>,
    count: usize,
    schedule: &super::sampler::Schedule,
    seed: u64,
    backend: &crate::device::Backend,
) -> Result<Vec<f32>> {
    sample_trained_rows(cfg, layout, weights, 0..count, schedule, seed, backend, &mut |_| {})
}

/// Samples `rows` of the sequence `sample_trained` draws (the same noise and labels per
/// sample index, so shards of a sampling job join into one run's samples); `step(i)`
/// after each sampler step.
#[allow(clippy::too_many_arguments)]
pub fn sample_trained_rows(
    cfg: &DenoiserConfig,
    layout: Layout,
    weights: Vec<f32>,
    rows: std::ops::Range<usize>,
    schedule: &super::sampler::Schedule,
    seed: u64,
    backend: &crate::device::Backend,
    step: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    let d = layout.dim;
    let labels = (cfg.classes > 0).then(|| sample_labels(cfg.classes, seed, rows.end)[rows.clone()].to_vec());
    let x0 = super::sampler::initial_noise(seed, rows.start, rows.len(), d, schedule.sigma_max);
    match backend {
        crate::device::Backend::Cuda(g) => {
            let net = crate::device::cuda_denoiser::GpuDenoiserNet::new(g.clone(), layout, &weights)?;
            let mut den = GpuTrained { net, labels, dim: d };
            super::sampler::heun(&mut den, x0, schedule, step)
        }
        crate::device::Backend::Cpu => {
            let transposed = net::transposed_weights(&layout, &weights);
            let mut den = TrainedDenoiser { layout, weights, transposed, labels };
            super::sampler::heun(&mut den, x0, schedule, step)
        }
    }
}

/// A trained denoiser evaluated on a GPU.
struct GpuTrained {
    net: crate::device::cuda_denoiser::GpuDenoiserNet,
    labels: Option<Vec<i64>>,
    dim: usize,
}

impl super::sampler::Denoiser for GpuTrained {
    fn dim(&self) -> usize {
        self.dim
    }

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>> {
        super::optimal::check_sigma(sigma)?;
        self.net.denoise(x, sigma, self.labels.as_deref())
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GapRow {
    pub sigma: f64,
    /// Mean over queries and pixels of (D_θ − D*)², model space.
    pub gap: f64,
    /// Mean of (D* − y)²: how far the optimum itself is from the clean sample.
    pub optimal_to_clean: f64,
}

/// The gap between a trained denoiser and the optimal denoiser of `train_split`, per σ
/// of the default schedule, on `queries` noisy training samples per σ.
pub fn gap(cfg: &DenoiserConfig, layout: Layout, weights: Vec<f32>, train_split: &Split, queries: usize, seed: u64, backend: &crate::device::Backend) -> Result<Vec<GapRow>> {
    let d = layout.dim;
    let n = train_split.len();
    let set = super::TrainingSet::new(&train_split.x, cfg.pixel_range)?;
    let mut y = Vec::new();
    set.rows(0..n, &mut y);
    let (_, cond) = conditioning_labels(train_split, cfg.labels, cfg.recipe.seed);
    let order = Philox::new(seed, 0x6A9).permutation(n);
    let rows: Vec<usize> = (0..queries).map(|i| order[i % n] as usize).collect();
    let labels: Option<Vec<i64>> = (cfg.classes > 0).then(|| rows.iter().map(|&r| cond[r]).collect());
    let mut optimal = super::OptimalDenoiser::new(backend, set)?;
    let transposed = net::transposed_weights(&layout, &weights);
    let mut out = Vec::new();
    for (s, &sigma) in super::sampler::Schedule::default().sigmas()[..18].iter().enumerate() {
        let mut z = vec![0f32; queries * d];
        Philox::new(seed, 0x6A9 + 1 + s as u64).fill_normal(0, &mut z);
        let x: Vec<f32> = (0..queries * d).map(|k| y[rows[k / d] * d + k % d] + (sigma * z[k] as f64) as f32).collect();
        let trained = net::denoise(&layout, &weights, &transposed, &x, sigma, labels.as_deref())?;
        let best = super::sampler::Denoiser::denoise(&mut optimal, &x, sigma)?;
        let gap = trained.iter().zip(&best).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / (queries * d) as f64;
        let clean = (0..queries * d).map(|k| ((best[k] - y[rows[k / d] * d + k % d]) as f64).powi(2)).sum::<f64>() / (queries * d) as f64;
        out.push(GapRow { sigma, gap, optimal_to_clean: clean });
    }
    Ok(out)
}
