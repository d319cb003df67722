//! Where work runs: the CPU (rayon threads, always there) or a CUDA device (through
//! cudarc, loaded dynamically, so the binary runs where no CUDA is installed).

/// Launches kernel `$f` with config `$cfg` and the given arguments on the backend's
/// stream. Every kernel here guards its index against the sizes it is passed, which
/// are the lengths of the buffers handed over.
macro_rules! launch {
    ($gpu:expr, $f:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f: &cudarc::driver::CudaFunction = &$f;
        let mut lb = $gpu.stream().launch_builder(f);
        $( lb.arg($arg); )*
        // SAFETY: see the macro's comment; shapes are checked by the callers.
        unsafe { lb.launch($cfg) }?;
    }};
}

/// One thread per element.
pub(crate) fn elems(n: usize) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig::for_num_elems(n as u32)
}

/// One warp per row, eight warps per block.
pub(crate) fn warps(rows: usize) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig { grid_dim: ((rows as u32).div_ceil(8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Row-major C (m, n) = op(A) · op(B) + beta·C through cuBLAS, for f32 or f64: op(A)
/// is A (m, k) or, with `a_t`, Aᵀ for A (k, m); op(B) is B (k, n) or, with `b_t`, Bᵀ
/// for B (n, k). cuBLAS is column-major, so it computes Cᵀ = op(B)ᵀ · op(A)ᵀ on the same
/// buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rm<T, A, B, C>(blas: &cudarc::cublas::CudaBlas, a: &A, a_t: bool, b: &B, b_t: bool, (m, k, n): (usize, usize, usize), beta: T, c: &mut C) -> Result<()>
where
    T: From<f32>,
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
    A: cudarc::driver::DevicePtr<T>,
    B: cudarc::driver::DevicePtr<T>,
    C: cudarc::driver::DevicePtrMut<T>,
{
    use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let cfg = GemmConfig {
        transa: op(b_t),
        transb: op(a_t),
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: T::from(1.0),
        lda: if b_t { k as i32 } else { n as i32 },
        ldb: if a_t { m as i32 } else { k as i32 },
        beta,
        ldc: n as i32,
    };
    // SAFETY: callers pass buffers holding the shapes described above.
    unsafe { blas.gemm(cfg, b, a, c) }.map_err(|e| anyhow::anyhow!("cuBLAS GEMM ({m}×{k}·{k}×{n}) failed: {e:?}"))
}

pub mod cuda;
mod cuda_construct;
mod cuda_curvature;
pub mod cuda_denoiser;
pub mod cuda_diffusion;
pub use cuda_diffusion::GpuDenoiser;
pub use cuda_construct::GpuScanner;
pub use cuda_curvature::GpuTrainer;

use anyhow::{bail, Result};
use std::fmt;

/// One compiled kernel family (one kernels/*.cu file).
pub struct KernelModule {
    pub name: &'static str,
    /// The .cu text with kernels/ includes inlined, for NVRTC.
    pub source: &'static str,
    /// PTX for compute_80, when nvcc was present at build time.
    pub ptx: Option<&'static str>,
    /// SASS for sm_90, when nvcc was present at build time.
    pub cubin_sm90: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

pub fn kernel_module(name: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// True when build.rs compiled the kernels with nvcc.
pub fn kernels_precompiled() -> bool {
    MODULES.iter().all(|m| m.ptx.is_some())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What the user asked for with `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(Option<usize>),
    /// `cuda:all`: every visible GPU. Curvature, sampling and kNN split their work over
    /// them (`Backend::open_all`); other commands take the first.
    AllCuda,
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(None)),
            "cuda:all" => Ok(Self::AllCuda),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(|i| Self::Cuda(Some(i))).map_err(|_| format!("'{s}': expected cuda:N with N a device number, or cuda:all")),
                None => Err(format!("'{s}': expected auto, cpu, cuda, cuda:N or cuda:all")),
            },
        }
    }
}

impl DeviceRequest {
    /// Picks a device: `auto` takes CUDA device 0 when a GPU is usable, else the CPU.
    /// Asking for CUDA explicitly when none is usable is an error that says why.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Auto => {
                let probe = cuda::probe();
                Ok(if probe.devices.is_empty() || !probe.kernels_loadable() { Device::Cpu } else { Device::Cuda(0) })
            }
            DeviceRequest::AllCuda => Ok(self.resolve_all()?[0]),
            DeviceRequest::Cuda(ordinal) => {
                let probe = cuda::probe();
                let i = ordinal.unwrap_or(0);
                if let Some(reason) = &probe.unavailable {
                    bail!("--device cuda: no usable CUDA device ({reason})");
                }
                if i >= probe.devices.len() {
                    bail!("--device cuda:{i}: only {} CUDA device(s) present", probe.devices.len());
                }
                if !probe.kernels_loadable() {
                    bail!("--device cuda: {}", cuda::KERNELS_UNAVAILABLE);
                }
                Ok(Device::Cuda(i))
            }
        }
    }
}

impl DeviceRequest {
    /// The devices a request names: every visible GPU for `cuda:all` (an error saying
    /// why when there is none), else the one `resolve` picks.
    pub fn resolve_all(self) -> Result<Vec<Device>> {
        match self {
            DeviceRequest::AllCuda => {
                let probe = cuda::probe();
                if let Some(reason) = &probe.unavailable {
                    bail!("--device cuda:all: no usable CUDA device ({reason})");
                }
                if probe.devices.is_empty() {
                    bail!("--device cuda:all: no CUDA device present");
                }
                if !probe.kernels_loadable() {
                    bail!("--device cuda:all: {}", cuda::KERNELS_UNAVAILABLE);
                }
                Ok((0..probe.devices.len()).map(Device::Cuda).collect())
            }
            other => Ok(vec![other.resolve()?]),
        }
    }
}

/// An opened device: the handle compute code dispatches on.
#[derive(Clone)]
pub enum Backend {
    Cpu,
    Cuda(std::sync::Arc<cuda::CudaBackend>),
}

impl Backend {
    pub fn open(device: Device) -> Result<Self> {
        Ok(match device {
            Device::Cpu => Backend::Cpu,
            Device::Cuda(i) => Backend::Cuda(std::sync::Arc::new(cuda::CudaBackend::new(i)?)),
        })
    }

    /// Every device of `request` opened (see `DeviceRequest::resolve_all`).
    pub fn open_all(request: DeviceRequest) -> Result<Vec<Self>> {
        request.resolve_all()?.into_iter().map(Self::open).collect()
    }

    /// The devices of `backends` as one label: "cpu", "cuda:0" or "cuda:0+cuda:1".
    pub fn describe(backends: &[Backend]) -> String {
        backends.iter().map(|b| b.device().to_string()).collect::<Vec<_>>().join("+")
    }

    pub fn device(&self) -> Device {
        match self {
            Backend::Cpu => Device::Cpu,
            Backend::Cuda(c) => Device::Cuda(c.ordinal()),
        }
    }

    /// Fills `out` with numbers `start..start+out.len()` of the Philox stream.
    pub fn fill_random(&self, dist: crate::rng::Distribution, rng: crate::rng::Philox, start: u64, out: &mut [f32]) -> Result<()> {
        use crate::rng::Distribution::*;
        match self {
            Backend::Cpu => {
                match dist {
                    Uniform => rng.fill_uniform(start, out),
                    Normal => rng.fill_normal(start, out),
                    Sign => rng.fill_sign(start, out),
                }
                Ok(())
            }
            Backend::Cuda(c) => c.fill_random(dist, rng, start, out),
        }
    }

    pub fn fill_words(&self, rng: crate::rng::Philox, start: u64, out: &mut [u32]) -> Result<()> {
        match self {
            Backend::Cpu => {
                rng.fill_words(start, out);
                Ok(())
            }
            Backend::Cuda(c) => c.fill_words(rng, start, out),
        }
    }
}

/// Bytes of input one chunk holds: small enough for two in flight on any GPU and for
/// the CPU's caches to stream through, large enough to amortise launches.
pub const CHUNK_BYTES: usize = 64 << 20;

impl Backend {
    /// Squared L2 norm of rows `range` of `x`, streamed in chunks; `progress` is told
    /// how many rows each finished chunk held.
    pub fn row_sq_norms(&self, x: &crate::data::Array, range: std::ops::Range<usize>, progress: &dyn Fn(usize)) -> Result<Vec<f32>> {
        let row_bytes = x.row_len() * x.dtype.size();
        let chunk = crate::sched::chunk_rows(row_bytes, CHUNK_BYTES);
        match self {
            Backend::Cpu => {
                let mut out = vec![0f32; range.len()];
                for r in crate::sched::chunks(range.clone(), chunk) {
                    let o = &mut out[r.start - range.start..r.end - range.start];
                    crate::data::norms::row_sq_norms_chunk(x.dtype, x.row_bytes(r.start, r.end), x.row_len(), o);
                    progress(r.len());
                }
                Ok(out)
            }
            Backend::Cuda(c) => c.row_sq_norms(x, range, chunk, progress),
        }
    }
}
