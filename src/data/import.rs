//! Importers from the formats datasets are distributed in: MNIST-style IDX (raw or
//! gzip), CIFAR-10/100 binary batches, and CSV (one sample per row, one label column).

use super::{Array, DType, Dataset, Meta, Split};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX array: (dims, element type, little-endian data bytes).
pub struct Idx {
    pub dims: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

/// Parses IDX (big-endian header: 0, 0, type code, rank, then rank u32 dims).
pub fn parse_idx(bytes: &[u8], origin: &str) -> Result<Idx> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("{origin}: not an IDX file (bad magic number)");
    }
    let (dtype, size) = match bytes[2] {
        0x08 => (DType::U8, 1),
        0x09 => (DType::I8, 1),
        0x0B => (DType::I16, 2),
        0x0C => (DType::I32, 4),
        0x0D => (DType::F32, 4),
        code => bail!("{origin}: IDX element type 0x{code:02x} is not supported (u8, i8, i16, i32, f32 are)"),
    };
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        bail!("{origin}: truncated IDX header");
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let need = dims.iter().product::<usize>() * size;
    if bytes.len() - header != need {
        bail!("{origin}: IDX header announces dims {dims:?} ({need} bytes) but {} data bytes follow", bytes.len() - header);
    }
    // IDX is big-endian; rote arrays are little-endian.
    let mut data = bytes[header..].to_vec();
    if size > 1 {
        data.chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    Ok(Idx { dims, dtype, data })
}

fn idx_split(images: &Path, labels: &Path) -> Result<Split> {
    let im = parse_idx(&read_maybe_gz(images)?, &images.display().to_string())?;
    let lb = parse_idx(&read_maybe_gz(labels)?, &labels.display().to_string())?;
    if lb.dims.len() != 1 {
        bail!("{}: labels must be one-dimensional, got dims {:?}", labels.display(), lb.dims);
    }
    let y = Array::from_bytes(lb.dtype, lb.dims.clone(), &lb.data, labels.display().to_string()).to_i64()?;
    if im.dims[0] != y.len() {
        bail!("{} holds {} images but {} holds {} labels", images.display(), im.dims[0], labels.display(), y.len());
    }
    Split::new(Array::from_bytes(im.dtype, im.dims, &im.data, images.display().to_string()), y)
}

/// Imports MNIST-style IDX image and label files (each raw or .gz).
pub fn import_idx(images: &Path, labels: &Path, test: Option<(&Path, &Path)>, name: &str) -> Result<Dataset> {
    let train = idx_split(images, labels)?;
    let test = test.map(|(i, l)| idx_split(i, l)).transpose()?;
    let meta = Meta {
        name: name.to_string(),
        source: format!("IDX files {}", images.display()),
        sample_shape: train.x.shape[1..].to_vec(),
        ..Meta::default()
    };
    Ok(Dataset { meta, train, test })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CifarLabel {
    /// CIFAR-10's only label, or CIFAR-100's fine (100-class) label.
    Fine,
    /// CIFAR-100's coarse (20-superclass) label.
    Coarse,
}

/// CIFAR binary batches: records of label byte(s) + 3072 pixel bytes (R, G, B planes of
/// 32×32). CIFAR-10 records have one label byte, CIFAR-100 two (coarse, fine); the
/// record size tells which. Images are stored (32, 32, 3), channels last.
fn cifar_split(files: &[&Path], label: CifarLabel) -> Result<Split> {
    const PIXELS: usize = 3072;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for path in files {
        let bytes = read_maybe_gz(path)?;
        let record = if bytes.len() % (PIXELS + 1) == 0 && !bytes.is_empty() {
            PIXELS + 1
        } else if bytes.len() % (PIXELS + 2) == 0 && !bytes.is_empty() {
            PIXELS + 2
        } else {
            bail!(
                "{}: {} bytes is not a whole number of CIFAR-10 ({}-byte) or CIFAR-100 ({}-byte) records",
                path.display(),
                bytes.len(),
                PIXELS + 1,
                PIXELS + 2
            );
        };
        if record == PIXELS + 1 && label == CifarLabel::Coarse {
            bail!("{}: CIFAR-10 batches have no coarse labels", path.display());
        }
        for r in bytes.chunks_exact(record) {
            let label_byte = if record == PIXELS + 2 && label == CifarLabel::Coarse { r[0] } else { r[record - PIXELS - 1] };
            y.push(label_byte as i64);
            let px = &r[record - PIXELS..];
            for p in 0..1024 {
                x.extend_from_slice(&[px[p], px[1024 + p], px[2048 + p]]);
            }
        }
    }
    let n = y.len();
    Split::new(Array::from_u8(vec![n, 32, 32, 3], &x, "CIFAR batches"), y)
}

pub fn import_cifar(train: &[&Path], test: &[&Path], label: CifarLabel, name: &str) -> Result<Dataset> {
    if train.is_empty() {
        bail!("give at least one CIFAR training batch");
    }
    let train_split = cifar_split(train, label)?;
    let test_split = if test.is_empty() { None } else { Some(cifar_split(test, label)?) };
    let meta = Meta {
        name: name.to_string(),
        source: format!("CIFAR binary batches ({} files)", train.len() + test.len()),
        sample_shape: vec![32, 32, 3],
        ..Meta::default()
    };
    Ok(Dataset { meta, train: train_split, test: test_split })
}

/// Which column of a CSV holds the label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    First,
    Last,
    Index(usize),
}

