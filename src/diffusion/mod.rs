//! Diffusion models and memorization (ALGORITHMS.md §3): the closed-form optimal
//! denoiser of a training set, EDM's deterministic Heun sampler, exact nearest
//! neighbours and the memorization ratio.

pub mod emm;
pub mod gallery;
pub mod knn;
pub mod knn_u8;
pub mod net;
pub mod optimal;
pub mod sampler;
pub mod train;
pub mod unet;

use crate::data::{Array, DType};
use rayon::prelude::*;
use anyhow::{bail, Result};

/// The affine map between a dataset's values and the model space [−1, 1] in which
/// denoisers work: 8-bit pixels p ↦ p/127.5 − 1 (ALGORITHMS.md), other data from its
/// range (see `of`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelRange {
    pub lo: f32,
    pub hi: f32,
}

impl PixelRange {
    /// Data already in model space.
    pub const MODEL: PixelRange = PixelRange { lo: -1.0, hi: 1.0 };

    /// 8-bit images (uint8 with values reaching 128 or more) use [0, 255]; other uint8
    /// data (digits' 0…16 counts) [0, max]; any other type the training split's
    /// [min, max].
    pub fn of(x: &Array) -> Result<Self> {
        let (mut lo, mut hi) = min_max(x);
        if x.dtype == DType::U8 {
            lo = 0.0;
            if hi >= 128.0 {
                hi = 255.0;
            }
        }
        if !(hi > lo) {
            bail!("{}: every value is {lo}; a denoiser needs data that varies", x.origin);
        }
        Ok(Self { lo, hi })
    }

    /// The map `rule` asks for on the training samples `x`.
    pub fn resolve(x: &Array, rule: RangeRule) -> Result<Self> {
        match rule {
            RangeRule::Identity => Ok(Self::MODEL),
            RangeRule::MinMax => Self::of(x),
            RangeRule::Explicit { lo, hi } => Ok(Self { lo, hi }),
            RangeRule::Auto if x.dtype.is_integer() => Self::of(x),
            RangeRule::Auto => {
                let (lo, hi) = min_max(x);
                if lo >= -1.0 && hi <= 1.0 { Ok(Self::MODEL) } else { Self::of(x) }
            }
        }
    }

    /// Maps data values to model space in place, in float64 (a range of tiny or huge
    /// values has a factor outside float32's range).
    pub fn to_model(&self, v: &mut [f32]) {
        if *self == Self::MODEL {
            return;
        }
        let lo = self.lo as f64;
        let scale = 2.0 / (self.hi as f64 - lo);
        v.iter_mut().for_each(|x| *x = ((*x as f64 - lo) * scale - 1.0) as f32);
    }

    /// What a uint8 pixel of a generated image (see `quantize`) stands for in the data's
    /// units: the pixel itself for uint8 data.
    pub fn pixel_to_data(&self, p: u8) -> f32 {
        if self.lo == 0.0 && self.hi == 255.0 {
            return p as f32;
        }
        (self.lo as f64 + p as f64 / 255.0 * (self.hi as f64 - self.lo as f64)) as f32
    }

    /// A model-space value in the data's units.
    pub fn to_data(&self, x: f32) -> f32 {
        if *self == Self::MODEL {
            return x;
        }
        (self.lo as f64 + (x as f64 + 1.0) * 0.5 * (self.hi as f64 - self.lo as f64)) as f32
    }
}

/// How data values map to the model space [−1, 1] (`--range`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeRule {
    /// uint8 data as pixels (see `PixelRange::of`); float data already inside [−1, 1]
    /// as it is (EDM's convention); other float data by its min/max.
    Auto,
    /// The data is in model space already.
    Identity,
    /// The training split's [min, max] (uint8: [0, 255] or [0, max]) onto [−1, 1].
    MinMax,
    /// [lo, hi] onto [−1, 1].
    Explicit { lo: f32, hi: f32 },
}

impl std::str::FromStr for RangeRule {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "identity" => Ok(Self::Identity),
            "minmax" => Ok(Self::MinMax),
            _ => {
                let parse = |t: &str| t.trim().parse::<f32>().ok().filter(|v| v.is_finite());
                match s.split_once(',').map(|(a, b)| (parse(a), parse(b))) {
                    Some((Some(lo), Some(hi))) if hi > lo && ((hi as f64 - lo as f64) as f32).is_finite() => Ok(Self::Explicit { lo, hi }),
                    _ => Err(format!("'{s}': use auto, identity, minmax, or LO,HI with finite LO < HI")),
                }
            }
        }
    }
}

