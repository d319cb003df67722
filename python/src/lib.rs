//! rote from Python: the native module `rote._rote`, a thin layer over the library (the
//! CLI calls the same functions). NumPy arrays in and out; contiguous inputs are read
//! where they lie, without a copy; the GIL is released while rote computes; rote's
//! errors are raised as `rote.RoteError` with the CLI's messages.

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rote::device::{Backend, DeviceRequest};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

create_exception!(_rote, RoteError, PyException, "An error from rote, with the message the CLI prints.");

pub(crate) fn err(e: anyhow::Error) -> PyErr {
    RoteError::new_err(format!("{e:#}"))
}

pub(crate) fn bad(msg: impl Into<String>) -> PyErr {
    RoteError::new_err(msg.into())
}

/// A `device=` argument: "auto", "cpu", "cuda", "cuda:N" or "cuda:all".
fn device_request(device: &str) -> PyResult<DeviceRequest> {
    device.parse().map_err(|e: String| bad(format!("device={device:?}: {e}")))
}

pub(crate) fn open_backend(device: &str) -> PyResult<Backend> {
    Backend::open(device_request(device)?.resolve().map_err(err)?).map_err(err)
}

/// The devices of `device` for the calls that split their work over several GPUs
/// ("cuda:all"); any other choice is its one device.
pub(crate) fn open_backends(device: &str) -> PyResult<Vec<Backend>> {
    Backend::open_all(device_request(device)?).map_err(err)
}

/// A progress callback `f(done, total)` called (with the GIL) as work completes.
pub(crate) struct Progress {
    callback: Option<PyObject>,
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    pub(crate) fn new(callback: Option<PyObject>, total: u64) -> Self {
        Progress { callback, total: AtomicU64::new(total), done: AtomicU64::new(0) }
    }

    /// `k` more units done.
    pub(crate) fn step(&self, k: u64) {
        let done = self.done.fetch_add(k, Ordering::Relaxed) + k;
        self.report(done);
    }

    /// `done` of `total` units done (for work whose total is known only once it starts).
    pub(crate) fn set(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        self.report(done);
    }

    fn report(&self, done: u64) {
        if let Some(cb) = &self.callback {
            Python::with_gil(|py| {
                if let Err(e) = cb.call1(py, (done, self.total.load(Ordering::Relaxed))) {
                    e.print(py);
                }
            });
        }
    }
}

/// A JSON value as the Python object `json.loads` makes of it.
pub(crate) fn to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<PyObject> {
    let json = py.import("json")?;
    Ok(json.call_method1("loads", (v.to_string(),))?.unbind())
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> PyResult<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| bad(e.to_string()))
}

/// The device `device="auto"` resolves to here: "cpu" or "cuda:N".
#[pyfunction]
fn default_device() -> PyResult<String> {
    Ok(DeviceRequest::Auto.resolve().map_err(err)?.to_string())
}

/// Reads a safetensors checkpoint (as `rote train` writes, or a PyTorch state dict
/// saved with safetensors) into a dict of float32 arrays (integer buffers such as
/// BatchNorm's num_batches_tracked are left out).
#[pyfunction]
fn load_state_dict<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let file = rote::report::safetensors::Loaded::read(&path).map_err(err)?;
    let view = file.view().map_err(err)?;
    let out = PyDict::new(py);
    for name in view.names() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let (shape, values) = view.floats(&name, None, &|| String::new()).map_err(err)?;
        let arr = values.into_pyarray(py).reshape(shape)?;
        out.set_item(name, arr)?;
    }
    Ok(out)
}

fn parse_estimator(s: &str) -> PyResult<rote::curvature::Estimator> {
    use rote::curvature::Estimator;
    Ok(match s {
        "exact" => Estimator::Exact,
        "hutchinson" => Estimator::Hutchinson,
        "fd" => Estimator::Fd,
        _ => return Err(bad(format!("estimator={s:?}: expected \"exact\", \"hutchinson\" or \"fd\""))),
    })
}