impl std::str::FromStr for LabelColumn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "first" => Ok(Self::First),
            "last" => Ok(Self::Last),
            _ => s.parse().map(Self::Index).map_err(|_| format!("'{s}' is not first, last or a column number")),
        }
    }
}

/// Parses numeric CSV text: one sample per line, a label column, optional header line
/// (detected when its fields are not numbers). Integer-valued data in 0..=255 is kept
/// as uint8, anything else as float32.
pub fn parse_csv(text: &str, label: LabelColumn, origin: &str) -> Result<Split> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut width = None;
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed: Result<Vec<f64>, _> = line.split(',').map(|f| f.trim().parse::<f64>()).collect();
        let values = match parsed {
            Ok(v) => v,
            Err(_) if rows.is_empty() && width.is_none() => {
                width = Some(line.split(',').count());
                continue;
            }
            Err(_) => bail!("{origin}, line {}: a field is not a number: {line:.80}", line_no + 1),
        };
        match width {
            Some(w) if w != values.len() => {
                bail!("{origin}, line {}: {} fields where earlier lines have {w}", line_no + 1, values.len())
            }
            _ => width = Some(values.len()),
        }
        rows.push(values);
    }
    let width = width.unwrap_or(0);
    if rows.is_empty() || width < 2 {
        bail!("{origin}: no data rows with a label and at least one feature");
    }
    let label_at = match label {
        LabelColumn::First => 0,
        LabelColumn::Last => width - 1,
        LabelColumn::Index(i) if i < width => i,
        LabelColumn::Index(i) => bail!("{origin}: label column {i} but rows have {width} fields"),
    };
    let mut y = Vec::with_capacity(rows.len());
    let mut feats = Vec::with_capacity(rows.len() * (width - 1));
    for (i, r) in rows.iter().enumerate() {
        let l = r[label_at];
        if l.fract() != 0.0 || !l.is_finite() {
            bail!("{origin}: row {} has label {l}, which is not an integer", i + 1);
        }
        y.push(l as i64);
        feats.extend(r.iter().enumerate().filter(|(j, _)| *j != label_at).map(|(_, v)| *v));
    }
    let n = rows.len();
    let shape = vec![n, width - 1];
    let bytes_fit = feats.iter().all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v));
    let x = if bytes_fit {
        Array::from_u8(shape, &feats.iter().map(|&v| v as u8).collect::<Vec<_>>(), origin)
    } else {
        Array::from_f32(shape, &feats.iter().map(|&v| v as f32).collect::<Vec<_>>(), origin)
    };
    Split::new(x, y)
}

pub fn import_csv(path: &Path, test: Option<&Path>, label: LabelColumn, shape: Option<Vec<usize>>, name: &str) -> Result<Dataset> {
    let read = |p: &Path| -> Result<Split> {
        let bytes = read_maybe_gz(p)?;
        let text = std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8 text", p.display()))?;
        let mut split = parse_csv(text, label, &p.display().to_string())?;
        if let Some(s) = &shape {
            split.x = reshape_samples(&split.x, s)?;
        }
        Ok(split)
    };
    let train = read(path)?;
    let test = test.map(read).transpose()?;
    let meta = Meta { name: name.into(), source: format!("CSV {}", path.display()), ..Meta::default() };
    Ok(Dataset { meta, train, test })
}

/// The same bytes with each sample viewed as `sample_shape`.
pub fn reshape_samples(x: &Array, sample_shape: &[usize]) -> Result<Array> {
    if sample_shape.iter().product::<usize>() != x.row_len() {
        bail!("{}: samples have {} values, which cannot be shaped as {:?}", x.origin, x.row_len(), sample_shape);
    }
    let mut shape = vec![x.rows()];
    shape.extend_from_slice(sample_shape);
    Ok(Array::from_bytes(x.dtype, shape, x.bytes(), x.origin.clone()))
}
