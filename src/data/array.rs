//! A read-only n-dimensional array in C order, backed either by a memory map of a
//! .npy file or by memory rote produced itself (generators, transforms). Rows are
//! converted to f32 on demand, a slice at a time.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    U8,
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U16,
    U32,
    U64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, DType::F16 | DType::F32 | DType::F64)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
        }
    }

    pub fn npy_descr(self) -> &'static str {
        match self {
            DType::U8 => "|u1",
            DType::F16 => "<f2",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::I8 => "|i1",
            DType::I16 => "<i2",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::U16 => "<u2",
            DType::U32 => "<u4",
            DType::U64 => "<u8",
        }
    }
}

enum Storage {
    Mapped(Mmap),
    /// u64 words so the bytes are aligned for any element type.
    Owned(Vec<u64>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => bytemuck::cast_slice(v),
        }
    }
}

#[derive(Clone)]
pub struct Array {
    storage: Arc<Storage>,
    offset: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Where the array came from, for error messages.
    pub origin: String,
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({} {:?} from {})", self.dtype.name(), self.shape, self.origin)
    }
}

impl Array {
    /// Wraps bytes produced in memory.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8], origin: impl Into<String>) -> Self {
        assert_eq!(bytes.len(), shape.iter().product::<usize>() * dtype.size());
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self { storage: Arc::new(Storage::Owned(words)), offset: 0, dtype, shape, origin: origin.into() }
    }

    pub fn from_f32(shape: Vec<usize>, data: &[f32], origin: impl Into<String>) -> Self {
        Self::from_bytes(DType::F32, shape, bytemuck::cast_slice(data), origin)
    }

    pub fn from_u8(shape: Vec<usize>, data: &[u8], origin: impl Into<String>) -> Self {
        Self::from_bytes(DType::U8, shape, data, origin)
    }

    pub fn from_i64(data: &[i64], origin: impl Into<String>) -> Self {
        Self::from_bytes(DType::I64, vec![data.len()], bytemuck::cast_slice(data), origin)
    }

    /// Memory-maps a .npy file, checking its header and length before anything is read.
    pub fn open_npy(path: &Path) -> Result<Self> {
        if path.is_dir() {
            bail!("{} is a directory, not a .npy file", path.display());
        }
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only; rote never writes to its inputs. A file truncated
        // by another process while mapped would fault; that is the usual mmap contract.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))?;
        let (dtype, shape, offset) = parse_npy_header(&map).with_context(|| format!("{} is not a usable .npy file", path.display()))?;
        // Checked: a header may announce more elements than a usize can count.
        let need = shape
            .iter()
            .try_fold(dtype.size(), |a, &s| a.checked_mul(s))
            .with_context(|| format!("{}: its header announces shape {shape:?}, more bytes than this machine can address", path.display()))?;
        if map.len().saturating_sub(offset) < need {
            bail!(
                "{} is truncated: its header announces shape {:?} of {} ({} data bytes) but the file holds only {} after the header",
                path.display(),
                shape,
                dtype.name(),
                need,
                map.len().saturating_sub(offset)
            );
        }
        Ok(Self { storage: Arc::new(Storage::Mapped(map)), offset, dtype, shape, origin: path.display().to_string() })
    }

    /// Number of rows (first axis).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    pub fn bytes(&self) -> &[u8] {
        let n = self.shape.iter().product::<usize>() * self.dtype.size();
        &self.storage.bytes()[self.offset..self.offset + n]
    }

    /// Raw bytes of rows `start..end`.
    pub fn row_bytes(&self, start: usize, end: usize) -> &[u8] {
        let w = self.row_len() * self.dtype.size();
        &self.bytes()[start * w..end * w]
    }

    pub fn is_mapped(&self) -> bool {
        matches!(*self.storage, Storage::Mapped(_))
    }

    /// Rows `start..end` converted to f32 into `out` (length (end−start)·row_len).
    pub fn rows_f32_into(&self, start: usize, end: usize, out: &mut [f32]) {
        let bytes = self.row_bytes(start, end);
        assert_eq!(out.len(), (end - start) * self.row_len());
        convert_to_f32(self.dtype, bytes, out);
    }

    pub fn rows_f32(&self, start: usize, end: usize) -> Vec<f32> {
        let mut out = vec![0f32; (end - start) * self.row_len()];
        self.rows_f32_into(start, end, &mut out);
        out
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.rows_f32(0, self.rows())
    }

    /// All elements as f64: float64 arrays exactly, the others through `to_f32` (which
    /// every other type converts to exactly, up to its own precision).
    pub fn to_f64(&self) -> Vec<f64> {
        match self.dtype {
            DType::F64 => self.bytes().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            _ => self.to_f32().into_iter().map(f64::from).collect(),
        }
    }

    /// All elements as i64 (integer arrays only).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let b = self.bytes();
        let v: Vec<i64> = match self.dtype {
            DType::U8 => b.iter().map(|&x| x as i64).collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            DType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            DType::U16 => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            DType::U32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::U64 => b
                .chunks_exact(8)
                .map(|c| {
                    let v = u64::from_le_bytes(c.try_into().unwrap());
                    i64::try_from(v).map_err(|_| anyhow::anyhow!("{}: label {v} does not fit in int64", self.origin))
                })
                .collect::<Result<_>>()?,
            DType::F16 | DType::F32 | DType::F64 => bail!(
                "{} holds {} values, but labels must be integers (save them with y.astype(np.int64))",
                self.origin,
                self.dtype.name()
            ),
        };
        Ok(v)
    }

    /// First non-finite value in a float array, as (flat index, value).
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        use rayon::prelude::*;
        if self.dtype.is_integer() {
            return None;
        }
        let per_chunk = 1 << 16;
        let total = self.shape.iter().product::<usize>();
        (0..total.div_ceil(per_chunk)).into_par_iter().find_map_first(|c| {
            let start = c * per_chunk;
            let end = (start + per_chunk).min(total);
            let mut buf = vec![0f32; end - start];
            let es = self.dtype.size();
            convert_to_f32(self.dtype, &self.bytes()[start * es..end * es], &mut buf);
            buf.iter().position(|v| !v.is_finite()).map(|i| (start + i, buf[i]))
        })
    }

    /// A new in-memory array holding the given rows, in order.
    pub fn gather_rows(&self, rows: &[usize]) -> Array {
        let w = self.row_len() * self.dtype.size();
        let src = self.bytes();
        let mut out = Vec::with_capacity(rows.len() * w);
        for &r in rows {
            out.extend_from_slice(&src[r * w..(r + 1) * w]);
        }
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        Array::from_bytes(self.dtype, shape, &out, format!("{} (subset)", self.origin))
    }

    /// Writes this array as .npy, atomically.
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        crate::report::write_npy_bytes(path, self.dtype.npy_descr(), &self.shape, self.bytes())
    }
}