fn parse_statistic(s: &str) -> PyResult<rote::curvature::Statistic> {
    use rote::curvature::Statistic;
    Ok(match s {
        "paper" => Statistic::Paper,
        "released-code" => Statistic::ReleasedCode,
        _ => return Err(bad(format!("statistic={s:?}: expected \"paper\" or \"released-code\""))),
    })
}

/// Builds `model` (rote's model spec) for samples of `sample_shape` with the weights of
/// `state_dict` (PyTorch names, as rote's checkpoints have them), checked as a
/// checkpoint file is: every tensor present with its shape, finite, nothing extra.
fn network_from(model: &str, sample_shape: &[usize], state_dict: &Bound<'_, PyDict>) -> PyResult<rote::nn::network::Network> {
    use rote::report::safetensors::{to_bytes, Loaded, Tensor};
    let mut net = rote::nn::network::Network::build(model, sample_shape, 0).map_err(err)?;
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (k, v) in state_dict.iter() {
        let name: String = k.extract()?;
        let arr = v.call_method1("astype", ("float32",))?;
        let arr: PyReadonlyArrayDyn<f32> = arr.extract().map_err(|_| bad(format!("state_dict[{name:?}] is not an array of numbers")))?;
        owned.push((name, arr.shape().to_vec(), arr.as_array().iter().copied().collect()));
    }
    let tensors: Vec<Tensor> = owned.iter().map(|(n, s, d)| Tensor::f32(n.clone(), s.clone(), d)).collect();
    let bytes = to_bytes(&tensors, &Default::default()).map_err(err)?;
    net.load_state(&Loaded::from_bytes("state_dict", bytes)).map_err(err)?;
    Ok(net)
}

/// Per-sample input curvature of a model (ALGORITHMS.md §2): tr(H²) of the loss's
/// input Hessian (`score`), tr(H) (`trace`) and, for the exact estimator, tr((JᵀAJ)²)
/// (`gauss_newton`). `x`: float32 inputs (N, …) prepared as the model saw them in
/// training; `y`: int64 labels (N,). Returns a dict of float32 arrays.
#[pyfunction]
#[pyo3(signature = (model, state_dict, x, y, *, estimator="exact", statistic="paper", probes=10, h=1e-3, seed=0, batch=256, first_index=0, device="auto", progress=None))]
#[allow(clippy::too_many_arguments)]
fn curvature_scores<'py>(
    py: Python<'py>,
    model: &str,
    state_dict: &Bound<'py, PyDict>,
    x: PyReadonlyArrayDyn<'py, f32>,
    y: PyReadonlyArray1<'py, i64>,
    estimator: &str,
    statistic: &str,
    probes: usize,
    h: f32,
    seed: u64,
    batch: usize,
    first_index: u64,
    device: &str,
    progress: Option<PyObject>,
) -> PyResult<Bound<'py, PyDict>> {
    use rote::curvature::{self, ScoreConfig};
    let shape = x.shape().to_vec();
    if shape.len() < 2 {
        return Err(bad(format!("x has shape {shape:?}: give (samples, features…)")));
    }
    let labels = y.as_slice().map_err(|_| bad("y must be a contiguous int64 array"))?;
    if labels.len() != shape[0] {
        return Err(bad(format!("x has {} samples, y {} labels", shape[0], labels.len())));
    }
    let inputs = x.as_slice().map_err(|_| bad("x must be C-contiguous (numpy.ascontiguousarray)"))?;
    let net = network_from(model, &shape[1..], state_dict)?;
    net.check_labels(model, labels.iter()).map_err(err)?;
    let cfg = ScoreConfig { estimator: parse_estimator(estimator)?, statistic: parse_statistic(statistic)?, probes, h, seed };
    curvature::check_network(&net, &cfg).map_err(err)?;
    let backend = open_backend(device)?;
    let on_gpu = matches!(backend, Backend::Cuda(_)) && curvature::runs_on_gpu(&cfg) && matches!(net, rote::nn::network::Network::Mlp(_));
    let backend = if on_gpu { backend } else { Backend::Cpu };
    let bar = Progress::new(progress, labels.len() as u64);
    let scores = py.allow_threads(|| curvature::score_inputs(&backend, &net, inputs, labels, first_index, batch, &cfg, &|k| bar.step(k))).map_err(err)?;
    let out = PyDict::new(py);
    out.set_item("score", scores.score.into_pyarray(py))?;
    out.set_item("trace", scores.trace.into_pyarray(py))?;
    if let Some(g) = scores.gauss_newton {
        out.set_item("gauss_newton", g.into_pyarray(py))?;
    }
    out.set_item("device", backend.device().to_string())?;
    Ok(out)
}

