//! `rote knn classify`: retrieval-augmented prediction over a store of embeddings.

use super::{open_device, print_json, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::Args;
use rote::data::Array;
use rote::diffusion::knn::Metric;
use rote::memory::retrieval::{self, Combine};
use rote::report;
use std::path::PathBuf;

#[derive(Args)]
pub struct ClassifyArgs {
    /// Keys: the store's embeddings, float (N, d).
    #[arg(long)]
    store: PathBuf,
    /// The store's labels, integers (N,).
    #[arg(long)]
    labels: PathBuf,
    /// Query embeddings, float (Q, d).
    #[arg(long)]
    queries: PathBuf,
    /// The model's probabilities for the queries, (Q, C); without them the prediction is
    /// p_knn alone.
    #[arg(long)]
    probs: Option<PathBuf>,
    /// The queries' true labels (Q,): report accuracies.
    #[arg(long)]
    query_labels: Option<PathBuf>,
    #[arg(short, long, default_value_t = 16)]
    k: usize,
    /// Weight of the retrieved distribution.
    #[arg(long, default_value_t = 0.2)]
    lambda: f64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, value_enum, default_value = "ip")]
    metric: Metric,
    #[arg(long, value_enum, default_value = "standard")]
    combine: Combine,
    /// Output directory: p_knn.npy and combined.npy (float64, Q×C), predictions.npy.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

fn floats(path: &PathBuf, what: &str) -> Result<(Array, usize, usize)> {
    let a = Array::open_npy(path)?;
    if a.dtype.is_integer() || a.shape.len() != 2 {
        bail!("{}: {what} must be a float (rows, columns) array, got {} {:?}", path.display(), a.dtype.name(), a.shape);
    }
    if let Some((i, v)) = a.first_non_finite() {
        bail!("{}: {what} value {i} is {v}", path.display());
    }
    let (r, c) = (a.shape[0], a.shape[1]);
    Ok((a, r, c))
}

