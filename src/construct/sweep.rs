//! The paper's grids: every (size, restart) × max bias λ × width n, one CSV row per trial.
//!
//! Exact reuse makes the grid cheap: unit j of layer 1 depends only on (seed, j), so
//! one product X·Wᵀ at the largest width serves every width (a width-n layer is the
//! first n units), and b_j = λ·v_j, so each λ needs one threshold pass. Each trial then
//! runs its own covering on the first n units. Every trial equals `rote construct`
//! with the same seed, width and λ.

use super::cover::{self, CpuScanner};
use super::layer1::{self, Bits, Layer1};
use super::{candidate_order, ClassNet, Network, Target};
use crate::data::Dataset;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Largest product matrix (entries) a sweep keeps per seed: 64 MiB of float32.
const REUSE_PRODUCTS_MAX: usize = 16 << 20;

pub const CSV_HEADER: &str = "width,max_bias,size,seed,interpolated,train_accuracy,second_width,parameters,fit_seconds";

#[derive(Clone, Debug, serde::Serialize)]
pub struct Trial {
    pub width: usize,
    pub max_bias: f32,
    pub size: usize,
    pub seed: u64,
    pub interpolated: bool,
    pub train_accuracy: f64,
    pub second_width: usize,
    pub parameters: usize,
    /// This trial's covering time plus its share of the shared layer-1 work.
    pub fit_seconds: f64,
}

impl Trial {
    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{:.6e}",
            self.width, self.max_bias, self.size, self.seed, self.interpolated as u8, self.train_accuracy, self.second_width, self.parameters, self.fit_seconds
        )
    }

    fn parse(line: &str) -> Option<Trial> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 9 {
            return None;
        }
        Some(Trial {
            width: f[0].parse().ok()?,
            max_bias: f[1].parse().ok()?,
            size: f[2].parse().ok()?,
            seed: f[3].parse().ok()?,
            interpolated: f[4] == "1",
            train_accuracy: f[5].parse().ok()?,
            second_width: f[6].parse().ok()?,
            parameters: f[7].parse().ok()?,
            fit_seconds: f[8].parse().ok()?,
        })
    }

    /// Identity of a trial for resuming (λ compared through its printed form).
    fn key(&self) -> (usize, String, usize, u64) {
        (self.width, self.max_bias.to_string(), self.size, self.seed)
    }
}

/// `a:b:step` (inclusive of b up to rounding) or a comma list.
pub fn parse_grid(text: &str) -> Result<Vec<f64>> {
    let parts: Vec<&str> = text.split(':').collect();
    let num = |s: &str| s.trim().parse::<f64>().with_context(|| format!("grid '{text}': '{s}' is not a number"));
    match parts.len() {
        1 => text.split(',').map(num).collect(),
        3 => {
            let (a, b, step) = (num(parts[0])?, num(parts[1])?, num(parts[2])?);
            if step <= 0.0 || b < a {
                bail!("grid '{text}': need start ≤ end and step > 0");
            }
            let count = ((b - a) / step + 1e-9).floor() as usize + 1;
            // Round to the step's decimals so 0.05·7 prints as 0.35, not 0.35000000000000003.
            Ok((0..count).map(|i| ((a + i as f64 * step) * 1e9).round() / 1e9).collect())
        }
        _ => bail!("grid '{text}': use start:end:step or a comma-separated list"),
    }
}

/// What makes a sweep's trials comparable beyond the grid keys (width, λ, size, seed):
/// the data, the target and the preprocessing. It is stored beside the CSV
/// (`settings_path`) when the CSV is created, and a resume must match it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepSettings {
    pub data: String,
    pub target: String,
    pub scale_to_unit_norm: bool,
    pub activation: String,
}

impl SweepSettings {
    pub fn new(data: &str, target: Target) -> Self {
        let target = match target {
            Target::OneVsRest => "one-vs-rest".to_string(),
            Target::Binary { positive: Some(c) } => format!("positive-class {c}"),
            Target::Binary { positive: None } => "binary".to_string(),
        };
        Self { data: data.to_string(), target, scale_to_unit_norm: true, activation: "threshold".into() }
    }
}

/// `s.csv` → `s.csv.settings.json`.
pub fn settings_path(csv: &Path) -> std::path::PathBuf {
    let mut s = csv.as_os_str().to_owned();
    s.push(".settings.json");
    s.into()
}