/// Exact k nearest neighbours of each query among the training rows (ALGORITHMS.md §3):
/// `metric="l2"` (squared distances, smallest first) or `"ip"` (inner products, largest
/// first), ties to the lower index; float32 rows in model space. Returns (indices int64
/// (Q, k), values float64 (Q, k)).
#[pyfunction]
#[pyo3(signature = (train, queries, k=1, *, metric="l2", device="auto"))]
fn knn<'py>(py: Python<'py>, train: PyReadonlyArrayDyn<'py, f32>, queries: PyReadonlyArrayDyn<'py, f32>, k: usize, metric: &str, device: &str) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f64>>)> {
    use rote::diffusion::knn::Metric;
    let metric = match metric {
        "l2" => Metric::L2,
        "ip" => Metric::Ip,
        _ => return Err(bad(format!("metric={metric:?}: expected \"l2\" or \"ip\""))),
    };
    let (ts, qs) = (train.shape().to_vec(), queries.shape().to_vec());
    if ts.len() < 2 || qs.len() < 2 {
        return Err(bad("train and queries are (rows, features…) arrays"));
    }
    let d: usize = ts[1..].iter().product();
    let qd: usize = qs[1..].iter().product();
    if d != qd {
        return Err(bad(format!("train rows have {d} features, queries {qd}")));
    }
    let tx = train.as_slice().map_err(|_| bad("train must be C-contiguous"))?;
    let q = queries.as_slice().map_err(|_| bad("queries must be C-contiguous"))?;
    let backends = open_backends(device)?;
    let rows = qs[0];
    let nn = py
        .allow_threads(|| -> anyhow::Result<_> {
            let array = rote::data::Array::from_f32(ts.clone(), tx, "train");
            let set = rote::diffusion::TrainingSet::new(&array, rote::diffusion::PixelRange::MODEL)?;
            rote::diffusion::knn::check_k(k, set.len())?;
            rote::diffusion::knn_on_all(&backends, &set, q, k, metric)
        })
        .map_err(err)?;
    let idx: Vec<i64> = nn.indices.iter().map(|&i| i as i64).collect();
    Ok((idx.into_pyarray(py).reshape([rows, k])?, nn.values.into_pyarray(py).reshape([rows, k])?))
}

/// The optimal denoiser of the training rows (ALGORITHMS.md §3), D*(x; σ) = Σ_i w_i y_i
/// with w = softmax(−‖x − y_i‖² / 2σ²), for each query row (model space): exact, on the
/// CPU. Returns the denoised rows as float32 (Q, …).
#[pyfunction]
fn optimal_denoise<'py>(py: Python<'py>, train: PyReadonlyArrayDyn<'py, f32>, queries: PyReadonlyArrayDyn<'py, f32>, sigma: f64) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let ts = train.shape().to_vec();
    let qs = queries.shape().to_vec();
    let tx = train.as_slice().map_err(|_| bad("train must be C-contiguous"))?;
    let q = queries.as_slice().map_err(|_| bad("queries must be C-contiguous"))?;
    let out = py
        .allow_threads(|| -> anyhow::Result<Vec<f32>> {
            let array = rote::data::Array::from_f32(ts.clone(), tx, "train");
            let set = rote::diffusion::TrainingSet::new(&array, rote::diffusion::PixelRange::MODEL)?;
            Ok(rote::diffusion::optimal::denoise(&set, q, sigma)?.0)
        })
        .map_err(err)?;
    Ok(out.into_pyarray(py).reshape(qs)?)
}