impl std::fmt::Display for RangeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Identity => write!(f, "identity"),
            Self::MinMax => write!(f, "minmax"),
            Self::Explicit { lo, hi } => write!(f, "{lo},{hi}"),
        }
    }
}

/// The smallest and largest value of an array.
fn min_max(x: &Array) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    let mut buf = Vec::new();
    for r in crate::sched::chunks(0..x.rows(), 4096) {
        buf.resize(r.len() * x.row_len(), 0.0);
        x.rows_f32_into(r.start, r.end, &mut buf);
        for &v in &buf {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    (lo, hi)
}

/// Model space → uint8 as EDM writes its images: `(x·127.5 + 128).clip(0, 255)`
/// truncated, which rounds x·127.5 + 127.5 to the nearest pixel and maps −1 ↦ 0, 1 ↦ 255.
pub fn quantize(x: f32) -> u8 {
    (x * 127.5 + 128.0).clamp(0.0, 255.0) as u8
}

/// The model-space value a uint8 pixel stands for (inverse of `quantize` on pixels).
pub fn dequantize(q: u8) -> f32 {
    (q as f32 - 127.5) / 127.5
}

/// Writes OUT/samples.npy (model-space rows quantized to uint8 as EDM writes images,
/// shape (count, …sample_shape)) and, when the samples are images, a grid of the first
/// 64 at `grid` (default OUT/grid.png); returns both paths.
pub fn write_samples(out: &std::path::Path, x: &[f32], sample_shape: &[usize], grid: Option<std::path::PathBuf>) -> Result<(std::path::PathBuf, Option<std::path::PathBuf>)> {
    let d: usize = sample_shape.iter().product();
    let pixels: Vec<u8> = x.iter().map(|&v| quantize(v)).collect();
    crate::report::create_out_dir(out)?;
    let mut shape = vec![x.len() / d];
    shape.extend_from_slice(sample_shape);
    let samples_path = out.join("samples.npy");
    crate::report::write_npy(&samples_path, &shape, &pixels)?;
    let Ok(dims) = crate::report::image::image_dims(sample_shape) else { return Ok((samples_path, None)) };
    let grid = grid.unwrap_or_else(|| out.join("grid.png"));
    let shown: Vec<f32> = pixels.iter().take(64 * d).map(|&p| p as f32).collect();
    crate::report::image::grid_png(&shown, dims, (0.0, 255.0), 8, &grid)?;
    Ok((samples_path, Some(grid)))
}

/// A training set as the denoiser and the neighbour search read it: rows converted to
/// model space chunk by chunk from the (memory-mapped) array, never held whole.
pub struct TrainingSet<'a> {
    pub x: &'a Array,
    pub range: PixelRange,
    /// The largest squared norm of a model-space row.
    pub max_sq_norm: f64,
}

impl<'a> TrainingSet<'a> {
    pub fn new(x: &'a Array, range: PixelRange) -> Result<Self> {
        if x.rows() == 0 {
            bail!("{}: the training set is empty", x.origin);
        }
        let mut max_sq_norm = 0f64;
        let mut buf = Vec::new();
        let mut set = Self { x, range, max_sq_norm: 0.0 };
        for r in crate::sched::chunks(0..x.rows(), 4096) {
            set.rows(r, &mut buf);
            for row in buf.chunks_exact(x.row_len()) {
                max_sq_norm = max_sq_norm.max(sq_norm(row));
            }
        }
        set.max_sq_norm = max_sq_norm;
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.x.rows()
    }

    pub fn is_empty(&self) -> bool {
        self.x.rows() == 0
    }

    pub fn dim(&self) -> usize {
        self.x.row_len()
    }

    /// Rows `r` in model space, into `out` (resized).
    pub fn rows(&self, r: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let d = self.dim();
        out.resize(r.len() * d, 0.0);
        // Converted in parallel blocks of rows: a chunk is megabytes.
        const ROWS: usize = 64;
        out.par_chunks_mut(ROWS * d).enumerate().for_each(|(b, o)| {
            let start = r.start + b * ROWS;
            self.x.rows_f32_into(start, start + o.len() / d, o);
            self.range.to_model(o);
        });
    }

