//! Randomized construction of interpolating three-layer networks (Dirksen, Finke,
//! Genzel; ALGORITHMS.md §1): random threshold hyperplanes, a greedy covering layer,
//! an OR. Two-class data, one class against the rest, or one-vs-rest over all classes
//! sharing one first layer.

pub mod cover;
pub mod io;
pub mod layer1;
pub mod plot;
pub mod sweep;

use crate::data::{Dataset, Split};
use crate::device::Backend;
use crate::rng::Philox;
use anyhow::{bail, Result};
use cover::{CoverScanner, Neuron};
use layer1::{Bits, Layer1};
use std::collections::BTreeMap;
use std::time::Instant;

const STREAM_ORDER: u64 = 0x0DE5;
/// First covering batch on the CPU: small, since each acceptance may cover most of
/// the candidates behind it; it grows while batches accept nothing.
pub const CPU_BATCH: usize = 2;
/// First covering batch on the GPU, where a batch costs one launch.
pub const GPU_BATCH: usize = 64;
/// Largest covering batch: the in-order acceptance walk checks each candidate against
/// the batch's earlier acceptances on the host, which grows with the square of the
/// batch.
pub const MAX_BATCH: usize = 256;
/// The prediction of a one-vs-rest network when no class's layer fires.
pub const ABSTAIN: i64 = -1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Threshold,
    Relu,
}

/// Which class(es) get a covering layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Two classes: the network outputs 1 on `positive` (default: the larger label).
    Binary { positive: Option<i64> },
    /// One covering layer per class, sharing layer 1.
    OneVsRest,
}

impl Target {
    /// What `rote construct` builds: one-vs-rest when asked, or for more than two classes
    /// without a `positive` class; a binary network otherwise.
    pub fn choose(one_vs_rest: bool, positive: Option<i64>, classes: usize) -> Self {
        if !one_vs_rest && (positive.is_some() || classes == 2) {
            Target::Binary { positive }
        } else {
            Target::OneVsRest
        }
    }
}

#[derive(Clone, Debug)]
pub struct FitConfig {
    pub width: usize,
    pub max_bias: f32,
    pub activation: Activation,
    pub seed: u64,
    pub target: Target,
    /// Multiply inputs by 1/max‖x‖ of the training split (the paper's preprocessing).
    pub scale_to_unit_norm: bool,
}

/// The layer-2 neurons covering one class (the class the network outputs 1 on).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassNet {
    pub label: i64,
    pub neurons: Vec<Neuron>,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub activation: Activation,
    pub max_bias: f32,
    pub seed: u64,
    /// Inputs are multiplied by this before layer 1.
    /// Inputs are multiplied by this first (in float64: the factor can lie outside
    /// float32's range, for data of tiny or huge magnitude).
    pub input_scale: f64,
    pub sample_shape: Vec<usize>,
    pub layer1: Layer1,
    pub nets: Vec<ClassNet>,
    /// For a single covering layer: the label predicted when it does not fire.
    pub otherwise: Option<i64>,
}

impl Network {
    pub fn first_width(&self) -> usize {
        self.layer1.units
    }

    pub fn second_widths(&self) -> BTreeMap<i64, usize> {
        self.nets.iter().map(|c| (c.label, c.neurons.len())).collect()
    }

    /// n(d+1) + Σ_c k_c(n+1) + (k_c+1).
    pub fn parameters(&self) -> usize {
        let (n, d) = (self.layer1.units, self.layer1.dim);
        n * (d + 1) + self.nets.iter().map(|c| c.neurons.len() * (n + 1) + c.neurons.len() + 1).sum::<usize>()
    }

    /// Layer-1 features of (already scaled) inputs: bits, plus real values for ReLU.
    pub fn features(&self, x: &[f32], backend: &Backend) -> Result<(Bits, Option<Vec<f32>>)> {
        let bits = threshold_bits(backend, x, &self.layer1)?;
        let relu = (self.activation == Activation::Relu).then(|| layer1::relu_features(x, &self.layer1, &bits));
        Ok((bits, relu))
    }