/// The memorization ratio of generated samples against the training rows (both in
/// model space): a sample is memorized when ‖x − NN1‖ / ‖x − NN2‖ < `threshold`.
/// Returns {memorization_ratio, memorized, samples, threshold, ratios, neighbours}.
#[pyfunction]
#[pyo3(signature = (train, generated, *, threshold=1.0 / 3.0, device="auto"))]
fn memorization_ratio<'py>(py: Python<'py>, train: PyReadonlyArrayDyn<'py, f32>, generated: PyReadonlyArrayDyn<'py, f32>, threshold: f64, device: &str) -> PyResult<Bound<'py, PyDict>> {
    let ts = train.shape().to_vec();
    let tx = train.as_slice().map_err(|_| bad("train must be C-contiguous"))?;
    let g = generated.as_slice().map_err(|_| bad("generated must be C-contiguous"))?;
    let backend = open_backend(device)?;
    let m = py
        .allow_threads(|| -> anyhow::Result<_> {
            let array = rote::data::Array::from_f32(ts.clone(), tx, "train");
            let set = rote::diffusion::TrainingSet::new(&array, rote::diffusion::PixelRange::MODEL)?;
            let nn = rote::diffusion::knn_on(&backend, &set, g, 2, rote::diffusion::knn::Metric::L2)?;
            rote::diffusion::knn::memorization_ratio(nn, threshold)
        })
        .map_err(err)?;
    let out = PyDict::new(py);
    out.set_item("memorization_ratio", m.memorization_ratio)?;
    out.set_item("memorized", m.memorized)?;
    out.set_item("samples", m.samples)?;
    out.set_item("threshold", m.threshold)?;
    let rows = m.ratios.len();
    out.set_item("ratios", m.ratios.into_pyarray(py))?;
    let idx: Vec<i64> = m.neighbours.indices.iter().map(|&i| i as i64).collect();
    out.set_item("neighbours", idx.into_pyarray(py).reshape([rows, 2])?)?;
    Ok(out)
}

/// A memory machine's memory from `Lssvm`'s arguments (None: plain LSSVM).
fn parse_memory(memory: Option<&str>, memory_fn: &str, weight: f64) -> PyResult<Option<rote::memory::lssvm::Memory>> {
    use rote::memory::lssvm::{Memory, MemoryFn, MemoryModel};
    let model = MemoryModel::parse_choice(memory.unwrap_or("none")).map_err(bad)?;
    let function: MemoryFn = memory_fn.parse().map_err(|e: String| bad(e))?;
    Ok(model.map(|model| Memory { model, function, weight }))
}

/// A least-squares SVM (ALGORITHMS.md §7), fitted as `rote lssvm fit` fits it.
#[pyclass(module = "rote._rote", name = "Lssvm", frozen)]
struct PyLssvm {
    model: rote::memory::lssvm::Lssvm,
    dim: usize,
    solved: serde_json::Value,
}

