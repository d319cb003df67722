//! Datasets: a directory of memory-mapped .npy arrays (x, y, optional test split) and
//! meta.json; built-ins; generators; importers; transforms; and the `--data` spec that
//! names any of them.

pub mod array;
pub mod builtin;
pub mod generators;
pub mod import;
pub mod norms;
pub mod spec;
pub mod transform;

pub use array::{Array, DType};
pub use spec::{open, open_os, DataSpec};

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Descriptive metadata, stored as meta.json in a dataset directory.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub license: String,
    #[serde(default)]
    pub sample_shape: Vec<usize>,
    #[serde(default)]
    pub class_names: Vec<String>,
}

/// Samples and their integer labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub x: Array,
    pub y: Vec<i64>,
}

impl Split {
    pub fn new(x: Array, y: Vec<i64>) -> Result<Self> {
        if x.rows() != y.len() {
            bail!("{} has {} samples but its labels have {} entries", x.origin, x.rows(), y.len());
        }
        Ok(Self { x, y })
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn features(&self) -> usize {
        self.x.row_len()
    }

    /// Count per label, sorted by label.
    pub fn class_counts(&self) -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for &c in &self.y {
            *counts.entry(c).or_insert(0) += 1;
        }
        counts
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub meta: Meta,
    pub train: Split,
    pub test: Option<Split>,
}

impl Dataset {
    pub fn sample_shape(&self) -> &[usize] {
        &self.train.x.shape[1..]
    }

    /// Number of classes: distinct labels of the training split.
    pub fn classes(&self) -> usize {
        self.train.class_counts().len()
    }

    /// Rejects data rote cannot use, naming the array and the problem.
    pub fn validate(&self) -> Result<()> {
        let check = |s: &Split, what: &str| -> Result<()> {
            if s.x.shape.len() < 2 {
                bail!("{}: x must have a sample axis and at least one feature axis, got shape {:?}", s.x.origin, s.x.shape);
            }
            if s.x.row_len() == 0 {
                bail!("{}: samples of shape {:?} hold no values (a zero-length axis); every sample needs at least one feature", s.x.origin, &s.x.shape[1..]);
            }
            if s.is_empty() {
                bail!("dataset '{}': the {what} split is empty ({})", self.meta.name, s.x.origin);
            }
            if !matches!(s.x.dtype, DType::U8 | DType::F16 | DType::F32) {
                bail!("{}: samples are {}, rote reads uint8, float16 or float32", s.x.origin, s.x.dtype.name());
            }
            if let Some((i, v)) = s.x.first_non_finite() {
                let row = i / s.x.row_len().max(1);
                bail!("{}: sample {row} holds a non-finite value ({v}) at flat index {i}", s.x.origin);
            }
            if let Some(&neg) = s.y.iter().find(|&&c| c < 0) {
                bail!("the labels of {}: labels must be non-negative class indices, found {neg}", s.x.origin);
            }
            Ok(())
        };
        check(&self.train, "training")?;
        if let Some(t) = &self.test {
            check(t, "test")?;
            if t.x.shape[1..] != self.train.x.shape[1..] {
                bail!(
                    "dataset '{}': test samples have shape {:?} but training samples {:?}",
                    self.meta.name,
                    &t.x.shape[1..],
                    &self.train.x.shape[1..]
                );
            }
        }
        if !self.meta.sample_shape.is_empty() && self.meta.sample_shape != self.sample_shape() {
            bail!(
                "dataset '{}': meta.json says samples have shape {:?} but x.npy holds {:?}",
                self.meta.name,
                self.meta.sample_shape,
                self.sample_shape()
            );
        }
        Ok(())
    }

