//! `rote bench`: the same workload on every available device in one run, reported as
//! medians of repeated timings, side by side with ratios against the CPU.

use crate::device::Backend;
use crate::rng::{Distribution, Philox};
use anyhow::Result;
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
        rows.push(BenchRow {
            workload: workload.to_string(),
            device: b.device().to_string(),
            median_seconds: median,
            min_seconds: min,
            repeats,
            speedup: cpu / median,
            throughput: units / median,
            gflops: None,
            note: None,
        });
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
            cmd.args(["--repeats", &baseline_repeats.to_string()]);
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
            rows.push(BenchRow {
                workload: workload.clone(),
                device: if case.numpy_float32 { "numpy32".into() } else { "numpy".into() },
                median_seconds: median,
                min_seconds: times.iter().cloned().fold(f64::INFINITY, f64::min),
                repeats: times.len(),
                speedup: 1.0,
                throughput: 1.0 / median,
                gflops: None,
                note: None,
            });
        }
        for b in backends {
            let cell = std::sync::Mutex::new(Vec::new());
            time_runs(repeats, || {
                let (_, r) = fit(&ds, &cfg, b)?;
                cell.lock().unwrap().push(r.fit_seconds);
                Ok(())
            })?;
            let mut fits = cell.into_inner().unwrap();
            fits.remove(0); // the warm-up
            fits.sort_by(|a, c| a.partial_cmp(c).unwrap());
            let median = fits[fits.len() / 2];
            let base = *first.get_or_insert(median);
            rows.push(BenchRow {
                workload: workload.clone(),
                device: b.device().to_string(),
                median_seconds: median,
                min_seconds: fits[0],
                repeats,
                speedup: base / median,
                throughput: 1.0 / median,
                gflops: None,
                note: None,
            });
        }
    }
    Ok(rows)
}

/// Per-sample curvature scores: rote's estimators against the JAX baseline
/// (scripts/baselines/curvature_jax.py, jit(vmap(jvp(grad)))) on the same weights,
/// inputs and probes. The baseline's scores must agree with rote's Hutchinson scores.
pub fn curvature(model: &str, batch: usize, probes: usize, repeats: usize, python: Option<&str>, gpu: Option<&Backend>) -> Result<Vec<BenchRow>> {
    use crate::curvature::{self as curv, Estimator, ScoreConfig, Statistic};
    use crate::nn::mlp::{parse_spec, Mlp};
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
        rows.push(BenchRow {
            workload: format!("curvature {model} B={batch} P={probes}"),
            device: "jax-cpu".into(),
            median_seconds: median,
            min_seconds: times.iter().cloned().fold(f64::INFINITY, f64::min),
            repeats: times.len(),
            speedup: 1.0,
            throughput: batch as f64 / median,
            gflops: Some(2.0 * macs * (4 * probes) as f64 * batch as f64 / median / 1e9),
            note: Some(format!("hutchinson, jax {}", v["jax"].as_str().unwrap_or("?"))),
        });
        baseline = Some((median, scores));
    }
    let mut estimators = vec![(Estimator::Hutchinson, "hutchinson (exact HVP)"), (Estimator::Fd, "finite differences")];
    estimators.push((Estimator::Exact, if act.piecewise_linear() { "exact probe-free JᵀAJ" } else { "hutchinson + exact Gauss–Newton part" }));
    let mut runs: Vec<(Estimator, &str, Backend)> = estimators.iter().map(|&(e, n)| (e, n, Backend::Cpu)).collect();
    if let Some(g) = gpu {
        runs.push((Estimator::Hutchinson, "hutchinson (exact HVP)", g.clone()));
        let exact = if act.piecewise_linear() { "exact probe-free JᵀAJ" } else { "hutchinson + exact Gauss–Newton part" };
        runs.push((Estimator::Exact, exact, g.clone()));
    }
    let cpu_scores: std::cell::RefCell<Vec<(Estimator, Vec<f32>)>> = Default::default();
    // The cuBLAS floor: the same products alone.
    let mut gemm_floor = None;
    if let (Some(Backend::Cuda(g)), true) = (gpu, act.piecewise_linear()) {
        let (median, min) = time_runs(repeats, || g.curvature_gemms_only(&m, batch))?;
        gemm_floor = Some(median);
        rows.push(BenchRow {
            workload: format!("curvature {model} B={batch} P={probes}"),
            device: "cublas".into(),
            median_seconds: median,
            min_seconds: min,
            repeats,
            speedup: baseline.as_ref().map(|b| b.0).unwrap_or(median) / median,
            throughput: batch as f64 / median,
            gflops: Some(2.0 * macs * (1 + c) as f64 * batch as f64 / median / 1e9),
            note: Some("the GPU path's products alone (forward + C-row backward)".into()),
        });
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
        rows.push(BenchRow {
            workload: format!("curvature {model} B={batch} P={probes}"),
            device: backend.device().to_string(),
            median_seconds: median,
            min_seconds: min,
            repeats,
            speedup: base / median,
            throughput: batch as f64 / median,
            gflops: Some(2.0 * macs * passes as f64 * batch as f64 / median / 1e9),
            note: Some(note),
        });
    }
    Ok(rows)
}