#[pymethods]
impl PyLssvm {
    /// Fits on rows `x` (N, …; float64) with labels `y`: `kernel` "rbf:sigma=S",
    /// "linear" or "poly:degree=D", regularization `gamma`; `memory` "mimm" or "wimm"
    /// (rote's least-squares generalization–memorization machines, README) with the
    /// influence function `memory_fn` ("identity", "gauss:sigma=S", "radius:r=R") and
    /// weight `memory_weight`; `solver` "auto", "direct" or "cg" (with `tol`, `max_iter`,
    /// `preconditioner_rank`), as `rote lssvm fit`'s flags.
    #[new]
    #[pyo3(signature = (x, y, *, kernel="rbf:sigma=1", gamma=10.0, memory=None, memory_fn="identity", memory_weight=1.0, solver="auto", tol=1e-6, max_iter=1000, preconditioner_rank=200))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>, y: PyReadonlyArray1<'_, i64>, kernel: &str, gamma: f64, memory: Option<&str>, memory_fn: &str, memory_weight: f64, solver: &str, tol: f64, max_iter: usize,
        preconditioner_rank: usize,
    ) -> PyResult<Self> {
        use rote::memory::lssvm::{CgOptions, Solver};
        let shape = x.shape().to_vec();
        if shape.len() < 2 {
            return Err(bad("x is a (samples, features…) array"));
        }
        let dim: usize = shape[1..].iter().product();
        let k: rote::memory::lssvm::Kernel = kernel.parse().map_err(|e: String| bad(e))?;
        let memory = parse_memory(memory, memory_fn, memory_weight)?;
        let solver = solver.parse::<Solver>().map_err(bad)?.with_cg(CgOptions { tolerance: tol, max_iterations: max_iter, preconditioner_rank, progress: false });
        let xs = x.as_slice().map_err(|_| bad("x must be C-contiguous"))?;
        let ys = y.as_slice().map_err(|_| bad("y must be contiguous"))?;
        let (model, solved) = py.allow_threads(|| rote::memory::lssvm::Lssvm::fit_with(xs, dim, ys, k, gamma, memory, solver)).map_err(err)?;
        Ok(PyLssvm { model, dim, solved: to_json(&solved)? })
    }

    /// k-fold cross-validation as `rote lssvm fit --cv` runs it, over the RBF widths
    /// `sigmas` (default: `kernel`'s alone), `gammas` (default: `gamma`) and, with a
    /// `memory`, its weights `memory_weights` and widths `memory_widths` (σ of gauss, r of
    /// radius). Returns the cells in grid order: [{kernel, gamma, memory, accuracy}].
    #[staticmethod]
    #[pyo3(signature = (x, y, *, folds=5, kernel="rbf:sigma=1", sigmas=None, gamma=10.0, gammas=None, memory=None, memory_fn="identity", memory_weight=1.0, memory_weights=None, memory_widths=None, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn cross_validate(
        py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>, y: PyReadonlyArray1<'_, i64>, folds: usize, kernel: &str, sigmas: Option<Vec<f64>>, gamma: f64, gammas: Option<Vec<f64>>, memory: Option<&str>, memory_fn: &str, memory_weight: f64,
        memory_weights: Option<Vec<f64>>, memory_widths: Option<Vec<f64>>, seed: u64,
    ) -> PyResult<PyObject> {
        use rote::memory::lssvm::{kernel_grid, Kernel};
        let shape = x.shape().to_vec();
        if shape.len() < 2 {
            return Err(bad("x is a (samples, features…) array"));
        }
        let dim: usize = shape[1..].iter().product();
        let k: Kernel = kernel.parse().map_err(|e: String| bad(e))?;
        let kernels = kernel_grid(k, sigmas.as_deref()).map_err(err)?;
        let memory = parse_memory(memory, memory_fn, memory_weight)?;
        let memories = rote::memory::lssvm::memory_grid(memory, memory_weights.as_deref(), memory_widths.as_deref()).map_err(err)?;
        let gammas = gammas.unwrap_or_else(|| vec![gamma]);
        let xs = x.as_slice().map_err(|_| bad("x must be C-contiguous"))?;
        let ys = y.as_slice().map_err(|_| bad("y must be contiguous"))?;
        let cells = py.allow_threads(|| rote::memory::lssvm::cross_validate(xs, dim, ys, &kernels, &gammas, &memories, folds, seed)).map_err(err)?;
        to_py(py, &to_json(&cells)?)
    }

    /// Which solver ran and why, and for CG its iterations and final residual.
    #[getter]
    fn solver(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_py(py, &self.solved)
    }

    /// Predicted labels of the rows of `x`.
    fn predict<'py>(&self, py: Python<'py>, x: PyReadonlyArrayDyn<'py, f64>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let shape = x.shape().to_vec();
        let dim: usize = shape.get(1..).map_or(0, |s| s.iter().product());
        if shape.len() < 2 || dim != self.dim {
            return Err(bad(format!("x has shape {shape:?}; the machine was fitted on {} features", self.dim)));
        }
        let xs = x.as_slice().map_err(|_| bad("x must be C-contiguous"))?;
        Ok(py.allow_threads(|| self.model.predict(xs)).into_pyarray(py))
    }
}

