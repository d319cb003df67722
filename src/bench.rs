//! `rote bench`: the same workload on every available device in one run, reported as
//! medians of repeated timings, side by side with ratios against the CPU.

use crate::device::Backend;
use crate::rng::{Distribution, Philox};
use anyhow::{Context, Result};
use std::time::Instant;

#[derive(Debug, serde::Serialize)]
pub struct BenchRow {
    pub workload: String,
    pub device: String,
    pub median_seconds: f64,
    pub min_seconds: f64,
    pub repeats: usize,
    /// The first row's median / this median: the speed-up over the baseline (the CPU
    /// for kernels, numpy for the construction).
    pub speedup: f64,
    /// Work units per second (numbers or rows, named in `workload`).
    pub throughput: f64,
    /// Achieved arithmetic rate, where the workload's FLOPs are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// Agreement with the baseline, or other remarks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl BenchRow {
    /// A row timed at (median, min) over `repeats` runs; the speed-up is against
    /// `baseline` seconds (this row's own median when there is none).
    #[allow(clippy::too_many_arguments)]
    pub fn timed(workload: &str, device: &str, (median, min): (f64, f64), repeats: usize, baseline: Option<f64>, units: f64, flops: Option<f64>, note: Option<String>) -> Self {
        Self {
            workload: workload.to_string(),
            device: device.to_string(),
            median_seconds: median,
            min_seconds: min,
            repeats,
            speedup: baseline.unwrap_or(median) / median,
            throughput: units / median,
            gflops: flops.map(|f| f / median / 1e9),
            note,
        }
    }
}

/// Median and minimum of `repeats` timed runs, after one untimed warm-up.
pub fn time_runs(repeats: usize, mut run: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    run()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        run()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((times[times.len() / 2], times[0]))
}

/// Runs one workload on each backend; the first backend must be the CPU.
pub fn compare(
    workload: &str,
    units: f64,
    backends: &[Backend],
    repeats: usize,
    run: &dyn Fn(&Backend) -> Result<()>,
) -> Result<Vec<BenchRow>> {
    let mut rows: Vec<BenchRow> = Vec::new();
    for b in backends {
        let (median, min) = time_runs(repeats, || run(b))?;
        let cpu = rows.first().map(|r| r.median_seconds).unwrap_or(median);
        rows.push(BenchRow::timed(workload, &b.device().to_string(), (median, min), repeats, Some(cpu), units, None, None));
    }
    Ok(rows)
}

/// The frame's workloads: Philox normals and streamed row norms.
pub fn frame(backends: &[Backend], scale: usize, repeats: usize) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let count = (1usize << 24) * scale;
    let mut buf = vec![0f32; count];
    let cell = std::sync::Mutex::new(&mut buf);
    rows.extend(compare(&format!("philox normals ({count} numbers)"), count as f64, backends, repeats, &|b| {
        b.fill_random(Distribution::Normal, Philox::new(1, 2), 0, &mut cell.lock().unwrap())
    })?);
    let n = 60_000 * scale;
    let ds = crate::data::open(&format!("blobs:n={n},dim=784,centers=10,seed=3"))?;
    let x = &ds.train.x;
    rows.extend(compare(&format!("row norms f32 ({n}×784 rows)"), n as f64, backends, repeats, &|b| {
        b.row_sq_norms(x, 0..n, &|_| {}).map(|_| ())
    })?);
    let bytes: Vec<u8> = (0..n * 784).map(|i| (i * 31 % 256) as u8).collect();
    let xu8 = crate::data::Array::from_u8(vec![n, 784], &bytes, "bench u8");
    rows.extend(compare(&format!("row norms u8 ({n}×784 rows)"), n as f64, backends, repeats, &|b| {
        b.row_sq_norms(&xu8, 0..n, &|_| {}).map(|_| ())
    })?);
    Ok(rows)
}

pub fn print_table(rows: &[BenchRow]) {
    println!("{:<44} {:<8} {:>12} {:>12} {:>10} {:>14} {:>9}", "workload", "device", "median s", "min s", "speed-up", "units/s", "GFLOP/s");
    for r in rows {
        println!(
            "{:<44} {:<8} {:>12.6} {:>12.6} {:>9.1}× {:>14.3e} {:>9} {}",
            r.workload,
            r.device,
            r.median_seconds,
            r.min_seconds,
            r.speedup,
            r.throughput,
            r.gflops.map(|g| format!("{g:.1}")).unwrap_or_default(),
            r.note.as_deref().unwrap_or("")
        );
    }
}

/// One construction workload: the numpy baseline (scripts/baselines/construct_numpy.py,
/// run by `python`, on the same data written as a dataset directory) and rote on each
/// backend, timed on the fit alone.
pub struct ConstructCase {
    pub name: String,
    pub spec: String,
    pub width: usize,
    pub max_bias: f32,
    pub one_vs_rest: bool,
    /// numpy in float32 (float64 matrices do not fit in memory for N = 10⁶).
    pub numpy_float32: bool,
}

/// Total time the repeats of a short workload (and of its baseline) should span.
const SHORT_WORKLOAD_SECONDS: f64 = 0.25;
/// At most this many repeats of a short workload.
const MAX_SHORT_REPEATS: usize = 20_000;

