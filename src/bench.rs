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
    /// CPU median / this median (1 for the CPU row).
    pub speedup_vs_cpu: f64,
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
            speedup_vs_cpu: cpu / median,
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
    println!("{:<38} {:<8} {:>12} {:>12} {:>10} {:>14}", "workload", "device", "median s", "min s", "vs cpu", "units/s");
    for r in rows {
        println!(
            "{:<38} {:<8} {:>12.5} {:>12.5} {:>9.1}× {:>14.3e}",
            r.workload, r.device, r.median_seconds, r.min_seconds, r.speedup_vs_cpu, r.throughput
        );
    }
}
