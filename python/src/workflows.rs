//! The CLI's file-based workflows from Python: datasets, the constructed threshold
//! networks, training runs, curvature of runs, sampling and the shadow-model pools. Each
//! function calls the library function the matching `rote` command calls, with the same
//! defaults, and returns what that command's `--json` prints (arrays as NumPy arrays).

use crate::{bad, err, open_backend, open_backends, to_json, to_py, Progress};
use clap::ValueEnum;
use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rote::data::{Array, DType, Dataset, Split};
use std::path::PathBuf;

/// One of a clap value enum's names, or a RoteError listing them.
fn choice<T: ValueEnum>(what: &str, s: &str) -> PyResult<T> {
    T::from_str(s, false).map_err(|_| {
        let names: Vec<String> = T::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|p| format!("{:?}", p.get_name())).collect();
        bad(format!("{what}={s:?}: expected one of {}", names.join(", ")))
    })
}

fn parsed<T: std::str::FromStr<Err = String>>(what: &str, s: &str) -> PyResult<T> {
    s.parse().map_err(|e: String| bad(format!("{what}={s:?}: {e}")))
}

/// A split's samples as an array of their stored type (uint8 and float32 as they are,
/// other types as float32) with their shape.
fn samples_array<'py>(py: Python<'py>, x: &Array) -> PyResult<Bound<'py, PyAny>> {
    Ok(match x.dtype {
        DType::U8 => x.bytes().to_vec().into_pyarray(py).reshape(x.shape.clone())?.into_any(),
        _ => x.to_f32().into_pyarray(py).reshape(x.shape.clone())?.into_any(),
    })
}

/// The dataset a data spec names (as `--data` takes it: a built-in name, a generator
/// with options, a dataset directory, with transforms): {name, x, y, x_test, y_test,
/// sample_shape, classes}. uint8 samples stay uint8, other types become float32.
#[pyfunction]
pub fn dataset<'py>(py: Python<'py>, spec: &str) -> PyResult<Bound<'py, PyDict>> {
    let ds = py.allow_threads(|| rote::data::open(spec)).map_err(err)?;
    let out = PyDict::new(py);
    out.set_item("name", &ds.meta.name)?;
    out.set_item("x", samples_array(py, &ds.train.x)?)?;
    out.set_item("y", ds.train.y.clone().into_pyarray(py))?;
    match &ds.test {
        Some(t) => {
            out.set_item("x_test", samples_array(py, &t.x)?)?;
            out.set_item("y_test", t.y.clone().into_pyarray(py))?;
        }
        None => {
            out.set_item("x_test", py.None())?;
            out.set_item("y_test", py.None())?;
        }
    }
    out.set_item("sample_shape", ds.sample_shape().to_vec())?;
    out.set_item("classes", ds.classes())?;
    Ok(out)
}

fn split_from(x: &Bound<'_, PyAny>, y: PyReadonlyArray1<'_, i64>, what: &str) -> PyResult<Split> {
    let array = if let Ok(a) = x.extract::<PyReadonlyArrayDyn<u8>>() {
        let s = a.as_slice().map_err(|_| bad(format!("{what} must be C-contiguous")))?;
        Array::from_u8(a.shape().to_vec(), s, what)
    } else {
        let a = x.call_method1("astype", ("float32",))?;
        let a: PyReadonlyArrayDyn<f32> = a.extract().map_err(|_| bad(format!("{what} must be an array of numbers")))?;
        let s = a.as_slice().map_err(|_| bad(format!("{what} must be C-contiguous")))?;
        Array::from_f32(a.shape().to_vec(), s, what)
    };
    if array.shape.len() < 2 {
        return Err(bad(format!("{what} has shape {:?}: give (samples, features…)", array.shape)));
    }
    let labels = y.as_slice().map_err(|_| bad("labels must be a contiguous int64 array"))?.to_vec();
    Split::new(array, labels).map_err(err)
}

/// Writes arrays as a dataset directory (x.npy, y.npy, optional x_test.npy and
/// y_test.npy, meta.json) that every `data` argument (and `--data` of the CLI) can
/// name. `x`: uint8 (kept as pixels) or numbers (stored as float32), (N, …); `y`: int64
/// labels. Refuses to overwrite a dataset. Returns `out` as a string.
#[pyfunction]
#[pyo3(signature = (out, x, y, *, x_test=None, y_test=None, name=None))]
pub fn save_dataset(out: PathBuf, x: &Bound<'_, PyAny>, y: PyReadonlyArray1<'_, i64>, x_test: Option<&Bound<'_, PyAny>>, y_test: Option<PyReadonlyArray1<'_, i64>>, name: Option<String>) -> PyResult<String> {
    let train = split_from(x, y, "x")?;
    let test = match (x_test, y_test) {
        (Some(x), Some(y)) => Some(split_from(x, y, "x_test")?),
        (None, None) => None,
        _ => return Err(bad("give both x_test and y_test, or neither")),
    };
    let meta = rote::data::Meta { name: name.unwrap_or_else(|| out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()), ..Default::default() };
    let ds = Dataset { meta, train, test };
    ds.validate().map_err(err)?;
    ds.write_dir(&out).map_err(err)?;
    Ok(out.display().to_string())
}