/// The address at which rote reads a float32 array's data, as every entry point taking
/// float32 inputs extracts them: equal to `x.ctypes.data` when the array is read in
/// place (C-contiguous, memory-mapped or not). For the zero-copy tests.
#[pyfunction]
fn _input_address(x: PyReadonlyArrayDyn<'_, f32>) -> PyResult<usize> {
    Ok(x.as_slice().map_err(|_| bad("x must be C-contiguous"))?.as_ptr() as usize)
}

// ---- text -----------------------------------------------------------------------------

/// Token ids from a list of ints or an integer array.
fn token_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray1<u32>>() {
        return Ok(a.as_array().to_vec());
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray1<i64>>() {
        return a.as_array().iter().map(|&t| u32::try_from(t).map_err(|_| bad(format!("token id {t} is not a u32")))).collect();
    }
    obj.extract::<Vec<u32>>().map_err(|_| bad("tokens: give a list or 1-d array of non-negative token ids"))
}

/// An n-gram index of a corpus, opened from its file (`rote text index` or
/// `rote.text.build_index`): a Bloom filter or the exact suffix array.
#[pyclass(module = "rote._rote", name = "Index", frozen)]
struct PyIndex {
    index: rote::text::index::Index,
}

#[pymethods]
impl PyIndex {
    /// Opens the index at `path` over the corpus it names (or `corpus`, where it moved).
    #[new]
    #[pyo3(signature = (path, corpus=None))]
    fn new(path: PathBuf, corpus: Option<PathBuf>) -> PyResult<Self> {
        Ok(PyIndex { index: rote::text::index::Index::open(&path, corpus.as_deref()).map_err(err)? })
    }

