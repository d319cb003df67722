//! `rote construct`, `rote predict` and `rote sweep construct`: the interpolating threshold networks.

use super::{open_device, print_json, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rote::data::{self, DataSpec};
use rote::device::{Backend, DeviceRequest};
use rote::sched;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand)]
pub enum SweepCommand {
    /// Probability of interpolation and second-layer width over (width, max bias, size).
    Construct(SweepConstructArgs),
}

#[derive(Args)]
pub struct SweepConstructArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    pub data: DataSpec,
    /// First-layer widths: start:end:step (inclusive) or a list.
    #[arg(long)]
    pub widths: String,
    /// Max biases λ: start:end:step (inclusive) or a list.
    #[arg(long)]
    pub max_biases: String,
    /// Independent restarts (seeds first-seed .. first-seed + restarts − 1).
    #[arg(long, default_value_t = 10)]
    pub restarts: u64,
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Training-set sizes: a generator's n, or a random subset of other data.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    #[arg(long, conflicts_with = "one_vs_rest")]
    pub positive_class: Option<i64>,
    #[arg(long)]
    pub one_vs_rest: bool,
    /// The CSV of trials; an existing one is resumed (its trials are skipped).
    #[arg(long)]
    pub out: PathBuf,
    /// Write heatmaps and slices (PNG) into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ConstructArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    pub data: DataSpec,
    /// First-layer width n.
    #[arg(long)]
    pub width: usize,
    /// λ: biases are uniform in [−λ, λ].
    #[arg(long)]
    pub max_bias: f32,
    #[arg(long, value_enum, default_value = "threshold")]
    pub activation: rote::construct::Activation,
    /// The class the network outputs 1 on (X⁻); the rest is X⁺.
    #[arg(long, conflicts_with = "one_vs_rest")]
    pub positive_class: Option<i64>,
    /// One covering layer per class (the default for more than two classes).
    #[arg(long)]
    pub one_vs_rest: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not rescale inputs to max norm 1 (the paper's preprocessing) first.
    #[arg(long)]
    pub no_scale: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Save the network (safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// For 2-D data: draw each layer-2 neuron's region and the training points.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn construct_cmd(args: ConstructArgs) -> Result<()> {
    use rote::construct::{self, FitConfig, Target};
    let ds = args.data.open()?;
    let target = Target::choose(args.one_vs_rest, args.positive_class, ds.classes());
    let cfg = FitConfig {
        width: args.width,
        max_bias: args.max_bias,
        activation: args.activation,
        seed: args.seed,
        target,
        scale_to_unit_norm: !args.no_scale,
    };
    construct::validate_config(&cfg)?;
    let backend = open_device(args.device.device)?;
    if args.activation == construct::Activation::Relu && !matches!(backend, Backend::Cpu) {
        eprintln!("note: the ReLU variant runs on the CPU");
    }
    let spin = sched::spinner(&format!("constructing (n = {}, λ = {})", args.width, args.max_bias), !args.json);
    let (net, report) = construct::fit(&ds, &cfg, &backend)?;
    spin.finish_and_clear();
    if let Some(out) = &args.out {
        construct::io::save(&net, out)?;
        // The saved file must reproduce the training accuracy exactly.
        let loaded = construct::io::load(out)?;
        let again = loaded.accuracy(&ds.train, &backend)?;
        if again != report.train_accuracy {
            bail!("internal error: the saved network scores {again} on the training data, the fit {}", report.train_accuracy);
        }
    }
    if let Some(plot) = &args.plot {
        construct::plot::decision_regions(&net, &ds, plot)?;
    }
    if args.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        println!(
            "{}: {} (train accuracy {:.4}{}), n = {}, k = {} {:?}, {} parameters, {:.3} s on {}",
            ds.meta.name,
            if report.interpolated { "interpolated" } else { "did not interpolate" },
            report.train_accuracy,
            report.test_accuracy.map(|t| format!(", test accuracy {t:.4}")).unwrap_or_default(),
            report.first_width,
            report.second_width,
            report.second_widths,
            report.parameters,
            report.fit_seconds,
            report.device
        );
        if report.conflicts > 0 {
            println!("note: {} distinct inputs occur with more than one label; no network can interpolate them", report.conflicts);
        }
        if let Some(out) = &args.out {
            println!("saved to {}", out.display());
        }
    }
    Ok(())
}

pub fn predict_cmd(net: &Path, spec: &DataSpec, device: DeviceRequest, json: bool) -> Result<()> {
    let network = rote::construct::io::load(net)?;
    let ds = spec.open()?;
    if ds.train.features() != network.layer1.dim {
        bail!("{} expects {} input features but '{spec}' has {}", net.display(), network.layer1.dim, ds.train.features());
    }
    let backend = open_device(device)?;
    let train = network.accuracy(&ds.train, &backend)?;
    let test = ds.test.as_ref().map(|t| network.accuracy(t, &backend)).transpose()?;
    if json {
        print_json(&serde_json::json!({ "train_accuracy": train, "test_accuracy": test, "samples": ds.train.len(), "device": backend.device() }));
    } else {
        println!("train accuracy {train:.4}{}", test.map(|t| format!(", test accuracy {t:.4}")).unwrap_or_default());
    }
    Ok(())
}