    /// Opens a dataset directory (x.npy, y.npy, optional x_test.npy/y_test.npy, meta.json).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a dataset directory", dir.display());
        }
        let x_path = dir.join("x.npy");
        let y_path = dir.join("y.npy");
        for p in [&x_path, &y_path] {
            require_file(p)?;
        }
        let meta_path = dir.join("meta.json");
        let meta = if meta_path.is_file() {
            let text = std::fs::read_to_string(&meta_path).with_context(|| format!("cannot read {}", meta_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not valid dataset metadata", meta_path.display()))?
        } else {
            Meta { name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), ..Meta::default() }
        };
        let load_split = |xp: &Path, yp: &Path| -> Result<Split> {
            let x = Array::open_npy(xp)?;
            let y_arr = Array::open_npy(yp)?;
            if y_arr.shape.len() != 1 {
                bail!("{}: labels must be one-dimensional, got shape {:?}", yp.display(), y_arr.shape);
            }
            let y = y_arr.to_i64()?;
            if let Some(&neg) = y.iter().find(|&&c| c < 0) {
                bail!("{}: labels must be non-negative class indices, found {neg}", yp.display());
            }
            if x.rows() != y.len() {
                bail!("{} has {} samples but {} has {} labels", xp.display(), x.rows(), yp.display(), y.len());
            }
            Split::new(x, y)
        };
        let train = load_split(&x_path, &y_path)?;
        let (xt, yt) = (dir.join("x_test.npy"), dir.join("y_test.npy"));
        let test = match (present(&xt)?, present(&yt)?) {
            (true, true) => Some(load_split(&xt, &yt)?),
            (false, false) => None,
            (true, false) => bail!("{} exists but {} does not", xt.display(), yt.display()),
            (false, true) => bail!("{} exists but {} does not", yt.display(), xt.display()),
        };
        let ds = Dataset { meta, train, test };
        ds.validate()?;
        Ok(ds)
    }

    /// Writes this dataset as a directory; refuses to overwrite an existing dataset.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        if dir.join("x.npy").exists() || dir.join("y.npy").exists() {
            bail!("{} already holds a dataset; choose another --out or remove it first", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut meta = self.meta.clone();
        meta.sample_shape = self.sample_shape().to_vec();
        let write_split = |s: &Split, x: &str, y: &str| -> Result<()> {
            s.x.write_npy(&dir.join(x))?;
            crate::report::write_npy(&dir.join(y), &[s.y.len()], &s.y)
        };
        write_split(&self.train, "x.npy", "y.npy")?;
        if let Some(t) = &self.test {
            write_split(t, "x_test.npy", "y_test.npy")?;
        }
        crate::report::write_json(&dir.join("meta.json"), &meta)
    }

    /// The summary `rote data info` prints.
    pub fn info(&self) -> DatasetInfo {
        let counts = self.train.class_counts();
        DatasetInfo {
            name: self.meta.name.clone(),
            source: self.meta.source.clone(),
            n: self.train.len(),
            n_test: self.test.as_ref().map(|t| t.len()),
            sample_shape: self.sample_shape().to_vec(),
            features: self.train.features(),
            dtype: self.train.x.dtype,
            classes: counts.len(),
            class_counts: counts,
            class_names: self.meta.class_names.clone(),
            memory_mapped: self.train.x.is_mapped(),
        }
    }
}

/// Whether `path` names something: absent is `false`; anything that cannot be looked at
/// (a symlink loop, no permission) is an error naming it.
fn present(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(path).is_err() => Ok(false),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}

/// `path` must be a readable regular file of the dataset directory.
fn require_file(path: &Path) -> Result<()> {
    if !present(path)? {
        bail!("{} is missing; a dataset directory holds x.npy, y.npy and optionally x_test.npy, y_test.npy, meta.json", path.display());
    }
    if path.is_dir() {
        bail!("{} is a directory, not a .npy file", path.display());
    }
    Ok(())
}

#[derive(Debug, serde::Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub source: String,
    pub n: usize,
    pub n_test: Option<usize>,
    pub sample_shape: Vec<usize>,
    pub features: usize,
    pub dtype: DType,
    pub classes: usize,
    pub class_counts: BTreeMap<i64, usize>,
    pub class_names: Vec<String>,
    pub memory_mapped: bool,
}
