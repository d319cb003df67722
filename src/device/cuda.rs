//! The CUDA backend: probing (never panics without a driver), module loading (sm_90
//! cubin, else compute_80 PTX, else NVRTC from the embedded source), and the device
//! side of each operation, each the twin of a CPU function.

use super::{kernel_module, KernelModule, MODULES};
use crate::rng::{Distribution, Philox};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

pub const KERNELS_UNAVAILABLE: &str =
    "GPU kernels are unavailable: this binary was built without nvcc and NVRTC is not installed (run scripts/install-cuda-toolchain.sh and rebuild, or install the CUDA toolkit)";

/// How kernels reach a given device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelSource {
    /// Precompiled SASS for sm_90.
    Cubin,
    /// Precompiled compute_80 PTX, JIT-compiled by the driver.
    Ptx,
    /// Compiled at run time from the embedded source.
    Nvrtc,
    Unavailable,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory_bytes: usize,
    pub compute_capability: (i32, i32),
    pub kernels: KernelSource,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaProbe {
    /// Why no CUDA device can be used, when none can.
    pub unavailable: Option<String>,
    pub driver_version: Option<i32>,
    pub nvrtc_present: bool,
    pub devices: Vec<CudaDeviceInfo>,
}

impl CudaProbe {
    pub fn kernels_loadable(&self) -> bool {
        self.devices.first().is_some_and(|d| d.kernels != KernelSource::Unavailable)
    }
}

fn kernel_source_for(cc: (i32, i32), nvrtc: bool) -> KernelSource {
    let precompiled = super::kernels_precompiled();
    if precompiled && cc == (9, 0) {
        KernelSource::Cubin
    } else if precompiled && cc.0 >= 8 {
        KernelSource::Ptx
    } else if nvrtc {
        KernelSource::Nvrtc
    } else {
        KernelSource::Unavailable
    }
}

/// What CUDA devices this machine has. Cached; safe to call anywhere.
pub fn probe() -> &'static CudaProbe {
    static PROBE: OnceLock<CudaProbe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let mut p = CudaProbe { unavailable: None, driver_version: None, nvrtc_present: false, devices: vec![] };
        if std::env::var("ROTE_DISABLE_CUDA").is_ok_and(|v| v == "1") {
            p.unavailable = Some("disabled by ROTE_DISABLE_CUDA=1".into());
            return p;
        }
        // SAFETY: these only try to dlopen the libraries; without them cudarc would panic.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            p.unavailable = Some("the CUDA driver library (libcuda) was not found".into());
            return p;
        }
        p.nvrtc_present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        if let Err(e) = cudarc::driver::result::init() {
            p.unavailable = Some(format!("cuInit failed: {e}"));
            return p;
        }
        let mut version = 0;
        // SAFETY: plain out-parameter call after a successful cuInit.
        if unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) } == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            p.driver_version = Some(version);
        }
        let count = match cudarc::driver::result::device::get_count() {
            Ok(c) => c,
            Err(e) => {
                p.unavailable = Some(format!("cannot count CUDA devices: {e}"));
                return p;
            }
        };
        for ordinal in 0..count {
            let info = (|| -> Result<CudaDeviceInfo> {
                use cudarc::driver::sys::CUdevice_attribute::*;
                let dev = cudarc::driver::result::device::get(ordinal)?;
                let name = cudarc::driver::result::device::get_name(dev)?;
                // SAFETY: dev is a valid device handle from device::get.
                let (mem, major, minor) = unsafe {
                    (
                        cudarc::driver::result::device::total_mem(dev)?,
                        cudarc::driver::result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                        cudarc::driver::result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                    )
                };
                Ok(CudaDeviceInfo {
                    ordinal: ordinal as usize,
                    name,
                    total_memory_bytes: mem,
                    compute_capability: (major, minor),
                    kernels: kernel_source_for((major, minor), p.nvrtc_present),
                })
            })();
            match info {
                Ok(i) => p.devices.push(i),
                Err(e) => p.unavailable.get_or_insert(format!("device {ordinal}: {e}")).push(' '),
            }
        }
        if p.devices.is_empty() && p.unavailable.is_none() {
            p.unavailable = Some("the driver reports no CUDA devices".into());
        }
        p
    })
}

