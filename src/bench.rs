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
    println!("{:<44} {:<8} {:>12} {:>12} {:>10} {:>14}", "workload", "device", "median s", "min s", "speed-up", "units/s");
    for r in rows {
        println!(
            "{:<44} {:<8} {:>12.6} {:>12.6} {:>9.1}× {:>14.3e}",
            r.workload, r.device, r.median_seconds, r.min_seconds, r.speedup, r.throughput
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
            });
        }
    }
    Ok(rows)
}