pub fn construct(cases: &[ConstructCase], backends: &[Backend], repeats: usize, python: Option<&str>, baseline_repeats: usize) -> Result<Vec<BenchRow>> {
    use crate::construct::{fit, Activation, FitConfig, Target};
    let mut rows = Vec::new();
    for case in cases {
        let ds = crate::data::open(&case.spec)?;
        let target = if case.one_vs_rest { Target::OneVsRest } else { Target::Binary { positive: None } };
        let cfg = FitConfig { width: case.width, max_bias: case.max_bias, activation: Activation::Threshold, seed: 0, target, scale_to_unit_norm: true };
        let workload = format!("construct {} (N={}, n={})", case.name, ds.train.len(), case.width);
        let mut first: Option<f64> = None;
        if let Some(py) = python {
            let dir = tempfile::tempdir()?;
            let data_dir = dir.path().join("data");
            let mut plain = ds.clone();
            plain.test = None;
            plain.write_dir(&data_dir)?;
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/baselines/construct_numpy.py");
            let mut cmd = std::process::Command::new(py);
            cmd.arg(script).arg("--data").arg(&data_dir).args(["--width", &case.width.to_string(), "--max-bias", &case.max_bias.to_string()]);
            cmd.args(["--repeats", &baseline_repeats.to_string(), "--min-seconds", &SHORT_WORKLOAD_SECONDS.to_string()]);
            if case.one_vs_rest {
                cmd.arg("--one-vs-rest");
            }
            if case.numpy_float32 {
                cmd.arg("--float32");
            }
            let out = cmd.output()?;
            if !out.status.success() {
                anyhow::bail!("the numpy baseline failed:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let times: Vec<f64> = v["fit_seconds"].as_array().unwrap().iter().filter_map(|t| t.as_f64()).collect();
            let median = v["fit_seconds_median"].as_f64().unwrap();
            first = Some(median);
            let device = if case.numpy_float32 { "numpy32" } else { "numpy" };
            let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
            rows.push(BenchRow::timed(&workload, device, (median, min), times.len(), None, 1.0, None, None));
        }
        for b in backends {
            // Timed on the fit alone (`fit_seconds`), after an untimed warm-up. A fit of
            // tens of microseconds repeats until the timed fits span
            // SHORT_WORKLOAD_SECONDS, so that its median is not a handful of samples.
            let fit_seconds = || -> Result<f64> { Ok(fit(&ds, &cfg, b)?.1.fit_seconds) };
            let warm_up = fit_seconds()?;
            let repeats = repeats.max(((SHORT_WORKLOAD_SECONDS / warm_up.max(1e-9)) as usize).min(MAX_SHORT_REPEATS));
            let mut fits = (0..repeats).map(|_| fit_seconds()).collect::<Result<Vec<f64>>>()?;
            fits.sort_by(|a, c| a.partial_cmp(c).unwrap());
            let median = fits[fits.len() / 2];
            let base = *first.get_or_insert(median);
            rows.push(BenchRow::timed(&workload, &b.device().to_string(), (median, fits[0]), repeats, Some(base), 1.0, None, None));
        }
    }
    Ok(rows)
}

/// Per-sample curvature scores: rote's estimators against the JAX baseline
/// (scripts/baselines/curvature_jax.py, jit(vmap(jvp(grad)))) on the same weights,
/// inputs and probes. The baseline's scores must agree with rote's Hutchinson scores.
pub fn curvature(model: &str, batch: usize, probes: usize, which: &[crate::curvature::Estimator], repeats: usize, python: Option<&str>, gpu: Option<&Backend>) -> Result<Vec<BenchRow>> {
    use crate::curvature::{self as curv, Estimator, ScoreConfig, Statistic};
    use crate::nn::mlp::{parse_spec, Mlp};
    let workload = format!("curvature {model} B={batch} P={probes}");
    let (sizes, act) = parse_spec(model)?;
    let m = Mlp::init(&sizes, act, 0);
    let (d, c) = (m.input_dim(), m.classes());
    let mut x = vec![0f32; batch * d];
    Philox::new(7, 1).fill_uniform(0, &mut x);
    let y: Vec<i64> = (0..batch).map(|i| (Philox::new(7, 2).word(i as u64) % c as u32) as i64).collect();
    let macs = m.macs_per_sample() as f64;
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, Vec<f32>)> = None;
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        for l in 0..m.layers() {
            crate::report::write_npy(&dir.path().join(format!("w{l}.npy")), &[sizes[l + 1], sizes[l]], &m.weights[l])?;
            crate::report::write_npy(&dir.path().join(format!("b{l}.npy")), &[sizes[l + 1]], &m.biases[l])?;
        }
        crate::report::write_npy(&dir.path().join("x.npy"), &[batch, d], &x)?;
        crate::report::write_npy(&dir.path().join("y.npy"), &[batch], &y)?;
        let mut v = vec![0f32; batch * probes * d];
        for s in 0..batch {
            for j in 0..probes {
                curv::probe(0, s as u64, j, d, &mut v[(s * probes + j) * d..(s * probes + j + 1) * d]);
            }
        }
        crate::report::write_npy(&dir.path().join("probes.npy"), &[batch, probes, d], &v)?;
        let meta = serde_json::json!({"activation": serde_json::to_value(act)?, "layers": m.layers()});
        crate::report::write_json(&dir.path().join("meta.json"), &meta)?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/baselines/curvature_jax.py");
        let out = std::process::Command::new(py).arg(script).arg("--dir").arg(dir.path()).args(["--repeats", &repeats.to_string()]).output()?;
        if !out.status.success() {
            anyhow::bail!("the JAX baseline failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let median = v["median_seconds"].as_f64().unwrap();
        let times: Vec<f64> = v["seconds"].as_array().unwrap().iter().filter_map(|t| t.as_f64()).collect();
        let scores = crate::data::Array::open_npy(&dir.path().join("scores.npy"))?.to_f32();
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        // vmap over the probes shares the primal forward and backward between them, so
        // JAX runs 2 + 2P passes, as rote's forward-over-reverse does.
        let flops = 2.0 * macs * (2 + 2 * probes) as f64 * batch as f64;
        let note = format!("hutchinson, jax {}", v["jax"].as_str().unwrap_or("?"));
        rows.push(BenchRow::timed(&workload, "jax-cpu", (median, min), times.len(), None, batch as f64, Some(flops), Some(note)));
        baseline = Some((median, scores));
    }
    let exact = if act.piecewise_linear() { "exact probe-free JᵀAJ" } else { "hutchinson + exact Gauss–Newton part" };
    let estimators = [(Estimator::Hutchinson, "hutchinson (exact HVP)"), (Estimator::Fd, "finite differences"), (Estimator::Exact, exact)];
    let estimators: Vec<_> = estimators.into_iter().filter(|(e, _)| which.contains(e)).collect();
    let mut runs: Vec<(Estimator, &str, Backend)> = estimators.iter().map(|&(e, n)| (e, n, Backend::Cpu)).collect();
    if let Some(g) = gpu {
        runs.extend(estimators.iter().filter(|(e, _)| *e != Estimator::Fd).map(|&(e, n)| (e, n, g.clone())));
    }
    let cpu_scores: std::cell::RefCell<Vec<(Estimator, Vec<f32>)>> = Default::default();
    // The cuBLAS floor: the same products alone.
    let mut gemm_floor = None;
    if let (Some(Backend::Cuda(g)), true) = (gpu, act.piecewise_linear()) {
        let (median, min) = time_runs(repeats, || g.curvature_gemms_only(&m, batch))?;
        gemm_floor = Some(median);
        let flops = 2.0 * macs * (1 + c) as f64 * batch as f64;
        let note = "the GPU path's products alone (forward + C-row backward)".to_string();
        rows.push(BenchRow::timed(&workload, "cublas", (median, min), repeats, baseline.as_ref().map(|b| b.0), batch as f64, Some(flops), Some(note)));
    }
    for (est, name, backend) in runs {
        let cfg = ScoreConfig { estimator: est, statistic: Statistic::Paper, probes, h: 1e-3, seed: 0 };
        let cell = std::sync::Mutex::new(Vec::new());
        let (median, min) = time_runs(repeats, || {
            *cell.lock().unwrap() = curv::scores_on(&backend, &m, &x, &y, 0, &cfg)?.score;
            Ok(())
        })?;
        let scores = cell.into_inner().unwrap();
        let max_rel = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) / y.abs().max(1e-20)).abs() as f64).fold(0.0, f64::max);
        // Passes of the network per sample: forward-over-reverse 2 primal + 2P tangent,
        // finite differences 2 + 2P.
        // (Piecewise-linear networks take the logit Jacobians, one forward pass and C
        // backward rows, for the exact and the Hutchinson estimator alike.)
        let passes = match est {
            Estimator::Exact | Estimator::Hutchinson if act.piecewise_linear() => 1 + c,
            Estimator::Exact => 2 + 2 * probes + 1 + c,
            _ => 2 + 2 * probes,
        };
        let mut note = name.to_string();
        if let (Some((_, base)), Estimator::Hutchinson, Backend::Cpu) = (&baseline, est, &backend) {
            note = format!("{name}; max relative difference to JAX {:.2e}", max_rel(&scores, base));
        }
        if matches!(backend, Backend::Cpu) {
            cpu_scores.borrow_mut().push((est, scores.clone()));
        } else if let Some((_, cpu)) = cpu_scores.borrow().iter().find(|(e, _)| *e == est) {
            note = format!("{name}; max relative difference to the CPU {:.2e}", max_rel(&scores, cpu));
            if let Some(floor) = gemm_floor {
                note.push_str(&format!("; {:.2}× the cuBLAS products' time", median / floor));
            }
        }
        let base = baseline.as_ref().map(|b| b.0).unwrap_or(median);
        let flops = 2.0 * macs * passes as f64 * batch as f64;
        rows.push(BenchRow::timed(&workload, &backend.device().to_string(), (median, min), repeats, Some(base), batch as f64, Some(flops), Some(note)));
    }
    Ok(rows)
}

