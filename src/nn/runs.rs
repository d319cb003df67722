//! What the commands that read saved weights work on: the checkpoint files a pattern
//! names, a selection of them, and the samples they are scored on — a training run's
//! own (its labels, dataset rows and corruption mask) or, for a checkpoint series
//! trained elsewhere, the dataset's.

use super::train::{self, TrainConfig};
use crate::data::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// '*' wildcard match of a whole file name.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// The files `pattern` names: a path, or a directory and a file-name pattern with '*'.
pub fn checkpoint_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains('*') {
        if !path.is_file() {
            bail!("{pattern}: no such checkpoint file");
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && wildcard(&name, &p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{pattern}: no file matches");
    }
    Ok(files)
}

/// The samples a series of checkpoints is scored on, and the checkpoints.
pub struct Scored {
    pub labels: Vec<i64>,
    /// Dataset row of every sample (a run's duplicates repeat a row).
    pub sources: Vec<u32>,
    pub corrupted: Vec<bool>,
    /// Sorted by name.
    pub checkpoints: Vec<PathBuf>,
}

impl Scored {
    /// A training run's samples (labels.npy, sources.npy, corrupted.npy) and its
    /// checkpoints/, checked against `ds` (the run's data or a copy of it).
    pub fn of_run(run: &Path, ds: &Dataset) -> Result<Self> {
        let read = |name: &str| -> Result<Vec<i64>> { crate::data::Array::open_npy(&run.join(name))?.to_i64() };
        let labels = read("labels.npy")?;
        let sources: Vec<u32> = read("sources.npy")?.iter().map(|&v| v as u32).collect();
        let corrupted: Vec<bool> = read("corrupted.npy")?.iter().map(|&v| v != 0).collect();
        if sources.len() != labels.len() || corrupted.len() != labels.len() {
            bail!("{}: labels.npy, sources.npy and corrupted.npy have {}, {} and {} entries; the run is damaged", run.display(), labels.len(), sources.len(), corrupted.len());
        }
        if let Some(&bad) = sources.iter().find(|&&r| r as usize >= ds.train.len()) {
            bail!("the run refers to training row {bad} but the data has {} rows; pass the run's data with --data", ds.train.len());
        }
        let mut checkpoints: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
            .with_context(|| format!("{} has no checkpoints/ directory", run.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        checkpoints.sort();
        Ok(Self { labels, sources, corrupted, checkpoints })
    }

    /// Every training sample of `ds` with its own label, for the checkpoints `weights`
    /// names (a series trained elsewhere) of `net`.
    pub fn of_series(weights: &str, ds: &Dataset, model: &str, net: &super::network::Network) -> Result<Self> {
        net.check_labels(model, ds.train.y.iter())?;
        let n = ds.train.len();
        Ok(Self { labels: ds.train.y.clone(), sources: (0..n as u32).collect(), corrupted: vec![false; n], checkpoints: checkpoint_files(weights)? })
    }

    /// Keeps the checkpoints whose file name matches `pattern` ('*' wildcards), then
    /// every `every`-th of those (the `every`-th, 2·`every`-th, …).
    pub fn select(&mut self, pattern: Option<&str>, every: usize) -> Result<()> {
        if every == 0 {
            bail!("--every must be at least 1");
        }
        self.checkpoints.retain(|p| pattern.is_none_or(|pat| wildcard(pat, &p.file_name().unwrap().to_string_lossy())));
        self.checkpoints = std::mem::take(&mut self.checkpoints).into_iter().enumerate().filter(|(i, _)| (i + 1) % every == 0).map(|(_, p)| p).collect();
        Ok(())
    }
}

/// The description a checkpoint series trained elsewhere is scored with: its model,
/// the data's input scale (uint8 / max) and the normalization `normalize` names.
pub fn series_config(data: &str, model: &str, ds: &Dataset, normalize: &str) -> Result<TrainConfig> {
    let input_scale = train::input_scale_for(ds);
    Ok(TrainConfig {
        data: data.to_string(),
        model: model.to_string(),
        epochs: 0,
        batch: 1,
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
        schedule: train::Schedule::Constant,
        label_noise: 0.0,
        duplicate_conflicts: 0,
        seed: 0,
        input_scale,
        normalization: train::normalization_for(model, normalize, ds, input_scale)?,
        augment: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_names() {
        assert!(wildcard("epoch-*.safetensors", "epoch-003.safetensors"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*b*c", "a12b34c"));
        assert!(!wildcard("a*b*c", "a12b34"));
        assert!(!wildcard("epoch-01*", "xepoch-010"));
        assert!(wildcard("same", "same") && !wildcard("same", "samey"));
    }
}
