//! The `rote` command line: parse, call the library, print.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rote::data::{self, import, DataSpec};
use rote::device::{self, Backend, DeviceRequest};
use rote::report;
use rote::rng::{Distribution, Philox};
use rote::sched::{self, Shard};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod diffusion;
mod membership;
mod memory;
mod text;
mod reproduce;

/// mimalloc: the training loops allocate and free many short-lived buffers of a few
/// hundred KB, which glibc serves with mmap/munmap (page faults on every step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Data(DataCommand),
    /// Draw numbers from the Philox4x32-10 stream (identical on CPU and GPU).
    Rng(RngArgs),
    /// Build a three-layer threshold network that interpolates the training data.
    Construct(ConstructArgs),
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
    Eval(EvalArgs),
    /// Train a classifier (MLP, CNN, ResNet-18) with SGD, optionally with injected label noise and
    /// conflicting duplicates; writes a run directory with a checkpoint per epoch.
    Train(TrainArgs),
    /// Per-sample input-curvature memorization scores of a training run (or of a
    /// checkpoint series trained elsewhere).
    Curvature(CurvatureArgs),
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
    Sweep(SweepCommand),
    /// Time workloads on the CPU and every usable GPU, side by side with their
    /// baselines; without a subcommand, every benchmark at its defaults in one table.
    Bench(BenchArgs),
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

#[derive(Subcommand)]
enum SweepCommand {
    /// Probability of interpolation and second-layer width over (width, max bias, size).
    Construct(SweepConstructArgs),
}