/// `spec` with its training-set size set to `size`: a generator's `n`, otherwise a
/// random subset.
pub fn spec_with_size(spec: &str, size: usize) -> String {
    let (source, opts) = match spec.rsplit_once(':') {
        Some((src, o)) if o.contains('=') => (src, o),
        _ => (spec, ""),
    };
    let mut kept: Vec<&str> = opts.split(',').filter(|o| !o.is_empty() && !o.starts_with("n=") && !o.starts_with("subset-random=")).collect();
    let sized = if data::generators::NAMES.contains(&source) { format!("n={size}") } else { format!("subset-random={size}") };
    kept.push(&sized);
    format!("{source}:{}", kept.join(","))
}

pub fn sweep_construct_cmd(args: SweepConstructArgs) -> Result<()> {
    use rote::construct::{plot, sweep, Target};
    let widths: Vec<usize> = sweep::parse_grid(&args.widths)?
        .iter()
        .map(|&w| if w >= 1.0 && w.fract() == 0.0 { Ok(w as usize) } else { Err(anyhow::anyhow!("--widths: {w} is not a positive integer")) })
        .collect::<Result<_>>()?;
    let max_biases: Vec<f32> = sweep::parse_grid(&args.max_biases)?.iter().map(|&v| v as f32).collect();
    if let Some(bad) = max_biases.iter().find(|v| !v.is_finite() || **v < 0.0) {
        bail!("--max-biases: {bad} is not a finite number ≥ 0");
    }
    if args.restarts == 0 {
        bail!("--restarts must be at least 1");
    }
    if args.device.device.resolve()? != rote::device::Device::Cpu {
        // Trials share one product per seed and one threshold pass per λ; on 2-D data
        // and grids of small fits the CPU does that faster than per-trial GPU fits.
        eprintln!("note: sweeps run on the CPU (they reuse layer-1 work across the grid); single fits use the GPU");
    }
    if let Some(bad) = args.sizes.iter().find(|&&n| n < 2) {
        bail!("--sizes: {bad} is too small; a training set needs at least 2 samples");
    }
    let base = args.data.open()?;
    let sizes = if args.sizes.is_empty() { vec![base.train.len()] } else { args.sizes.clone() };
    let target = if args.one_vs_rest || (args.positive_class.is_none() && base.classes() != 2) {
        Target::OneVsRest
    } else {
        Target::Binary { positive: args.positive_class }
    };
    // Every size's data is opened and checked before the CSV is created.
    let datasets: Vec<data::Dataset> = sizes
        .iter()
        .map(|&size| {
            let ds = if args.sizes.is_empty() { base.clone() } else { data::open(&spec_with_size(args.data.text()?, size))? };
            rote::construct::check_target(&ds.train, target).with_context(|| format!("training-set size {size}"))?;
            Ok(ds)
        })
        .collect::<Result<_>>()?;
    let settings = sweep::SweepSettings::new(args.data.text()?, target);
    sweep::check_resume(&args.out, &settings)?;
    let existing = sweep::read_existing(&args.out)?;
    if !args.out.exists() {
        sweep::create(&args.out, &settings)?;
    }
    let done = sweep::done_keys(&existing);
    let plan = sweep::SweepPlan { widths, max_biases, seeds: (args.first_seed..args.first_seed + args.restarts).collect(), target };
    let total = (plan.widths.len() * plan.max_biases.len() * plan.seeds.len() * sizes.len()) as u64;
    let bar = sched::progress(total, "trials", !args.json);
    bar.inc(existing.len() as u64);
    let t0 = Instant::now();
    let mut all = existing.clone();
    let mut ran = 0;
    for (&size, ds) in sizes.iter().zip(&datasets) {
        let trials = sweep::run_size(ds, size, &plan, &done, &args.out, &|k| bar.inc(k))?;
        ran += trials.len();
        all.extend(trials);
    }
    let seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let figures = match &args.plots {
        Some(dir) => plot::sweep_figures(&all, dir)?,
        None => vec![],
    };
    let stats = plot::grid_stats(&all);
    if args.json {
        let grid: Vec<serde_json::Value> = stats
            .iter()
            .map(|((l, w), (p, k, n))| serde_json::json!({"max_bias": l.parse::<f64>().unwrap_or(0.0), "width": w, "p_interpolation": p, "mean_second_width": k, "trials": n}))
            .collect();
        print_json(&serde_json::json!({
            "trials_run": ran, "trials_resumed": existing.len(), "seconds": seconds, "out": args.out,
            "figures": figures, "grid": grid,
        }));
    } else {
        println!(
            "{ran} trials in {seconds:.2} s ({} resumed from {}), {} grid cells → {}",
            existing.len(),
            args.out.display(),
            stats.len(),
            args.out.display()
        );
        for f in &figures {
            println!("figure: {}", f.display());
        }
    }
    Ok(())
}