/// An interpolating threshold network built by `construct` (ALGORITHMS.md §1), or read
/// back with `ThresholdNetwork.load`.
#[pyclass(module = "rote._rote", name = "ThresholdNetwork", frozen)]
pub struct PyThresholdNetwork {
    net: rote::construct::Network,
}

#[pymethods]
impl PyThresholdNetwork {
    /// Reads a network saved by `save` or `rote construct --out` (safetensors).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        Ok(PyThresholdNetwork { net: rote::construct::io::load(&path).map_err(err)? })
    }

    /// Saves the network as `rote construct --out` does.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        rote::construct::io::save(&self.net, &path).map_err(err)
    }

    /// Predicted labels of raw (unscaled) samples (N, …), the input scale of the fit
    /// applied first; -1 where no one-vs-rest layer fires.
    #[pyo3(signature = (x, *, device="auto"))]
    fn predict<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, device: &str) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let rows = x.getattr("shape")?.get_item(0)?.extract::<usize>()?;
        let split = split_from(x, vec![0i64; rows].into_pyarray(py).readonly(), "x")?;
        if split.features() != self.net.layer1.dim {
            return Err(bad(format!("x has {} features per sample; the network takes {}", split.features(), self.net.layer1.dim)));
        }
        let backend = open_backend(device)?;
        Ok(py.allow_threads(|| self.net.predict(&split, &backend)).map_err(err)?.into_pyarray(py))
    }

    /// `rote predict`: accuracy on the training and test splits of a data spec.
    #[pyo3(signature = (data, *, device="auto"))]
    fn accuracy(&self, py: Python<'_>, data: &str, device: &str) -> PyResult<PyObject> {
        let backend = open_backend(device)?;
        let v = py
            .allow_threads(|| -> anyhow::Result<serde_json::Value> {
                let ds = rote::data::open(data)?;
                if ds.train.features() != self.net.layer1.dim {
                    anyhow::bail!("the network expects {} input features but '{data}' has {}", self.net.layer1.dim, ds.train.features());
                }
                let train = self.net.accuracy(&ds.train, &backend)?;
                let test = ds.test.as_ref().map(|t| self.net.accuracy(t, &backend)).transpose()?;
                Ok(serde_json::json!({ "train_accuracy": train, "test_accuracy": test, "samples": ds.train.len(), "device": backend.device() }))
            })
            .map_err(err)?;
        to_py(py, &v)
    }

    #[getter]
    fn first_width(&self) -> usize {
        self.net.first_width()
    }

    /// Layer-2 neurons per covered class.
    #[getter]
    fn second_widths(&self) -> std::collections::BTreeMap<i64, usize> {
        self.net.second_widths()
    }

    #[getter]
    fn parameters(&self) -> usize {
        self.net.parameters()
    }
}

/// `rote construct`: the randomized construction of an interpolating three-layer
/// threshold network on a data spec. Returns (network, report) with the report `rote
/// construct --json` prints.
#[pyfunction]
#[pyo3(signature = (data, width, max_bias, *, activation="threshold", positive_class=None, one_vs_rest=false, seed=0, scale=true, device="auto"))]
#[allow(clippy::too_many_arguments)]
pub fn construct(py: Python<'_>, data: &str, width: usize, max_bias: f32, activation: &str, positive_class: Option<i64>, one_vs_rest: bool, seed: u64, scale: bool, device: &str) -> PyResult<(PyThresholdNetwork, PyObject)> {
    use rote::construct::{self, FitConfig, Target};
    let activation: construct::Activation = choice("activation", activation)?;
    if one_vs_rest && positive_class.is_some() {
        return Err(bad("give positive_class or one_vs_rest, not both"));
    }
    let backend = open_backend(device)?;
    let (net, report) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let ds = rote::data::open(data)?;
            let target = Target::choose(one_vs_rest, positive_class, ds.classes());
            let cfg = FitConfig { width, max_bias, activation, seed, target, scale_to_unit_norm: scale };
            construct::validate_config(&cfg)?;
            construct::fit(&ds, &cfg, &backend)
        })
        .map_err(err)?;
    Ok((PyThresholdNetwork { net }, to_py(py, &to_json(&report)?)?))
}

