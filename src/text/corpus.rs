//! Token corpora: a little-endian array of token ids (u8, u16 or u32), memory-mapped,
//! with document boundaries given by a separator id or by an offsets file, described by
//! a `corpus.json` beside it. This is the layout deduplicate-text-datasets and
//! infini-gram use (one flat token file), so a corpus tokenized elsewhere is used where
//! it lies: `rote text import --raw FILE --dtype u16 --separator 65535` writes only the
//! description.
//!
//! A corpus rote imports from text also carries its normalized view (normalize.rs) as a
//! second, byte-level corpus in `normalized/`, which is what the near-verbatim metrics
//! index.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The description file of a corpus directory.
pub const CORPUS_FILE: &str = "corpus.json";
/// The directory, inside a corpus, of its normalized byte-level view.
pub const NORMALIZED_DIR: &str = "normalized";
const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U8,
    U16,
    U32,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
    pub fn max_id(self) -> u64 {
        match self {
            Dtype::U8 => u8::MAX as u64,
            Dtype::U16 => u16::MAX as u64,
            Dtype::U32 => u32::MAX as u64,
        }
    }
    /// The narrowest type holding ids below `vocab`.
    pub fn for_vocab(vocab: u64) -> Dtype {
        if vocab <= 256 {
            Dtype::U8
        } else if vocab <= 65536 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }
    pub fn parse(s: &str) -> Result<Dtype> {
        Ok(match s {
            "u8" => Dtype::U8,
            "u16" => Dtype::U16,
            "u32" => Dtype::U32,
            _ => bail!("unknown token type {s:?}: expected u8, u16 or u32"),
        })
    }
}

/// Where one document ends and the next begins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Boundaries {
    /// This token id separates documents (and is not part of any).
    Separator(u32),
    /// A file of little-endian u64 token indices, the start of each document (the first
    /// is 0); document i is [start_i, start_{i+1}), the last ends at the end of the tokens.
    Offsets(PathBuf),
}

/// How text becomes tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte of UTF-8 (ids 0–255).
    Bytes,
    /// A Hugging Face tokenizer.json, read locally.
    Json(PathBuf),
    /// Tokenized elsewhere: rote cannot turn text into these ids.
    External,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CorpusMeta {
    pub format: u32,
    pub dtype: Dtype,
    /// The token file, relative to the corpus directory or absolute.
    pub tokens: PathBuf,
    pub boundaries: Boundaries,
    pub n_tokens: u64,
    pub n_docs: u64,
    pub tokenizer: Tokenizer,
    /// A hash of the token file's bytes (hex), which indexes record and check.
    pub fingerprint: String,
    /// Where each document came from (one line per document), relative to the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<PathBuf>,
}

/// The token array, borrowed from the memory map, in its stored width.
#[derive(Clone, Copy)]
pub enum Tokens<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
}

impl Tokens<'_> {
    pub fn len(&self) -> usize {
        match self {
            Tokens::U8(t) => t.len(),
            Tokens::U16(t) => t.len(),
            Tokens::U32(t) => t.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        match self {
            Tokens::U8(t) => t[i] as u32,
            Tokens::U16(t) => t[i] as u32,
            Tokens::U32(t) => t[i],
        }
    }
    /// Tokens [start, end) widened to u32.
    pub fn to_vec(&self, start: usize, end: usize) -> Vec<u32> {
        match self {
            Tokens::U8(t) => t[start..end].iter().map(|&x| x as u32).collect(),
            Tokens::U16(t) => t[start..end].iter().map(|&x| x as u32).collect(),
            Tokens::U32(t) => t[start..end].to_vec(),
        }
    }
}

/// Runs `$body` with `$t` bound to the corpus's token slice at its stored width (a
/// `&[u8]`, `&[u16]` or `&[u32]`), so hot loops are monomorphized per width.
#[macro_export]
macro_rules! with_tokens {
    ($tokens:expr, |$t:ident| $body:expr) => {
        match $tokens {
            $crate::text::corpus::Tokens::U8($t) => $body,
            $crate::text::corpus::Tokens::U16($t) => $body,
            $crate::text::corpus::Tokens::U32($t) => $body,
        }
    };
}