/// Checks that the trials already in `csv` (if any) were made with `settings`; an
/// existing CSV without its settings record cannot be resumed (its trials could come
/// from any data).
pub fn check_resume(csv: &Path, settings: &SweepSettings) -> Result<()> {
    if !csv.exists() {
        return Ok(());
    }
    let first_line = std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?.lines().next().unwrap_or("").to_string();
    if first_line != CSV_HEADER {
        bail!("{} exists but is not a rote sweep CSV (header differs); choose another --out", csv.display());
    }
    let record = settings_path(csv);
    let text = match std::fs::read_to_string(&record) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} exists but {} (the settings its trials were made with) does not, so rote cannot tell whether they belong to this sweep; choose another --out, or remove the CSV",
            csv.display(),
            record.display()
        ),
        Err(e) => bail!("cannot read {}: {e}", record.display()),
    };
    let stored: SweepSettings = serde_json::from_str(&text).with_context(|| format!("{} is not a sweep settings record", record.display()))?;
    if stored != *settings {
        let mut differ = vec![];
        if stored.data != settings.data {
            differ.push(format!("data '{}' (now '{}')", stored.data, settings.data));
        }
        if stored.target != settings.target {
            differ.push(format!("target {} (now {})", stored.target, settings.target));
        }
        if stored.scale_to_unit_norm != settings.scale_to_unit_norm || stored.activation != settings.activation {
            differ.push(format!("preprocessing {}/{} (now {}/{})", stored.activation, stored.scale_to_unit_norm, settings.activation, settings.scale_to_unit_norm));
        }
        bail!(
            "{} holds trials of another experiment: {}; resuming would mix them — choose another --out",
            csv.display(),
            differ.join(", ")
        );
    }
    Ok(())
}

/// Creates `csv` with its header and its settings record (the record first: a CSV
/// never exists without one).
pub fn create(csv: &Path, settings: &SweepSettings) -> Result<()> {
    crate::report::write_json(&settings_path(csv), settings)?;
    crate::report::write_atomic(csv, |w| Ok(w.write_all(format!("{CSV_HEADER}\n").as_bytes())?))
}

/// Previously written trials of `path` (a trailing partial line from an interrupted
/// run is dropped, and the file rewritten without it).
pub fn read_existing(path: &Path) -> Result<Vec<Trial>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h == CSV_HEADER => {}
        _ => bail!("{} exists but is not a rote sweep CSV (header differs); choose another --out", path.display()),
    }
    let mut trials = vec![];
    let mut bad = 0;
    for line in lines {
        match Trial::parse(line) {
            Some(t) => trials.push(t),
            None => bad += 1,
        }
    }
    let last_is_partial = !text.ends_with('\n') && text.lines().last().is_some_and(|l| Trial::parse(l).is_none());
    if bad > 1 || (bad == 1 && !last_is_partial) {
        bail!("{}: {bad} malformed rows; it is not a sweep this version of rote can resume", path.display());
    }
    if bad == 1 {
        let mut body = format!("{CSV_HEADER}\n");
        trials.iter().for_each(|t| body.push_str(&(t.csv() + "\n")));
        crate::report::write_atomic(path, |w| Ok(w.write_all(body.as_bytes())?))?;
    }
    Ok(trials)
}

pub struct SweepPlan {
    pub widths: Vec<usize>,
    pub max_biases: Vec<f32>,
    pub seeds: Vec<u64>,
    pub target: Target,
}