/// A training recipe from the keyword arguments `train` and `pool_train` share.
#[allow(clippy::too_many_arguments)]
fn recipe(data: &str, model: &str, epochs: usize, batch: usize, lr: f32, momentum: f32, weight_decay: f32, schedule: &str, label_noise: f64, duplicate_conflicts: usize, seed: u64, augment: &str) -> PyResult<rote::nn::train::TrainConfig> {
    let schedule = choice("schedule", schedule)?;
    Ok(rote::nn::train::TrainConfig { epochs, batch, lr, momentum, weight_decay, schedule, label_noise, duplicate_conflicts, seed, augment: augment.to_string(), ..rote::nn::train::TrainConfig::recipe(data, model) })
}

/// `rote train`: trains a classifier (MLP or CNN spec) on a data spec and writes the run
/// directory `out` (run.json, checkpoints/epoch-NNN.safetensors, metrics.csv, …) with
/// the bytes the CLI writes for the same settings. `resume=True` continues an unfinished
/// run in `out` with its own settings. `progress(batches_done, total)`. Returns what
/// `rote train --json` prints.
#[pyfunction]
#[pyo3(signature = (data, model, out, *, epochs=20, batch=128, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="step", label_noise=0.0, duplicate_conflicts=0, seed=0, augment="", normalize="auto", resume=false, device="auto", progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    data: Option<&str>,
    model: Option<&str>,
    out: PathBuf,
    epochs: usize,
    batch: usize,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    schedule: &str,
    label_noise: f64,
    duplicate_conflicts: usize,
    seed: u64,
    augment: &str,
    normalize: &str,
    resume: bool,
    device: &str,
    progress: Option<PyObject>,
) -> PyResult<PyObject> {
    use rote::nn::train;
    let fresh = match (data, model) {
        (Some(data), Some(model)) if !resume => Some(recipe(data, model, epochs, batch, lr, momentum, weight_decay, schedule, label_noise, duplicate_conflicts, seed, augment)?),
        _ if resume => None,
        _ => return Err(bad("give data and model (or resume=True with an unfinished run in out)")),
    };
    let requested = open_backend(device)?;
    let bar = Progress::new(progress, 0);
    let t0 = std::time::Instant::now();
    let (cfg, last, backend) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let (cfg, ds) = match fresh {
                Some(recipe) => recipe.for_data(normalize)?,
                None => train::open_run_and_data(&out)?,
            };
            let (backend, _) = train::backend_for(&cfg, requested);
            train::train(&ds, &cfg, &out, &backend, resume, &|done, total| bar.set(done, total))?;
            Ok((cfg, train::final_metrics(&out)?, backend))
        })
        .map_err(err)?;
    let v = serde_json::json!({
        "run": out, "epochs": cfg.epochs, "resumed": resume, "seconds": t0.elapsed().as_secs_f64(),
        "train_loss": last.train_loss, "train_accuracy": last.train_accuracy, "test_accuracy": last.test_accuracy,
        "device": backend.device(),
    });
    to_py(py, &v)
}

/// `rote eval`: the mean loss and accuracy of each checkpoint of `weights` (a path or
/// 'dir/*.safetensors') for `model` on the splits of `data`, with the normalization the
/// weights were trained with (`normalize`; uint8 inputs / max first unless `scale` is
/// False). Returns {normalization, input_scale, checkpoints: [{checkpoint, train_loss,
/// train_accuracy, test_loss, test_accuracy}]}.
#[pyfunction]
#[pyo3(signature = (model, weights, data, *, normalize="none", scale=true))]
pub fn evaluate(py: Python<'_>, model: &str, weights: &str, data: &str, normalize: &str, scale: bool) -> PyResult<PyObject> {
    let (rows, normalization, input_scale) = py.allow_threads(|| rote::nn::train::evaluate_checkpoints(model, weights, data, normalize, !scale, &|_| {})).map_err(err)?;
    to_py(py, &serde_json::json!({ "normalization": to_json(&normalization)?, "input_scale": input_scale, "checkpoints": to_json(&rows)? }))
}