#[derive(Args)]
struct SweepConstructArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    data: DataSpec,
    /// First-layer widths: start:end:step (inclusive) or a list.
    #[arg(long)]
    widths: String,
    /// Max biases λ: start:end:step (inclusive) or a list.
    #[arg(long)]
    max_biases: String,
    /// Independent restarts (seeds first-seed .. first-seed + restarts − 1).
    #[arg(long, default_value_t = 10)]
    restarts: u64,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Training-set sizes: a generator's n, or a random subset of other data.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    #[arg(long, conflicts_with = "one_vs_rest")]
    positive_class: Option<i64>,
    #[arg(long)]
    one_vs_rest: bool,
    /// The CSV of trials; an existing one is resumed (its trials are skipped).
    #[arg(long)]
    out: PathBuf,
    /// Write heatmaps and slices (PNG) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Python for the baselines (numpy, JAX, faiss-cpu: see scripts/bench.sh); "none"
    /// skips them.
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Per-sample curvature scores: rote's estimators against JAX on the same weights
    /// and probes.
    Curvature {
        #[arg(long, default_value = "mlp:784-512-512-10,act=relu")]
        model: String,
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        probes: usize,
        /// Which of rote's estimators to time (the JAX baseline always runs unless
        /// --python none).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "hutchinson,fd,exact")]
        estimators: Vec<rote::curvature::Estimator>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Python with JAX for the baseline; "none" skips it.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Also time the GPU path (auto: any usable GPU).
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        #[arg(long)]
        json: bool,
    },
    /// The construction against the numpy baseline, on the same data.
    Construct {
        /// Which workloads: moons (N=1000, n=500), moons-1m (N=10⁶, n=2000),
        /// fashion (Fashion-MNIST one-vs-rest, n=1000), cifar-like (N=50000, d=3072, n=10000).
        #[arg(long, value_delimiter = ',', default_value = "moons,moons-1m,fashion")]
        cases: Vec<String>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Python with numpy for the baseline (set PYTHONPATH for a local numpy);
        /// "none" skips it.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long, default_value_t = 3)]
        baseline_repeats: usize,
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        /// Time only the GPU (for workloads too large for the CPU in a bench run).
        #[arg(long)]
        skip_cpu: bool,
        #[arg(long)]
        json: bool,
    },
    /// The optimal denoiser over the sampler's 18 noise levels against the numpy
    /// baseline (full float32 distance matrix), on the same data and queries.
    Denoise {
        #[arg(long, default_value = "fashion-mnist:subset-random=10000")]
        data: String,
        /// Queries per noise level.
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Python with numpy for the baseline; "none" skips it.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long, default_value_t = 3)]
        baseline_repeats: usize,
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        /// Time only the GPU (for sizes too large for the CPU in a bench run).
        #[arg(long)]
        skip_cpu: bool,
        #[arg(long)]
        json: bool,
    },
    /// Exact kNN against faiss-cpu's flat L2 index, on the same data and queries.
    Knn {
        #[arg(long, default_value = "fashion-mnist")]
        data: String,
        /// How many test samples to query with.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        #[arg(long, default_value_t = 2)]
        k: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Python with faiss-cpu for the baseline; "none" skips it.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long, default_value_t = 3)]
        baseline_repeats: usize,
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        #[arg(long)]
        skip_cpu: bool,
        #[arg(long)]
        json: bool,
    },
    /// Denoiser training throughput against the same network and loss in JAX.
    DenoiseTrain {
        #[arg(long, default_value = "digits")]
        data: String,
        #[arg(long, default_value = "resmlp:width=256,blocks=3")]
        model: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 500)]
        steps: usize,
        /// Python with JAX for the baseline; "none" skips it.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        #[arg(long)]
        json: bool,
    },
    /// A convolutional network's forward pass and training step against PyTorch on the
    /// same weights and batch.
    Cnn {
        #[arg(long, default_value = "resnet18-cifar:classes=100")]
        model: String,
        /// One input sample's shape, C×H×W.
        #[arg(long, default_value = "3x32x32")]
        input: String,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Python with torch for the baseline (PYTHONPATH=.tools/torch); "none" skips it.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long)]
        json: bool,
    },
    /// Training a pool of MLPs on random halves (`rote pool train`) against PyTorch, one
    /// model after another and all at once with torch.func.vmap.
    Pool {
        #[arg(long, default_value = "fashion-mnist:subset=200")]
        data: String,
        #[arg(long, default_value = "mlp:784-512-512-10,act=relu")]
        model: String,
        #[arg(long, default_value_t = 64)]
        models: usize,
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Python with torch for the baselines (PYTHONPATH=.tools/torch); "none" skips them.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long)]
        json: bool,
    },
    /// An RBF least-squares SVM, fit and predict, against numpy/scipy's Cholesky solve of
    /// the same system and scikit-learn's SVC.
    Lssvm {
        #[arg(long, default_value = "fashion-mnist")]
        data: String,
        /// Training samples (the first N).
        #[arg(long, default_value_t = 5000)]
        n: usize,
        #[arg(long, default_value_t = 8.0)]
        sigma: f64,
        #[arg(long, default_value_t = 10.0)]
        gamma: f64,
        /// Python with numpy, scipy and scikit-learn (PYTHONPATH=.tools/py); "none" skips them.
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long)]
        json: bool,
    },
    /// n-gram membership over a text corpus: Bloom filter build and queries against
    /// rbloom and a Python set of the same n-grams, and the suffix-array build.
    Text {
        /// A corpus directory (`rote text import`).
        corpus: PathBuf,
        #[arg(short, default_value_t = 50)]
        n: usize,
        #[arg(long, default_value_t = 1e-3)]
        fp: f64,
        /// n-grams per probe sequence (members and random).
        #[arg(long, default_value_t = 1_000_000)]
        probes: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Python with rbloom (PYTHONPATH=.tools/py); "none" skips the baselines.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Also on the GPU (auto: when one is usable).
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        #[arg(long)]
        json: bool,
    },
    /// The frame's kernels: Philox fills and streamed row norms.
    Frame {
        /// Multiplies the workload sizes.
        #[arg(long, default_value_t = 1)]
        scale: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Also run on this GPU (auto: any usable one).
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
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
enum ImportCommand {
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
struct DeviceArg {
    /// auto (a usable GPU, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

/// A training recipe: `rote train`'s and every member's of `rote pool train`.
#[derive(Args)]
pub struct RecipeArgs {
    #[arg(value_parser = crate::data_spec(), long, required_unless_present = "resume", conflicts_with = "resume")]
    pub data: Option<DataSpec>,
    /// e.g. mlp:784-512-512-10,act=relu (relu, gelu, tanh, softplus).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub model: Option<String>,
    #[arg(long, default_value_t = 20, conflicts_with = "resume")]
    epochs: usize,
    #[arg(long, default_value_t = 128, conflicts_with = "resume")]
    batch: usize,
    #[arg(long, default_value_t = 0.05, conflicts_with = "resume")]
    lr: f32,
    #[arg(long, default_value_t = 0.9, conflicts_with = "resume")]
    momentum: f32,
    #[arg(long, default_value_t = 5e-4, conflicts_with = "resume")]
    weight_decay: f32,
    #[arg(long, value_enum, default_value = "step", conflicts_with = "resume")]
    schedule: rote::nn::train::Schedule,
    /// Fraction of training labels replaced by a different random class.
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume")]
    label_noise: f64,
    /// Samples duplicated with a different label.
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    duplicate_conflicts: usize,
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Training-batch augmentation for image models: crop:P (random shifts with P
    /// pixels of zero padding), flip, or both (crop:4,flip).
    #[arg(long, default_value = "", conflicts_with = "resume")]
    augment: String,
    /// Per-channel input normalization: auto (from the training split for CNNs, none
    /// for MLPs), data, none, cifar10, cifar100, imagenet, or MEAN,…/STD,….
    #[arg(long, default_value = "auto", conflicts_with = "resume")]
    normalize: String,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Continue the unfinished run in --out from its last saved epoch, with the
    /// settings it was started with (its run.json).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// The architecture: mlp:…, cnn:…, resnet18-cifar[:classes=C,width=W], resnet18[:classes=C].
    #[arg(long)]
    model: String,
    /// Checkpoint files: a path, or a pattern with '*' in the file name
    /// ('ckpts/*.safetensors').
    #[arg(long)]
    weights: String,
    #[arg(value_parser = crate::data_spec(), long)]
    data: DataSpec,
    /// Per-channel input normalization the weights were trained with: none, cifar10,
    /// cifar100, imagenet, data (from this training split) or MEAN,…/STD,….
    #[arg(long, default_value = "none")]
    normalize: String,
    /// Divide uint8 inputs by their largest value (255 for 8-bit images) first, as
    /// `rote train` and torchvision's ToTensor do; --no-scale keeps raw values.
    #[arg(long)]
    no_scale: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CurvatureArgs {
    /// A run directory written by `rote train`.
    #[arg(long, required_unless_present = "weights", conflicts_with_all = ["weights", "model", "normalize"])]
    run: Option<PathBuf>,
    /// Instead of --run: a series of checkpoints trained elsewhere ('dir/*.safetensors'),
    /// scored on --data with its labels (needs --model).
    #[arg(long, requires_all = ["model", "data"])]
    weights: Option<String>,
    /// The architecture of --weights (mlp:…, cnn:…, resnet18-cifar…, resnet18…).
    #[arg(long)]
    model: Option<String>,
    /// The per-channel normalization --weights were trained with (none, cifar10,
    /// cifar100, imagenet, data, MEAN,…/STD,…); inputs are uint8 / max first.
    #[arg(long)]
    normalize: Option<String>,
    /// Only checkpoints whose file name matches this pattern ('*' wildcards).
    #[arg(long)]
    checkpoints: Option<String>,
    /// Every K-th checkpoint (K, 2K, …).
    #[arg(long, default_value_t = 1)]
    every: usize,
    #[arg(long, default_value_t = 10)]
    probes: usize,
    /// exact (default), hutchinson or fd; fd is the default with --statistic released-code.
    #[arg(long, value_enum)]
    estimator: Option<rote::curvature::Estimator>,
    #[arg(long, value_enum, default_value = "paper")]
    statistic: rote::curvature::Statistic,
    /// Finite-difference step.
    #[arg(long, default_value_t = 1e-3)]
    h: f32,
    /// Score this data instead of the run's (same samples, e.g. a local copy).
    #[arg(value_parser = crate::data_spec(), long)]
    data: Option<DataSpec>,
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    /// Samples per batch (each becomes probes rows).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Seed of the Rademacher probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    out: PathBuf,
    /// Write the highest- and lowest-scoring training images.
    #[arg(long)]
    gallery: Option<PathBuf>,
    /// Score the checkpoints of a run that did not finish (it is refused otherwise).
    #[arg(long)]
    allow_incomplete: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConstructArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    data: DataSpec,
    /// First-layer width n.
    #[arg(long)]
    width: usize,
    /// λ: biases are uniform in [−λ, λ].
    #[arg(long)]
    max_bias: f32,
    #[arg(long, value_enum, default_value = "threshold")]
    activation: rote::construct::Activation,
    /// The class the network outputs 1 on (X⁻); the rest is X⁺.
    #[arg(long, conflicts_with = "one_vs_rest")]
    positive_class: Option<i64>,
    /// One covering layer per class (the default for more than two classes).
    #[arg(long)]
    one_vs_rest: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not rescale inputs to max norm 1 (the paper's preprocessing) first.
    #[arg(long)]
    no_scale: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// Save the network (safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// For 2-D data: draw each layer-2 neuron's region and the training points.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct NormsArgs {
    #[arg(value_parser = crate::data_spec())]
    spec: DataSpec,
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,
    /// Process only part I of N (0-based); join parts with `rote merge`.
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

#[derive(Args)]
struct RngArgs {
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    stream: u64,
    /// Index of the first number.
    #[arg(long, default_value_t = 0)]
    start: u64,
    #[arg(long, default_value_t = 8)]
    count: usize,
    #[arg(long, value_enum, default_value = "uniform")]
    dist: Distribution,
    #[command(flatten)]
    device: DeviceArg,
    /// Write the numbers as .npy instead of printing them.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn main() {
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
        Command::Data(DataCommand::Info { spec, json }) => info_cmd(&spec, json),
        Command::Data(DataCommand::Gen { spec, out }) => {
            let ds = spec.open()?;
            ds.write_dir(&out)?;
            println!("wrote {} ({} samples of shape {:?}) to {}", ds.meta.name, ds.train.len(), ds.sample_shape(), out.display());
            Ok(())
        }
        Command::Data(DataCommand::Import(cmd)) => import_cmd(cmd),
        Command::Data(DataCommand::Norms(args)) => norms_cmd(args),
        Command::Rng(args) => rng_cmd(args),
        Command::Merge { parts, out, json } if parts[0].join(rote::membership::pool::POOL_FILE).is_file() => membership::merge_pools(&parts, &out, json),
        Command::Merge { parts, out, json } => merge_cmd(&parts, &out, json),
        Command::Pool(cmd) => membership::pool_cmd(cmd),
        Command::Lssvm(cmd) => memory::lssvm_cmd(cmd),
        Command::Text(cmd) => text::text_cmd(cmd),
        Command::Mem(args) => membership::mem_cmd(args),
        Command::Mia(args) => membership::mia_cmd(args),
        Command::Choi(args) => membership::choi_cmd(args),
        Command::Construct(args) => construct_cmd(args),
        Command::Sweep(SweepCommand::Construct(args)) => sweep_construct_cmd(args),
        Command::Train(args) => train_cmd(args),
        Command::Curvature(args) => curvature_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Sample(args)) => diffusion::sample_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Eval(args)) => diffusion::eval_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Train(args)) => diffusion::train_cmd(args),
        Command::Denoise(diffusion::DenoiseCommand::Gap(args)) => diffusion::gap_cmd(args),
        Command::Knn(KnnCommand { classify: Some(KnnSubcommand::Classify(args)), .. }) => memory::classify_cmd(args),
        Command::Knn(KnnCommand { search, .. }) => diffusion::knn_cmd(search),
        Command::Reproduce(args) => reproduce::reproduce_cmd(args),
        Command::Bench(b) => match b.command {
            Some(c) => bench_one(c),
            None => bench_all(&b.python, b.device, b.json),
        },
        Command::Emm(args) => diffusion::emm_cmd(args),
        Command::Memratio(args) => diffusion::memratio_cmd(args),
        Command::Predict { net, data, device, json } => predict_cmd(&net, &data, device.device, json),
        Command::Eval(args) => eval_cmd(args),
    }
}

fn bench_one(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Curvature { model, batch, probes, estimators, repeats, python, device, json } => {
            let python = baseline_python(&python);
            let gpu = bench_backends(device)?.into_iter().find(|b| matches!(b, Backend::Cuda(_)));
            let rows = rote::bench::curvature(&model, batch.max(1), probes.max(1), &estimators, repeats.max(1), python, gpu.as_ref())?;
            print_rows(&rows, json)
        }
        BenchCommand::Construct { cases, repeats, python, baseline_repeats, device, skip_cpu, json } => {
            let backends = bench_backends_maybe_gpu_only(device, skip_cpu)?;
            let cases = cases.iter().map(|c| construct_case(c)).collect::<Result<Vec<_>>>()?;
            let python = baseline_python(&python);
            let rows = rote::bench::construct(&cases, &backends, repeats.max(1), python, baseline_repeats.max(1))?;
            print_rows(&rows, json)
        }
        BenchCommand::Denoise { data, batch, repeats, python, baseline_repeats, device, skip_cpu, json } => {
            let backends = bench_backends_maybe_gpu_only(device, skip_cpu)?;
            let python = baseline_python(&python);
            let rows = rote::bench::denoise(&data, batch.max(1), repeats.max(1), python, &backends, baseline_repeats.max(1))?;
            print_rows(&rows, json)
        }
        BenchCommand::Knn { data, queries, k, repeats, python, baseline_repeats, device, skip_cpu, json } => {
            let backends = bench_backends_maybe_gpu_only(device, skip_cpu)?;
            let python = baseline_python(&python);
            let rows = rote::bench::knn(&data, queries.max(1), k.max(1), repeats.max(1), python, &backends, baseline_repeats.max(1))?;
            print_rows(&rows, json)
        }
        BenchCommand::DenoiseTrain { data, model, batch, steps, python, device, json } => {
            let python = baseline_python(&python);
            let backends = bench_backends(device)?;
            let rows = rote::bench::denoise_train(&data, &model, batch.max(1), steps.max(1), python, &backends)?;
            print_rows(&rows, json)
        }
        BenchCommand::Cnn { model, input, batch, repeats, python, json } => {
            let dims = parse_shape(&input)?;
            let [c, h, w] = dims[..] else { bail!("--input {input}: give C×H×W, e.g. 3x32x32") };
            let rows = rote::bench::cnn(&model, [c, h, w], batch.max(1), repeats.max(1), baseline_python(&python))?;
            print_rows(&rows, json)
        }
        BenchCommand::Pool { data, model, models, epochs, batch, python, json } => {
            let rows = rote::bench::pool(&data, &model, models, epochs.max(1), batch.max(1), baseline_python(&python))?;
            print_rows(&rows, json)
        }
        BenchCommand::Lssvm { data, n, sigma, gamma, python, json } => {
            let rows = rote::bench::lssvm(&data, n.max(2), sigma, gamma, baseline_python(&python))?;
            print_rows(&rows, json)
        }
        BenchCommand::Text { corpus, n, fp, probes, repeats, python, device, json } => {
            let backends = bench_backends(device)?;
            let gpu = backends.iter().find_map(|b| match b {
                Backend::Cuda(c) => Some(c.clone()),
                _ => None,
            });
            let rows = rote::bench::text(&corpus, n, fp, probes.max(1), repeats.max(1), baseline_python(&python), gpu.as_deref())?;
            print_rows(&rows, json)
        }
        BenchCommand::Frame { scale, repeats, device, json } => {
            let backends = bench_backends(device)?;
            let rows = rote::bench::frame(&backends, scale.max(1), repeats.max(1))?;
            print_rows(&rows, json)
        }
    }
}

/// Every benchmark at sizes that finish in a few minutes on 2 cores, one table.
fn bench_all(python: &str, device: DeviceRequest, json: bool) -> Result<()> {
    let py = baseline_python(python);
    let backends = bench_backends(device)?;
    let gpu = backends.iter().find(|b| matches!(b, Backend::Cuda(_))).cloned();
    let mut rows = Vec::new();
    let cases = ["moons", "moons-1m"].iter().map(|c| construct_case(c)).collect::<Result<Vec<_>>>()?;
    rows.extend(rote::bench::construct(&cases, &backends, 5, py, 3)?);
    rows.extend(rote::bench::curvature("mlp:784-512-512-10,act=relu", 1024, 10, &[rote::curvature::Estimator::Hutchinson, rote::curvature::Estimator::Fd, rote::curvature::Estimator::Exact], 3, py, gpu.as_ref())?);
    rows.extend(rote::bench::denoise("fashion-mnist:subset-random=10000", 512, 3, py, &backends, 3)?);
    rows.extend(rote::bench::knn("fashion-mnist", 2000, 2, 3, py, &backends, 3)?);
    rows.extend(rote::bench::denoise_train("digits", "resmlp:width=256,blocks=3", 128, 500, py, &backends)?);
    print_rows(&rows, json)
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap());
}

/// Resolves --device, opens it, and says which device was chosen (stderr, so stdout
/// stays clean for --json).
fn open_device(req: DeviceRequest) -> Result<Backend> {
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

fn info_cmd(spec: &DataSpec, json: bool) -> Result<()> {
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

fn parse_shape(text: &str) -> Result<Vec<usize>> {
    text.split(['x', 'X', ','])
        .map(|p| p.trim().parse::<usize>().with_context(|| format!("--shape {text}: '{p}' is not a number")))
        .collect()
}

fn import_cmd(cmd: ImportCommand) -> Result<()> {
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

/// What a shard output carries beside it so `rote merge` can check and join it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ShardRecord {
    shard: String,
    total_rows: usize,
    row_len: usize,
    data: String,
}

/// Writes one value per row of `shard` as .npy, with the record `rote merge` needs
/// beside it when the shard is not the whole (`data` names the source, so parts of
/// different runs are not joined).
fn write_shard_output(path: &Path, values: &[f32], shard: Shard, total_rows: usize, data: &str) -> Result<()> {
    report::write_npy(path, &[values.len()], values)?;
    if !shard.is_whole() {
        let record = ShardRecord { shard: shard.to_string(), total_rows, row_len: 1, data: data.to_string() };
        report::write_json(&shard_record_path(path), &record)?;
    }
    Ok(())
}

fn shard_record_path(npy: &Path) -> PathBuf {
    let mut s = npy.as_os_str().to_owned();
    s.push(".shard.json");
    PathBuf::from(s)
}

fn norms_cmd(args: NormsArgs) -> Result<()> {
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
    write_shard_output(&args.out, &norms, args.shard, split.len(), &args.spec.lossy())?;
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

fn merge_cmd(parts: &[PathBuf], out: &Path, json: bool) -> Result<()> {
    let mut pieces = Vec::new();
    let mut total = None;
    for p in parts {
        let rec_path = shard_record_path(p);
        let text = std::fs::read_to_string(&rec_path)
            .with_context(|| format!("{} has no shard record ({}); was it written with --shard?", p.display(), rec_path.display()))?;
        let rec: ShardRecord = serde_json::from_str(&text).with_context(|| format!("{} is not a shard record", rec_path.display()))?;
        if let Some((t, data)) = &total {
            if *t != rec.total_rows || *data != rec.data {
                bail!("{} comes from a different run ({} rows of '{}') than the first part ({t} rows of '{data}')", p.display(), rec.total_rows, rec.data);
            }
        }
        total = Some((rec.total_rows, rec.data.clone()));
        let shard: Shard = rec.shard.parse().map_err(|e: String| anyhow::anyhow!("{}: {e}", rec_path.display()))?;
        let arr = data::Array::open_npy(p)?;
        pieces.push((shard, arr.to_f32()));
    }
    let (n, _) = total.unwrap();
    let merged = sched::merge_shards(n, pieces, 1)?;
    report::write_npy(out, &[merged.len()], &merged)?;
    if json {
        print_json(&serde_json::json!({ "parts": parts.len(), "rows": merged.len(), "out": out }));
    } else {
        println!("merged {} shards ({} rows) into {}", parts.len(), merged.len(), out.display());
    }
    Ok(())
}

fn rng_cmd(args: RngArgs) -> Result<()> {
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

fn construct_cmd(args: ConstructArgs) -> Result<()> {
    use rote::construct::{self, FitConfig, Target};
    let ds = args.data.open()?;
    let target = if args.one_vs_rest {
        Target::OneVsRest
    } else if args.positive_class.is_some() || ds.classes() == 2 {
        Target::Binary { positive: args.positive_class }
    } else {
        Target::OneVsRest
    };
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

fn predict_cmd(net: &Path, spec: &DataSpec, device: DeviceRequest, json: bool) -> Result<()> {
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
fn spec_with_size(spec: &str, size: usize) -> String {
    let (source, opts) = match spec.rsplit_once(':') {
        Some((src, o)) if o.contains('=') => (src, o),
        _ => (spec, ""),
    };
    let mut kept: Vec<&str> = opts.split(',').filter(|o| !o.is_empty() && !o.starts_with("n=") && !o.starts_with("subset-random=")).collect();
    let sized = if data::generators::NAMES.contains(&source) { format!("n={size}") } else { format!("subset-random={size}") };
    kept.push(&sized);
    format!("{source}:{}", kept.join(","))
}

fn sweep_construct_cmd(args: SweepConstructArgs) -> Result<()> {
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

/// The bench backends, without the CPU when `skip_cpu` and a GPU is there.
fn bench_backends_maybe_gpu_only(device: DeviceRequest, skip_cpu: bool) -> Result<Vec<Backend>> {
    let mut backends = bench_backends(device)?;
    if skip_cpu && backends.len() > 1 {
        backends.remove(0);
    }
    Ok(backends)
}

fn print_rows(rows: &[rote::bench::BenchRow], json: bool) -> Result<()> {
    if json {
        print_json(&serde_json::to_value(rows)?);
    } else {
        rote::bench::print_table(rows);
    }
    Ok(())
}

/// The baseline's Python interpreter; "none" skips the baseline.
fn baseline_python(python: &str) -> Option<&str> {
    (python != "none").then_some(python)
}

/// The CPU, plus the GPU `device` names when it resolves to one.
fn bench_backends(device: DeviceRequest) -> Result<Vec<Backend>> {
    let mut backends = vec![Backend::Cpu];
    if device != DeviceRequest::Cpu {
        let d = device.resolve()?;
        if d != rote::device::Device::Cpu {
            backends.push(Backend::open(d)?);
        }
    }
    Ok(backends)
}

fn construct_case(name: &str) -> Result<rote::bench::ConstructCase> {
    let case = |spec: &str, width, one_vs_rest, numpy_float32| rote::bench::ConstructCase {
        name: name.to_string(),
        spec: spec.to_string(),
        width,
        max_bias: 0.5,
        one_vs_rest,
        numpy_float32,
    };
    Ok(match name {
        "moons" => case("moons:n=1000,noise=0.05,seed=0", 500, false, false),
        "moons-1m" => case("moons:n=1000000,noise=0.05,seed=0", 2000, false, true),
        "fashion" => case("fashion-mnist", 1000, true, false),
        "cifar-like" => case("blobs:n=50000,dim=3072,centers=2,std=40,box=1,seed=0", 10000, false, true),
        other => bail!("unknown bench case '{other}' (moons, moons-1m, fashion, cifar-like)"),
    })
}

impl RecipeArgs {
    /// The recipe as a training configuration, with the data it names opened (its input
    /// scale and normalization read from it).
    pub fn config(&self) -> Result<(rote::nn::train::TrainConfig, data::Dataset)> {
        use rote::nn::train;
        let mut cfg = train::TrainConfig {
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
        };
        cfg.validate()?;
        let ds = data::open(&cfg.data)?;
        cfg.input_scale = train::input_scale_for(&ds);
        cfg.normalization = train::normalization_for(&cfg.model, &self.normalize, &ds, cfg.input_scale)?;
        Ok((cfg, ds))
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    use rote::nn::train;
    let (cfg, ds) = if a.resume {
        let cfg = train::open_run(&a.out)?;
        let ds = data::open(&cfg.data)?;
        (cfg, ds)
    } else {
        a.recipe.config()?
    };
    let mut backend = open_device(a.device.device)?;
    if matches!(backend, Backend::Cuda(_)) && !train::runs_on_gpu(&cfg) {
        eprintln!("note: convolutional models and augmented batches train on the CPU in this version");
        backend = Backend::Cpu;
    }
    let bar = sched::progress(0, "training", !a.json);
    let t0 = Instant::now();
    train::train(&ds, &cfg, &a.out, &backend, a.resume, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let metrics = std::fs::read_to_string(a.out.join("metrics.csv"))?;
    let last: Vec<String> = metrics.lines().last().unwrap_or("").split(',').map(|s| s.to_string()).collect();
    let value = serde_json::json!({
        "run": a.out, "epochs": cfg.epochs, "resumed": a.resume, "seconds": t0.elapsed().as_secs_f64(),
        "train_loss": last.get(1).and_then(|v| v.parse::<f64>().ok()),
        "train_accuracy": last.get(2).and_then(|v| v.parse::<f64>().ok()),
        "test_accuracy": last.get(4).and_then(|v| v.parse::<f64>().ok()),
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
            last.get(2).cloned().unwrap_or_default(),
            last.get(4).cloned().filter(|s| !s.is_empty()).unwrap_or_else(|| "n/a".into()),
            a.out.display()
        );
    }
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    use rote::nn::{network, train};
    let ds = a.data.open()?;
    let files = rote::nn::runs::checkpoint_files(&a.weights)?;
    let mut net = network::Network::build(&a.model, ds.sample_shape(), 0).with_context(|| format!("model '{}' on '{}'", a.model, a.data))?;
    net.check_labels(&a.model, ds.train.y.iter().chain(ds.test.iter().flat_map(|t| &t.y)))?;
    let input_scale = if a.no_scale { 1.0 } else { train::input_scale_for(&ds) };
    let normalization = train::normalization_for(&a.model, &a.normalize, &ds, input_scale)?;
    let bar = sched::progress(files.len() as u64, "evaluating", !a.json);
    let mut rows = vec![];
    for f in &files {
        net.load_weights(f)?;
        let (train_loss, train_acc) = train::evaluate_split(&net, &ds.train, input_scale, &normalization, ds.sample_shape())?;
        let test = ds.test.as_ref().map(|t| train::evaluate_split(&net, t, input_scale, &normalization, ds.sample_shape())).transpose()?;
        rows.push(serde_json::json!({
            "checkpoint": f, "train_loss": train_loss, "train_accuracy": train_acc,
            "test_loss": test.map(|t| t.0), "test_accuracy": test.map(|t| t.1),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        print_json(&serde_json::json!({ "model": a.model, "data": a.data, "normalization": normalization, "input_scale": input_scale, "checkpoints": rows }));
    } else {
        for r in &rows {
            let pct = |v: &serde_json::Value| v.as_f64().map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "n/a".into());
            println!("{}: train accuracy {} (loss {:.4}), test accuracy {}", r["checkpoint"].as_str().unwrap_or(""), pct(&r["train_accuracy"]), r["train_loss"].as_f64().unwrap_or(f64::NAN), pct(&r["test_accuracy"]));
        }
    }
    Ok(())
}

fn curvature_cmd(a: CurvatureArgs) -> Result<()> {
    use rote::curvature::{self, Estimator, ScoreConfig, Statistic};
    use rote::nn::network::Network;
    use rote::nn::train;
    // A run's own description and data, or a series trained elsewhere on --data.
    let (cfg, ds, source_name) = match (&a.run, &a.weights) {
        (Some(run), _) => {
            let cfg = train::open_run(run)?;
            let ds = match &a.data {
                Some(spec) => spec.open()?,
                None => data::open(&cfg.data)?,
            };
            (cfg, ds, run.display().to_string())
        }
        (None, Some(weights)) => {
            let spec = a.data.as_ref().unwrap();
            let ds = spec.open()?;
            let cfg = rote::nn::runs::series_config(&spec.lossy(), a.model.as_deref().unwrap(), &ds, a.normalize.as_deref().unwrap_or("none"))?;
            (cfg, ds, weights.clone())
        }
        _ => unreachable!("clap requires --run or --weights"),
    };
    let estimator = a.estimator.unwrap_or(if a.statistic == Statistic::ReleasedCode { Estimator::Fd } else { Estimator::Exact });
    let score_cfg = ScoreConfig { estimator, statistic: a.statistic, probes: a.probes, h: a.h, seed: a.seed };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Err(why) = a.run.as_deref().map_or(Ok(()), |run| train::check_complete(run, &cfg)) {
        if !a.allow_incomplete {
            return Err(why.context("pass --allow-incomplete to score the checkpoints it has"));
        }
        eprintln!("warning: {why:#}; scoring the checkpoints it has (--allow-incomplete)");
    }
    let mut net = Network::build(&cfg.model, ds.sample_shape(), 0).with_context(|| format!("the run's model '{}' on its data", cfg.model))?;
    let activation = curvature::check_network(&net, &score_cfg).with_context(|| format!("model '{}'", cfg.model))?;
    // The samples scored: a run's (its labels, the dataset rows, which were corrupted),
    // or the data's own for a series trained elsewhere.
    let mut scored = match (&a.run, &a.weights) {
        (Some(run), _) => rote::nn::runs::Scored::of_run(run, &ds)?,
        (None, Some(weights)) => rote::nn::runs::Scored::of_series(weights, &ds, &cfg.model, &net)?,
        _ => unreachable!(),
    };
    scored.select(a.checkpoints.as_deref(), a.every)?;
    let rote::nn::runs::Scored { labels, sources, corrupted, checkpoints: ckpts } = scored;
    if ckpts.is_empty() {
        bail!("no checkpoints selected in {source_name}");
    }
    // Every selected checkpoint is read and checked (tensor names, shapes, finite
    // values) before any scoring or output.
    for ck in &ckpts {
        net.load_weights(ck)?;
    }
    let backend = open_device(a.device.device)?;
    let on_gpu = matches!(backend, Backend::Cuda(_)) && curvature::runs_on_gpu(&score_cfg) && matches!(net, Network::Mlp(_));
    if matches!(backend, Backend::Cuda(_)) && !on_gpu {
        eprintln!("note: the finite-difference estimator, the released-code statistic and convolutional networks run on the CPU");
    }
    let backend = if on_gpu { backend } else { Backend::Cpu };
    let estimator_used = score_cfg.describe(activation);
    eprintln!("estimator: {estimator_used}");
    let range = a.shard.range(labels.len());
    let bar = sched::progress((ckpts.len() * range.len()) as u64, "curvature", !a.json);
    let t0 = Instant::now();
    let mut mean_score = vec![0f64; range.len()];
    let mut mean_trace = vec![0f64; range.len()];
    let mut mean_gn: Option<Vec<f64>> = None;
    report::create_out_dir(&a.out)?;
    for ck in &ckpts {
        net.load_weights(ck)?;
        let s = curvature::score_checkpoint(&backend, &net, &cfg, &ds.train.x, ds.sample_shape(), (&sources, &labels), range.clone(), a.batch, &score_cfg, &|k| bar.inc(k))
            .with_context(|| ck.display().to_string())?;
        let (score, trace, gn) = (s.score, s.trace, s.gauss_newton.unwrap_or_default());
        let stem = ck.file_stem().unwrap().to_string_lossy().to_string();
        report::write_npy(&a.out.join(format!("score-{stem}.npy")), &[score.len()], &score)?;
        report::write_npy(&a.out.join(format!("trace-{stem}.npy")), &[trace.len()], &trace)?;
        for (m, v) in mean_score.iter_mut().zip(&score) {
            *m += *v as f64 / ckpts.len() as f64;
        }
        for (m, v) in mean_trace.iter_mut().zip(&trace) {
            *m += *v as f64 / ckpts.len() as f64;
        }
        if !gn.is_empty() {
            let acc = mean_gn.get_or_insert_with(|| vec![0f64; range.len()]);
            for (m, v) in acc.iter_mut().zip(&gn) {
                *m += *v as f64 / ckpts.len() as f64;
            }
        }
    }
    bar.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let score: Vec<f32> = mean_score.iter().map(|&v| v as f32).collect();
    let trace: Vec<f32> = mean_trace.iter().map(|&v| v as f32).collect();
    let mut outputs = vec![("score.npy", score.clone()), ("trace.npy", trace)];
    if let Some(g) = &mean_gn {
        outputs.push(("gauss_newton.npy", g.iter().map(|&v| v as f32).collect()));
    }
    for (name, values) in &outputs {
        write_shard_output(&a.out.join(name), values, a.shard, labels.len(), &format!("{source_name} {name}"))?;
    }
    let positives = &corrupted[range.clone()];
    let n_pos = positives.iter().filter(|&&p| p).count();
    let auroc = curvature::auroc(&score, positives);
    let precision = (n_pos > 0).then(|| curvature::precision_at_k(&score, positives, n_pos));
    if let Some(g) = &a.gallery {
        let shape = ds.sample_shape().to_vec();
        let rows: Vec<u32> = sources[range.clone()].to_vec();
        rote::curvature::gallery::draw(&ds.train.x, &rows, &labels[range.clone()], &score, &shape, "curvature", g)?;
    }
    let value = serde_json::json!({
        "samples": range.len(), "checkpoints": ckpts.len(), "probes": if estimator_used.starts_with("exact") { 0 } else { a.probes },
        "estimator": estimator_used, "statistic": a.statistic, "seconds": seconds, "device": backend.device(),
        "auroc": auroc, "precision_at_k": precision, "corrupted": n_pos, "out": a.out,
    });
    if a.json {
        print_json(&value);
    } else {
        println!(
            "scored {} samples × {} checkpoints in {seconds:.2} s on {} ({estimator_used}) → {}",
            range.len(),
            ckpts.len(),
            backend.device(),
            a.out.display()
        );
        if let (Some(au), Some(p)) = (auroc, precision) {
            println!("corrupted samples: {n_pos}; AUROC of the averaged score {au:.4}; precision among the top {n_pos}: {p:.4}");
        }
    }
    Ok(())
}

/// Parses a `--data` spec from the raw argument, so dataset paths that are not UTF-8
/// are accepted.
fn data_spec() -> impl clap::builder::TypedValueParser<Value = data::DataSpec> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(data::DataSpec::from)
}