    /// "bloom" or "suffix-array".
    #[getter]
    fn kind(&self) -> &'static str {
        self.index.kind()
    }

    /// The n a Bloom filter holds (None for the exact index, which answers any n).
    #[getter]
    fn n(&self) -> Option<usize> {
        self.index.fixed_n()
    }

    #[getter]
    fn corpus(&self) -> PathBuf {
        self.index.corpus().dir.clone()
    }

    /// What `rote text info` says of it (with `n`, an exact index counts its distinct
    /// n-grams).
    #[pyo3(signature = (n=None))]
    fn info(&self, py: Python<'_>, n: Option<usize>) -> PyResult<PyObject> {
        let v = py.allow_threads(|| rote::text::index::describe(&self.index, n));
        to_py(py, &v)
    }

    /// For every n-gram of `tokens`, whether the corpus holds it (a Bloom filter may say
    /// yes wrongly, never no wrongly): a bool array of len(tokens) − n + 1.
    #[pyo3(signature = (tokens, n=None))]
    fn hits<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>, n: Option<usize>) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let seq = token_ids(tokens)?;
        let n = self.index.query_n(n, 50).map_err(err)?;
        let h = py.allow_threads(|| match &self.index {
            rote::text::index::Index::Bloom(b) => b.bloom.hits_par(&seq),
            e => e.hits(&seq, n),
        });
        Ok(h.into_pyarray(py))
    }

    /// Whether the n-gram `gram` is in the corpus.
    fn contains(&self, gram: &Bound<'_, PyAny>) -> PyResult<bool> {
        let g = token_ids(gram)?;
        if let Some(n) = self.index.fixed_n() {
            if g.len() != n {
                return Err(bad(format!("this Bloom filter holds {n}-grams; the gram has {} tokens", g.len())));
            }
        }
        Ok(self.index.contains(&g))
    }

    /// Occurrences of `pattern` inside documents (exact index only).
    fn count(&self, pattern: &Bound<'_, PyAny>) -> PyResult<usize> {
        let p = token_ids(pattern)?;
        match &self.index {
            rote::text::index::Index::Exact(e) => Ok(e.count(&p)),
            _ => Err(bad("count needs the exact index (--kind exact)")),
        }
    }

    /// The longest verbatim match of `tokens` in the corpus (exact index only): a dict
    /// {start, len, corpus_pos, doc, offset} or None when no token occurs.
    fn longest_match(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let seq = token_ids(tokens)?;
        match &self.index {
            rote::text::index::Index::Exact(e) => {
                let m = py.allow_threads(|| e.longest_match(&seq));
                to_py(py, &to_json(&m)?)
            }
            _ => Err(bad("longest_match needs the exact index (--kind exact)")),
        }
    }

    /// MemFree's choice: the position in `candidates` (in descending logit order) of the
    /// first that does not complete a member n-gram after `context`, or None.
    #[pyo3(signature = (context, candidates, n=None))]
    fn memfree_choose(&self, context: &Bound<'_, PyAny>, candidates: &Bound<'_, PyAny>, n: Option<usize>) -> PyResult<Option<usize>> {
        let n = self.index.query_n(n, 50).map_err(err)?;
        Ok(rote::text::scan::memfree_choose(&self.index, n, &token_ids(context)?, &token_ids(candidates)?))
    }

    /// The style demonstration, as `rote text demo`: `passages` passages of `length`
    /// tokens from the corpus, restyled (verbatim, upper, spacing, substitute) and
    /// scanned against this index (and `normalized_index`): one dict per style.
    #[pyo3(signature = (passages=200, length=300, n=None, normalized_index=None, normalized_n=None, seed=0))]
    fn demo(&self, py: Python<'_>, passages: usize, length: usize, n: Option<usize>, normalized_index: Option<&PyIndex>, normalized_n: Option<usize>, seed: u64) -> PyResult<PyObject> {
        let n = self.index.query_n(n, 50).map_err(err)?;
        let normalized = match normalized_index {
            Some(i) => Some((&i.index, i.index.query_n(normalized_n, n).map_err(err)?)),
            None => None,
        };
        let rows = py
            .allow_threads(|| -> anyhow::Result<_> {
                Ok(rote::text::style::demo(&self.index, normalized, n, passages, length, seed)?.1)
            })
            .map_err(err)?;
        to_py(py, &to_json(&rows)?)
    }

    /// Scans generations (dicts with "text" or "tokens", optionally "prompt" or
    /// "prompt_tokens"), as `rote text scan` does: returns (reports, summary).
    #[pyo3(signature = (generations, n=None, normalized_index=None, normalized_n=None))]
    fn scan(&self, py: Python<'_>, generations: &Bound<'_, PyList>, n: Option<usize>, normalized_index: Option<&PyIndex>, normalized_n: Option<usize>) -> PyResult<(PyObject, PyObject)> {
        let json = py.import("json")?;
        let text: String = json.call_method1("dumps", (generations,))?.extract()?;
        let gens: Vec<rote::text::scan::Generation> = serde_json::from_str(&text).map_err(|e| bad(format!("generations: {e}")))?;
        for (i, g) in gens.iter().enumerate() {
            if g.text.is_none() == g.tokens.is_none() {
                return Err(bad(format!("generation {i}: give exactly one of \"text\" and \"tokens\"")));
            }
        }
        let n = self.index.query_n(n, 50).map_err(err)?;
        let normalized = match normalized_index {
            Some(i) => Some((&i.index, i.index.query_n(normalized_n, n).map_err(err)?)),
            None => None,
        };
        let (reports, summary) = py.allow_threads(|| rote::text::scan::scan(&self.index, &gens, &rote::text::scan::ScanOptions { n, normalized })).map_err(err)?;
        Ok((to_py(py, &to_json(&reports)?)?, to_py(py, &to_json(&summary)?)?))
    }
}

