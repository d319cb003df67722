//! The one file format of rote's text indexes (Bloom and suffix array):
//!
//!   "ROTETXT\0" · version u32 LE · header length u32 LE · header JSON · zero padding to
//!   a multiple of 64 · payload
//!
//! The header names the kind, its parameters, the corpus it was built from (directory,
//! fingerprint, token count) and the payload's exact length, so a truncated file, a file
//! of another format version and an index of another corpus are refused on open. The
//! payload is memory-mapped, never read into memory whole. Files are written atomically.

use super::corpus::Corpus;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ROTETXT\0";
pub const VERSION: u32 = 1;
const ALIGN: usize = 64;

/// Which corpus an index describes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CorpusRef {
    pub dir: PathBuf,
    pub fingerprint: String,
    pub n_tokens: u64,
    pub n_docs: u64,
}

impl CorpusRef {
    pub fn of(corpus: &Corpus) -> CorpusRef {
        CorpusRef {
            dir: std::fs::canonicalize(&corpus.dir).unwrap_or_else(|_| corpus.dir.clone()),
            fingerprint: corpus.meta.fingerprint.clone(),
            n_tokens: corpus.meta.n_tokens,
            n_docs: corpus.meta.n_docs,
        }
    }

    /// Errors unless `corpus` is the one this index was built from.
    pub fn check(&self, corpus: &Corpus, index: &Path) -> Result<()> {
        let other = CorpusRef::of(corpus);
        if other.fingerprint != self.fingerprint || other.n_tokens != self.n_tokens || other.n_docs != self.n_docs {
            bail!(
                "{} was built from the corpus {} ({} tokens, fingerprint {}), not from {} ({} tokens, fingerprint {}): rebuild it with `rote text index {}`",
                index.display(),
                self.dir.display(),
                self.n_tokens,
                self.fingerprint,
                corpus.dir.display(),
                other.n_tokens,
                other.fingerprint,
                corpus.dir.display()
            );
        }
        Ok(())
    }
}

/// The header fields every index has; `T` carries the kind's own.
#[derive(Serialize, Deserialize)]
pub struct Header<T> {
    pub kind: String,
    pub corpus: CorpusRef,
    pub payload_bytes: u64,
    #[serde(flatten)]
    pub fields: T,
}

/// Writes an index atomically: `fill` writes exactly `payload_bytes` bytes of payload.
pub fn write<T: Serialize>(path: &Path, header: &Header<T>, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let json = serde_json::to_vec(header)?;
    let head = 8 + 4 + 4 + json.len();
    let pad = head.div_ceil(ALIGN) * ALIGN - head;
    crate::report::write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(json.len() as u32).to_le_bytes())?;
        w.write_all(&json)?;
        w.write_all(&vec![0u8; pad])?;
        fill(w)
    })
}

/// An opened index: its header and its memory-mapped payload.
pub struct Opened<T> {
    pub header: Header<T>,
    pub map: Mmap,
    pub payload_offset: usize,
}

/// The kind an index file holds, read from its header alone.
pub fn kind_of(path: &Path) -> Result<String> {
    Ok(open::<serde_json::Value>(path, None)?.header.kind)
}

/// Opens `path`, checking magic, version, kind (when given) and payload length.
pub fn open<T: DeserializeOwned>(path: &Path, kind: Option<&str>) -> Result<Opened<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the index {}", path.display()))?;
    let len = file.metadata()?.len() as usize;
    if len < 16 {
        bail!("{} is not a rote text index (too short: {len} bytes)", path.display());
    }
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    if &map[..8] != MAGIC {
        bail!("{} is not a rote text index (make one with `rote text index`)", path.display());
    }
    let version = u32::from_le_bytes(map[8..12].try_into().unwrap());
    if version != VERSION {
        bail!("{}: index format version {version}; this rote reads version {VERSION}: rebuild the index", path.display());
    }
    let json_len = u32::from_le_bytes(map[12..16].try_into().unwrap()) as usize;
    if 16 + json_len > len {
        bail!("{} is truncated (its header runs past the end of the file): rebuild the index", path.display());
    }
    let header: Header<T> = serde_json::from_slice(&map[16..16 + json_len]).with_context(|| format!("{}: unreadable index header", path.display()))?;
    if let Some(k) = kind {
        if header.kind != k {
            bail!("{} is a {} index, not a {k} index", path.display(), header.kind);
        }
    }
    let payload_offset = (16 + json_len).div_ceil(ALIGN) * ALIGN;
    let want = payload_offset as u64 + header.payload_bytes;
    if len as u64 != want {
        bail!("{}: {len} bytes, but its header describes {want}: the file is truncated or damaged; rebuild the index", path.display());
    }
    Ok(Opened { header, map, payload_offset })
}