    /// For 8-bit data: the squared norms of the model-space rows of the raw `bytes`,
    /// equal to `sq_norm` of the rows `rows` returns (the same float32 values, squared
    /// in float64 and summed in the same order), from a table of the 256 values.
    pub fn pixel_sq_norms(&self, bytes: &[u8], out: &mut Vec<f64>) {
        let mut values: Vec<f32> = (0..256).map(|p| p as f32).collect();
        self.range.to_model(&mut values);
        let squares: Vec<f64> = values.iter().map(|&v| v as f64 * v as f64).collect();
        let d = self.dim();
        out.resize(bytes.len() / d, 0.0);
        out.par_iter_mut().zip(bytes.par_chunks_exact(d)).for_each(|(o, row)| *o = row.iter().map(|&p| squares[p as usize]).sum());
    }

    /// Checks that queries of `len` numbers are whole rows of this set's width.
    pub fn check_queries(&self, len: usize, what: &str) -> Result<usize> {
        let d = self.dim();
        if len % d != 0 || len == 0 {
            bail!("{what}: {len} numbers are not a whole number of samples of dimension {d} (the training data's)");
        }
        Ok(len / d)
    }
}

/// Squared norm, summed in float64 in index order.
pub fn sq_norm(v: &[f32]) -> f64 {
    v.iter().map(|&a| a as f64 * a as f64).sum()
}

/// ‖a − b‖² in float64, summed in index order: every term is exact (a difference of
/// two floats and its square fit in a double), so this is the value the CUDA kernels
/// compute too, bit for bit.
pub fn exact_sq_dist(a: &[f32], b: &[f32]) -> f64 {
    let mut s = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        s += d * d;
    }
    s
}

/// a·b in float64, summed in index order (each product of two floats is exact).
pub fn exact_dot(a: &[f32], b: &[f32]) -> f64 {
    let mut s = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        s += x as f64 * y as f64;
    }
    s
}

/// A bound on the error of a float32 dot product of length `d`, per unit of Σ|aᵢbᵢ|:
/// γ_d = d·u/(1 − d·u), u = 2⁻²⁴, with a margin for the final subtractions.
pub fn f32_dot_error_factor(d: usize) -> f64 {
    let u = f64::powi(2.0, -24);
    let du = (d as f64 + 4.0) * u;
    1.05 * du / (1.0 - du)
}

/// The optimal denoiser of a training set on the CPU or a GPU.
pub enum OptimalDenoiser<'a> {
    Cpu(TrainingSet<'a>),
    Cuda(crate::device::GpuDenoiser),
}

impl<'a> OptimalDenoiser<'a> {
    /// On `backend`; on a GPU this uploads the training set (as much as fits).
    pub fn new(backend: &crate::device::Backend, train: TrainingSet<'a>) -> Result<Self> {
        Ok(match backend {
            crate::device::Backend::Cpu => Self::Cpu(train),
            crate::device::Backend::Cuda(g) => Self::Cuda(crate::device::GpuDenoiser::new(g.clone(), &train)?),
        })
    }

    /// Runs the Heun sampler from `x0`; on a GPU every step stays on the device.
    pub fn sample(&mut self, x0: Vec<f32>, schedule: &sampler::Schedule, step: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
        schedule.validate()?;
        match self {
            Self::Cuda(g) => g.sample(&x0, schedule, step),
            Self::Cpu(_) => sampler::heun(self, x0, schedule, step),
        }
    }
}

impl sampler::Denoiser for OptimalDenoiser<'_> {
    fn dim(&self) -> usize {
        match self {
            Self::Cpu(t) => t.dim(),
            Self::Cuda(g) => g.dim(),
        }
    }

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>> {
        match self {
            Self::Cpu(t) => Ok(optimal::denoise(t, x, sigma)?.0),
            Self::Cuda(g) => {
                optimal::check_sigma(sigma)?;
                if x.is_empty() || x.len() % g.dim() != 0 {
                    bail!("denoiser queries: {} numbers are not a whole number of samples of dimension {}", x.len(), g.dim());
                }
                g.denoise(x, sigma)
            }
        }
    }
}

/// The training split of `spec`, optionally a class-balanced subset of `subset` samples
/// (the diffusion study's training sets).
pub fn training_data(spec: &str, subset: Option<usize>) -> Result<crate::data::Dataset> {
    let mut ds = crate::data::open(spec)?;
    if let Some(n) = subset {
        ds.train = crate::data::transform::balanced_subset(&ds.train, n)?;
    }
    Ok(ds)
}