/// An open CUDA device: context, stream, and the modules loaded so far.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: CudaDeviceInfo,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl CudaBackend {
    pub fn new(ordinal: usize) -> Result<Self> {
        let probe = probe();
        if let Some(reason) = &probe.unavailable {
            if probe.devices.is_empty() {
                bail!("no usable CUDA device: {reason}");
            }
        }
        let info = probe
            .devices
            .get(ordinal)
            .cloned()
            .ok_or_else(|| anyhow!("CUDA device {ordinal} does not exist ({} present)", probe.devices.len()))?;
        if info.kernels == KernelSource::Unavailable {
            bail!("{KERNELS_UNAVAILABLE}");
        }
        let ctx = CudaContext::new(ordinal).with_context(|| format!("cannot create a CUDA context on device {ordinal}"))?;
        let stream = ctx.default_stream();
        Ok(Self { ctx, stream, info, modules: Mutex::new(HashMap::new()) })
    }

    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }

    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `function` of module `module`, loading the module on first use.
    pub fn function(&self, module: &'static str, function: &str) -> Result<CudaFunction> {
        let mut modules = self.modules.lock().unwrap();
        let m = match modules.get(module) {
            Some(m) => m.clone(),
            None => {
                let km = kernel_module(module).ok_or_else(|| anyhow!("internal error: no kernel module '{module}'"))?;
                let loaded = self.load_module(km)?;
                modules.insert(module, loaded.clone());
                loaded
            }
        };
        m.load_function(function).with_context(|| format!("kernel {function} not found in module {module}"))
    }

    fn load_module(&self, km: &KernelModule) -> Result<Arc<CudaModule>> {
        use cudarc::nvrtc::Ptx;
        let image = match self.info.kernels {
            KernelSource::Cubin => Ptx::from_binary(km.cubin_sm90.unwrap().to_vec()),
            KernelSource::Ptx => Ptx::from_src(km.ptx.unwrap()),
            KernelSource::Nvrtc => nvrtc_compile(km, self.info.compute_capability)?,
            KernelSource::Unavailable => bail!("{KERNELS_UNAVAILABLE}"),
        };
        self.ctx
            .load_module(image)
            .with_context(|| format!("cannot load kernel module '{}' ({:?}) on {}", km.name, self.info.kernels, self.info.name))
    }

    fn fill_kernel<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Default + Clone>(
        &self,
        function: &str,
        rng: Philox,
        start: u64,
        out: &mut [T],
    ) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let f = self.function("rng", function)?;
        let n = out.len() as u64;
        let mut dev = self.stream.alloc_zeros::<T>(out.len())?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut dev).arg(&n).arg(&rng.seed).arg(&rng.stream).arg(&start);
        // SAFETY: the kernel writes exactly n elements of dev.
        unsafe { b.launch(linear_launch(n)) }?;
        self.stream.memcpy_dtoh(&dev, out)?;
        self.stream.synchronize()?;
        Ok(())
    }

    pub fn fill_random(&self, dist: Distribution, rng: Philox, start: u64, out: &mut [f32]) -> Result<()> {
        let name = match dist {
            Distribution::Uniform => "philox_fill_uniform",
            Distribution::Normal => "philox_fill_normal",
            Distribution::Sign => "philox_fill_sign",
        };
        self.fill_kernel(name, rng, start, out)
    }

    pub fn fill_words(&self, rng: Philox, start: u64, out: &mut [u32]) -> Result<()> {
        self.fill_kernel("philox_fill_words", rng, start, out)
    }

    /// Whole Philox blocks `first_block..` into `out` (4 words each): the twin of
    /// `Philox::block`, able to address any 64-bit counter.
    pub fn fill_blocks(&self, rng: Philox, first_block: u64, out: &mut [u32]) -> Result<()> {
        assert!(out.len() % 4 == 0);
        let blocks = (out.len() / 4) as u64;
        let f = self.function("rng", "philox_fill_blocks")?;
        let mut dev = self.stream.alloc_zeros::<u32>(out.len())?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut dev).arg(&blocks).arg(&rng.seed).arg(&rng.stream).arg(&first_block);
        // SAFETY: the kernel writes 4·blocks words of dev.
        unsafe { b.launch(linear_launch(blocks)) }?;
        self.stream.memcpy_dtoh(&dev, out)?;
        self.stream.synchronize()?;
        Ok(())
    }

    /// Streams rows `range` of a host array through the device in chunks of
    /// `chunk_rows`, double-buffered: while the kernel works on one chunk in one stream,
    /// the next chunk's upload runs in the other. `launch(stream, input, output, rows)`
    /// enqueues the kernel for one chunk, writing `out_per_row` floats per row.
    pub fn stream_rows<'a>(
        &self,
        rows: &dyn Fn(Range<usize>) -> &'a [u8],
        row_bytes: usize,
        range: Range<usize>,
        chunk_rows: usize,
        out_per_row: usize,
        launch: &dyn Fn(&Arc<CudaStream>, &CudaSlice<u8>, &mut CudaSlice<f32>, usize) -> Result<()>,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<f32>> {
        let total = range.len();
        let mut result = vec![0f32; total * out_per_row];
        if total == 0 {
            return Ok(result);
        }
        let chunk_rows = chunk_rows.clamp(1, total);
        let streams = [self.ctx.new_stream()?, self.ctx.new_stream()?];
        // SAFETY: pinned buffers are written before each upload and read only after the
        // download into them has completed (as_slice waits on its event).
        let mut host_in: Vec<PinnedHostSlice<u8>> =
            (0..2).map(|_| unsafe { self.ctx.alloc_pinned::<u8>(chunk_rows * row_bytes) }).collect::<Result<_, _>>()?;
        let mut host_out: Vec<PinnedHostSlice<f32>> = (0..2)
            .map(|_| unsafe { self.ctx.alloc_pinned_with_flags::<f32>(chunk_rows * out_per_row, 0) })
            .collect::<Result<_, _>>()?;
        let mut dev_in: Vec<CudaSlice<u8>> = streams.iter().map(|s| s.alloc_zeros::<u8>(chunk_rows * row_bytes)).collect::<Result<_, _>>()?;
        let mut dev_out: Vec<CudaSlice<f32>> =
            streams.iter().map(|s| s.alloc_zeros::<f32>(chunk_rows * out_per_row)).collect::<Result<_, _>>()?;
        let mut pending: [Option<Range<usize>>; 2] = [None, None];
        let mut drain = |slot: usize, r: Range<usize>, host_out: &Vec<PinnedHostSlice<f32>>| -> Result<()> {
            let out = host_out[slot].as_slice()?;
            let at = (r.start - range.start) * out_per_row;
            result[at..at + r.len() * out_per_row].copy_from_slice(&out[..r.len() * out_per_row]);
            progress(r.len());
            Ok(())
        };
        let mut start = range.start;
        let mut i = 0;
        while start < range.end {
            let end = (start + chunk_rows).min(range.end);
            let slot = i % 2;
            if let Some(prev) = pending[slot].take() {
                drain(slot, prev, &host_out)?;
            }
            let staged = host_in[slot].as_mut_slice()?;
            staged[..(end - start) * row_bytes].copy_from_slice(rows(start..end));
            let s = &streams[slot];
            s.memcpy_htod(&host_in[slot], &mut dev_in[slot])?;
            launch(s, &dev_in[slot], &mut dev_out[slot], end - start)?;
            s.memcpy_dtoh(&dev_out[slot], &mut host_out[slot])?;
            pending[slot] = Some(start..end);
            start = end;
            i += 1;
        }
        for slot in [i % 2, (i + 1) % 2] {
            if let Some(prev) = pending[slot].take() {
                drain(slot, prev, &host_out)?;
            }
        }
        Ok(result)
    }

    /// Squared norms of rows `range` of `x`, streamed (twin of data::norms).
    pub fn row_sq_norms(&self, x: &crate::data::Array, range: Range<usize>, chunk_rows: usize, progress: &dyn Fn(usize)) -> Result<Vec<f32>> {
        use crate::data::DType;
        let name = match x.dtype {
            DType::U8 => "row_sq_norms_u8",
            DType::F16 => "row_sq_norms_f16",
            DType::F32 => "row_sq_norms_f32",
            other => bail!("{}: norms of {} arrays are not supported", x.origin, other.name()),
        };
        let f = self.function("norms", name)?;
        let cols = x.row_len() as u32;
        let launch = |s: &Arc<CudaStream>, input: &CudaSlice<u8>, out: &mut CudaSlice<f32>, rows: usize| -> Result<()> {
            const WARPS: u32 = 8;
            let rows = rows as u32;
            let cfg = LaunchConfig { grid_dim: (rows.div_ceil(WARPS), 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 };
            let mut b = s.launch_builder(&f);
            b.arg(input).arg(out).arg(&rows).arg(&cols);
            // SAFETY: input holds rows·cols elements of the kernel's type; out ≥ rows floats.
            unsafe { b.launch(cfg) }?;
            Ok(())
        };
        let row_bytes = x.row_len() * x.dtype.size();
        self.stream_rows(&|r| x.row_bytes(r.start, r.end), row_bytes, range, chunk_rows, 1, &launch, progress)
    }
}

fn linear_launch(n: u64) -> LaunchConfig {
    const THREADS: u32 = 256;
    LaunchConfig { grid_dim: (n.div_ceil(THREADS as u64) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn nvrtc_compile(km: &KernelModule, cc: (i32, i32)) -> Result<cudarc::nvrtc::Ptx> {
    let arch: &'static str = match cc {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => "compute_80",
    };
    let mut include_paths = vec![];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            include_paths.push(format!("{home}/include"));
        }
    }
    include_paths.push("/usr/local/cuda/include".into());
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), include_paths, ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(km.source, opts).map_err(|e| anyhow!("NVRTC could not compile kernel module '{}': {e}", km.name))
}

/// Names of every embedded module, for `rote device`.
pub fn module_names() -> Vec<&'static str> {
    MODULES.iter().map(|m| m.name).collect()
}
