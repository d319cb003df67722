//! The `rote` command line: parse, call the library, print.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rote::data::DataSpec;
use rote::device::{self, Backend, DeviceRequest};
use std::path::PathBuf;

mod bench;
mod classifier;
mod construct;
mod data;
mod diffusion;
mod membership;
mod memory;
mod text;
mod reproduce;

/// mimalloc: the training loops allocate and free many short-lived buffers of a few
/// hundred KB, which glibc serves with mmap/munmap (page faults on every step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h's option enum; libmimalloc-sys names
/// the options around it but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc hands freed memory back to the OS 10 ms later, and a training
/// step frees and reallocates the same large buffers every few hundred ms: each time
/// the pages fault in again and the kernel zeroes them (a quarter of a U-Net step's CPU
/// time on 2 cores, 35 000 page faults in 20 steps). Freed memory stays mapped for
/// reuse instead; the process's resident size is then its peak.
fn keep_freed_memory() {
    // SAFETY: setting an option of the allocator this binary links; any time is allowed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(name = "rote", version, about = "Measure and construct memorization in neural networks, on CPU or NVIDIA GPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reproduce the three papers' findings on built-in data and write a report
    /// (index.html, figures, CSV): --quick takes minutes on 2 CPU cores.
    Reproduce(reproduce::ReproduceArgs),
    /// List compute devices: CPU threads, CUDA devices, and how kernels reach them.
    Device {
        #[arg(long)]
        json: bool,
    },
    /// Inspect, generate and import datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Draw numbers from the Philox4x32-10 stream (identical on CPU and GPU).
    Rng(data::RngArgs),
    /// Build a three-layer threshold network that interpolates the training data.
    Construct(construct::ConstructArgs),
    /// Accuracy of a saved constructed network on a dataset.
    Predict {
        #[arg(long)]
        net: PathBuf,
        #[arg(value_parser = crate::data_spec(), long)]
        data: DataSpec,
        #[command(flatten)]
        device: DeviceArg,
        #[arg(long)]
        json: bool,
    },
    /// Loss and accuracy of saved classifier weights (rote's or PyTorch's state dicts as
    /// safetensors) on a dataset, one row per checkpoint.
    Eval(classifier::EvalArgs),
    /// Train a classifier (MLP, CNN, ResNet-18) with SGD, optionally with injected label noise and
    /// conflicting duplicates; writes a run directory with a checkpoint per epoch.
    Train(classifier::TrainArgs),
    /// Per-sample input-curvature memorization scores of a training run (or of a
    /// checkpoint series trained elsewhere).
    Curvature(classifier::CurvatureArgs),
    /// The optimal denoiser of a training set: sampling (EDM Heun) and evaluation.
    #[command(subcommand)]
    Denoise(diffusion::DenoiseCommand),
    /// Exact k nearest neighbours in a training set (any size; streamed).
    Knn(KnnCommand),
    /// Memorization ratio of generated samples: the fraction whose nearest training
    /// sample is much nearer than the second nearest.
    Memratio(diffusion::MemratioArgs),
    /// Effective model memorization: train a denoiser per training-set size, sample,
    /// measure the memorization ratio; EMM is the largest size still ≥ 90% memorized.
    Emm(diffusion::EmmArgs),
    /// Grids of many runs (resumable, one CSV row per trial).
    #[command(subcommand)]
    Sweep(construct::SweepCommand),
    /// Time workloads on the CPU and every usable GPU, side by side with their
    /// baselines; without a subcommand, every benchmark at its defaults in one table.
    Bench(bench::BenchArgs),
    /// Pools of models trained on random subsets, for memorization and membership
    /// inference (`rote mem`, `rote mia`, `rote choi` read them).
    #[command(subcommand)]
    Pool(membership::PoolCommand),
    /// Feldman–Zhang memorization of every training example and its influence on every
    /// test example, from a pool; .npy, top.csv and a gallery.
    Mem(membership::MemArgs),
    /// Membership inference against a pool's models (LiRA online/offline, RMIA, loss,
    /// global threshold): AUC, TPR at low FPR, balanced accuracy, bootstrap intervals, ROC.
    Mia(membership::MiaArgs),
    /// Choi et al.'s experiment: attack power on the most memorized examples against all,
    /// as a function of the number of shadow models.
    Choi(membership::ChoiArgs),
    /// Least-squares SVMs: fit and predict.
    #[command(subcommand)]
    Lssvm(memory::LssvmCommand),
    /// Verbatim memorization of text: token corpora, n-gram indexes (Bloom, suffix
    /// array), scans of generations, MemFree, the style-change demonstration.
    #[command(subcommand)]
    Text(text::TextCommand),
    /// Join the outputs of `--shard I/N` runs into the result of a single run.
    Merge {
        /// Shard outputs (.npy files, each with its .shard.json beside it), or pool
        /// directories trained with `rote pool train --shard`.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// `rote knn --data … --queries … --out …` searches; `rote knn classify …` predicts from
/// the labels of the neighbours.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct KnnCommand {
    #[command(subcommand)]
    classify: Option<KnnSubcommand>,
    #[command(flatten)]
    search: diffusion::KnnArgs,
}

#[derive(Subcommand)]
enum KnnSubcommand {
    /// Retrieval-augmented prediction: p_knn from the labels of the k nearest stored keys,
    /// interpolated with the model's probabilities (kNN-LM, RetroPrompt).
    Classify(memory::ClassifyArgs),
}

#[derive(Args)]
pub struct DeviceArg {
    /// auto (a usable GPU, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
}

fn main() {
    keep_freed_memory();
    // Output piped into `head` ends quietly, as other command-line tools do, instead of
    // a panic on the closed pipe.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        // exit() runs no destructors: whatever the error still owns (a temporary file,
        // a scratch directory) is cleaned up here first.
        drop(e);
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Device { json } => device_cmd(json),
        Command::Data(cmd) => data::data_cmd(cmd),
        Command::Rng(args) => data::rng_cmd(args),
        Command::Merge { parts, out, json } if parts[0].join(rote::membership::pool::POOL_FILE).is_file() => membership::merge_pools(&parts, &out, json),
        Command::Merge { parts, out, json } => data::merge_cmd(&parts, &out, json),
        Command::Pool(cmd) => membership::pool_cmd(cmd),
        Command::Lssvm(cmd) => memory::lssvm_cmd(cmd),
        Command::Text(cmd) => text::text_cmd(cmd),
        Command::Mem(args) => membership::mem_cmd(args),
        Command::Mia(args) => membership::mia_cmd(args),
        Command::Choi(args) => membership::choi_cmd(args),
        Command::Construct(args) => construct::construct_cmd(args),
        Command::Sweep(construct::SweepCommand::Construct(args)) => construct::sweep_construct_cmd(args),
        Command::Train(args) => classifier::train_cmd(args),
        Command::Curvature(args) => classifier::curvature_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Sample(args)) => diffusion::sample_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Eval(args)) => diffusion::eval_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Train(args)) => diffusion::train_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Gap(args)) => diffusion::gap_cmd(args),
        Command::Knn(KnnCommand { classify: Some(KnnSubcommand::Classify(args)), .. }) => memory::classify_cmd(args),
        Command::Knn(KnnCommand { search, .. }) => diffusion::knn_cmd(search),
        Command::Reproduce(args) => reproduce::reproduce_cmd(args),
        Command::Bench(b) => bench::bench_cmd(b),
        Command::Emm(args) => diffusion::emm_cmd(args),
        Command::Memratio(args) => diffusion::memratio_cmd(args),
        Command::Predict { net, data, device, json } => construct::predict_cmd(&net, &data, device.device, json),
        Command::Eval(args) => classifier::eval_cmd(args),
    }
}

pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap());
}

/// Resolves --device, opens it, and says which device was chosen (stderr, so stdout
/// stays clean for --json).
pub fn open_device(req: DeviceRequest) -> Result<Backend> {
    let device = req.resolve()?;
    let backend = Backend::open(device)?;
    match &backend {
        Backend::Cpu => {
            let why = device::cuda::probe().unavailable.clone().unwrap_or_else(|| "requested".into());
            eprintln!("device: cpu ({} threads; CUDA: {why})", rayon::current_num_threads());
        }
        Backend::Cuda(c) => eprintln!("device: {} ({}, kernels: {:?})", backend.device(), c.info().name, c.info().kernels),
    }
    Ok(backend)
}

/// `open_device` for the commands that split their work over several GPUs
/// (`--device cuda:all`); any other request opens its one device.
pub fn open_devices(req: DeviceRequest) -> Result<Vec<Backend>> {
    if req != DeviceRequest::AllCuda {
        return Ok(vec![open_device(req)?]);
    }
    let backends = Backend::open_all(req)?;
    eprintln!("devices: {}", Backend::describe(&backends));
    Ok(backends)
}

fn device_cmd(json: bool) -> Result<()> {
    let probe = device::cuda::probe();
    let value = serde_json::json!({
        "cpu": { "threads": rayon::current_num_threads() },
        "cuda": probe,
        "kernels_precompiled": device::kernels_precompiled(),
        "nvcc": device::NVCC_VERSION,
        "kernel_modules": device::cuda::module_names(),
        "auto": DeviceRequest::Auto.resolve()?,
    });
    if json {
        print_json(&value);
        return Ok(());
    }
    println!("cpu: {} threads (RAYON_NUM_THREADS to change)", rayon::current_num_threads());
    match &probe.unavailable {
        Some(reason) if probe.devices.is_empty() => println!("cuda: none ({reason})"),
        _ => {
            if let Some(v) = probe.driver_version {
                println!("cuda driver: {}.{}", v / 1000, (v % 1000) / 10);
            }
            for d in &probe.devices {
                println!(
                    "cuda:{}: {} — {:.1} GiB, compute capability {}.{}, kernels: {:?}",
                    d.ordinal,
                    d.name,
                    d.total_memory_bytes as f64 / (1u64 << 30) as f64,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.kernels
                );
            }
        }
    }
    println!(
        "kernels: {} ({})",
        if device::kernels_precompiled() { "precompiled (compute_80 PTX + sm_90 cubin)" } else { "sources only (NVRTC at run time)" },
        device::NVCC_VERSION.unwrap_or("built without nvcc")
    );
    println!("--device auto selects: {}", value["auto"].as_str().unwrap_or("?"));
    Ok(())
}

pub fn parse_shape(text: &str) -> Result<Vec<usize>> {
    text.split(['x', 'X', ','])
        .map(|p| p.trim().parse::<usize>().with_context(|| format!("--shape {text}: '{p}' is not a number")))
        .collect()
}

/// Parses a `--data` spec from the raw argument, so dataset paths that are not UTF-8
/// are accepted.
fn data_spec() -> impl clap::builder::TypedValueParser<Value = DataSpec> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(DataSpec::from)
}