/// Runs the missing trials of one dataset size, appending rows to `csv` as each
/// (seed) group finishes. Returns the trials run.
pub fn run_size(ds: &Dataset, size: usize, plan: &SweepPlan, done: &HashSet<(usize, String, usize, u64)>, csv: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<Trial>> {
    let train = &ds.train;
    let dim = train.features();
    let (x, scale) = super::unit_scaled(train, true);
    let (problems, otherwise) = super::problems(train, plan.target)?;
    let max_width = *plan.widths.iter().max().unwrap();
    let file = std::sync::Mutex::new(std::fs::OpenOptions::new().append(true).open(csv)?);
    let results: Vec<Vec<Trial>> = plan
        .seeds
        .par_iter()
        .map(|&seed| -> Result<Vec<Trial>> {
            let todo: Vec<(f32, usize)> = plan
                .max_biases
                .iter()
                .flat_map(|&l| plan.widths.iter().map(move |&w| (l, w)))
                .filter(|&(l, w)| !done.contains(&(w, l.to_string(), size, seed)))
                .collect();
            if todo.is_empty() {
                return Ok(vec![]);
            }
            let t0 = Instant::now();
            let full = Layer1::random(seed, max_width, dim, 1.0);
            let directions = layer1::bias_directions(seed, max_width);
            // Keep the products for reuse across λ only while they are small; beyond
            // that, threshold from scratch per λ so memory stays at N·n/8 bytes of bits.
            let z = (train.len() * max_width <= REUSE_PRODUCTS_MAX).then(|| {
                let mut z = vec![0f32; train.len() * max_width];
                layer1::products(&x, train.len(), &full, &mut z);
                z
            });
            let product_secs = t0.elapsed().as_secs_f64() / todo.len() as f64;
            let orders: Vec<Vec<u32>> = problems.iter().map(|(label, neg, _)| candidate_order(seed, *label, neg.len())).collect();
            let mut trials = vec![];
            for &lambda in &plan.max_biases {
                let widths: Vec<usize> = todo.iter().filter(|t| t.0 == lambda).map(|t| t.1).collect();
                if widths.is_empty() {
                    continue;
                }
                let t1 = Instant::now();
                let mut layer = full.clone();
                layer.bias = directions.iter().map(|v| lambda * v).collect();
                let bits = match &z {
                    Some(z) => threshold_from_products(&x, z, &layer),
                    None => layer1::threshold_bits(&x, &layer),
                };
                let threshold_secs = t1.elapsed().as_secs_f64() / widths.len() as f64;
                for width in widths {
                    let t2 = Instant::now();
                    let mut nets = vec![];
                    let mut uncovered = 0;
                    for ((label, neg, pos), order) in problems.iter().zip(&orders) {
                        let mut scanner = CpuScanner::new(&bits, width, pos, neg);
                        let cov = cover::greedy_cover(&cover::ListedRows(&bits, neg), width, order, &mut scanner, super::CPU_BATCH, super::MAX_BATCH)?;
                        uncovered += cov.uncovered;
                        nets.push(ClassNet { label: *label, neurons: cov.neurons });
                    }
                    let cover_secs = t2.elapsed().as_secs_f64();
                    let net = Network {
                        activation: super::Activation::Threshold,
                        max_bias: lambda,
                        seed,
                        input_scale: scale,
                        sample_shape: ds.sample_shape().to_vec(),
                        // Evaluation below reuses `bits`; only the layer's shape is needed.
                        layer1: Layer1 { units: width, dim, weight: vec![], bias: vec![] },
                        nets,
                        otherwise,
                    };
                    // Re-verify: evaluate the network's OR layer on every training point.
                    let acc = super::accuracy(&net.predict_features(&bits, None), &net.target_labels(&train.y));
                    if (acc == 1.0) != (uncovered == 0) {
                        bail!("internal error: seed {seed} λ {lambda} n {width}: covering and evaluation disagree");
                    }
                    let k: usize = net.nets.iter().map(|c| c.neurons.len()).sum();
                    trials.push(Trial {
                        width,
                        max_bias: lambda,
                        size,
                        seed,
                        interpolated: acc == 1.0,
                        train_accuracy: acc,
                        second_width: k,
                        parameters: net.parameters(),
                        fit_seconds: product_secs + threshold_secs + cover_secs,
                    });
                    progress(1);
                }
            }
            let mut f = file.lock().unwrap();
            let mut body = String::new();
            trials.iter().for_each(|t| body.push_str(&(t.csv() + "\n")));
            f.write_all(body.as_bytes())?;
            f.flush()?;
            Ok(trials)
        })
        .collect::<Result<_>>()?;
    Ok(results.into_iter().flatten().collect())
}

/// Threshold bits from precomputed products (no bias), with the same exact-sign rule as
/// layer1::threshold_bits.
pub fn threshold_from_products(x: &[f32], z: &[f32], layer: &Layer1) -> Bits {
    let (d, n) = (layer.dim, layer.units);
    let rows = z.len() / n;
    let mut bits = Bits::zeros(rows, n);
    let words = bits.words;
    let margins = layer1::Margins::new(layer);
    for r in 0..rows {
        layer1::pack_row(&x[r * d..(r + 1) * d], &z[r * n..(r + 1) * n], layer, &margins, &mut bits.data[r * words..(r + 1) * words]);
    }
    bits
}

/// All trials of `path` keyed for resuming.
pub fn done_keys(trials: &[Trial]) -> HashSet<(usize, String, usize, u64)> {
    trials.iter().map(|t| t.key()).collect()
}