pub fn classify_cmd(a: ClassifyArgs) -> Result<()> {
    let (keys, n, d) = floats(&a.store, "the store's keys")?;
    let labels = Array::open_npy(&a.labels)?.to_i64().with_context(|| format!("{}: the store's labels", a.labels.display()))?;
    if labels.len() != n {
        bail!("{} has {} labels for the {n} keys of {}", a.labels.display(), labels.len(), a.store.display());
    }
    let (queries, q, qd) = floats(&a.queries, "the queries")?;
    if qd != d {
        bail!("{}: queries have {qd} dimensions, the store's keys {d}", a.queries.display());
    }
    let probs = a.probs.as_ref().map(|p| floats(p, "the model's probabilities")).transpose()?;
    let classes = match &probs {
        Some((_, r, c)) if *r != q => bail!("{}: {r} rows of probabilities for {q} queries", a.probs.as_ref().unwrap().display()),
        Some((_, _, c)) => *c,
        None => labels.iter().copied().max().unwrap_or(0).max(0) as usize + 1,
    };
    let truth = a.query_labels.as_ref().map(|p| Array::open_npy(p).and_then(|l| l.to_i64())).transpose()?;
    if let Some(t) = &truth {
        if t.len() != q {
            bail!("{}: {} labels for {q} queries", a.query_labels.as_ref().unwrap().display(), t.len());
        }
    }
    rote::diffusion::knn::check_k(a.k, n)?;
    let backend = open_device(a.device.device)?;
    let t0 = std::time::Instant::now();
    // float64 probabilities are used as they are (not rounded through float32).
    let p_model: Option<Vec<f64>> = probs.as_ref().map(|(p, _, _)| p.to_f64());
    let settings = retrieval::Settings { k: a.k, metric: a.metric, temperature: a.temperature, lambda: a.lambda, combine: a.combine };
    let (p_knn, combined) = retrieval::classify(&backend, &keys, &labels, &queries.to_f32(), p_model.as_deref(), classes, &settings)?;
    let seconds = t0.elapsed().as_secs_f64();
    let predicted = retrieval::predictions(&combined, classes);
    report::create_out_dir(&a.out)?;
    report::write_npy(&a.out.join("p_knn.npy"), &[q, classes], &p_knn)?;
    report::write_npy(&a.out.join("combined.npy"), &[q, classes], &combined)?;
    report::write_npy(&a.out.join("predictions.npy"), &[q], &predicted.iter().map(|&c| c as i64).collect::<Vec<_>>())?;
    let accuracy = |p: &[f64]| truth.as_ref().map(|t| retrieval::predictions(p, classes).iter().zip(t).filter(|(a, b)| **a as i64 == **b).count() as f64 / q as f64);
    let value = serde_json::json!({
        "queries": q, "store": n, "classes": classes, "k": a.k, "lambda": a.lambda, "temperature": a.temperature,
        "metric": a.metric, "combine": a.combine, "seconds": seconds, "device": backend.device().to_string(),
        "accuracy": accuracy(&combined), "accuracy_model": p_model.as_deref().and_then(accuracy), "accuracy_knn": accuracy(&p_knn), "out": a.out,
    });
    if a.json {
        print_json(&value);
    } else {
        println!("{q} queries against {n} stored keys (k = {}, λ = {}) in {seconds:.3} s → {}", a.k, a.lambda, a.out.display());
        if let Some(acc) = value["accuracy"].as_f64() {
            println!(
                "accuracy {:.4} (model alone {}, retrieval alone {:.4})",
                acc,
                value["accuracy_model"].as_f64().map_or("n/a".into(), |v| format!("{v:.4}")),
                value["accuracy_knn"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum LssvmCommand {
    /// Fit a least-squares SVM (binary, or one-vs-rest) on a dataset's training split.
    Fit(LssvmFitArgs),
    /// Accuracy and predictions of a fitted LSSVM on a dataset.
    Predict(LssvmPredictArgs),
}

/// `--memory`'s value; an alias so that clap takes `none` as a value, not an absent flag.
type MemoryChoice = Option<rote::memory::lssvm::MemoryModel>;

#[derive(Args)]
pub struct LssvmFitArgs {
    #[arg(value_parser = crate::data_spec(), long)]
    data: rote::data::DataSpec,
    /// rbf:sigma=S (exp(−‖x − z‖²/σ²)), linear, or poly:degree=D ((x·z + 1)^D).
    #[arg(long, default_value = "rbf:sigma=1")]
    kernel: rote::memory::lssvm::Kernel,
    /// Regularization γ (the weight of the squared errors).
    #[arg(long, default_value_t = 10.0)]
    gamma: f64,
    /// The memory (rote's least-squares generalization–memorization machines, README):
    /// none (plain LSSVM), mimm (the nearest training point's memory: maximum impact) or
    /// wimm (every training point's, weighted by the influence function).
    #[arg(long, default_value = "none", value_parser = |s: &str| rote::memory::lssvm::MemoryModel::parse_choice(s))]
    memory: MemoryChoice,
    /// The memory influence function δ: identity, gauss:sigma=S (exp(−‖x − z‖²/S²)) or
    /// radius:r=R (1 within distance R).
    #[arg(long, default_value = "identity")]
    memory_fn: rote::memory::lssvm::MemoryFn,
    /// The memory's weight μ.
    #[arg(long, default_value_t = 1.0)]
    memory_weight: f64,
    /// auto (direct when the n × n float64 kernel matrix fits in half the available
    /// memory, else cg), direct (one Cholesky factorization: exact, n² memory) or cg
    /// (preconditioned conjugate gradients on kernel products computed on the fly:
    /// O(n·d) memory).
    #[arg(long, default_value = "auto")]
    solver: rote::memory::lssvm::Solver,
    /// CG: stop when every right-hand side's residual is below this fraction of its norm.
    #[arg(long, default_value_t = 1e-6)]
    tol: f64,
    /// CG: the most iterations.
    #[arg(long, default_value_t = 1000)]
    max_iter: usize,
    /// CG: pivots of the partial-Cholesky preconditioner (0: none).
    #[arg(long, default_value_t = 200)]
    preconditioner_rank: usize,
    /// Hold out this fraction of the training split (a Philox-seeded draw) for the test
    /// accuracy, instead of the data's test split.
    #[arg(long)]
    holdout: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Choose the kernel width and γ by k-fold cross-validation on the fitted samples
    /// (over --grid-sigma for rbf, and --grid-gamma), then fit on them all with the best.
    #[arg(long)]
    cv: Option<usize>,
    /// RBF widths σ to try with --cv (comma-separated; default: --kernel's alone).
    #[arg(long, requires = "cv")]
    grid_sigma: Option<String>,
    /// γ values to try with --cv (comma-separated; default: --gamma alone).
    #[arg(long, requires = "cv")]
    grid_gamma: Option<String>,
    /// Memory weights μ to try with --cv (comma-separated; default: --memory-weight alone).
    #[arg(long, requires = "cv")]
    grid_memory_weight: Option<String>,
    /// Memory-function widths to try with --cv: σ of gauss, r of radius
    /// (comma-separated; default: --memory-fn's alone).
    #[arg(long, requires = "cv")]
    grid_memory_width: Option<String>,
    /// Model directory (lssvm.json, x.npy, coef.npy, bias.npy).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LssvmPredictArgs {
    #[arg(long)]
    model: PathBuf,
    /// Data to predict (default: the data the model was fitted on).
    #[arg(value_parser = crate::data_spec(), long)]
    data: Option<rote::data::DataSpec>,
    /// Which split: test (default when there is one) or train.
    #[arg(long)]
    split: Option<String>,
    /// Write the predicted labels (int64) here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn lssvm_cmd(cmd: LssvmCommand) -> Result<()> {
    use rote::memory::lssvm::{accuracy, best_cell, holdout_split, scaled_rows, Lssvm};
    match cmd {
        LssvmCommand::Fit(a) => {
            let ds = a.data.open()?;
            let scale = rote::nn::train::input_scale_for(&ds) as f64;
            let n = ds.train.len();
            let (fit_rows, held) = match a.holdout {
                Some(h) => holdout_split(n, h, a.seed)?,
                None => ((0..n).collect(), vec![]),
            };
            let d = ds.train.features();
            let x = scaled_rows(&ds.train.x, &fit_rows, scale);
            let y: Vec<i64> = fit_rows.iter().map(|&i| ds.train.y[i]).collect();
            let mut memory = a.memory.map(|model| rote::memory::lssvm::Memory { model, function: a.memory_fn, weight: a.memory_weight });
            if memory.is_none() && (a.memory_fn != rote::memory::lssvm::MemoryFn::Identity || a.memory_weight != 1.0) {
                bail!("--memory-fn and --memory-weight need --memory mimm or wimm");
            }
            let solver = a.solver.with_cg(rote::memory::lssvm::CgOptions { tolerance: a.tol, max_iterations: a.max_iter, preconditioner_rank: a.preconditioner_rank, progress: !a.json });
            let list = |flag: &str, text: &Option<String>, default: f64| -> Result<Vec<f64>> {
                match text {
                    None => Ok(vec![default]),
                    Some(t) => t.split(',').map(|v| v.trim().parse::<f64>().with_context(|| format!("{flag} {t}: '{v}' is not a number"))).collect(),
                }
            };
            let (mut kernel, mut gamma) = (a.kernel, a.gamma);
            let mut grid = None;
            if let Some(folds) = a.cv {
                let sigmas = a.grid_sigma.as_ref().map(|_| list("--grid-sigma", &a.grid_sigma, 0.0)).transpose()?;
                let kernels = rote::memory::lssvm::kernel_grid(a.kernel, sigmas.as_deref()).context("--grid-sigma")?;
                let weights = a.grid_memory_weight.as_ref().map(|_| list("--grid-memory-weight", &a.grid_memory_weight, 0.0)).transpose()?;
                let widths = a.grid_memory_width.as_ref().map(|_| list("--grid-memory-width", &a.grid_memory_width, 0.0)).transpose()?;
                let memories = rote::memory::lssvm::memory_grid(memory, weights.as_deref(), widths.as_deref()).context("--grid-memory-weight / --grid-memory-width")?;
                let cells = rote::memory::lssvm::cross_validate(&x, d, &y, &kernels, &list("--grid-gamma", &a.grid_gamma, a.gamma)?, &memories, folds, a.seed)?;
                let best = best_cell(&cells);
                (kernel, gamma, memory) = (best.kernel, best.gamma, best.memory);
                grid = Some(cells);
            }
            let t0 = std::time::Instant::now();
            let (model, solved) = Lssvm::fit_with(&x, d, &y, kernel, gamma, memory, solver)?;
            if let Some(cg) = solved.cg.as_ref().filter(|c| !c.converged) {
                eprintln!("warning: conjugate gradients stopped after {} iterations at relative residual {:.2e} (> --tol {}); raise --max-iter or --preconditioner-rank", cg.iterations, cg.relative_residual, a.tol);
            }
            let fit_seconds = t0.elapsed().as_secs_f64();
            let train_accuracy = accuracy(&model.predict(&x), &y);
            let test = if !held.is_empty() {
                Some((accuracy(&model.predict(&scaled_rows(&ds.train.x, &held, scale)), &held.iter().map(|&i| ds.train.y[i]).collect::<Vec<_>>()), held.len()))
            } else {
                ds.test.as_ref().map(|t| {
                    (accuracy(&model.predict(&scaled_rows(&t.x, &(0..t.len()).collect::<Vec<_>>(), scale)), &t.y), t.len())
                })
            };
            model.save(&a.out, a.data.text()?, scale)?;
            let value = serde_json::json!({
                "model": a.out, "samples": fit_rows.len(), "classes": model.classes.len(), "machines": model.machines(), "kernel": kernel, "gamma": gamma, "memory": model.memory, "cv": grid,
                "fit_seconds": fit_seconds, "train_accuracy": train_accuracy, "test_accuracy": test.map(|t| t.0), "test_samples": test.map(|t| t.1),
                "solver": solved,
            });
            if a.json {
                print_json(&value);
            } else {
                if let Some(cells) = value["cv"].as_array() {
                    println!("{}-fold cross-validation:", a.cv.unwrap_or(0));
                    for c in cells {
                        let mem = if c["memory"].is_null() { String::new() } else { format!(" memory {}", c["memory"]) };
                        println!("  kernel {} γ {}{mem}: accuracy {:.4}", c["kernel"], c["gamma"], c["accuracy"].as_f64().unwrap_or(f64::NAN));
                    }
                    println!("chose kernel {kernel:?}, γ {gamma}{}", memory.map_or(String::new(), |m| format!(", memory {m:?}")));
                }
                match &solved.cg {
                    None => println!("solver: direct (one Cholesky factorization shared by every class; {})", solved.why),
                    Some(cg) => println!("solver: cg ({}): {} iterations, relative residual {:.2e}, preconditioner rank {}", solved.why, cg.iterations, cg.relative_residual, cg.preconditioner_rank),
                }
                println!(
                    "fitted an LSSVM on {} samples ({} classes) in {fit_seconds:.2} s: train accuracy {train_accuracy:.4}, test accuracy {} → {}",
                    fit_rows.len(),
                    model.classes.len(),
                    test.map_or("n/a".into(), |t| format!("{:.4} ({} samples)", t.0, t.1)),
                    a.out.display()
                );
            }
            Ok(())
        }
        LssvmCommand::Predict(a) => {
            let (model, data, scale) = Lssvm::load(&a.model)?;
            let ds = match &a.data {
                Some(spec) => spec.open()?,
                None => rote::data::open(&data)?,
            };
            let split = match a.split.as_deref() {
                Some("train") => &ds.train,
                Some("test") | None if ds.test.is_some() => ds.test.as_ref().unwrap(),
                None => &ds.train,
                Some(other) => bail!("--split {other}: give test or train (and the data must have a test split for test)"),
            };
            if split.features() != model.dim {
                bail!("the data has {} features per sample; the model was fitted on {}", split.features(), model.dim);
            }
            let rows: Vec<usize> = (0..split.len()).collect();
            let t0 = std::time::Instant::now();
            let predicted = model.predict(&scaled_rows(&split.x, &rows, scale));
            let seconds = t0.elapsed().as_secs_f64();
            if let Some(out) = &a.out {
                report::write_npy(out, &[predicted.len()], &predicted)?;
            }
            let acc = accuracy(&predicted, &split.y);
            if a.json {
                print_json(&serde_json::json!({ "samples": predicted.len(), "accuracy": acc, "seconds": seconds, "out": a.out }));
            } else {
                println!("accuracy {acc:.4} on {} samples ({seconds:.2} s)", predicted.len());
            }
            Ok(())
        }
    }
}