    /// Per class, per row: max over neurons of m − s(x) (the neuron fires when > 0).
    pub fn scores(&self, bits: &Bits, relu: Option<&[f32]>) -> Vec<Vec<f32>> {
        use rayon::prelude::*;
        let n = self.layer1.units;
        self.nets
            .iter()
            .map(|net| {
                let score = |r: usize| match relu {
                    Some(f) => net.neurons.iter().map(|ne| ne.threshold - cover::relu_score(&ne.mask, &f[r * n..(r + 1) * n])).fold(f32::NEG_INFINITY, f32::max),
                    None => cover::best_margin(&net.neurons, bits.row(r)),
                };
                // Waking the worker threads costs more than a small network's scores.
                if bits.rows * net.neurons.len() * bits.words < 1 << 18 {
                    (0..bits.rows).map(score).collect()
                } else {
                    (0..bits.rows).into_par_iter().map(score).collect()
                }
            })
            .collect()
    }

    /// Predicted labels. One covering layer: its label when it fires, else `otherwise`.
    /// One-vs-rest: the class whose layer fires (the largest margin if several do;
    /// ties to the earlier class), or `ABSTAIN` when none fires, which counts as an
    /// error, so training accuracy 1 means every layer covers its whole class.
    pub fn predict_features(&self, bits: &Bits, relu: Option<&[f32]>) -> Vec<i64> {
        let scores = self.scores(bits, relu);
        (0..bits.rows)
            .map(|r| match self.otherwise {
                Some(other) => if scores[0][r] > 0.0 { self.nets[0].label } else { other },
                None => {
                    let mut best = 0;
                    for c in 1..self.nets.len() {
                        if scores[c][r] > scores[best][r] {
                            best = c;
                        }
                    }
                    if scores[best][r] > 0.0 { self.nets[best].label } else { ABSTAIN }
                }
            })
            .collect()
    }

    /// Predictions for raw (unscaled) samples.
    pub fn predict(&self, split: &Split, backend: &Backend) -> Result<Vec<i64>> {
        let mut x = split.x.to_f32();
        scale_inputs(&mut x, self.input_scale);
        let (bits, relu) = self.features(&x, backend)?;
        Ok(self.predict_features(&bits, relu.as_deref()))
    }

    /// The label each sample should get from this network (class vs rest collapses
    /// other labels onto `otherwise`).
    pub fn target_labels(&self, y: &[i64]) -> Vec<i64> {
        match self.otherwise {
            Some(other) => y.iter().map(|&l| if l == self.nets[0].label { l } else { other }).collect(),
            None => y.to_vec(),
        }
    }

    pub fn accuracy(&self, split: &Split, backend: &Backend) -> Result<f64> {
        let pred = self.predict(split, backend)?;
        Ok(accuracy(&pred, &self.target_labels(&split.y)))
    }
}

pub fn accuracy(pred: &[i64], truth: &[i64]) -> f64 {
    pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64
}