/// Little-endian elements of `dtype` to f32.
pub fn convert_to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::U8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as f32),
        DType::I8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as i8 as f32),
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(v) => out.copy_from_slice(v),
            Err(_) => out
                .iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(o, c)| *o = f32::from_le_bytes(c.try_into().unwrap())),
        },
        DType::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, c)| *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        DType::F64 => out.iter_mut().zip(bytes.chunks_exact(8)).for_each(|(o, c)| *o = f64::from_le_bytes(c.try_into().unwrap()) as f32),
        DType::I16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = i16::from_le_bytes([c[0], c[1]]) as f32),
        DType::U16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = u16::from_le_bytes([c[0], c[1]]) as f32),
        DType::I32 => out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, c)| *o = i32::from_le_bytes(c.try_into().unwrap()) as f32),
        DType::U32 => out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, c)| *o = u32::from_le_bytes(c.try_into().unwrap()) as f32),
        DType::I64 => out.iter_mut().zip(bytes.chunks_exact(8)).for_each(|(o, c)| *o = i64::from_le_bytes(c.try_into().unwrap()) as f32),
        DType::U64 => out.iter_mut().zip(bytes.chunks_exact(8)).for_each(|(o, c)| *o = u64::from_le_bytes(c.try_into().unwrap()) as f32),
    }
}

/// Parses the header with npyz and returns (dtype, shape, data offset).
fn parse_npy_header(bytes: &[u8]) -> Result<(DType, Vec<usize>, usize)> {
    use npyz::{DType as NDType, Endianness, Order, TypeChar};
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("missing the \\x93NUMPY magic (file is {} bytes)", bytes.len());
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let file = npyz::NpyFile::new(&mut cursor).map_err(|e| anyhow::anyhow!("bad header: {e}"))?;
    if file.order() == Order::Fortran {
        bail!("array is in Fortran order; rote needs C order (save np.ascontiguousarray(a))");
    }
    let shape: Vec<usize> = file.shape().iter().map(|&s| s as usize).collect();
    let dtype = match file.dtype() {
        NDType::Plain(ts) => {
            if ts.endianness() == Endianness::Big && ts.num_bytes() != Some(1) {
                bail!("array is big-endian ({ts}); save it little-endian (a.astype(a.dtype.newbyteorder('<')))");
            }
            match (ts.type_char(), ts.num_bytes()) {
                (TypeChar::Uint, Some(1)) => DType::U8,
                (TypeChar::Uint, Some(2)) => DType::U16,
                (TypeChar::Uint, Some(4)) => DType::U32,
                (TypeChar::Uint, Some(8)) => DType::U64,
                (TypeChar::Int, Some(1)) => DType::I8,
                (TypeChar::Int, Some(2)) => DType::I16,
                (TypeChar::Int, Some(4)) => DType::I32,
                (TypeChar::Int, Some(8)) => DType::I64,
                (TypeChar::Float, Some(2)) => DType::F16,
                (TypeChar::Float, Some(4)) => DType::F32,
                (TypeChar::Float, Some(8)) => DType::F64,
                _ => bail!("unsupported dtype {ts}; rote reads uint8, float16, float32, float64 and integer labels"),
            }
        }
        other => bail!("unsupported structured dtype {}", other.descr()),
    };
    drop(file);
    Ok((dtype, shape, cursor.position() as usize))
}
