//! `rote data`, `rote rng` and `rote merge`: datasets, the random stream, shard outputs.

use super::{open_device, parse_shape, print_json, DeviceArg};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rote::data::{import, DataSpec};
use rote::report;
use rote::rng::{Distribution, Philox};
use rote::sched::{self, Shard};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Sample count, shape, dtype and class counts of a dataset.
    Info {
        /// Dataset directory, built-in name or generator spec (see README).
        #[arg(value_parser = crate::data_spec())]
        spec: DataSpec,
        #[arg(long)]
        json: bool,
    },
    /// Write any --data spec (generator, built-in, transformed) as a dataset directory.
    Gen {
        #[arg(value_parser = crate::data_spec())]
        spec: DataSpec,
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a dataset from a distribution format.
    #[command(subcommand)]
    Import(ImportCommand),
    /// L2 norm of every sample, streamed through the device in chunks.
    Norms(NormsArgs),
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// MNIST-style IDX files (raw or .gz).
    Idx {
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        labels: PathBuf,
        #[arg(long, requires = "test_labels")]
        test_images: Option<PathBuf>,
        #[arg(long, requires = "test_images")]
        test_labels: Option<PathBuf>,
        #[arg(long, default_value = "imported")]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// CIFAR-10/100 binary batches (data_batch_*.bin, test_batch.bin, train.bin, test.bin).
    Cifar {
        #[arg(long, num_args = 1.., required = true)]
        train: Vec<PathBuf>,
        #[arg(long, num_args = 1..)]
        test: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "fine")]
        label: import::CifarLabel,
        #[arg(long, default_value = "cifar")]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Numeric CSV, one sample per row (optionally .gz; a header line is skipped).
    Csv {
        file: PathBuf,
        #[arg(long)]
        test: Option<PathBuf>,
        /// Which column holds the label: first, last, or a 0-based index.
        #[arg(long, default_value = "last")]
        label_column: import::LabelColumn,
        /// Shape of one sample, e.g. 8x8 (default: flat).
        #[arg(long)]
        shape: Option<String>,
        #[arg(long, default_value = "imported")]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct NormsArgs {
    #[arg(value_parser = crate::data_spec())]
    pub spec: DataSpec,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Process only part I of N (0-based); join parts with `rote merge`.
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    #[command(flatten)]
    pub device: DeviceArg,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
}

#[derive(Args)]
pub struct RngArgs {
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0)]
    pub stream: u64,
    /// Index of the first number.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    #[arg(long, value_enum, default_value = "uniform")]
    pub dist: Distribution,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Write the numbers as .npy instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn data_cmd(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Info { spec, json } => info_cmd(&spec, json),
        DataCommand::Gen { spec, out } => {
            let ds = spec.open()?;
            ds.write_dir(&out)?;
            println!("wrote {} ({} samples of shape {:?}) to {}", ds.meta.name, ds.train.len(), ds.sample_shape(), out.display());
            Ok(())
        }
        DataCommand::Import(cmd) => import_cmd(cmd),
        DataCommand::Norms(args) => norms_cmd(args),
    }
}

pub fn info_cmd(spec: &DataSpec, json: bool) -> Result<()> {
    let ds = spec.open()?;
    let info = ds.info();
    if json {
        print_json(&serde_json::to_value(&info)?);
        return Ok(());
    }
    println!("name:         {}", info.name);
    if !info.source.is_empty() {
        println!("source:       {}", info.source);
    }
    println!("samples:      {}{}", info.n, info.n_test.map(|t| format!(" (+{t} test)")).unwrap_or_default());
    println!("sample shape: {:?} ({} features, {})", info.sample_shape, info.features, info.dtype.name());
    println!("classes:      {}", info.classes);
    for (label, count) in &info.class_counts {
        let name = info.class_names.get(*label as usize).map(|n| format!(" ({n})")).unwrap_or_default();
        println!("  {label:>4}{name}: {count}");
    }
    Ok(())
}