/// `rote curvature`: per-sample input curvature of a training run (`run`), or of a
/// series of checkpoints trained elsewhere (`weights` pattern with `model`, `data` and
/// `normalize`), averaged over the selected checkpoints. With `out`, writes the files
/// the CLI writes (score.npy, score-<checkpoint>.npy, …). `shard` "I/N" or "auto"
/// (Slurm's array variables) scores that part of the samples. Returns {score, trace,
/// gauss_newton (exact only), rows (start, end), samples, checkpoints, probes,
/// estimator, auroc, precision_at_k, corrupted, seconds, device}.
#[pyfunction]
#[pyo3(signature = (run=None, *, weights=None, model=None, normalize=None, data=None, checkpoints=None, every=1, estimator=None, statistic="paper", probes=10, h=1e-3, seed=0, batch=256, shard="0/1", allow_incomplete=false, out=None, device="auto", progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn curvature<'py>(
    py: Python<'py>,
    run: Option<PathBuf>,
    weights: Option<String>,
    model: Option<String>,
    normalize: Option<String>,
    data: Option<String>,
    checkpoints: Option<String>,
    every: usize,
    estimator: Option<&str>,
    statistic: &str,
    probes: usize,
    h: f32,
    seed: u64,
    batch: usize,
    shard: &str,
    allow_incomplete: bool,
    out: Option<PathBuf>,
    device: &str,
    progress: Option<PyObject>,
) -> PyResult<Bound<'py, PyDict>> {
    use rote::curvature::run::{CurvatureJob, Selection, Source};
    use rote::curvature::{Estimator, ScoreConfig, Statistic};
    let source = match (run, weights) {
        (Some(run), None) => {
            if model.is_some() || normalize.is_some() {
                return Err(bad("model and normalize describe weights; a run has its own"));
            }
            Source::Run(run)
        }
        (None, Some(weights)) => {
            let Some(model) = model else { return Err(bad("weights need model (and data)")) };
            if data.is_none() {
                return Err(bad("weights need data (the samples to score, with their labels)"));
            }
            Source::Series { weights, model, normalize: normalize.unwrap_or_else(|| "none".into()) }
        }
        _ => return Err(bad("give run or weights (not both)")),
    };
    let statistic: Statistic = choice("statistic", statistic)?;
    let estimator: Estimator = match estimator {
        Some(e) => choice("estimator", e)?,
        None => Estimator::default_for(statistic),
    };
    let shard: rote::sched::Shard = parsed("shard", shard)?;
    let score_cfg = ScoreConfig { estimator, statistic, probes, h, seed };
    let selection = Selection { pattern: checkpoints, every, allow_incomplete };
    let requested = open_backends(device)?;
    let bar = Progress::new(progress, 0);
    let (s, job) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let mut job = CurvatureJob::open(&source, data.as_deref(), &selection, &score_cfg, &|_| {})?;
            let (backends, _) = job.backends_for(requested, &score_cfg);
            let total = (job.samples.checkpoints.len() * shard.range(job.len()).len()) as u64;
            bar.set(0, total);
            let s = job.score_on(&backends, shard, batch, &score_cfg, out.as_deref(), &|k| bar.step(k))?;
            Ok((s, job))
        })
        .map_err(err)?;
    let d = PyDict::new(py);
    d.set_item("score", s.score.into_pyarray(py))?;
    d.set_item("trace", s.trace.into_pyarray(py))?;
    d.set_item("gauss_newton", s.gauss_newton.map(|g| g.into_pyarray(py)))?;
    d.set_item("rows", (s.rows.start, s.rows.end))?;
    d.set_item("samples", s.rows.len())?;
    d.set_item("checkpoints", job.samples.checkpoints.iter().map(|c| c.display().to_string()).collect::<Vec<_>>())?;
    d.set_item("probes", job.probes_used(&score_cfg))?;
    d.set_item("estimator", &job.estimator)?;
    d.set_item("auroc", s.auroc)?;
    d.set_item("precision_at_k", s.precision_at_k)?;
    d.set_item("corrupted", s.corrupted)?;
    d.set_item("seconds", s.seconds)?;
    d.set_item("device", &s.device)?;
    Ok(d)
}