/// An open corpus: its description, its memory-mapped tokens and its documents.
pub struct Corpus {
    pub dir: PathBuf,
    pub meta: CorpusMeta,
    map: Option<Mmap>,
    /// [start, end) token range of every document, in order.
    pub docs: Vec<(u64, u64)>,
}

impl Corpus {
    /// Opens the corpus described by `dir/corpus.json`, checking the token file against
    /// the description (size, width, ids, boundaries).
    pub fn open(dir: &Path) -> Result<Corpus> {
        let meta_path = dir.join(CORPUS_FILE);
        let text = std::fs::read_to_string(&meta_path).with_context(|| {
            if dir.is_file() {
                format!("{} is a file; a corpus is a directory with {CORPUS_FILE} (make one with `rote text import`)", dir.display())
            } else {
                format!("cannot read {} (make a corpus with `rote text import`)", meta_path.display())
            }
        })?;
        let meta: CorpusMeta = serde_json::from_str(&text).with_context(|| format!("{} is not a corpus description", meta_path.display()))?;
        if meta.format != FORMAT_VERSION {
            bail!("{}: corpus format {} (this rote reads format {FORMAT_VERSION})", meta_path.display(), meta.format);
        }
        let tokens_path = resolve(dir, &meta.tokens);
        let file = File::open(&tokens_path).with_context(|| format!("cannot open the token file {} named by {}", tokens_path.display(), meta_path.display()))?;
        let len = file.metadata()?.len();
        let expected = meta.n_tokens * meta.dtype.bytes() as u64;
        if len != expected {
            bail!(
                "{}: {} bytes, but {} describes {} {:?} tokens ({} bytes): the file was changed or truncated; re-import it",
                tokens_path.display(),
                len,
                meta_path.display(),
                meta.n_tokens,
                meta.dtype,
                expected
            );
        }
        // An empty file cannot be mapped; an empty corpus has no tokens to borrow.
        let map = if len == 0 { None } else { Some(unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", tokens_path.display()))?) };
        let mut corpus = Corpus { dir: dir.to_path_buf(), meta, map, docs: Vec::new() };
        corpus.docs = corpus.find_docs()?;
        if corpus.docs.len() as u64 != corpus.meta.n_docs {
            bail!("{}: {} documents found, {} described; re-import it", tokens_path.display(), corpus.docs.len(), corpus.meta.n_docs);
        }
        Ok(corpus)
    }

    pub fn tokens(&self) -> Tokens<'_> {
        let bytes: &[u8] = self.map.as_deref().unwrap_or(&[]);
        match self.meta.dtype {
            Dtype::U8 => Tokens::U8(bytes),
            Dtype::U16 => Tokens::U16(bytemuck::cast_slice(bytes)),
            Dtype::U32 => Tokens::U32(bytemuck::cast_slice(bytes)),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn n_tokens(&self) -> usize {
        self.meta.n_tokens as usize
    }

    /// What `rote text info` says of a corpus.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"corpus": self.meta, "documents": self.docs.len(), "longest_document": self.longest_doc(), "normalized": self.normalized_dir()})
    }

    /// Whether `path` is one of this corpus's own files (its description, tokens,
    /// offsets or sources), which nothing may overwrite.
    pub fn owns(&self, path: &Path) -> bool {
        let mut own = vec![self.dir.join(CORPUS_FILE), resolve(&self.dir, &self.meta.tokens)];
        if let Boundaries::Offsets(p) = &self.meta.boundaries {
            own.push(resolve(&self.dir, p));
        }
        if let Some(p) = &self.meta.sources {
            own.push(resolve(&self.dir, p));
        }
        let canon = |p: &Path| std::fs::canonicalize(p).ok();
        let target = canon(path);
        own.iter().any(|o| o == path || (target.is_some() && canon(o) == target))
    }

    /// The normalized byte-level view of a corpus imported from text, if it has one.
    pub fn normalized_dir(&self) -> Option<PathBuf> {
        let d = self.dir.join(NORMALIZED_DIR);
        d.join(CORPUS_FILE).is_file().then_some(d)
    }

    /// The number of n-grams that lie inside a document (the items a filter holds, with
    /// repeats).
    pub fn ngram_positions(&self, n: usize) -> u64 {
        self.docs.iter().map(|&(s, e)| (e - s).saturating_sub(n as u64 - 1)).sum()
    }

    pub fn longest_doc(&self) -> u64 {
        self.docs.iter().map(|&(s, e)| e - s).max().unwrap_or(0)
    }

    /// The document holding token `pos`, by binary search.
    pub fn doc_of(&self, pos: u64) -> usize {
        self.docs.partition_point(|&(s, _)| s <= pos).saturating_sub(1)
    }

    /// Where each document came from, when the import recorded it.
    pub fn sources(&self) -> Result<Option<Vec<String>>> {
        let Some(rel) = &self.meta.sources else { return Ok(None) };
        let path = resolve(&self.dir, rel);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(text.lines().map(str::to_string).collect()))
    }

    fn find_docs(&self) -> Result<Vec<(u64, u64)>> {
        let n = self.meta.n_tokens;
        match &self.meta.boundaries {
            Boundaries::Offsets(rel) => {
                let path = resolve(&self.dir, rel);
                let bytes = std::fs::read(&path).with_context(|| format!("cannot read the offsets file {}", path.display()))?;
                if bytes.len() % 8 != 0 {
                    bail!("{}: {} bytes is not a whole number of little-endian u64 offsets", path.display(), bytes.len());
                }
                let starts: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
                if starts.first().is_some_and(|&s| s != 0) {
                    bail!("{}: the first document must start at token 0, not {}", path.display(), starts[0]);
                }
                let mut docs = Vec::with_capacity(starts.len());
                for (i, &s) in starts.iter().enumerate() {
                    let e = starts.get(i + 1).copied().unwrap_or(n);
                    if e < s || e > n {
                        bail!("{}: document {i} spans tokens [{s}, {e}) of {n}: offsets must rise and stay within the tokens", path.display());
                    }
                    docs.push((s, e));
                }
                if docs.is_empty() && n > 0 {
                    docs.push((0, n));
                }
                Ok(docs)
            }
            &Boundaries::Separator(sep) => {
                // Separator positions, found in parallel chunks and joined in order.
                let tokens = self.tokens();
                let chunk = 1 << 22;
                let cuts: Vec<Vec<u64>> = (0..n.div_ceil(chunk))
                    .into_par_iter()
                    .map(|c| {
                        let (s, e) = ((c * chunk) as usize, ((c + 1) * chunk).min(n) as usize);
                        with_tokens!(tokens, |t| t[s..e].iter().enumerate().filter(|(_, &x)| x as u32 == sep).map(|(i, _)| (s + i) as u64).collect())
                    })
                    .collect();
                let mut docs = Vec::new();
                let mut start = 0u64;
                for cut in cuts.into_iter().flatten() {
                    if cut > start {
                        docs.push((start, cut));
                    }
                    start = cut + 1;
                }
                if n > start {
                    docs.push((start, n));
                }
                Ok(docs)
            }
        }
    }
}

pub fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// A 64-bit hash of a file's bytes, computed in parallel 4 MiB blocks and chained in
/// order: it detects an index used with a different or modified corpus.
pub fn fingerprint(bytes: &[u8]) -> String {
    const BLOCK: usize = 1 << 22;
    let blocks: Vec<u64> = bytes.par_chunks(BLOCK).map(hash_block).collect();
    let mut h = bytes.len() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for b in blocks {
        h = super::hash::fmix64(h ^ b).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    format!("{:016x}", super::hash::fmix64(h))
}

fn hash_block(block: &[u8]) -> u64 {
    let mut h = [0x243f_6a88_85a3_08d3u64, 0x1319_8a2e_0370_7344, 0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89];
    let mut words = block.chunks_exact(32);
    for w in &mut words {
        for (lane, c) in h.iter_mut().zip(w.chunks_exact(8)) {
            let x = u64::from_le_bytes(c.try_into().unwrap());
            *lane = (*lane ^ x).wrapping_mul(0x9fb2_1c65_1e98_df25).rotate_left(29);
        }
    }
    let mut tail = [0u8; 32];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    for (lane, c) in h.iter_mut().zip(tail.chunks_exact(8)) {
        *lane = (*lane ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x9fb2_1c65_1e98_df25);
    }
    super::hash::fmix64(h[0] ^ h[1].rotate_left(17) ^ h[2].rotate_left(31) ^ h[3].rotate_left(47) ^ block.len() as u64)
}

/// Writes a corpus directory: the tokens at `dtype` width, the document starts, the
/// sources and the description, each atomically.
pub fn write_corpus(out: &Path, tokens: &[u32], dtype: Dtype, doc_starts: &[u64], tokenizer: Tokenizer, sources: Option<&[String]>) -> Result<CorpusMeta> {
    crate::report::create_out_dir(out)?;
    if let Some(&bad) = tokens.iter().find(|&&t| t as u64 > dtype.max_id()) {
        bail!("token id {bad} does not fit {dtype:?}");
    }
    let bytes: Vec<u8> = match dtype {
        Dtype::U8 => tokens.iter().map(|&t| t as u8).collect(),
        Dtype::U16 => tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect(),
        Dtype::U32 => tokens.iter().flat_map(|&t| t.to_le_bytes()).collect(),
    };
    crate::report::write_atomic(&out.join("tokens.bin"), |w| Ok(w.write_all(&bytes)?))?;
    crate::report::write_atomic(&out.join("offsets.bin"), |w| {
        for s in doc_starts {
            w.write_all(&s.to_le_bytes())?;
        }
        Ok(())
    })?;
    if let Some(src) = sources {
        crate::report::write_atomic(&out.join("sources.txt"), |w| {
            for s in src {
                writeln!(w, "{s}")?;
            }
            Ok(())
        })?;
    }
    let meta = CorpusMeta {
        format: FORMAT_VERSION,
        dtype,
        tokens: "tokens.bin".into(),
        boundaries: Boundaries::Offsets("offsets.bin".into()),
        n_tokens: tokens.len() as u64,
        n_docs: doc_starts.len() as u64,
        tokenizer,
        fingerprint: fingerprint(&bytes),
        sources: sources.map(|_| "sources.txt".into()),
    };
    crate::report::write_json(&out.join(CORPUS_FILE), &meta)?;
    Ok(meta)
}

/// Describes a token file tokenized elsewhere, where it lies (nothing is copied): checks
/// its size against the width and, for a separator, that the separator fits.
pub fn describe_raw(out: &Path, tokens_path: &Path, dtype: Dtype, boundaries: Boundaries) -> Result<CorpusMeta> {
    if out.join(CORPUS_FILE).exists() {
        bail!("{} already holds a corpus; choose another --out or remove it first", out.display());
    }
    let tokens_path = std::fs::canonicalize(tokens_path).with_context(|| format!("cannot open the token file {}", tokens_path.display()))?;
    let file = File::open(&tokens_path).with_context(|| format!("cannot open {}", tokens_path.display()))?;
    let len = file.metadata()?.len();
    if len % dtype.bytes() as u64 != 0 {
        bail!("{}: {len} bytes is not a whole number of {dtype:?} tokens", tokens_path.display());
    }
    let boundaries = match boundaries {
        Boundaries::Separator(s) if s as u64 > dtype.max_id() => bail!("separator {s} does not fit {dtype:?}"),
        Boundaries::Offsets(p) => Boundaries::Offsets(std::fs::canonicalize(&p).with_context(|| format!("cannot open the offsets file {}", p.display()))?),
        b => b,
    };
    let map = if len == 0 { None } else { Some(unsafe { Mmap::map(&file) }?) };
    let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
    crate::report::create_out_dir(out)?;
    let mut meta = CorpusMeta {
        format: FORMAT_VERSION,
        dtype,
        tokens: tokens_path,
        boundaries,
        n_tokens: len / dtype.bytes() as u64,
        n_docs: 0,
        tokenizer: Tokenizer::External,
        fingerprint: fingerprint(bytes),
        sources: None,
    };
    let probe = Corpus { dir: out.to_path_buf(), meta: meta.clone(), map, docs: Vec::new() };
    meta.n_docs = probe.find_docs()?.len() as u64;
    crate::report::write_json(&out.join(CORPUS_FILE), &meta)?;
    Ok(meta)
}

