//! The `--data` spec: `SOURCE[:key=value,...]`.
//!
//! SOURCE is a dataset directory, a built-in name (`digits`, `fashion-mnist`) or a
//! generator (`moons`, `lines`, `blobs`). Keys are the generator's parameters plus
//! transforms that apply to any source (see `transform::Transforms`):
//! `digits:subset=50,scale=maxnorm`, `moons:n=1000,noise=0.05,seed=0`, `./my-data:scale=pm1`.

use super::{builtin, generators, transform::Transforms, Dataset};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
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

/// A `--data` spec as the command line gave it: text, or — for a dataset directory
/// whose path is not UTF-8 — the raw path (optionally followed by `:key=value` options).
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec(pub OsString);

impl DataSpec {
    pub fn open(&self) -> Result<Dataset> {
        open_os(&self.0)
    }

    /// The spec as text, for records (run.json, CSV settings) that must name the data
    /// again later; a path that is not UTF-8 cannot be recorded.
    pub fn text(&self) -> Result<&str> {
        self.0.to_str().with_context(|| {
            format!(
                "the data path {} is not valid UTF-8, and this command records its data as text to reopen it later; rename it or give a UTF-8 symlink to it",
                self.0.to_string_lossy()
            )
        })
    }

    /// The spec for messages (invalid UTF-8 shown as U+FFFD).
    pub fn lossy(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

/// Written as its text (invalid UTF-8 as U+FFFD) in JSON summaries.
impl serde::Serialize for DataSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.lossy())
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lossy())
    }
}

impl From<&str> for DataSpec {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<OsString> for DataSpec {
    fn from(s: OsString) -> Self {
        Self(s)
    }
}

/// `open` for a spec that may not be UTF-8: such a spec can only name a dataset
/// directory (built-ins and generators have ASCII names), optionally with options.
pub fn open_os(spec: &OsStr) -> Result<Dataset> {
    if let Some(text) = spec.to_str() {
        return open(text);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bytes = spec.as_bytes();
        let (source, opts_text) = match bytes.iter().rposition(|&b| b == b':') {
            Some(i) if !Path::new(spec).is_dir() => match std::str::from_utf8(&bytes[i + 1..]) {
                Ok(o) if o.contains('=') => (OsStr::from_bytes(&bytes[..i]), o),
                _ => (spec, ""),
            },
            _ => (spec, ""),
        };
        let shown = spec.to_string_lossy();
        let dir = Path::new(source);
        if !dir.is_dir() {
            bail!("data spec '{shown}': {} is not a directory", dir.display());
        }
        let mut opts = Options::parse(&shown, opts_text)?;
        let transforms = Transforms::take_from(&mut opts)?;
        opts.finish(Transforms::KEYS)?;
        let dataset = transforms.apply(Dataset::open_dir(dir)?)?;
        dataset.validate()?;
        Ok(dataset)
    }
    #[cfg(not(unix))]
    bail!("data spec {}: not valid Unicode", spec.to_string_lossy())
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
