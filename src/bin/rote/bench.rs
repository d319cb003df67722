//! `rote bench`: parse the workload and its baseline, call rote::bench, print the table.

use super::{parse_shape, print_json};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use rote::device::{Backend, DeviceRequest};
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Python for the baselines (numpy, JAX, faiss-cpu: see scripts/bench.sh); "none"
    /// skips them.
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
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

pub fn bench_cmd(b: BenchArgs) -> Result<()> {
    match b.command {
        Some(c) => bench_one(c),
        None => bench_all(&b.python, b.device, b.json),
    }
}

pub fn bench_one(c: BenchCommand) -> Result<()> {
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
pub fn bench_all(python: &str, device: DeviceRequest, json: bool) -> Result<()> {
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

/// The bench backends, without the CPU when `skip_cpu` and a GPU is there.
pub fn bench_backends_maybe_gpu_only(device: DeviceRequest, skip_cpu: bool) -> Result<Vec<Backend>> {
    let mut backends = bench_backends(device)?;
    if skip_cpu && backends.len() > 1 {
        backends.remove(0);
    }
    Ok(backends)
}

pub fn print_rows(rows: &[rote::bench::BenchRow], json: bool) -> Result<()> {
    if json {
        print_json(&serde_json::to_value(rows)?);
    } else {
        rote::bench::print_table(rows);
    }
    Ok(())
}

/// The baseline's Python interpreter; "none" skips the baseline.
pub fn baseline_python(python: &str) -> Option<&str> {
    (python != "none").then_some(python)
}

/// The CPU, plus the GPU `device` names when it resolves to one.
pub fn bench_backends(device: DeviceRequest) -> Result<Vec<Backend>> {
    let mut backends = vec![Backend::Cpu];
    if device != DeviceRequest::Cpu {
        let d = device.resolve()?;
        if d != rote::device::Device::Cpu {
            backends.push(Backend::open(d)?);
        }
    }
    Ok(backends)
}

pub fn construct_case(name: &str) -> Result<rote::bench::ConstructCase> {
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

