//! `rote denoise …`, `rote knn`, `rote memratio`: the optimal denoiser, exact nearest
//! neighbours and the memorization ratio.

use super::{open_device, print_json, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rote::data::{self, Array, DType, DataSpec};
use rote::diffusion::knn::{memorization_ratio, Metric};
use rote::diffusion::sampler::Schedule;
use rote::diffusion::{knn_on, OptimalDenoiser, PixelRange, RangeRule, SampleSource, TrainingSet};
use rote::device::Backend;
use rote::report;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand)]
pub enum DenoiseCommand {
    /// Sample with EDM's Heun sampler from the optimal denoiser of a training set
    /// (--data) or from a trained model (--run); writes samples.npy (uint8) and a grid.
    Sample(SampleArgs),
    /// Train a score-matching denoiser (EDM preconditioning and loss, Adam, EMA).
    Train(TrainArgs),
    /// Mean squared distance between a trained denoiser and the optimal one, per σ of
    /// the sampler's schedule.
    Gap(GapArgs),
    /// The optimal denoiser D*(x; σ) of a training set for queries in model space [−1, 1].
    Eval(EvalArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(value_parser = crate::data_spec(), long, required_unless_present = "resume", conflicts_with = "resume")]
    data: Option<DataSpec>,
    /// Train on a class-balanced subset of this many samples.
    #[arg(long, conflicts_with = "resume")]
    subset: Option<usize>,
    /// Conditioning: none, true (the dataset's labels) or random:C (C random classes).
    #[arg(long, default_value = "none", conflicts_with = "resume")]
    labels: String,
    #[arg(long, default_value = DEFAULT_MODEL, conflicts_with = "resume")]
    model: String,
    #[arg(long, default_value_t = DEFAULT_STEPS, conflicts_with = "resume")]
    steps: usize,
    #[arg(long, default_value_t = 128, conflicts_with = "resume")]
    batch: usize,
    #[arg(long, default_value_t = 2e-4, conflicts_with = "resume")]
    lr: f64,
    /// EMA decay of the weights per step.
    #[arg(long, default_value_t = 0.999, conflicts_with = "resume")]
    ema: f64,
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Save the EMA weights every this many steps (0: only at the end); the state that
    /// --resume continues from is saved at the same steps (every 1000 when 0).
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    checkpoint_every: usize,
    /// How data values map to model space [−1, 1]: auto (uint8 as pixels; float data
    /// inside [−1, 1] as it is; other float data by its min/max), identity, minmax, or
    /// LO,HI.
    #[arg(long, default_value = "auto", allow_hyphen_values = true, conflicts_with = "resume")]
    range: RangeRule,
    #[arg(long)]
    out: PathBuf,
    /// Continue the unfinished run in --out from its last saved state, with the
    /// settings it was started with (ends with the weights the uninterrupted run would
    /// have; the state is saved every --checkpoint-every steps, or every 1000).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GapArgs {
    #[arg(long)]
    run: PathBuf,
    /// The training data (default: the run's own --data and --subset).
    #[arg(value_parser = crate::data_spec(), long)]
    data: Option<DataSpec>,
    /// Noisy training samples per σ.
    #[arg(long, default_value_t = 256)]
    queries: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

pub const DEFAULT_MODEL: &str = "resmlp:width=256,blocks=3";
pub const DEFAULT_STEPS: usize = 4000;

#[derive(Args)]
pub struct SampleArgs {
    /// Training data: sample with its optimal denoiser.
    #[arg(value_parser = crate::data_spec(), long, required_unless_present = "run", conflicts_with = "run")]
    data: Option<DataSpec>,
    /// A `denoise train` run: sample with its trained (EMA) denoiser.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Use a class-balanced subset of this many training samples.
    #[arg(long)]
    subset: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    #[arg(long, default_value_t = 18)]
    steps: usize,
    #[arg(long, default_value_t = 0.002)]
    sigma_min: f64,
    #[arg(long, default_value_t = 80.0)]
    sigma_max: f64,
    #[arg(long, default_value_t = 7.0)]
    rho: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (samples.npy, sample.json, grid.png).
    #[arg(long)]
    out: PathBuf,
    /// Where to draw the image grid of the first 64 samples (default OUT/grid.png).
    #[arg(long)]
    grid: Option<PathBuf>,
    /// How data values map to model space [−1, 1]: auto (uint8 as pixels; float data
    /// inside [−1, 1] as it is; other float data by its min/max), identity, minmax, or
    /// LO,HI.
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    range: RangeRule,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    data: DataSpec,
    /// Float .npy of queries in model space, shape (B, …) with the training samples' size.
    #[arg(long)]
    queries: PathBuf,
    #[arg(long, allow_negative_numbers = true)]
    sigma: f64,
    /// Output .npy (float32, the queries' shape).
    #[arg(long)]
    out: PathBuf,
    /// How data values map to model space [−1, 1]: auto (uint8 as pixels; float data
    /// inside [−1, 1] as it is; other float data by its min/max), identity, minmax, or
    /// LO,HI.
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    range: RangeRule,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KnnArgs {
    // Options only so that `rote knn classify` parses without them; required otherwise.
    #[arg(value_parser = crate::data_spec(), long, required = true)]
    data: Option<DataSpec>,
    /// .npy of queries in the data's own units, shape (Q, …).
    #[arg(long, required = true)]
    queries: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    k: usize,
    #[arg(long, value_enum, default_value = "l2")]
    metric: Metric,
    /// Output directory: indices.npy (int64, Q×k) and distances.npy (float64, Q×k:
    /// squared L2 distances, or inner products for --metric ip).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MemratioArgs {
    /// Generated samples: uint8 pixels (as `rote denoise sample` writes) or floats in
    /// model space [−1, 1]; shape (S, …) with the training samples' size.
    #[arg(long)]
    generated: PathBuf,
    #[arg(value_parser = crate::data_spec(), long)]
    data: DataSpec,
    /// A sample is memorized when ‖x − NN1‖ / ‖x − NN2‖ is below this.
    #[arg(long, default_value_t = 1.0 / 3.0)]
    threshold: f64,
    /// Directory for ratios.npy and neighbours.npy (default: beside --generated).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw sample | NN1 | NN2 for the most and least memorized samples.
    #[arg(long)]
    gallery: Option<PathBuf>,
    /// The map the samples were generated under (see `denoise sample --range`).
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    range: RangeRule,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

/// The training split of `spec`, optionally a class-balanced subset of it.
pub fn training_data(spec: &DataSpec, subset: Option<usize>) -> Result<data::Dataset> {
    rote::diffusion::training_data(spec.text()?, subset)
}

/// Rows of a .npy whose samples must have `d` numbers each: (rows, numbers as f32).
fn read_rows(path: &Path, d: usize, what: &str) -> Result<(Array, usize)> {
    let a = Array::open_npy(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if a.shape.is_empty() || a.rows() == 0 {
        bail!("{}: {what} must be a non-empty array of shape (count, …)", path.display());
    }
    if a.row_len() != d {
        bail!("{}: each of the {} {what} has {} numbers (shape {:?}) but training samples have {d}", path.display(), a.rows(), a.row_len(), a.shape);
    }
    if let Some((i, v)) = a.first_non_finite() {
        bail!("{}: element {i} is {v}", path.display());
    }
    let rows = a.rows();
    Ok((a, rows))
}

pub fn sample_cmd(a: SampleArgs) -> Result<()> {
    let schedule = Schedule { steps: a.steps, sigma_min: a.sigma_min, sigma_max: a.sigma_max, rho: a.rho };
    if a.run.is_some() && a.subset.is_some() {
        bail!("--subset applies to --data; a run was trained on its own subset");
    }
    let backends = super::open_devices(a.device.device)?;
    let t0 = Instant::now();
    let source = match (&a.run, &a.data) {
        (Some(run), _) => SampleSource::Trained { run },
        (None, Some(data)) => SampleSource::Optimal { data: data.text()?, subset: a.subset, range: a.range },
        (None, None) => unreachable!("clap requires --data or --run"),
    };
    let bar = rote::sched::progress(schedule.steps as u64, "sampling", !a.json);
    let s = rote::diffusion::sample(&source, a.samples, Default::default(), &schedule, a.seed, &backends, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let (x, sample_shape, training_samples, denoiser, range) = (s.x, s.sample_shape, s.training_samples, s.denoiser, s.pixel_range);
    let seconds = t0.elapsed().as_secs_f64();
    let (samples_path, grid) = rote::diffusion::write_samples(&a.out, &x, &sample_shape, a.grid.clone())?;
    if grid.is_none() {
        eprintln!("note: no image grid (samples of shape {sample_shape:?} are not images)");
    }
    let summary = serde_json::json!({
        "command": "denoise sample",
        "denoiser": denoiser,
        "data": a.data,
        "run": a.run,
        "subset": a.subset,
        "training_samples": training_samples,
        "samples": a.samples,
        "schedule": schedule,
        "evaluations_per_sample": schedule.evaluations(),
        "seed": a.seed,
        "range": a.range.to_string(),
        "pixel_range": range,
        "device": Backend::describe(&backends),
        "seconds": seconds,
        "samples_npy": samples_path,
        "grid": grid,
    });
    report::write_json(&a.out.join("sample.json"), &summary)?;
    if a.json {
        print_json(&summary);
    } else {
        println!("{} samples from the {denoiser} denoiser of {training_samples} training samples in {seconds:.2} s on {} → {}", a.samples, Backend::describe(&backends), samples_path.display());
    }
    Ok(())
}

pub fn train_cmd(a: TrainArgs) -> Result<()> {
    use rote::diffusion::train::{self, DenoiserConfig, Labels, Recipe};
    let (cfg, ds) = if a.resume {
        train::open_unfinished_and_data(&a.out)?
    } else {
        let labels = Labels::parse(&a.labels)?;
        let data = a.data.as_ref().expect("clap requires --data without --resume");
        let ds = training_data(data, a.subset)?;
        let range = PixelRange::resolve(&ds.train.x, a.range)?;
        let recipe = Recipe { model: a.model.clone(), steps: a.steps, batch: a.batch, lr: a.lr, ema: a.ema, seed: a.seed };
        (DenoiserConfig::new(data.text()?, a.subset, labels, recipe, &ds.train, ds.sample_shape(), range, a.checkpoint_every)?, ds)
    };
    let backend = open_device(a.device.device)?;
    let (steps, batch) = (cfg.recipe.steps, cfg.recipe.batch);
    let bar = rote::sched::progress(steps as u64, "training", true);
    let start = if a.resume { train::saved_steps(&a.out) } else { 0 };
    let t0 = Instant::now();
    train::train(&backend, &ds.train, &cfg, &a.out, a.resume, &|s| bar.set_position(s as u64))?;
    bar.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let loss = train::final_loss(&a.out)?;
    let summary = serde_json::json!({
        "run": a.out, "training_samples": ds.train.len(), "steps": steps, "batch": batch, "resumed_at_step": a.resume.then_some(start),
        "final_loss": loss, "seconds": seconds, "samples_per_second": ((steps - start) * batch) as f64 / seconds,
        "device": backend.device().to_string(), "labels": cfg.labels.to_string(), "model": cfg.recipe.model,
    });
    if a.json {
        print_json(&summary);
    } else {
        let resumed = if a.resume { format!(" (resumed at step {start})") } else { String::new() };
        println!("trained {} on {} samples: {steps} steps{resumed} in {seconds:.1} s, final loss {loss:.4} → {}", cfg.recipe.model, ds.train.len(), a.out.display());
    }
    Ok(())
}

pub fn gap_cmd(a: GapArgs) -> Result<()> {
    let (cfg, layout, weights) = rote::diffusion::train::open_run(&a.run)?;
    let ds = match &a.data {
        Some(spec) => spec.open()?,
        None => training_data(&DataSpec::from(cfg.data.as_str()), cfg.subset)?,
    };
    if ds.train.features() != layout.dim {
        bail!("the run's model takes {} numbers per sample but {} has {}", layout.dim, a.data.as_ref().map(|d| d.lossy()).unwrap_or_else(|| cfg.data.clone()), ds.train.features());
    }
    let backend = open_device(a.device.device)?;
    let rows = rote::diffusion::train::gap(&cfg, layout, weights, &ds.train, a.queries.max(1), a.seed, &backend)?;
    let mut csv = String::from("sigma,gap,optimal_to_clean\n");
    for r in &rows {
        csv.push_str(&format!("{},{},{}\n", r.sigma, r.gap, r.optimal_to_clean));
    }
    report::write_atomic(&a.run.join("gap.csv"), |w| Ok(w.write_all(csv.as_bytes())?))?;
    if a.json {
        print_json(&serde_json::json!({ "run": a.run, "gap": rows }));
    } else {
        println!("{:>10} {:>14} {:>18}", "σ", "gap", "optimal→clean");
        for r in &rows {
            println!("{:>10.4} {:>14.6e} {:>18.6e}", r.sigma, r.gap, r.optimal_to_clean);
        }
        println!("(mean squared distance per pixel in model space; written to {})", a.run.join("gap.csv").display());
    }
    Ok(())
}

pub fn eval_cmd(a: EvalArgs) -> Result<()> {
    rote::diffusion::optimal::check_sigma(a.sigma)?;
    let ds = a.data.open()?;
    let range = PixelRange::resolve(&ds.train.x, a.range)?;
    if a.range == RangeRule::Auto && range != PixelRange::MODEL && !ds.train.x.dtype.is_integer() {
        eprintln!("note: float data outside [−1, 1]: [{}, {}] is mapped onto model space [−1, 1] (--range minmax; --range identity keeps it)", range.lo, range.hi);
    }
    let train = TrainingSet::new(&ds.train.x, range)?;
    let (q, rows) = read_rows(&a.queries, train.dim(), "queries")?;
    if q.dtype.is_integer() {
        bail!("{}: queries are {} but must be floats in model space [−1, 1]", a.queries.display(), q.dtype.name());
    }
    let mut backend = open_device(a.device.device)?;
    let (lo, hi) = rote::diffusion::optimal::GPU_SIGMA_RANGE;
    if matches!(backend, rote::device::Backend::Cuda(_)) && !(lo..=hi).contains(&a.sigma) {
        eprintln!("note: σ = {} is outside the GPU denoiser's checked range [{lo}, {hi}]; computing on the CPU", a.sigma);
        backend = rote::device::Backend::Cpu;
    }
    let t0 = Instant::now();
    let mut den = OptimalDenoiser::new(&backend, train)?;
    // On the CPU, also say how the queries were resolved (screened and weighed exactly,
    // or the dense pass; float or integer-tile arithmetic).
    let (out, paths) = match &mut den {
        OptimalDenoiser::Cpu(train) => {
            let (out, stats) = rote::diffusion::optimal::denoise(train, &q.to_f32(), a.sigma)?;
            (out, Some(stats))
        }
        den => (rote::diffusion::sampler::Denoiser::denoise(den, &q.to_f32(), a.sigma)?, None),
    };
    let seconds = t0.elapsed().as_secs_f64();
    report::write_npy(&a.out, &q.shape, &out)?;
    let summary = serde_json::json!({
        "queries": rows, "sigma": a.sigma, "range": a.range.to_string(), "pixel_range": range,
        "device": backend.device().to_string(), "seconds": seconds, "out": a.out, "paths": paths,
    });
    if a.json {
        print_json(&summary);
    } else {
        println!("denoised {rows} queries at σ = {} in {seconds:.3} s → {}", a.sigma, a.out.display());
        if let Some(p) = paths {
            let arithmetic = |integer: bool| if integer { "integer tiles" } else { "float GEMM" };
            println!(
                "  {} screened ({} candidates weighed exactly; screen by {}), {} dense ({} with integer-tile logits)",
                p.screened_queries,
                p.candidates,
                arithmetic(p.integer_screen),
                p.dense_queries,
                p.integer_dots
            );
        }
    }
    Ok(())
}

pub fn knn_cmd(a: KnnArgs) -> Result<()> {
    let (Some(data), Some(queries), Some(out)) = (&a.data, &a.queries, &a.out) else { bail!("rote knn needs --data, --queries and --out, or the classify subcommand (see rote knn --help)") };
    let ds = data.open()?;
    let train = TrainingSet::new(&ds.train.x, PixelRange::MODEL)?;
    let (q, rows) = read_rows(queries, train.dim(), "queries")?;
    rote::diffusion::knn::check_k(a.k, train.len())?;
    let backends = super::open_devices(a.device.device)?;
    let t0 = Instant::now();
    let nn = rote::diffusion::knn_on_all(&backends, &train, &q.to_f32(), a.k, a.metric)?;
    let seconds = t0.elapsed().as_secs_f64();
    report::create_out_dir(out)?;
    let idx: Vec<i64> = nn.indices.iter().map(|&i| i as i64).collect();
    report::write_npy(&out.join("indices.npy"), &[rows, a.k], &idx)?;
    report::write_npy(&out.join("distances.npy"), &[rows, a.k], &nn.values)?;
    let summary = serde_json::json!({
        "queries": rows, "training_samples": train.len(), "k": a.k, "metric": a.metric,
        "device": Backend::describe(&backends), "seconds": seconds,
        "indices": out.join("indices.npy"), "distances": out.join("distances.npy"),
    });
    if a.json {
        print_json(&summary);
    } else {
        println!("{} nearest neighbours of {rows} queries among {} in {seconds:.3} s → {}", a.k, train.len(), out.display());
    }
    Ok(())
}

pub fn memratio_cmd(a: MemratioArgs) -> Result<()> {
    let ds = a.data.open()?;
    let range = PixelRange::resolve(&ds.train.x, a.range)?;
    let train = TrainingSet::new(&ds.train.x, PixelRange::MODEL)?;
    let d = train.dim();
    let (g, samples) = read_rows(&a.generated, d, "generated samples")?;
    // Generated samples into the training data's units.
    let generated: Vec<f32> = match g.dtype {
        DType::U8 => g.bytes().iter().map(|&p| range.pixel_to_data(p)).collect(),
        DType::F16 | DType::F32 | DType::F64 => {
            let v = g.to_f32();
            if let Some(bad) = v.iter().find(|x| x.abs() > 1.5) {
                bail!("{}: float samples must be in model space [−1, 1]; found {bad} (write uint8 pixels instead)", a.generated.display());
            }
            v.iter().map(|&x| range.to_data(x)).collect()
        }
        other => bail!("{}: generated samples must be uint8 pixels or floats in [−1, 1], not {}", a.generated.display(), other.name()),
    };
    let backend = open_device(a.device.device)?;
    let t0 = Instant::now();
    let nn = knn_on(&backend, &train, &generated, 2, Metric::L2)?;
    let m = memorization_ratio(nn, a.threshold)?;
    let seconds = t0.elapsed().as_secs_f64();
    let dir = a.out.clone().unwrap_or_else(|| a.generated.parent().map(Path::to_path_buf).unwrap_or_default());
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    report::create_out_dir(&dir)?;
    report::write_npy(&dir.join("ratios.npy"), &[samples], &m.ratios)?;
    let idx: Vec<i64> = m.neighbours.indices.iter().map(|&i| i as i64).collect();
    report::write_npy(&dir.join("neighbours.npy"), &[samples, 2], &idx)?;
    if let Some(path) = &a.gallery {
        let x = &ds.train.x;
        rote::diffusion::gallery::draw(&generated, ds.sample_shape(), &m.ratios, &m.neighbours.indices, &|i| x.rows_f32(i, i + 1), (range.lo, range.hi), path)?;
    }
    let mut summary = serde_json::to_value(&m)?;
    let extra = serde_json::json!({
        "generated": a.generated, "data": a.data, "training_samples": train.len(),
        "ratios": dir.join("ratios.npy"), "neighbours": dir.join("neighbours.npy"), "gallery": a.gallery,
        "device": backend.device().to_string(), "seconds": seconds,
    });
    summary.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    if a.json {
        print_json(&summary);
    } else {
        println!(
            "memorization ratio {:.4}: {} of {} samples have ‖x − NN1‖/‖x − NN2‖ < {:.4} ({seconds:.2} s on {})",
            m.memorization_ratio,
            m.memorized,
            samples,
            a.threshold,
            backend.device()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct EmmArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    data: DataSpec,
    /// Training-set sizes, increasing (class-balanced subsets).
    #[arg(long, value_delimiter = ',', required = true)]
    sizes: Vec<usize>,
    /// Conditioning: none, true or random:C.
    #[arg(long, default_value = "none")]
    labels: String,
    /// EMM is the largest size whose memorization ratio is at least this.
    #[arg(long, default_value_t = 0.9)]
    threshold: f64,
    /// Generated samples per size.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    steps: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Adam's step (larger than `denoise train`'s default: small sets, few steps).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.99)]
    ema: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bisection steps between the bracketing sizes after the sweep.
    #[arg(long, default_value_t = 0)]
    refine: usize,
    /// ‖x − NN1‖/‖x − NN2‖ below which a sample counts as memorized.
    #[arg(long, default_value_t = 1.0 / 3.0)]
    ratio_threshold: f64,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

pub fn emm_cmd(a: EmmArgs) -> Result<()> {
    use rote::diffusion::emm::{self, EmmSettings};
    use rote::diffusion::train::Labels;
    let labels = Labels::parse(&a.labels)?;
    let settings = EmmSettings {
        data: a.data.text()?.to_string(),
        labels,
        recipe: rote::diffusion::train::Recipe { model: a.model.clone(), steps: a.steps, batch: a.batch, lr: a.lr, ema: a.ema, seed: a.seed },
        samples: a.samples,
        ratio_threshold: a.ratio_threshold,
    };
    settings.validate(a.threshold)?;
    let ds = a.data.open()?;
    emm::check_sizes(&a.sizes, ds.train.len())?;
    let backend = open_device(a.device.device)?;
    let t0 = Instant::now();
    let r = emm::sweep(&ds, &settings, &a.sizes, a.threshold, a.refine, &a.out, &backend, &|m| eprintln!("{m}"))?;
    let seconds = t0.elapsed().as_secs_f64();
    if a.json {
        let sizes: Vec<serde_json::Value> = r.sizes.iter().map(|s| serde_json::json!({"size": s.size, "memorization_ratio": s.memorization_ratio})).collect();
        print_json(&serde_json::json!({
            "emm": r.emm, "all_above_threshold": r.all_above, "threshold": r.threshold, "sizes": sizes,
            "labels": labels.to_string(), "csv": a.out.join("emm.csv"), "plot": a.out.join("emm.png"), "seconds": seconds,
        }));
    } else {
        println!("{:>8} {:>20}", "size", "memorization ratio");
        for s in &r.sizes {
            println!("{:>8} {:>20.4}", s.size, s.memorization_ratio);
        }
        match r.emm {
            Some(e) if r.all_above => println!("EMM ≥ {e} (every size memorized ≥ {:.0}%; try larger sizes)", a.threshold * 100.0),
            Some(e) => println!("EMM = {e} (largest size with ratio ≥ {})", a.threshold),
            None => println!("EMM < {} (even the smallest size memorized less than {:.0}%)", a.sizes[0], a.threshold * 100.0),
        }
        println!("{seconds:.1} s; {} and {}", a.out.join("emm.csv").display(), a.out.join("emm.png").display());
    }
    Ok(())
}