/// Where samples come from: the optimal denoiser of a training set, or a trained
/// denoiser's run directory (`rote denoise train`).
pub enum SampleSource<'a> {
    Optimal { data: &'a str, subset: Option<usize>, range: RangeRule },
    Trained { run: &'a std::path::Path },
}

/// Samples in model space and what made them.
pub struct Samples {
    /// (count × dim) values in model space [−1, 1], as `write_samples` takes them.
    pub x: Vec<f32>,
    pub sample_shape: Vec<usize>,
    pub training_samples: usize,
    /// "optimal" or "trained (RUN)".
    pub denoiser: String,
    pub pixel_range: PixelRange,
}

/// `count` samples with EDM's Heun sampler from the initial noise of `seed`:
/// `rote denoise sample`'s computation. Only `shard`'s rows of them are drawn (each
/// sample's noise depends on its index alone, so the shards of a job join into the
/// samples of one run), split over `backends` (several GPUs: each samples its part on
/// its own thread). `step(k)` is called after each sampler step (of the first part).
pub fn sample(source: &SampleSource, count: usize, shard: crate::sched::Shard, schedule: &sampler::Schedule, seed: u64, backends: &[crate::device::Backend], step: &mut (dyn FnMut(usize) + Send)) -> Result<Samples> {
    schedule.validate()?;
    if count == 0 {
        bail!("--samples must be at least 1");
    }
    let rows = shard.range(count);
    let step = std::sync::Mutex::new(step);
    let first = rows.start;
    let report = |rows: &std::ops::Range<usize>, k: usize| {
        if rows.start == first {
            if let Ok(mut s) = step.lock() {
                s(k)
            }
        }
    };
    match source {
        SampleSource::Trained { run } => {
            let (cfg, layout, weights) = train::open_run(run)?;
            let parts = crate::sched::split_over(backends, rows, &|backend, rows| {
                if rows.is_empty() {
                    return Ok(vec![]);
                }
                train::sample_trained_rows(&cfg, layout.clone(), weights.clone(), rows.clone(), schedule, seed, backend, &mut |k| report(&rows, k))
            })?;
            Ok(Samples { x: parts.concat(), sample_shape: cfg.sample_shape.clone(), training_samples: cfg.training_samples, denoiser: format!("trained ({})", run.display()), pixel_range: cfg.pixel_range })
        }
        SampleSource::Optimal { data, subset, range } => {
            let ds = training_data(data, *subset)?;
            let pixel_range = PixelRange::resolve(&ds.train.x, *range)?;
            let parts = crate::sched::split_over(backends, rows, &|backend, rows| {
                if rows.is_empty() {
                    return Ok(vec![]);
                }
                let train = TrainingSet::new(&ds.train.x, pixel_range)?;
                let x0 = sampler::initial_noise(seed, rows.start, rows.len(), train.dim(), schedule.sigma_max);
                OptimalDenoiser::new(backend, train)?.sample(x0, schedule, &mut |k| report(&rows, k))
            })?;
            Ok(Samples { x: parts.concat(), sample_shape: ds.sample_shape().to_vec(), training_samples: ds.train.len(), denoiser: "optimal".into(), pixel_range })
        }
    }
}

/// `knn_on` with the queries split over `backends` (`--device cuda:all`), each part on
/// its own thread: the neighbours one device finds.
pub fn knn_on_all(backends: &[crate::device::Backend], train: &TrainingSet, queries: &[f32], k: usize, metric: knn::Metric) -> Result<knn::Neighbours> {
    let (d, rows) = (train.dim(), train.check_queries(queries.len(), "kNN queries")?);
    let parts = crate::sched::split_over(backends, 0..rows, &|backend, rows| {
        if rows.is_empty() {
            return Ok(knn::Neighbours { k, indices: vec![], values: vec![] });
        }
        knn_on(backend, train, &queries[rows.start * d..rows.end * d], k, metric)
    })?;
    let mut out = knn::Neighbours { k, indices: vec![], values: vec![] };
    for p in parts {
        out.indices.extend(p.indices);
        out.values.extend(p.values);
    }
    Ok(out)
}

/// Exact k nearest neighbours on `backend`.
pub fn knn_on(backend: &crate::device::Backend, train: &TrainingSet, queries: &[f32], k: usize, metric: knn::Metric) -> Result<knn::Neighbours> {
    match backend {
        crate::device::Backend::Cpu => knn::knn(train, queries, k, metric),
        // The GPU screen takes values as they are: data whose magnitude the CPU screen
        // has to rescale (norms beyond 2^±40) is searched on the CPU.
        crate::device::Backend::Cuda(_) if knn::screen_scale(train, queries) != 1.0 => knn::knn(train, queries, k, metric),
        crate::device::Backend::Cuda(g) => crate::device::cuda_diffusion::knn(g, train, queries, k, metric),
    }
}
