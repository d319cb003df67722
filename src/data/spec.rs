//! The `--data` spec: `SOURCE[:key=value,...]`.
//!
//! SOURCE is a dataset directory, a built-in name (`digits`, `fashion-mnist`) or a
//! generator (`moons`, `lines`, `blobs`). Keys are the generator's parameters plus
//! transforms that apply to any source (see `transform::Transforms`):
//! `digits:subset=50,scale=maxnorm`, `moons:n=1000,noise=0.05,seed=0`, `./my-data:scale=pm1`.

use super::{builtin, generators, transform::Transforms, Dataset};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Parsed `key=value` options, consumed as they are read so leftovers can be reported.
#[derive(Debug, Default)]
pub struct Options {
    spec: String,
    values: BTreeMap<String, String>,
}

impl Options {
    pub fn parse(spec: &str, text: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("data spec '{spec}': option '{part}' must look like key=value"))?;
            if values.insert(k.trim().to_string(), v.trim().to_string()).is_some() {
                bail!("data spec '{spec}': option '{k}' given twice");
            }
        }
        Ok(Self { spec: spec.to_string(), values })
    }

    pub fn take_str(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    pub fn take<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T> {
        match self.values.remove(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("data spec '{}': '{key}={v}' is not a valid value for {key}", self.spec)),
        }
    }

    pub fn take_opt<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("data spec '{}': '{key}={v}' is not a valid value for {key}", self.spec)),
        }
    }

    pub fn finish(self, valid: &str) -> Result<()> {
        if let Some(k) = self.values.keys().next() {
            bail!("data spec '{}': unknown option '{k}' (valid here: {valid})", self.spec);
        }
        Ok(())
    }
}

/// Opens whatever `spec` names, applies its transforms and validates the result.
pub fn open(spec: &str) -> Result<Dataset> {
    let (source, opts_text) = split_spec(spec);
    let mut opts = Options::parse(spec, opts_text)?;
    let transforms = Transforms::take_from(&mut opts)?;
    let (dataset, valid) = if Path::new(source).is_dir() {
        (Dataset::open_dir(Path::new(source))?, "")
    } else if let Some(ds) = generators::generate(source, &mut opts)? {
        (ds, generators::options_of(source))
    } else if let Some(ds) = builtin::open(source)? {
        (ds, "")
    } else if source.contains('/') || source.starts_with('.') {
        bail!("data spec '{spec}': {source} is not a directory");
    } else {
        bail!(
            "data spec '{spec}': '{source}' is neither a dataset directory, a built-in ({}) nor a generator ({})",
            builtin::NAMES.join(", "),
            generators::NAMES.join(", ")
        );
    };
    let transform_keys = Transforms::KEYS;
    opts.finish(&if valid.is_empty() { transform_keys.to_string() } else { format!("{valid}, {transform_keys}") })?;
    let dataset = transforms.apply(dataset)?;
    dataset.validate()?;
    Ok(dataset)
}

/// `SOURCE:opts` → (SOURCE, opts). An existing directory whose name contains ':' is
/// taken whole.
fn split_spec(spec: &str) -> (&str, &str) {
    if Path::new(spec).is_dir() {
        return (spec, "");
    }
    match spec.rsplit_once(':') {
        Some((src, opts)) if opts.contains('=') || opts.is_empty() => (src, opts),
        _ => (spec, ""),
    }
}