/// φ(X) on the given backend (identical bits on every backend).
pub fn threshold_bits(backend: &Backend, x: &[f32], layer: &Layer1) -> Result<Bits> {
    match backend {
        Backend::Cpu => Ok(layer1::threshold_bits(x, layer)),
        Backend::Cuda(c) => Ok(c.construct_layer1(x, layer)?.0),
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FitReport {
    pub interpolated: bool,
    pub train_accuracy: f64,
    pub test_accuracy: Option<f64>,
    pub first_width: usize,
    pub second_width: usize,
    pub second_widths: BTreeMap<i64, usize>,
    pub parameters: usize,
    pub fit_seconds: f64,
    pub device: crate::device::Device,
    pub activation: Activation,
    pub max_bias: f32,
    pub seed: u64,
    pub samples: usize,
    /// Training points of X⁻ no neuron covers, summed over classes.
    pub uncovered: usize,
    /// Distinct training inputs that occur with more than one label: no network
    /// can interpolate those.
    pub conflicts: usize,
}

/// Checks that `target` can be built on `train` (the class exists, there is something
/// to separate it from), before any output is written.
pub fn check_target(train: &Split, target: Target) -> Result<()> {
    problems(train, target).map(|_| ())
}

/// The covering problems of a fit: (label that gets the layer, X⁻ rows, X⁺ rows).
fn problems(train: &Split, target: Target) -> Result<(Vec<(i64, Vec<u32>, Vec<u32>)>, Option<i64>)> {
    let counts = train.class_counts();
    let labels: Vec<i64> = counts.keys().copied().collect();
    let rows_where = |f: &dyn Fn(i64) -> bool| -> Vec<u32> { (0..train.len() as u32).filter(|&i| f(train.y[i as usize])).collect() };
    match target {
        Target::Binary { positive } => {
            let c = match positive {
                Some(c) => c,
                None if labels.len() == 2 => labels[1],
                None => bail!("the data has {} classes; pass --positive-class C or --one-vs-rest", labels.len()),
            };
            if !counts.contains_key(&c) {
                bail!("class {c} has no training samples (classes present: {labels:?})");
            }
            let rest: Vec<i64> = labels.iter().copied().filter(|&l| l != c).collect();
            if rest.is_empty() {
                bail!("every training sample has class {c}: there is nothing to separate it from");
            }
            let other = if rest.len() == 1 { rest[0] } else { -1 };
            Ok((vec![(c, rows_where(&|l| l == c), rows_where(&|l| l != c))], Some(other)))
        }
        Target::OneVsRest => {
            if labels.len() < 2 {
                bail!("one-vs-rest needs at least two classes, the data has {labels:?}");
            }
            Ok((labels.iter().map(|&c| (c, rows_where(&|l| l == c), rows_where(&|l| l != c))).collect(), None))
        }
    }
}

/// Number of distinct inputs that appear with more than one label.
pub fn conflicts(x: &[f32], y: &[i64], dim: usize) -> usize {
    // FxHash: SipHash's resistance to chosen keys buys nothing here and took longer
    // than a small fit.
    let mut seen: rustc_hash::FxHashMap<&[u8], (i64, bool)> = rustc_hash::FxHashMap::default();
    seen.reserve(y.len());
    for (row, &label) in bytemuck::cast_slice::<f32, u8>(x).chunks(dim * 4).zip(y) {
        let e = seen.entry(row).or_insert((label, false));
        if e.0 != label {
            e.1 = true;
        }
    }
    seen.values().filter(|v| v.1).count()
}

/// The permutation of X⁻ candidates for class `label`.
pub fn candidate_order(seed: u64, label: i64, count: usize) -> Vec<u32> {
    Philox::new(seed, STREAM_ORDER ^ ((label as u64) << 16)).permutation(count)
}

pub fn validate_config(cfg: &FitConfig) -> Result<()> {
    if cfg.width == 0 {
        bail!("--width must be at least 1");
    }
    if !cfg.max_bias.is_finite() || cfg.max_bias < 0.0 {
        bail!("--max-bias must be a finite number ≥ 0, got {}", cfg.max_bias);
    }
    Ok(())
}

/// Refuses a fit whose first layer and features cannot fit in memory: the weights
/// (n × (d + 1) float32), the bit features of every row (N·n bits, held twice: the
/// covering's layout and the verification's), and for the ReLU variant the real-valued
/// features (N × n float32).
pub fn check_fit_memory(rows: usize, dim: usize, cfg: &FitConfig) -> Result<()> {
    use crate::resources::{check_memory, product};
    let mut parts = vec![("the first layer", product(&[cfg.width, dim + 1, 4])), ("the bit features", product(&[rows, cfg.width]) / 4)];
    if cfg.activation == Activation::Relu {
        parts.push(("the real-valued features", product(&[rows, cfg.width, 4])));
    }
    check_memory(&parts, "--width")
}

/// Scale factor 1/max‖x‖ of a split (1 when all samples are zero). The norms are
/// summed in float64: squares of float32 values overflow float32 from 1.8e19 and
/// underflow it below 1e-19, but never float64.
pub fn unit_norm_scale(x: &[f32], dim: usize) -> f64 {
    use rayon::prelude::*;
    let max = x.par_chunks(dim.max(1)).map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>()).reduce(|| 0.0, f64::max).sqrt();
    if max > 0.0 { 1.0 / max } else { 1.0 }
}

/// x ← x·scale, rounded once from the float64 product.
pub fn scale_inputs(x: &mut [f32], scale: f64) {
    if scale != 1.0 {
        x.iter_mut().for_each(|v| *v = (*v as f64 * scale) as f32);
    }
}

/// A split's inputs as float32, scaled to max ‖x‖₂ = 1 when `to_unit_norm` (the
/// paper's preprocessing), with the factor used.
pub fn unit_scaled(split: &Split, to_unit_norm: bool) -> (Vec<f32>, f64) {
    let mut x = split.x.to_f32();
    let scale = if to_unit_norm { unit_norm_scale(&x, split.features()) } else { 1.0 };
    scale_inputs(&mut x, scale);
    (x, scale)
}

/// Builds one network on `ds`'s training split and evaluates it.
pub fn fit(ds: &Dataset, cfg: &FitConfig, backend: &Backend) -> Result<(Network, FitReport)> {
    validate_config(cfg)?;
    check_fit_memory(ds.train.len(), ds.train.features(), cfg)?;
    let (rows, dim) = (ds.train.len(), ds.train.features());
    crate::resources::check_device_memory(
        backend,
        &[("the training set", crate::resources::product(&[rows, dim, 4])), ("the first layer", crate::resources::product(&[cfg.width, dim + 1, 4])), ("the bit features", crate::resources::product(&[rows, cfg.width]) / 8)],
        "--width",
    )?;
    let (problems, otherwise) = problems(&ds.train, cfg.target)?;
    let (x, input_scale) = unit_scaled(&ds.train, cfg.scale_to_unit_norm);
    // The ReLU variant works on real-valued features, on the CPU.
    let backend = if cfg.activation == Activation::Relu { &Backend::Cpu } else { backend };
    if matches!(backend, Backend::Cpu) && cfg.activation == Activation::Threshold && problems.len() == 1 && layer1::word_major_applies(ds.train.features()) {
        return fit_word_major(ds, cfg, &problems[0], otherwise, &x, input_scale);
    }

    let t0 = Instant::now();
    // The candidate orders do not depend on layer 1: they are drawn beside it.
    let (layer, orders) = crate::quick_pool::join(
        || Layer1::random(cfg.seed, cfg.width, ds.train.features(), cfg.max_bias),
        || problems.iter().map(|(label, neg, _)| candidate_order(cfg.seed, *label, neg.len())).collect::<Vec<_>>(),
    );
    let (bits, device_bits) = match backend {
        Backend::Cuda(c) => {
            let (bits, on_device) = c.construct_layer1(&x, &layer)?;
            (bits, Some(on_device))
        }
        Backend::Cpu => (layer1::threshold_bits(&x, &layer), None),
    };
    let relu = (cfg.activation == Activation::Relu).then(|| layer1::relu_features(&x, &layer, &bits));
    let mut nets = Vec::new();
    let mut uncovered = 0;
    for ((label, neg, pos), order) in problems.iter().zip(orders) {
        let cov = match (&relu, backend, &device_bits) {
            (Some(feats), _, _) => cover::greedy_cover_relu(&bits, feats, cfg.width, pos, neg, &order),
            (None, Backend::Cuda(c), Some(on_device)) => {
                let mut scanner = c.cover_scanner(on_device, bits.words, cfg.width, pos, neg)?;
                cover::greedy_cover(&cover::ListedRows(&bits, neg), cfg.width, &order, &mut scanner, GPU_BATCH, MAX_BATCH)?
            }
            _ => {
                let mut scanner = cover::CpuScanner::new(&bits, cfg.width, pos, neg);
                cover::greedy_cover(&cover::ListedRows(&bits, neg), cfg.width, &order, &mut scanner as &mut dyn CoverScanner, CPU_BATCH, MAX_BATCH)?
            }
        };
        uncovered += cov.uncovered;
        nets.push(ClassNet { label: *label, neurons: cov.neurons });
    }
    finish(ds, cfg, backend, layer, nets, otherwise, input_scale, uncovered, t0, &x, |net| net.predict_features(&bits, relu.as_deref()))
}

/// `fit` of one covering layer over 1- to 3-dimensional inputs on the CPU: the first
/// layer's chunks write X⁺ and X⁻ word-major, where the covering scans them, with the
/// candidate order drawn beside them (the same network as the general path).
fn fit_word_major(ds: &Dataset, cfg: &FitConfig, (label, neg, pos): &(i64, Vec<u32>, Vec<u32>), otherwise: Option<i64>, x: &[f32], input_scale: f64) -> Result<(Network, FitReport)> {
    let t0 = Instant::now();
    let (layer, layouts, order) =
        layer1::random_word_major(cfg.seed, cfg.width, cfg.max_bias, x, ds.train.features(), &[pos, neg], || candidate_order(cfg.seed, *label, neg.len()));
    let (positives, negatives) = (&layouts[0], &layouts[1]);
    // Lines a helper wrote are in its core's cache: ask for all of them at once
    // rather than one scan step at a time.
    for layout in [positives, negatives] {
        crate::simd::prefetch_lines(&layout.data);
    }
    let mut scanner = cover::CpuScanner::word_major(cfg.width, positives, negatives);
    let cov = cover::greedy_cover(negatives, cfg.width, &order, &mut scanner, CPU_BATCH, MAX_BATCH)?;
    let nets = vec![ClassNet { label: *label, neurons: cov.neurons }];
    finish(ds, cfg, &Backend::Cpu, layer, nets, otherwise, input_scale, cov.uncovered, t0, x, |net| {
        let other = net.otherwise.expect("one covering layer predicts its other label");
        let mut pred = vec![other; ds.train.len()];
        for (rows, layout) in [(pos, positives), (neg, negatives)] {
            for (&r, fires) in rows.iter().zip(cover::firing(&net.nets[0].neurons, layout)) {
                if fires {
                    pred[r as usize] = net.nets[0].label;
                }
            }
        }
        pred
    })
}

#[allow(clippy::too_many_arguments)]
fn finish(
    ds: &Dataset,
    cfg: &FitConfig,
    backend: &Backend,
    layer: Layer1,
    nets: Vec<ClassNet>,
    otherwise: Option<i64>,
    input_scale: f64,
    uncovered: usize,
    t0: Instant,
    x: &[f32],
    train_predictions: impl FnOnce(&Network) -> Vec<i64>,
) -> Result<(Network, FitReport)> {
    let fit_seconds = t0.elapsed().as_secs_f64();
    let net = Network {
        activation: cfg.activation,
        max_bias: cfg.max_bias,
        seed: cfg.seed,
        input_scale,
        sample_shape: ds.sample_shape().to_vec(),
        layer1: layer,
        nets,
        otherwise,
    };
    // Re-verify by evaluating the finished network on the training set.
    let pred = train_predictions(&net);
    let train_accuracy = accuracy(&pred, &net.target_labels(&ds.train.y));
    let interpolated = train_accuracy == 1.0;
    if interpolated != (uncovered == 0) {
        bail!("internal error: the covering left {uncovered} points uncovered but the network's training accuracy is {train_accuracy}");
    }
    let test_accuracy = ds.test.as_ref().map(|t| net.accuracy(t, backend)).transpose()?;
    let widths = net.second_widths();
    let report = FitReport {
        interpolated,
        train_accuracy,
        test_accuracy,
        first_width: net.first_width(),
        second_width: widths.values().sum(),
        second_widths: widths,
        parameters: net.parameters(),
        fit_seconds,
        device: backend.device(),
        activation: cfg.activation,
        max_bias: cfg.max_bias,
        seed: cfg.seed,
        samples: ds.train.len(),
        uncovered,
        // Identical inputs with different labels get the same output, so a network
        // that interpolates proves there are none (and counting them takes longer
        // than a small fit).
        conflicts: if interpolated { 0 } else { conflicts(x, &ds.train.y, ds.train.features()) },
    };
    Ok((net, report))
}