pub fn import_cmd(cmd: ImportCommand) -> Result<()> {
    let (ds, out) = match cmd {
        ImportCommand::Idx { images, labels, test_images, test_labels, name, out } => {
            let test = test_images.as_deref().zip(test_labels.as_deref());
            (import::import_idx(&images, &labels, test, &name)?, out)
        }
        ImportCommand::Cifar { train, test, label, name, out } => {
            let tr: Vec<&Path> = train.iter().map(|p| p.as_path()).collect();
            let te: Vec<&Path> = test.iter().map(|p| p.as_path()).collect();
            (import::import_cifar(&tr, &te, label, &name)?, out)
        }
        ImportCommand::Csv { file, test, label_column, shape, name, out } => {
            let shape = shape.as_deref().map(parse_shape).transpose()?;
            (import::import_csv(&file, test.as_deref(), label_column, shape, &name)?, out)
        }
    };
    ds.validate()?;
    ds.write_dir(&out)?;
    println!(
        "imported {} samples{} of shape {:?} into {}",
        ds.train.len(),
        ds.test.as_ref().map(|t| format!(" (+{} test)", t.len())).unwrap_or_default(),
        ds.sample_shape(),
        out.display()
    );
    Ok(())
}

pub fn norms_cmd(args: NormsArgs) -> Result<()> {
    let ds = args.spec.open()?;
    let split = match args.split {
        SplitArg::Train => &ds.train,
        SplitArg::Test => ds.test.as_ref().with_context(|| format!("dataset '{}' has no test split", ds.meta.name))?,
    };
    let backend = open_device(args.device.device)?;
    let range = args.shard.range(split.len());
    let bar = sched::progress(range.len() as u64, "norms", !args.json);
    let t0 = Instant::now();
    let sq = backend.row_sq_norms(&split.x, range.clone(), &|rows| bar.inc(rows as u64))?;
    let seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let norms: Vec<f32> = sq.iter().map(|v| v.sqrt()).collect();
    sched::write_shard_npy(&args.out, &norms, args.shard, split.len(), &args.spec.lossy())?;
    let max = norms.iter().cloned().fold(0f32, f32::max);
    let mean = norms.iter().map(|&v| v as f64).sum::<f64>() / norms.len().max(1) as f64;
    let summary = serde_json::json!({
        "data": ds.meta.name, "samples": norms.len(), "rows": [range.start, range.end], "shard": args.shard.to_string(),
        "max_norm": max, "mean_norm": mean, "seconds": seconds, "device": backend.device(), "out": args.out,
    });
    if args.json {
        print_json(&summary);
    } else {
        println!(
            "{}: {} samples (rows {}..{}), max norm {max:.4}, mean norm {mean:.4}, {:.3} s on {} → {}",
            ds.meta.name,
            norms.len(),
            range.start,
            range.end,
            seconds,
            backend.device(),
            args.out.display()
        );
    }
    Ok(())
}

pub fn merge_cmd(parts: &[PathBuf], out: &Path, json: bool) -> Result<()> {
    let rows = sched::merge_shard_files(parts, out)?;
    if json {
        print_json(&serde_json::json!({ "parts": parts.len(), "rows": rows, "out": out }));
    } else {
        println!("merged {} shards ({rows} rows) into {}", parts.len(), out.display());
    }
    Ok(())
}

pub fn rng_cmd(args: RngArgs) -> Result<()> {
    let backend = open_device(args.device.device)?;
    let rng = Philox::new(args.seed, args.stream);
    let mut values = vec![0f32; args.count];
    let t0 = Instant::now();
    backend.fill_random(args.dist, rng, args.start, &mut values)?;
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(out) = &args.out {
        report::write_npy(out, &[values.len()], &values)?;
    }
    if args.json {
        let shown: &[f32] = if args.out.is_some() { &[] } else { &values };
        print_json(&serde_json::json!({
            "seed": args.seed, "stream": args.stream, "start": args.start, "count": args.count,
            "distribution": args.dist, "device": backend.device(), "seconds": seconds, "values": shown,
        }));
    } else if let Some(out) = &args.out {
        println!("wrote {} {:?} numbers to {} ({:.3} s on {})", args.count, args.dist, out.display(), seconds, backend.device());
    } else {
        for v in &values {
            println!("{v}");
        }
    }
    Ok(())
}