/// Runs a baseline script on files in `dir`; returns its JSON and the BenchRow for it.
fn run_baseline(python: &str, script: &str, args: &[String], workload: &str, device: &str, units: f64, flops: f64) -> Result<(serde_json::Value, BenchRow)> {
    let path = format!("{}/scripts/baselines/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python).arg(&path).args(args).output()?;
    if !out.status.success() {
        anyhow::bail!("the baseline {script} failed (set --python, or PYTHONPATH for its packages):\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let times: Vec<f64> = v["seconds"].as_array().map(|a| a.iter().filter_map(|t| t.as_f64()).collect()).unwrap_or_default();
    let median = v["seconds_median"].as_f64().unwrap_or(f64::NAN);
    let row = BenchRow::timed(workload, device, (median, times.iter().cloned().fold(f64::INFINITY, f64::min)), times.len(), None, units, Some(flops), None);
    Ok((v, row))
}

/// D*(x; σ) in float64 over all of `y` (direct distances, log-sum-exp): the accuracy
/// reference for the denoiser benchmark.
fn denoise_f64(y: &[f32], d: usize, x: &[f32], sigma: f64) -> Vec<f64> {
    let logits: Vec<f64> = y.chunks_exact(d).map(|yi| -crate::diffusion::exact_sq_dist(x, yi) / (2.0 * sigma * sigma)).collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![0f64; d];
    let mut s = 0f64;
    for (l, yi) in logits.iter().zip(y.chunks_exact(d)) {
        let w = (l - m).exp();
        s += w;
        out.iter_mut().zip(yi).for_each(|(o, &v)| *o += w * v as f64);
    }
    out.iter_mut().for_each(|o| *o /= s);
    out
}

fn relative_error(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The optimal denoiser over the sampler's 18 noise levels: B queries per level (noisy
/// training points, as in sampling), one call per level; effective GFLOP/s count
/// 4·B·N·D per call. Accuracy: the largest relative error against float64 over the
/// first 8 queries of every level. The numpy baseline (full float32 distance matrix)
/// runs on the same data in the same run.
pub fn denoise(spec: &str, batch: usize, repeats: usize, python: Option<&str>, backends: &[Backend], baseline_repeats: usize) -> Result<Vec<BenchRow>> {
    use crate::diffusion::{sampler::Schedule, OptimalDenoiser, PixelRange, TrainingSet};
    let ds = crate::data::open(spec)?;
    let range = PixelRange::of(&ds.train.x)?;
    let train = TrainingSet::new(&ds.train.x, range)?;
    let (n, d) = (train.len(), train.dim());
    let mut y = Vec::new();
    train.rows(0..n, &mut y);
    let sigmas: Vec<f64> = Schedule::default().sigmas()[..18].to_vec();
    let perm = Philox::new(17, 1).permutation(n);
    let queries: Vec<Vec<f32>> = sigmas
        .iter()
        .enumerate()
        .map(|(s, &sigma)| {
            let mut z = vec![0f32; batch * d];
            Philox::new(17, 2 + s as u64).fill_normal(0, &mut z);
            (0..batch * d).map(|k| y[perm[(k / d) % n] as usize * d + k % d] + (sigma * z[k] as f64) as f32).collect()
        })
        .collect();
    let keep = 8.min(batch);
    let reference: Vec<Vec<f64>> = {
        use rayon::prelude::*;
        let jobs: Vec<(usize, f64, usize)> = sigmas.iter().enumerate().flat_map(|(s, &sigma)| (0..keep).map(move |q| (s, sigma, q))).collect();
        jobs.into_par_iter().map(|(s, sigma, q)| denoise_f64(&y, d, &queries[s][q * d..(q + 1) * d], sigma)).collect()
    };
    let worst_error = |outs: &[Vec<f32>]| -> f64 {
        let mut worst = 0f64;
        for s in 0..sigmas.len() {
            for q in 0..keep {
                worst = worst.max(relative_error(&outs[s][q * d..(q + 1) * d], &reference[s * keep + q]));
            }
        }
        worst
    };
    let workload = format!("optimal denoiser, 18 σ (B={batch}, N={n}, D={d})");
    let flops = 18.0 * 4.0 * (batch * n * d) as f64;
    let mut rows = Vec::new();
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        crate::report::write_npy(&dir.path().join("y.npy"), &[n, d], &y)?;
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        crate::report::write_npy(&dir.path().join("x.npy"), &[sigmas.len(), batch, d], &flat)?;
        std::fs::write(dir.path().join("sigmas.json"), serde_json::to_string(&sigmas)?)?;
        let args = vec!["--dir".into(), dir.path().display().to_string(), "--repeats".into(), baseline_repeats.to_string(), "--keep".into(), keep.to_string()];
        let (_, mut row) = run_baseline(py, "denoise_numpy.py", &args, &workload, "numpy32", 18.0 * batch as f64, flops)?;
        let kept = crate::data::Array::open_npy(&dir.path().join("out.npy"))?.to_f32();
        let outs: Vec<Vec<f32>> = kept.chunks_exact(keep * d).map(|c| c.to_vec()).collect();
        row.note = Some(format!("max rel. error {:.1e}", worst_error(&outs)));
        rows.push(row);
    }
    for b in backends {
        let mut den = OptimalDenoiser::new(b, TrainingSet::new(&ds.train.x, range)?)?;
        if let OptimalDenoiser::Cuda(g) = &den {
            // Queries and outputs stay on the device, as in sampling: the calls alone.
            let s = g.backend().stream().clone();
            let xs = queries.iter().map(|q| s.clone_htod(&q.iter().map(|&v| v as f64).collect::<Vec<_>>())).collect::<Result<Vec<_>, _>>()?;
            let mut outs = xs.iter().map(|x| s.alloc_zeros::<f64>(x.len())).collect::<Result<Vec<_>, _>>()?;
            let (median, min) = time_runs(repeats, || {
                for ((x, o), &sigma) in xs.iter().zip(outs.iter_mut()).zip(&sigmas) {
                    g.denoise_device(x, batch, sigma, o)?;
                }
                s.synchronize()?;
                Ok(())
            })?;
            let host: Vec<Vec<f32>> = outs.iter().map(|o| Ok(s.clone_dtoh(o)?.iter().map(|&v| v as f32).collect())).collect::<Result<_>>()?;
            let note = format!("max rel. error {:.1e}; device-resident queries", worst_error(&host));
            let base = rows.first().map(|r: &BenchRow| r.median_seconds);
            rows.push(BenchRow::timed(&workload, &b.device().to_string(), (median, min), repeats, base, 18.0 * batch as f64, Some(flops), Some(note)));
            continue;
        }
        let outs = std::sync::Mutex::new(Vec::new());
        let (median, min) = time_runs(repeats, || {
            let mut o = Vec::with_capacity(sigmas.len());
            for (s, &sigma) in sigmas.iter().enumerate() {
                o.push(crate::diffusion::sampler::Denoiser::denoise(&mut den, &queries[s], sigma)?);
            }
            *outs.lock().unwrap() = o;
            Ok(())
        })?;
        let mut note = format!("max rel. error {:.1e}", worst_error(&outs.into_inner().unwrap()));
        if ds.train.x.dtype == crate::data::DType::U8 && crate::amx::available() {
            note.push_str("; AMX integer screen, and dense logits where their bound allows");
        }
        let base = rows.first().map(|r: &BenchRow| r.median_seconds);
        rows.push(BenchRow::timed(&workload, &b.device().to_string(), (median, min), repeats, base, 18.0 * batch as f64, Some(flops), Some(note)));
    }
    Ok(rows)
}

/// Exact kNN of `queries` test samples (training samples when there is no test split)
/// among the training set, in the data's own units; effective GFLOP/s count 2·Q·N·D.
/// faiss-cpu's IndexFlatL2 runs on the same data in the same run; the note says how
/// many queries got the same k indices from both.
pub fn knn(spec: &str, queries: usize, k: usize, repeats: usize, python: Option<&str>, backends: &[Backend], baseline_repeats: usize) -> Result<Vec<BenchRow>> {
    use crate::diffusion::{knn::Metric, knn_on, PixelRange, TrainingSet};
    let ds = crate::data::open(spec)?;
    let train = TrainingSet::new(&ds.train.x, PixelRange::MODEL)?;
    let (n, d) = (train.len(), train.dim());
    let source = ds.test.as_ref().map(|t| &t.x).unwrap_or(&ds.train.x);
    let q = queries.min(source.rows());
    let x = source.rows_f32(0, q);
    let workload = format!("exact kNN k={k} (Q={q}, N={n}, D={d})");
    let flops = 2.0 * (q * n * d) as f64;
    let mut rows = Vec::new();
    let mut faiss_indices: Option<Vec<i64>> = None;
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        let mut y = Vec::new();
        train.rows(0..n, &mut y);
        crate::report::write_npy(&dir.path().join("y.npy"), &[n, d], &y)?;
        crate::report::write_npy(&dir.path().join("x.npy"), &[q, d], &x)?;
        let args = vec!["--dir".into(), dir.path().display().to_string(), "--k".into(), k.to_string(), "--repeats".into(), baseline_repeats.to_string()];
        let (v, mut row) = run_baseline(py, "knn_faiss.py", &args, &workload, "faiss", q as f64, flops)?;
        row.note = Some(format!("{} threads", v["threads"]));
        faiss_indices = Some(crate::data::Array::open_npy(&dir.path().join("idx.npy"))?.to_i64()?);
        rows.push(row);
    }
    for b in backends {
        let out = std::sync::Mutex::new(None);
        let (median, min) = time_runs(repeats, || {
            *out.lock().unwrap() = Some(knn_on(b, &train, &x, k, Metric::L2)?);
            Ok(())
        })?;
        let nn = out.into_inner().unwrap().unwrap();
        let note = faiss_indices.as_ref().map(|f| {
            let same = (0..q).filter(|&i| (0..k).all(|j| f[i * k + j] == nn.indices[i * k + j] as i64)).count();
            format!("same indices as faiss for {same}/{q} queries")
        });
        let base = rows.first().map(|r: &BenchRow| r.median_seconds);
        rows.push(BenchRow::timed(&workload, &b.device().to_string(), (median, min), repeats, base, q as f64, Some(flops), note));
    }
    Ok(rows)
}

/// Training the EDM denoiser network (src/diffusion/net.rs, or the U-Net of
/// src/diffusion/unet.rs) against the same network, loss, Adam and EMA in JAX
/// (scripts/baselines/denoise_train_jax.py; for a U-Net, PyTorch:
/// scripts/baselines/unet_torch.py), on the same data: samples per second over `steps`
/// steps (the baseline's after compiling and its warm-up steps).
pub fn denoise_train(spec: &str, model: &str, batch: usize, steps: usize, python: Option<&str>, backends: &[Backend]) -> Result<Vec<BenchRow>> {
    use crate::diffusion::train::{self, DenoiserConfig, Labels, Recipe};
    use crate::diffusion::PixelRange;
    let ds = crate::data::open(spec)?;
    let range = PixelRange::of(&ds.train.x)?;
    let unet = crate::diffusion::unet::is_unet(model);
    let (n, d) = (ds.train.len(), ds.train.features());
    let workload = format!("denoiser training {model} (B={batch}, N={n}, D={d})");
    let mut rows = Vec::new();
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        let mut y = vec![0f32; n * d];
        ds.train.x.rows_f32_into(0, n, &mut y);
        range.to_model(&mut y);
        let root = env!("CARGO_MANIFEST_DIR");
        let mut cmd = std::process::Command::new(py);
        let (name, label) = if unet {
            let mut shape = vec![n];
            shape.extend(match ds.sample_shape() {
                [h, w] => vec![1, *h, *w],
                s => s.to_vec(),
            });
            crate::report::write_npy(&dir.path().join("y.npy"), &shape, &y)?;
            cmd.arg(format!("{root}/scripts/baselines/unet_torch.py")).args(["--model", model]);
            ("PyTorch", "torch-cpu")
        } else {
            crate::report::write_npy(&dir.path().join("y.npy"), &[n, d], &y)?;
            let net = crate::diffusion::net::NetSpec::parse(model)?;
            cmd.arg(format!("{root}/scripts/baselines/denoise_train_jax.py")).args(["--width", &net.width.to_string(), "--blocks", &net.blocks.to_string()]);
            ("JAX", "jax-cpu")
        };
        let out = cmd.args(["--dir", &dir.path().display().to_string(), "--batch", &batch.to_string(), "--steps", &steps.to_string()]).output()?;
        if !out.status.success() {
            anyhow::bail!("the {name} baseline failed (set --python, or PYTHONPATH for it):\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
        let note = format!("loss of the last 100 steps {:.4}", v["loss_last_100"].as_f64().unwrap_or(f64::NAN));
        rows.push(BenchRow::timed(&workload, label, (secs, secs), 1, None, (steps * batch) as f64, None, Some(note)));
    }
    let recipe = Recipe { model: model.into(), steps, batch, lr: 1e-3, ema: 0.99, seed: 0 };
    let cfg = DenoiserConfig::new(spec, None, Labels::None, recipe, &ds.train, ds.sample_shape(), range, 0)?;
    let layout = cfg.layout()?;
    for b in backends {
        let dir = tempfile::tempdir()?;
        let t0 = Instant::now();
        train::train(b, &ds.train, &cfg, &dir.path().join("run"), false, &|_| {})?;
        let secs = t0.elapsed().as_secs_f64();
        let metrics = std::fs::read_to_string(dir.path().join("run/metrics.csv"))?;
        let last = metrics.lines().last().and_then(|l| l.split(',').nth(1)).unwrap_or("").to_string();
        let base = rows.first().map(|r: &BenchRow| r.median_seconds);
        let flops = 6.0 * (layout.macs_per_sample() * batch * steps) as f64;
        let note = format!("loss of the last 100 steps {last}");
        rows.push(BenchRow::timed(&workload, &b.device().to_string(), (secs, secs), 1, base, (steps * batch) as f64, Some(flops), Some(note)));
    }
    Ok(rows)
}

/// A convolutional network's evaluation forward pass and SGD training step on one batch
/// of random images, side by side with PyTorch (scripts/baselines/cnn_torch.py) on the
/// same weights and batch; the logits' agreement goes in the note.
pub fn cnn(model: &str, chw: [usize; 3], batch: usize, repeats: usize, python: Option<&str>) -> Result<Vec<BenchRow>> {
    use crate::nn::network::Network;
    let shape = chw.to_vec();
    let mut net = Network::build(model, &shape, 0)?;
    let [c, h, w] = chw;
    let mut x = vec![0f32; batch * c * h * w];
    Philox::new(1, 0).fill_normal(0, &mut x);
    let classes = net.classes();
    let y: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let (forward, step) = (format!("{model} forward (B={batch}, {c}×{h}×{w})"), format!("{model} SGD step (B={batch}, {c}×{h}×{w})"));
    let mut rows = Vec::new();
    let mut baseline = (None, None);
    let mut torch_logits = None;
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        net.save(&dir.path().join("weights.safetensors"), 0)?;
        crate::report::write_npy(&dir.path().join("x.npy"), &[batch, c, h, w], &x)?;
        crate::report::write_npy(&dir.path().join("y.npy"), &[batch], &y)?;
        crate::report::write_json(&dir.path().join("meta.json"), &serde_json::json!({ "model": model }))?;
        let path = format!("{}/scripts/baselines/cnn_torch.py", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(py).arg(&path).args(["--dir", &dir.path().display().to_string(), "--repeats", &repeats.to_string()]).output()?;
        if !out.status.success() {
            anyhow::bail!("the PyTorch baseline failed (set --python, or PYTHONPATH=.tools/torch):\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let note = format!("torch {}, {} threads", v["torch"].as_str().unwrap_or("?"), v["threads"]);
        let (f, s) = (v["forward_seconds"].as_f64().unwrap_or(f64::NAN), v["train_seconds"].as_f64().unwrap_or(f64::NAN));
        rows.push(BenchRow::timed(&forward, "pytorch-cpu", (f, f), repeats, None, batch as f64, None, Some(note.clone())));
        rows.push(BenchRow::timed(&step, "pytorch-cpu", (s, s), repeats, None, batch as f64, None, Some(note)));
        baseline = (Some(f), Some(s));
        torch_logits = Some(crate::data::Array::open_npy(&dir.path().join("logits.npy"))?.to_f32());
    }
    let logits = net.logits(&x, batch)?;
    let note = torch_logits.map(|t| {
        let scale = t.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = t.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        format!("logits within {:.1e} of PyTorch's (relative to the largest)", worst / scale)
    });
    let f = time_runs(repeats, || net.logits(&x, batch).map(|_| ()))?;
    rows.push(BenchRow::timed(&forward, "cpu", f, repeats, baseline.0, batch as f64, None, note));
    let mut velocity = net.zero_momentum();
    let mut trained = net.clone();
    let s = time_runs(repeats, || trained.train_step(&x, &y, 0.01, 0.9, 5e-4, &mut velocity))?;
    rows.push(BenchRow::timed(&step, "cpu", s, repeats, baseline.1, batch as f64, None, None));
    Ok(rows)
}

/// A pool of `models` MLPs on random halves of `data`'s training split (`rote pool
/// train`: training, then the logits of every training and test example) against
/// PyTorch one model after another and all models at once with torch.func.vmap, same
/// recipe and subsets (scripts/baselines/pool_torch.py). One timed run each: a pool is
/// long work; the speed-up column is over the loop, the note gives it over vmap.
pub fn pool(data: &str, model: &str, models: usize, epochs: usize, batch: usize, python: Option<&str>) -> Result<Vec<BenchRow>> {
    use crate::membership::pool::{self, PoolConfig};
    use crate::nn::train::{self, Schedule, TrainConfig};
    let (sizes, act) = crate::nn::mlp::parse_spec(model)?;
    if act != crate::nn::mlp::Activation::Relu {
        anyhow::bail!("the PyTorch baseline builds ReLU MLPs; give {model} with act=relu");
    }
    let ds = crate::data::open(data)?;
    let input_scale = train::input_scale_for(&ds);
    let recipe = TrainConfig {
        data: data.into(),
        model: model.into(),
        epochs,
        batch,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: Schedule::Constant,
        label_noise: 0.0,
        duplicate_conflicts: 0,
        seed: 0,
        input_scale,
        normalization: Default::default(),
        augment: String::new(),
    };
    let cfg = PoolConfig { recipe, models, keep: 0.5, mirror: false };
    let n = ds.train.len();
    let test = ds.test.as_ref().context("the pool benchmark queries the test split too; give data with one (fashion-mnist, or a generator with test=M)")?;
    let workload = format!("pool of {models} × {model} on {data} ({epochs} epochs, batch {batch}, {} examples each)", n / 2);
    let mut rows = Vec::new();
    let mut baseline = None;
    let mut vmap = None;
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        let rows_all: Vec<u32> = (0..n as u32).collect();
        crate::report::write_npy(&dir.path().join("x.npy"), &[n, ds.train.features()], &train::gather(&ds.train.x, &rows_all, input_scale))?;
        crate::report::write_npy(&dir.path().join("y.npy"), &[n], &ds.train.y)?;
        let test_rows: Vec<u32> = (0..test.len() as u32).collect();
        crate::report::write_npy(&dir.path().join("test_x.npy"), &[test.len(), test.features()], &train::gather(&test.x, &test_rows, input_scale))?;
        crate::report::write_npy(&dir.path().join("keep.npy"), &[models, n], &crate::membership::keep_matrix(0, models, n, 0.5)?)?;
        crate::report::write_json(
            &dir.path().join("meta.json"),
            &serde_json::json!({ "sizes": sizes, "epochs": epochs, "batch": batch, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "modes": ["loop", "vmap"] }),
        )?;
        let path = format!("{}/scripts/baselines/pool_torch.py", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(py).arg(&path).args(["--dir", &dir.path().display().to_string()]).output()?;
        if !out.status.success() {
            anyhow::bail!("the PyTorch baseline failed (set --python, or PYTHONPATH=.tools/torch):\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let note = format!("torch {}, {} threads", v["torch"].as_str().unwrap_or("?"), v["threads"]);
        let (l, m) = (v["loop_seconds"].as_f64().unwrap_or(f64::NAN), v["vmap_seconds"].as_f64().unwrap_or(f64::NAN));
        rows.push(BenchRow::timed(&workload, "pytorch-cpu loop", (l, l), 1, None, models as f64, None, Some(note.clone())));
        rows.push(BenchRow::timed(&workload, "pytorch-cpu vmap", (m, m), 1, Some(l), models as f64, None, Some(note)));
        baseline = Some(l);
        vmap = Some(m);
    }
    let dir = tempfile::tempdir()?;
    let t0 = std::time::Instant::now();
    pool::train_pool(&ds, &cfg, &dir.path().join("pool"), Default::default(), false, &|_, _| {})?;
    let s = t0.elapsed().as_secs_f64();
    let note = vmap.map(|m| format!("{:.2}× the vmap version", m / s));
    rows.push(BenchRow::timed(&workload, "cpu", (s, s), 1, baseline, models as f64, None, note));
    Ok(rows)
}

/// An RBF LSSVM fitted on the first `n` training samples of `data` and evaluated on its
/// test split (fit and predict timed together) against the same system in numpy/scipy
/// (cho_factor/cho_solve) and scikit-learn's SVC on the same data
/// (scripts/baselines/lssvm_scipy.py). One timed run each.
pub fn lssvm(data: &str, n: usize, sigma: f64, gamma: f64, python: Option<&str>) -> Result<Vec<BenchRow>> {
    use crate::memory::lssvm::{accuracy, Kernel, Lssvm};
    let ds = crate::data::open(data)?;
    let test = ds.test.as_ref().context("the LSSVM benchmark predicts the test split; give data with one (fashion-mnist, or a generator with test=M)")?;
    let n = n.min(ds.train.len());
    let scale = crate::nn::train::input_scale_for(&ds) as f64;
    let all = |count: usize| (0..count).collect::<Vec<usize>>();
    let (x, tx) = (crate::memory::lssvm::scaled_rows(&ds.train.x, &all(n), scale), crate::memory::lssvm::scaled_rows(&test.x, &all(test.len()), scale));
    let (y, ty) = (ds.train.y[..n].to_vec(), test.y.clone());
    let d = ds.train.features();
    let workload = format!("LSSVM rbf σ={sigma} γ={gamma}, {n} samples of {data}, fit + predict {} test samples", test.len());
    let mut rows_out = Vec::new();
    let mut baseline = None;
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        crate::report::write_npy(&dir.path().join("x.npy"), &[n, d], &x)?;
        crate::report::write_npy(&dir.path().join("y.npy"), &[n], &y)?;
        crate::report::write_npy(&dir.path().join("test_x.npy"), &[ty.len(), d], &tx)?;
        crate::report::write_npy(&dir.path().join("test_y.npy"), &[ty.len()], &ty)?;
        crate::report::write_json(&dir.path().join("meta.json"), &serde_json::json!({ "sigma": sigma, "gamma": gamma, "modes": ["scipy", "svc"] }))?;
        let path = format!("{}/scripts/baselines/lssvm_scipy.py", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(py).arg(&path).args(["--dir", &dir.path().display().to_string()]).output()?;
        if !out.status.success() {
            anyhow::bail!("the scipy baseline failed (set --python, or PYTHONPATH=.tools/py):\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let s = v["scipy_seconds"].as_f64().unwrap_or(f64::NAN);
        let note = |acc: &str| Some(format!("numpy {}, scipy {}; test accuracy {:.4}", v["numpy"].as_str().unwrap_or("?"), v["scipy"].as_str().unwrap_or("?"), v[acc].as_f64().unwrap_or(f64::NAN)));
        rows_out.push(BenchRow::timed(&workload, "scipy-cpu (cho_factor)", (s, s), 1, None, n as f64, None, note("scipy_accuracy")));
        let c = v["svc_seconds"].as_f64().unwrap_or(f64::NAN);
        rows_out.push(BenchRow::timed(&workload, "sklearn-cpu SVC", (c, c), 1, Some(s), n as f64, None, note("svc_accuracy")));
        baseline = Some(s);
    }
    let t0 = Instant::now();
    let model = Lssvm::fit(&x, d, &y, Kernel::Rbf { sigma }, gamma, None)?;
    let predicted = model.predict(&tx);
    let s = t0.elapsed().as_secs_f64();
    rows_out.push(BenchRow::timed(&workload, "cpu", (s, s), 1, baseline, n as f64, None, Some(format!("test accuracy {:.4}", accuracy(&predicted, &ty)))));
    Ok(rows_out)
}

/// n-gram membership over a text corpus: building a Bloom filter of every n-gram inside
/// a document (blocked and classic) and the suffix-array index, and querying every
/// n-gram of two probe sequences of `probes` n-grams each (a run of corpus tokens, and
/// random tokens for the false-positive rate), against rbloom and a Python set of the
/// same n-grams (scripts/baselines/text_rbloom.py).
pub fn text(corpus_dir: &std::path::Path, n: usize, fp: f64, probes: usize, repeats: usize, python: Option<&str>, gpu: Option<&crate::device::cuda::CudaBackend>) -> Result<Vec<BenchRow>> {
    use crate::text::bloom::{build_from_corpus, BloomParams, Layout};
    use crate::text::corpus::Corpus;
    use rayon::prelude::*;
    let corpus = Corpus::open(corpus_dir)?;
    crate::text::index::check_n(&corpus, n)?;
    let positions = corpus.ngram_positions(n);
    let width = corpus.meta.dtype.bytes();
    let tokens = corpus.tokens();
    // Member probes: the first document long enough, else the longest; random probes
    // over the corpus's id range.
    let want = probes + n - 1;
    let (ds, de) = *corpus.docs.iter().find(|&&(s, e)| e - s >= want as u64).unwrap_or_else(|| corpus.docs.iter().max_by_key(|&&(s, e)| e - s).unwrap());
    let members: Vec<u32> = tokens.to_vec(ds as usize, (de as usize).min(ds as usize + want));
    let max_id = crate::with_tokens!(tokens, |t| t.par_iter().map(|&x| x as u32).max().unwrap_or(0));
    let rng = Philox::new(0x7e47, 20);
    let random: Vec<u32> = (0..want as u64).map(|i| (rng.word(i) as u64 % (max_id as u64 + 1)) as u32).collect();
    let queries = (members.len() + 1 - n + random.len() + 1 - n) as f64;
    let threads = rayon::current_num_threads();
    let build_work = format!("Bloom build: {positions} {n}-grams of {} (fp {fp:.0e})", corpus.dir.display());
    let query_work = format!("Bloom query: {} {n}-gram lookups (half members, half random)", queries as u64);
    let (mut build_rows, mut query_rows) = (Vec::new(), Vec::new());
    let (mut build_base, mut query_base) = (None, None);
    if let Some(py) = python {
        let dir = tempfile::tempdir()?;
        let encode = |seq: &[u32]| -> Vec<u8> {
            match width {
                1 => seq.iter().map(|&t| t as u8).collect(),
                2 => seq.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect(),
                _ => seq.iter().flat_map(|&t| t.to_le_bytes()).collect(),
            }
        };
        std::fs::write(dir.path().join("members.bin"), encode(&members))?;
        std::fs::write(dir.path().join("random.bin"), encode(&random))?;
        let tokens_path = crate::text::corpus::resolve(&corpus.dir, &corpus.meta.tokens);
        crate::report::write_json(
            &dir.path().join("meta.json"),
            &serde_json::json!({"tokens": tokens_path, "width": width, "n": n, "fp": fp, "docs": corpus.docs, "modes": ["rbloom", "set"]}),
        )?;
        let path = format!("{}/scripts/baselines/text_rbloom.py", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(py).arg(&path).args(["--dir", &dir.path().display().to_string()]).output()?;
        if !out.status.success() {
            anyhow::bail!("the rbloom baseline failed (set --python, or PYTHONPATH=.tools/py with rbloom):\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let half = random.len() as f64 + 1.0 - n as f64;
        let rb_build = f("rbloom_build_seconds");
        let rb_query = f("rbloom_query_seconds");
        let bits = f("rbloom_bits");
        build_rows.push(BenchRow::timed(
            &build_work,
            &format!("rbloom {} (python {})", v["rbloom"].as_str().unwrap_or("?"), v["python"].as_str().unwrap_or("?")),
            (rb_build, rb_build),
            1,
            None,
            positions as f64,
            None,
            Some(format!("{:.1} bits per n-gram", bits / positions as f64)),
        ));
        query_rows.push(BenchRow::timed(&query_work, "rbloom", (rb_query, rb_query), 1, None, queries, None, Some(format!("measured false-positive rate {:.2e}", f("rbloom_random_hits") / half))));
        let set_build = f("set_build_seconds");
        let set_query = f("set_query_seconds");
        build_rows.push(BenchRow::timed(
            &build_work,
            "python set (exact)",
            (set_build, set_build),
            1,
            Some(rb_build),
            positions as f64,
            None,
            Some(format!("{:.0} bytes per distinct n-gram ({} distinct)", f("set_bytes") / f("set_distinct"), v["set_distinct"])),
        ));
        query_rows.push(BenchRow::timed(&query_work, "python set (exact)", (set_query, set_query), 1, Some(rb_query), queries, None, Some(format!("{} random hits", v["set_random_hits"]))));
        build_base = Some(rb_build);
        query_base = Some(rb_query);
    }
    for layout in [Layout::Blocked, Layout::Classic] {
        let params = BloomParams::for_rate(layout, n, positions, fp)?;
        let mut bloom = None;
        let timing = time_runs(repeats, || {
            bloom = Some(build_from_corpus(params, &corpus, &|_| {}));
            Ok(())
        })?;
        let bloom = bloom.unwrap();
        let name = format!("rote cpu, {layout:?} ({threads} threads)").to_lowercase();
        build_rows.push(BenchRow::timed(&build_work, &name, timing, repeats, build_base, positions as f64, None, Some(format!("{:.1} bits per n-gram, {} hashes", params.m as f64 / positions as f64, params.k))));
        let mut random_hits = 0;
        let qt = time_runs(repeats, || {
            let m = bloom.hits_par(&members);
            let r = bloom.hits_par(&random);
            anyhow::ensure!(m.iter().all(|&h| h), "a member n-gram was reported absent");
            random_hits = r.iter().filter(|&&h| h).count();
            Ok(())
        })?;
        let half = random.len() as f64 + 1.0 - n as f64;
        query_rows.push(BenchRow::timed(&query_work, &name, qt, repeats, query_base, queries, None, Some(format!("measured false-positive rate {:.2e} (predicted {:.2e} at the {:.0} distinct n-grams its fill implies)", random_hits as f64 / half, params.predicted_rate(bloom.estimated_items() as u64), bloom.estimated_items()))));
    }
    if let Some(g) = gpu {
        // The whole build on the GPU: the corpus uploaded, the filter built and brought
        // back (what `rote text index --device cuda` does before writing).
        let params = BloomParams::for_rate(Layout::Blocked, n, positions, fp)?;
        let cpu_words = build_from_corpus(params, &corpus, &|_| {});
        let mut built = None;
        let timing = time_runs(repeats, || {
            built = Some(crate::text::cuda::build_bloom(g, params, &corpus, &|_| {})?);
            Ok(())
        })?;
        let same = built.as_ref().is_some_and(|b| b.words() == cpu_words.words());
        let name = format!("cuda:{} {}", g.ordinal(), g.info().name);
        build_rows.push(BenchRow::timed(&build_work, &name, timing, repeats, build_base, positions as f64, None, Some(format!("upload + build + download; bit-identical to the CPU's: {same}"))));
        let on_gpu = crate::text::cuda::GpuBloom::upload(g, &cpu_words)?;
        let mut random_hits = 0;
        let qt = time_runs(repeats, || {
            let h = on_gpu.hits_many(&[&members, &random])?;
            anyhow::ensure!(h[0].iter().all(|&x| x), "a member n-gram was reported absent on the GPU");
            random_hits = h[1].iter().filter(|&&x| x).count();
            Ok(())
        })?;
        let half = random.len() as f64 + 1.0 - n as f64;
        query_rows.push(BenchRow::timed(&query_work, &name, qt, repeats, query_base, queries, None, Some(format!("with the probes' upload; measured false-positive rate {:.2e}", random_hits as f64 / half))));
    }
    let exact_work = format!("suffix array + LCP: {} tokens of {}", corpus.meta.n_tokens, corpus.dir.display());
    let st = time_runs(repeats.min(3), || {
        crate::text::exact::build(&corpus)?;
        Ok(())
    })?;
    let mut rows = build_rows;
    rows.extend(query_rows);
    rows.push(BenchRow::timed(&exact_work, "rote cpu (libsais, 1 thread)", st, repeats.min(3), None, corpus.meta.n_tokens as f64, None, Some("8 bytes per token on disk".into())));
    Ok(rows)
}
