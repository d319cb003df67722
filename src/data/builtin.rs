//! Built-in datasets: `digits` (shipped in the binary) and `fashion-mnist` (read from
//! the Debian package dataset-fashion-mnist and cached as a memory-mappable directory).

use super::{import, Dataset, Meta};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const NAMES: [&str; 2] = ["digits", "fashion-mnist"];

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../datasets/digits/digits.csv.gz");
const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

pub fn open(name: &str) -> Result<Option<Dataset>> {
    match name {
        "digits" => digits().map(Some),
        "fashion-mnist" => fashion_mnist().map(Some),
        _ => Ok(None),
    }
}

/// UCI handwritten digits, 1797 samples of 8×8 pixels in 0..16 (see datasets/README.md).
pub fn digits() -> Result<Dataset> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ).read_to_string(&mut text)?;
    let mut train = import::parse_csv(&text, import::LabelColumn::Last, "built-in digits")?;
    train.x = import::reshape_samples(&train.x, &[8, 8])?;
    let meta = Meta {
        name: "digits".into(),
        source: "UCI Optical Recognition of Handwritten Digits, via scikit-learn's digits.csv.gz".into(),
        license: "CC BY 4.0 (data); BSD-3-Clause (scikit-learn)".into(),
        sample_shape: vec![8, 8],
        class_names: (0..10).map(|d| d.to_string()).collect(),
    };
    Ok(Dataset { meta, train, test: None })
}

/// Where rote keeps converted datasets.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ROTE_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("rote");
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/rote")
}

pub fn fashion_mnist() -> Result<Dataset> {
    let cached = cache_dir().join("fashion-mnist");
    if cached.join("x.npy").is_file() {
        return Dataset::open_dir(&cached);
    }
    let src = std::env::var_os("ROTE_FASHION_MNIST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
    let file = |n: &str| src.join(n);
    let needed = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];
    if let Some(missing) = needed.iter().find(|n| !file(n).is_file()) {
        bail!(
            "fashion-mnist: {} not found. Install the Debian package (sudo apt-get install dataset-fashion-mnist), \
             or point ROTE_FASHION_MNIST_DIR at a folder with the four *-ubyte.gz files",
            file(missing).display()
        );
    }
    let mut ds = import::import_idx(
        &file(needed[0]),
        &file(needed[1]),
        Some((&file(needed[2]), &file(needed[3]))),
        "fashion-mnist",
    )?;
    ds.meta = Meta {
        name: "fashion-mnist".into(),
        source: format!("Zalando Fashion-MNIST, IDX files in {}", src.display()),
        license: "MIT (Zalando SE)".into(),
        sample_shape: vec![28, 28],
        class_names: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    write_cache(&ds, &cached)?;
    Dataset::open_dir(&cached)
}

/// Writes the dataset into a fresh temporary directory and renames it into place, so
/// concurrent first uses never see a half-written cache.
fn write_cache(ds: &Dataset, dest: &Path) -> Result<()> {
    let parent = dest.parent().unwrap();
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create cache directory {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".partial-").tempdir_in(parent)?;
    ds.write_dir(tmp.path())?;
    let tmp = tmp.keep();
    if std::fs::rename(&tmp, dest).is_err() {
        // Another process finished first; its copy is identical.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dest.join("x.npy").is_file() {
            bail!("cannot move the converted dataset into {}", dest.display());
        }
    }
    Ok(())
}