/// `rote denoise sample`: `samples` samples with EDM's Heun sampler, from the optimal
/// denoiser of `data` (optionally a class-balanced `subset`) or from a trained
/// denoiser's `run`. Returns float32 samples (samples, …) in model space [−1, 1]: the
/// numbers `rote denoise sample` quantizes into samples.npy (see `quantize`). With
/// `shard` "I/N" (or "auto" under Slurm), only that part of the samples: the shards
/// concatenated are the whole job's samples.
#[pyfunction]
#[pyo3(signature = (*, data=None, run=None, samples=1000, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, seed=0, subset=None, range="auto", shard="0/1", device="auto", progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn sample<'py>(
    py: Python<'py>,
    data: Option<&str>,
    run: Option<PathBuf>,
    samples: usize,
    steps: usize,
    sigma_min: f64,
    sigma_max: f64,
    rho: f64,
    seed: u64,
    subset: Option<usize>,
    range: &str,
    shard: &str,
    device: &str,
    progress: Option<PyObject>,
) -> PyResult<Bound<'py, PyAny>> {
    use rote::diffusion::{sampler::Schedule, RangeRule, SampleSource};
    let range: RangeRule = parsed("range", range)?;
    let source = match (&run, data) {
        (Some(run), None) => {
            if subset.is_some() {
                return Err(bad("subset applies to data; a run was trained on its own subset"));
            }
            SampleSource::Trained { run }
        }
        (None, Some(data)) => SampleSource::Optimal { data, subset, range },
        _ => return Err(bad("give data (the optimal denoiser) or run (a trained one), not both")),
    };
    let schedule = Schedule { steps, sigma_min, sigma_max, rho };
    let backends = open_backends(device)?;
    let bar = Progress::new(progress, steps as u64);
    let shard: rote::sched::Shard = parsed("shard", shard)?;
    let s = py.allow_threads(|| rote::diffusion::sample(&source, samples, shard, &schedule, seed, &backends, &mut |_| bar.step(1))).map_err(err)?;
    let mut shape = vec![shard.range(samples).len()];
    shape.extend(&s.sample_shape);
    Ok(s.x.into_pyarray(py).reshape(shape)?.into_any())
}

/// Model-space values as the 8-bit pixels `rote denoise sample` stores, as EDM writes
/// its images: (x·127.5 + 128) clamped to [0, 255] and truncated.
#[pyfunction]
pub fn quantize<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<Bound<'py, PyAny>> {
    let q: Vec<u8> = x.as_array().iter().map(|&v| rote::diffusion::quantize(v)).collect();
    Ok(q.into_pyarray(py).reshape(x.shape().to_vec())?.into_any())
}

/// `rote pool train`: trains (the `shard` "I/N" or "auto" part of) a pool of `models`
/// shadow models, each on a random half (`keep`) of the data, into the pool directory
/// `out` with the recipe of `train`. Returns {pool, models, shard, trained, skipped,
/// seconds}.
#[pyfunction]
#[pyo3(signature = (data, model, out, *, models=16, keep=0.5, mirror=true, shard="0/1", save_models=false, epochs=20, batch=128, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="step", label_noise=0.0, duplicate_conflicts=0, seed=0, augment="", normalize="auto", progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn pool_train(
    py: Python<'_>,
    data: &str,
    model: &str,
    out: PathBuf,
    models: usize,
    keep: f64,
    mirror: bool,
    shard: &str,
    save_models: bool,
    epochs: usize,
    batch: usize,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    schedule: &str,
    label_noise: f64,
    duplicate_conflicts: usize,
    seed: u64,
    augment: &str,
    normalize: &str,
    progress: Option<PyObject>,
) -> PyResult<PyObject> {
    use rote::membership::pool::{self, PoolConfig};
    let recipe = recipe(data, model, epochs, batch, lr, momentum, weight_decay, schedule, label_noise, duplicate_conflicts, seed, augment)?;
    let shard: rote::sched::Shard = parsed("shard", shard)?;
    let bar = Progress::new(progress, 0);
    let summary = py
        .allow_threads(|| -> anyhow::Result<_> {
            let (recipe, ds) = recipe.for_data(normalize)?;
            let mirror = mirror && rote::nn::network::image_shape(ds.sample_shape()).is_ok();
            let cfg = PoolConfig { recipe, models, keep, mirror };
            pool::train_pool(&ds, &cfg, &out, shard, save_models, &|done, total| bar.set(done, total))
        })
        .map_err(err)?;
    let v = serde_json::json!({ "pool": out, "models": models, "shard": shard.to_string(), "trained": summary.trained.len(), "skipped": summary.skipped.len(), "seconds": summary.seconds });
    to_py(py, &v)
}

/// Feldman–Zhang memorization of every training example of a pool (ALGORITHMS.md §5),
/// as `rote mem` computes it (without writing files): {mem, se, mem_probability,
/// se_probability (float64 arrays), accuracy_in, accuracy_out, models, examples}.
#[pyfunction]
pub fn memorization<'py>(py: Python<'py>, pool: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    use rote::membership::{attack, pool::Pool};
    let (m, models, examples) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let p = Pool::open(&pool)?;
            let (m, _) = attack::memorization(&p)?;
            Ok((m, p.models(), p.info.examples))
        })
        .map_err(err)?;
    let d = PyDict::new(py);
    d.set_item("mem", m.mem.into_pyarray(py))?;
    d.set_item("se", m.se.into_pyarray(py))?;
    d.set_item("mem_probability", m.mem_probability.into_pyarray(py))?;
    d.set_item("se_probability", m.se_probability.into_pyarray(py))?;
    d.set_item("accuracy_in", m.accuracy_in)?;
    d.set_item("accuracy_out", m.accuracy_out)?;
    d.set_item("models", models)?;
    d.set_item("examples", examples)?;
    Ok(d)
}

