//! Writers for the formats the field reads: .npy arrays, JSON. Every write goes to a
//! temporary file in the destination directory and is renamed into place, so a crash
//! never leaves a half-written result.

pub mod image;
pub mod plot;
pub mod safetensors;

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `path` atomically: `fill` writes into a temporary file beside it, which is
/// renamed over `path` only once `fill` succeeded and the data is flushed. On any error
/// the temporary file is removed and `path` is untouched. The file gets the mode a plain
/// `create` would (0666 less the umask): the temporary file is created with it, and the
/// rename keeps it.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.is_dir() {
        anyhow::bail!("{} is a directory; name a file to write", path.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".rote-partial-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // open(2) applies the umask to this mode, as it does for any new file.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w)?;
        w.flush().with_context(|| format!("cannot write {}", path.display()))?;
    }
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    // The error keeps only the io::Error: the temporary file it carries is dropped (and
    // deleted) here, not whenever the error is.
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates the output directory `dir` (and its parents), naming it in any error: a
/// file in the way is reported as such.
pub fn create_out_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{} exists and is not a directory; --out names a directory here", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))
}

/// A run directory a command creates for its outputs: removed again, with everything
/// in it, when the command fails before `keep` (a diverged or rejected run leaves
/// nothing to block its rerun). A directory that already existed is never removed. A
/// killed process removes nothing, which is what makes a run resumable.
pub struct FreshDir {
    path: std::path::PathBuf,
    created: bool,
}

impl FreshDir {
    pub fn create(path: &Path) -> Result<Self> {
        let created = !path.exists();
        create_out_dir(path)?;
        Ok(Self { path: path.to_path_buf(), created })
    }

    /// The command succeeded: the directory stays.
    pub fn keep(mut self) {
        self.created = false;
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Element types rote writes to .npy.
pub trait NpyElement: bytemuck::Pod {
    const DESCR: &'static str;
}
impl NpyElement for u8 {
    const DESCR: &'static str = "|u1";
}
impl NpyElement for u32 {
    const DESCR: &'static str = "<u4";
}
impl NpyElement for i64 {
    const DESCR: &'static str = "<i8";
}
impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
}
impl NpyElement for f64 {
    const DESCR: &'static str = "<f8";
}
impl NpyElement for half::f16 {
    const DESCR: &'static str = "<f2";
}

/// The NPY 1.0 header for a C-order array, padded so the data starts on a 64-byte
/// boundary (as numpy does), which keeps memory-mapped f32 data aligned.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes a C-order array of `shape` to `path` atomically.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    anyhow::ensure!(
        shape.iter().product::<usize>() == data.len(),
        "internal error: {} elements for shape {:?}",
        data.len(),
        shape
    );
    write_npy_bytes(path, T::DESCR, shape, bytemuck::cast_slice(data))
}

pub fn write_npy_bytes(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(&npy_header(descr, shape))?;
        w.write_all(bytes)?;
        Ok(())
    })
}

/// Writes pretty JSON atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}
