//! Verbatim memorization of text (ALGORITHMS.md §6): token corpora (corpus.rs), the
//! n-gram hash (hash.rs), Bloom filters (bloom.rs) and the exact suffix-array index
//! (exact.rs) in one file format (index_file.rs, index.rs), scans of generations with
//! MemFree replay (scan.rs), normalization and tokenizers (normalize.rs), and the
//! style-change demonstration (style.rs).

pub mod bloom;
pub mod corpus;
pub mod cuda;
pub mod exact;
pub mod hash;
pub mod index;
pub mod index_file;
pub mod normalize;
pub mod scan;
pub mod style;

use anyhow::{bail, Context, Result};
use corpus::{write_corpus, CorpusMeta, Dtype, Tokenizer};
use normalize::{normalize, Encoder};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What `import_files` did.
#[derive(Debug, serde::Serialize)]
pub struct ImportReport {
    pub documents: usize,
    pub tokens: u64,
    pub skipped_binary: usize,
    pub dtype: Dtype,
    pub normalized_bytes: Option<u64>,
    pub out: PathBuf,
}

/// The files under `paths` (directories walked in sorted order), each one document.
pub fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
        } else if meta.is_file() {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out)?;
    }
    Ok(out)
}

/// Imports text files as a corpus, one document per file (a file with a NUL byte in its
/// first 8 KiB is binary and skipped), tokenized by `tokenizer` (`bytes` or a
/// tokenizer.json), with the normalized byte-level view in `out/normalized` unless
/// `normalized` is false.
pub fn import_files(paths: &[PathBuf], tokenizer: &str, out: &Path, normalized: bool) -> Result<ImportReport> {
    if out.join(corpus::CORPUS_FILE).exists() {
        bail!("{} already holds a corpus; choose another --out or remove it first", out.display());
    }
    let (encoder, tok) = Encoder::from_spec(tokenizer)?;
    let files = list_files(paths)?;
    let docs: Vec<Option<(String, Vec<u32>)>> = files
        .par_iter()
        .map(|f| -> Result<Option<(String, Vec<u32>)>> {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            if bytes[..bytes.len().min(8192)].contains(&0) {
                return Ok(None);
            }
            let text = match tok {
                Tokenizer::Bytes => None,
                _ => Some(String::from_utf8_lossy(&bytes).into_owned()),
            };
            let ids = match &text {
                None => bytes.iter().map(|&b| b as u32).collect(),
                Some(t) => encoder.encode(t).with_context(|| format!("cannot tokenize {}", f.display()))?.0,
            };
            Ok(Some((text.unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()), ids)))
        })
        .collect::<Result<_>>()?;
    let skipped = docs.iter().filter(|d| d.is_none()).count();
    let kept: Vec<(&PathBuf, &(String, Vec<u32>))> = files.iter().zip(&docs).filter_map(|(f, d)| d.as_ref().map(|d| (f, d))).collect();
    if kept.is_empty() {
        bail!("no text files to import under {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let sources: Vec<String> = kept.iter().map(|(f, _)| f.display().to_string()).collect();
    let mut tokens = Vec::new();
    let mut starts = Vec::with_capacity(kept.len());
    for (_, (_, ids)) in &kept {
        starts.push(tokens.len() as u64);
        tokens.extend_from_slice(ids);
    }
    let dtype = Dtype::for_vocab(encoder.vocab());
    let meta: CorpusMeta = write_corpus(out, &tokens, dtype, &starts, tok, Some(&sources))?;
    let normalized_bytes = if normalized {
        let mut norm = Vec::new();
        let mut nstarts = Vec::with_capacity(kept.len());
        for (_, (text, _)) in &kept {
            nstarts.push(norm.len() as u64);
            norm.extend(normalize(text).bytes().map(u32::from));
        }
        let dir = out.join(corpus::NORMALIZED_DIR);
        let rel: Vec<String> = sources.clone();
        write_corpus(&dir, &norm, Dtype::U8, &nstarts, Tokenizer::Bytes, Some(&rel))?;
        Some(norm.len() as u64)
    } else {
        None
    };
    Ok(ImportReport { documents: kept.len(), tokens: meta.n_tokens, skipped_binary: skipped, dtype, normalized_bytes, out: out.to_path_buf() })
}