/// A membership-inference attack on a pool (`rote mia`, without files or bootstrap):
/// `attack` "lira-online", "lira-offline", "rmia", …; `targets` "leave-one-out" or the
/// number of first models attacked; `shadows` per target (default: all others). Returns
/// {scores (targets, examples) float64 with NaN where unscored, members (bool), auc,
/// tpr_at_fpr ({0.001, 0.0001, 0.01}: TPR), balanced_accuracy, scored}.
#[pyfunction]
#[pyo3(signature = (pool, *, attack="lira-online", targets="leave-one-out", shadows=None, fixed_variance=false, centre="median", gamma=2.0, offline_a=None, population=0))]
#[allow(clippy::too_many_arguments)]
pub fn mia<'py>(py: Python<'py>, pool: PathBuf, attack: &str, targets: &str, shadows: Option<usize>, fixed_variance: bool, centre: &str, gamma: f64, offline_a: Option<f64>, population: usize) -> PyResult<Bound<'py, PyDict>> {
    use rote::membership::attack::{self as atk, AttackSpec, Targets};
    use rote::membership::pool::Pool;
    let spec = AttackSpec { kind: choice("attack", attack)?, centre: choice("centre", centre)?, fixed_variance, gamma, offline_a, population };
    let targets: Targets = parsed("targets", targets)?;
    let (result, metrics, scored, n) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let p = Pool::open(&pool)?;
            let (result, _, scored) = atk::attack_pool(&p, &spec, targets, shadows)?;
            let metrics = result.roc(None)?.metrics(None)?;
            Ok((result, metrics, scored, p.info.examples))
        })
        .map_err(err)?;
    let t = result.targets.len();
    let d = PyDict::new(py);
    d.set_item("scores", result.scores.into_pyarray(py).reshape([t, n])?)?;
    d.set_item("members", result.members.into_pyarray(py).reshape([t, n])?)?;
    d.set_item("targets", result.targets)?;
    d.set_item("auc", metrics.auc)?;
    let tpr = PyDict::new(py);
    for (fpr, v) in rote::membership::roc::FPRS.iter().zip(metrics.tpr_at_fpr) {
        tpr.set_item(fpr, v)?;
    }
    d.set_item("tpr_at_fpr", tpr)?;
    d.set_item("balanced_accuracy", metrics.balanced_accuracy)?;
    d.set_item("scored", scored)?;
    Ok(d)
}

/// `rote denoise train`: a score-matching denoiser (EDM preconditioning and loss, Adam,
/// EMA; ALGORITHMS.md §3) on `data` (optionally a class-balanced `subset`), written to
/// the run directory `out` as the CLI writes it (`sample(run=out)` samples from it).
/// `labels`: "none", "true" or "random:C"; `range` as `sample`'s. `progress(step,
/// steps)`. `resume=True` continues the unfinished run in `out` with the settings it
/// was started with (the other arguments are then ignored). Returns {run,
/// training_samples, steps, batch, final_loss, device}.
#[pyfunction]
#[pyo3(signature = (data, out, *, subset=None, labels="none", model="resmlp:width=256,blocks=3", steps=4000, batch=128, lr=2e-4, ema=0.999, seed=0, checkpoint_every=0, range="auto", device="auto", resume=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn train_denoiser(
    py: Python<'_>,
    data: &str,
    out: PathBuf,
    subset: Option<usize>,
    labels: &str,
    model: &str,
    steps: usize,
    batch: usize,
    lr: f64,
    ema: f64,
    seed: u64,
    checkpoint_every: usize,
    range: &str,
    device: &str,
    resume: bool,
    progress: Option<PyObject>,
) -> PyResult<PyObject> {
    use rote::diffusion::train::{self, DenoiserConfig, Labels, Recipe};
    let labels = Labels::parse(labels).map_err(err)?;
    let range: rote::diffusion::RangeRule = parsed("range", range)?;
    let backend = open_backend(device)?;
    let bar = Progress::new(progress, steps as u64);
    let (training_samples, final_loss, steps, batch) = py
        .allow_threads(|| -> anyhow::Result<_> {
            // A resumed run takes its settings from its run.json; the arguments are ignored.
            let (cfg, ds) = if resume {
                train::open_unfinished_and_data(&out)?
            } else {
                let ds = rote::diffusion::training_data(data, subset)?;
                let pixel_range = rote::diffusion::PixelRange::resolve(&ds.train.x, range)?;
                let recipe = Recipe { model: model.to_string(), steps, batch, lr, ema, seed };
                (DenoiserConfig::new(data, subset, labels, recipe, &ds.train, ds.sample_shape(), pixel_range, checkpoint_every)?, ds)
            };
            let total = cfg.recipe.steps as u64;
            train::train(&backend, &ds.train, &cfg, &out, resume, &|s| bar.set(s as u64, total))?;
            Ok((ds.train.len(), train::final_loss(&out)?, cfg.recipe.steps, cfg.recipe.batch))
        })
        .map_err(err)?;
    let v = serde_json::json!({ "run": out, "training_samples": training_samples, "steps": steps, "batch": batch, "resumed": resume, "final_loss": final_loss, "device": backend.device().to_string() });
    to_py(py, &v)
}

