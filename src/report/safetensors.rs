//! Every safetensors file rote writes or reads goes through here: constructed networks,
//! MLP checkpoints (PyTorch state-dict names) and denoiser weights.
//!
//! Writing: the header is laid out by rote, not by the `safetensors` crate, whose
//! metadata comes from a hash map and so changes order from run to run; here tensors
//! and metadata are sorted by name, so the same network is the same bytes.
//!
//! Reading: the `safetensors` crate parses and bounds-checks the file; `View` then
//! converts float tensors to f32 (F32, F16, BF16), refuses non-finite values, and
//! `View::reject_unread` names tensors the caller did not ask for — a file holding more
//! than the model it is read as is a different network, not one to truncate silently.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One tensor to write: little-endian element bytes in C order.
pub struct Tensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: &'a [f32]) -> Self {
        Self { name: name.into(), dtype: Dtype::F32, shape, data: bytemuck::cast_slice(data) }
    }

    pub fn u8(name: impl Into<String>, shape: Vec<usize>, data: &'a [u8]) -> Self {
        Self { name: name.into(), dtype: Dtype::U8, shape, data }
    }
}

/// The file's bytes: an 8-byte header length, the JSON header (padded with spaces to a
/// multiple of 8 bytes), then the tensors' data in name order.
pub fn to_bytes(tensors: &[Tensor], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut order: Vec<&Tensor> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0usize;
    for t in &order {
        let size = t.dtype.size();
        let elements: usize = t.shape.iter().product();
        if elements * size != t.data.len() {
            bail!("internal error: tensor '{}' of shape {:?} {:?} has {} bytes", t.name, t.shape, t.dtype, t.data.len());
        }
        if header.contains_key(&t.name) {
            bail!("internal error: tensor '{}' given twice", t.name);
        }
        let entry = serde_json::json!({ "dtype": format!("{:?}", t.dtype), "shape": t.shape, "data_offsets": [offset, offset + t.data.len()] });
        header.insert(t.name.clone(), entry);
        offset += t.data.len();
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for t in &order {
        out.extend_from_slice(t.data);
    }
    Ok(out)
}

/// Writes a safetensors file atomically.
pub fn save(path: &Path, tensors: &[Tensor], metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes = to_bytes(tensors, metadata)?;
    super::write_atomic(path, |w| Ok(w.write_all(&bytes)?))
}

/// A safetensors file's metadata, from its header alone (the tensors are not read).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{}: not a safetensors file (shorter than its header length)", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        bail!("{}: not a safetensors file (a header of {len} bytes)", path.display());
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).with_context(|| format!("{}: not a safetensors file (its header is cut short)", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    Ok(v["__metadata__"].as_object().map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default())
}

/// A safetensors file read whole into memory.
pub struct Loaded {
    pub path: PathBuf,
    bytes: Vec<u8>,
}

impl Loaded {
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            bail!("{} is a directory, not a safetensors file", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), bytes })
    }

    /// A safetensors file already in memory (a state dict handed over from Python);
    /// `label` names it in errors.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Self {
        Self { path: label.into(), bytes }
    }

    /// Parses the header and checks every tensor's extent.
    pub fn view(&self) -> Result<View<'_>> {
        let path = &self.path;
        let (_, header) = safetensors::SafeTensors::read_metadata(&self.bytes).map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&self.bytes).map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
        let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(View { path, st, metadata, read: RefCell::new(BTreeSet::new()) })
    }
}

pub struct View<'a> {
    path: &'a Path,
    st: safetensors::SafeTensors<'a>,
    pub metadata: BTreeMap<String, String>,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> View<'a> {
    pub fn path(&self) -> &Path {
        self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st.names().into_iter().cloned().collect();
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// The raw tensor `name`; `missing` says what the caller expected, for the error.
    pub fn tensor(&self, name: &str, missing: &dyn Fn() -> String) -> Result<TensorView<'a>> {
        let t = self.st.tensor(name).map_err(|_| anyhow!("{}: tensor '{name}' is missing ({})", self.path.display(), missing()))?;
        self.read.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    /// A float tensor as f32 (from F32, F16 or BF16), of `shape` when given, every value
    /// finite.
    pub fn floats(&self, name: &str, shape: Option<&[usize]>, missing: &dyn Fn() -> String) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name, missing)?;
        if let Some(want) = shape {
            if t.shape() != want {
                bail!("{}: tensor '{name}' has shape {:?} but {want:?} was expected", self.path.display(), t.shape());
            }
        }
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F16 => t.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => t.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => bail!("{}: tensor '{name}' has dtype {other:?}; rote reads F32, F16 and BF16 here", self.path.display()),
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor '{name}' holds a non-finite value ({}) at flat index {i} of shape {:?}; rote does not load networks with NaN or infinite parameters",
                self.path.display(),
                data[i],
                t.shape()
            );
        }
        Ok((t.shape().to_vec(), data))
    }

    /// Fails, naming them, when the file holds tensors nobody read.
    pub fn reject_unread(&self, what: &str) -> Result<()> {
        let read = self.read.borrow();
        let extra: Vec<String> = self.names().into_iter().filter(|n| !read.contains(n)).collect();
        if !extra.is_empty() {
            let shown: Vec<&str> = extra.iter().take(8).map(|s| s.as_str()).collect();
            bail!(
                "{}: holds {} tensor{} that {what} does not have ({}{}); the file is a different network",
                self.path.display(),
                extra.len(),
                if extra.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if extra.len() > shown.len() { ", …" } else { "" }
            );
        }
        Ok(())
    }
}