/// Makes a corpus from text files (one document per file; directories walked in
/// sorted order), as `rote text import`: returns its report.
#[pyfunction]
#[pyo3(signature = (paths, out, *, tokenizer="bytes", normalized=true))]
fn text_import(py: Python<'_>, paths: Vec<PathBuf>, out: PathBuf, tokenizer: &str, normalized: bool) -> PyResult<PyObject> {
    let r = py.allow_threads(|| rote::text::import_files(&paths, tokenizer, &out, normalized)).map_err(err)?;
    to_py(py, &to_json(&r)?)
}

/// Builds an n-gram index of the corpus at `corpus`, as `rote text index`: `kind`
/// "bloom" or "exact"; returns the build reports (the normalized view's second).
#[pyfunction]
#[pyo3(signature = (corpus, *, kind="bloom", n=50, fp=1e-3, layout="blocked", capacity=None, out=None, normalized=false, device="auto"))]
#[allow(clippy::too_many_arguments)]
fn text_build_index(py: Python<'_>, corpus: PathBuf, kind: &str, n: usize, fp: f64, layout: &str, capacity: Option<u64>, out: Option<PathBuf>, normalized: bool, device: &str) -> PyResult<PyObject> {
    use rote::text::index::{build_on, index_targets, IndexSpec};
    let spec = IndexSpec::parse(kind, n, fp, layout, capacity).map_err(err)?;
    let gpu = rote::text::index::gpu_for(&spec, device_request(device)?).map_err(err)?;
    let reports = py
        .allow_threads(|| -> anyhow::Result<Vec<rote::text::index::BuildReport>> {
            let mut reports = Vec::new();
            for (dir, path) in index_targets(&corpus, &spec, out.as_deref(), normalized)? {
                let c = rote::text::corpus::Corpus::open(&dir)?;
                reports.push(build_on(&c, &path, &spec, gpu.as_ref(), &|_| {})?);
            }
            Ok(reports)
        })
        .map_err(err)?;
    to_py(py, &to_json(&reports)?)
}

/// The normal form the near-verbatim metrics compare: case folded, punctuation dropped,
/// whitespace runs made one space.
#[pyfunction]
fn text_normalize(text: &str) -> String {
    rote::text::normalize::normalize(text)
}


mod workflows;

#[pymodule]
fn _rote(m: &Bound<'_, PyModule>) -> PyResult<()> {
    workflows::register(m)?;
    m.add("RoteError", m.py().get_type::<RoteError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(default_device, m)?)?;
    m.add_function(wrap_pyfunction!(load_state_dict, m)?)?;
    m.add_function(wrap_pyfunction!(curvature_scores, m)?)?;
    m.add_function(wrap_pyfunction!(knn, m)?)?;
    m.add_function(wrap_pyfunction!(text_import, m)?)?;
    m.add_function(wrap_pyfunction!(text_build_index, m)?)?;
    m.add_function(wrap_pyfunction!(text_normalize, m)?)?;
    m.add_class::<PyIndex>()?;
    m.add_class::<PyLssvm>()?;
    m.add_function(wrap_pyfunction!(_input_address, m)?)?;
    m.add_function(wrap_pyfunction!(optimal_denoise, m)?)?;
    m.add_function(wrap_pyfunction!(memorization_ratio, m)?)?;
    Ok(())
}