/// Choi et al.'s targeting of memorized samples (`rote choi`, without files): the
/// examples `select` picks ("top:Q%" most memorized, or "mem>T") attacked with `attack`
/// for each count of `shadows` (default 2, 4, 8, …, K − 1). Returns {selected, points:
/// [{shadows, all, selected, scored}]} with each point's metrics (auc, tpr_at_fpr,
/// balanced_accuracy) over all examples and over the selected ones.
#[pyfunction]
#[pyo3(signature = (pool, *, select="top:10%", shadows=None, targets="leave-one-out", attack="lira-online", fixed_variance=false, centre="median", gamma=2.0, offline_a=None, population=0))]
#[allow(clippy::too_many_arguments)]
pub fn choi(py: Python<'_>, pool: PathBuf, select: &str, shadows: Option<Vec<usize>>, targets: &str, attack: &str, fixed_variance: bool, centre: &str, gamma: f64, offline_a: Option<f64>, population: usize) -> PyResult<PyObject> {
    use rote::membership::attack::{self as atk, AttackSpec, Selection, Targets};
    let spec = AttackSpec { kind: choice("attack", attack)?, centre: choice("centre", centre)?, fixed_variance, gamma, offline_a, population };
    let select: Selection = parsed("select", select)?;
    let targets: Targets = parsed("targets", targets)?;
    let (points, chosen) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let p = rote::membership::pool::Pool::open(&pool)?;
            atk::choi(&p, &spec, &select, shadows.as_deref(), targets, &|_| {})
        })
        .map_err(err)?;
    to_py(py, &serde_json::json!({ "selected": chosen, "points": to_json(&points)? }))
}

/// `rote emm`: the effective model memorization of a denoiser recipe (ALGORITHMS.md
/// §3): a denoiser trained on each of `sizes` class-balanced subsets, sampled and
/// scored by the memorization ratio; EMM is the largest size memorized at `threshold`.
/// Writes its runs, emm.csv and emm.png into `out`. Returns {emm, all_above_threshold,
/// threshold, sizes: [{size, memorization_ratio}]}.
#[pyfunction]
#[pyo3(signature = (data, sizes, out, *, threshold=0.9, refine=0, labels="none", model="resmlp:width=256,blocks=3", steps=4000, batch=128, lr=1e-3, ema=0.99, seed=0, samples=1000, ratio_threshold=1.0 / 3.0, device="auto"))]
#[allow(clippy::too_many_arguments)]
pub fn emm(
    py: Python<'_>,
    data: &str,
    sizes: Vec<usize>,
    out: PathBuf,
    threshold: f64,
    refine: usize,
    labels: &str,
    model: &str,
    steps: usize,
    batch: usize,
    lr: f64,
    ema: f64,
    seed: u64,
    samples: usize,
    ratio_threshold: f64,
    device: &str,
) -> PyResult<PyObject> {
    use rote::diffusion::emm::{self, EmmSettings};
    use rote::diffusion::train::{Labels, Recipe};
    let labels = Labels::parse(labels).map_err(err)?;
    let settings = EmmSettings { data: data.to_string(), labels, recipe: Recipe { model: model.to_string(), steps, batch, lr, ema, seed }, samples, ratio_threshold };
    settings.validate(threshold).map_err(err)?;
    let backend = open_backend(device)?;
    let r = py
        .allow_threads(|| -> anyhow::Result<_> {
            let ds = rote::data::open(data)?;
            emm::sweep(&ds, &settings, &sizes, threshold, refine, &out, &backend, &|_| {})
        })
        .map_err(err)?;
    let sizes: Vec<serde_json::Value> = r.sizes.iter().map(|s| serde_json::json!({"size": s.size, "memorization_ratio": s.memorization_ratio})).collect();
    to_py(py, &serde_json::json!({ "emm": r.emm, "all_above_threshold": r.all_above, "threshold": r.threshold, "sizes": sizes }))
}

/// `rote knn classify`: retrieval-augmented prediction (kNN-LM, RetroPrompt;
/// ALGORITHMS.md §7). p_knn from the `k` nearest stored `keys` (N, d) of each query
/// (Q, d) with their `labels`, softmax(s/`temperature`) of the similarity s (inner
/// product for `metric="ip"`, minus the squared distance for "l2"); with the model's
/// probabilities `probs` (Q, C), combined with weight `lambda_` (`combine` "standard":
/// (1 − λ)·p_model + λ·p_knn; "retroprompt": log((1 − λ)e^p_model + λe^p_knn)). Returns
/// {p_knn, combined (float64, (Q, C)), predictions (int64)}.
#[pyfunction]
#[pyo3(signature = (keys, labels, queries, *, probs=None, k=16, lambda_=0.2, temperature=1.0, metric="ip", combine="standard", device="auto"))]
#[allow(clippy::too_many_arguments)]
pub fn knn_classify<'py>(
    py: Python<'py>,
    keys: PyReadonlyArrayDyn<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    queries: PyReadonlyArrayDyn<'py, f32>,
    probs: Option<PyReadonlyArrayDyn<'py, f64>>,
    k: usize,
    lambda_: f64,
    temperature: f64,
    metric: &str,
    combine: &str,
    device: &str,
) -> PyResult<Bound<'py, PyDict>> {
    use rote::memory::retrieval::{self, Settings};
    let (ks, qs) = (keys.shape().to_vec(), queries.shape().to_vec());
    if ks.len() != 2 || qs.len() != 2 || ks[1] != qs[1] {
        return Err(bad(format!("keys {ks:?} and queries {qs:?} must be (rows, d) arrays of the same d")));
    }
    let labels = labels.as_slice().map_err(|_| bad("labels must be a contiguous int64 array"))?;
    if labels.len() != ks[0] {
        return Err(bad(format!("{} labels for the {} keys", labels.len(), ks[0])));
    }
    let p_model: Option<Vec<f64>> = probs.as_ref().map(|p| p.as_array().iter().copied().collect());
    let classes = match &probs {
        Some(p) if p.shape().len() != 2 || p.shape()[0] != qs[0] => return Err(bad(format!("probs has shape {:?}; give (queries, classes) = ({}, C)", p.shape(), qs[0]))),
        Some(p) => p.shape()[1],
        None => labels.iter().copied().max().unwrap_or(0).max(0) as usize + 1,
    };
    let settings = Settings { k, metric: choice("metric", metric)?, temperature, lambda: lambda_, combine: choice("combine", combine)? };
    let key_values = keys.as_slice().map_err(|_| bad("keys must be C-contiguous"))?;
    let q = queries.as_slice().map_err(|_| bad("queries must be C-contiguous"))?;
    let backend = open_backend(device)?;
    let (p_knn, combined) = py
        .allow_threads(|| -> anyhow::Result<_> {
            let store = Array::from_f32(ks.clone(), key_values, "keys");
            rote::diffusion::knn::check_k(k, ks[0])?;
            retrieval::classify(&backend, &store, labels, q, p_model.as_deref(), classes, &settings)
        })
        .map_err(err)?;
    let predicted: Vec<i64> = retrieval::predictions(&combined, classes).into_iter().map(|c| c as i64).collect();
    let d = PyDict::new(py);
    d.set_item("p_knn", p_knn.into_pyarray(py).reshape([qs[0], classes])?)?;
    d.set_item("combined", combined.into_pyarray(py).reshape([qs[0], classes])?)?;
    d.set_item("predictions", predicted.into_pyarray(py))?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(knn_classify, m)?)?;
    m.add_function(wrap_pyfunction!(dataset, m)?)?;
    m.add_function(wrap_pyfunction!(save_dataset, m)?)?;
    m.add_class::<PyThresholdNetwork>()?;
    m.add_function(wrap_pyfunction!(construct, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(curvature, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(pool_train, m)?)?;
    m.add_function(wrap_pyfunction!(memorization, m)?)?;
    m.add_function(wrap_pyfunction!(mia, m)?)?;
    m.add_function(wrap_pyfunction!(emm, m)?)?;
    m.add_function(wrap_pyfunction!(choi, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(train_denoiser, m)?)?;
    Ok(())
}
