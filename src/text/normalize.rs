//! The normalization behind the near-verbatim metrics (ALGORITHMS.md §6): case folded
//! (Unicode lower case), punctuation and symbols dropped, every run of whitespace made
//! one space, leading and trailing space trimmed. Upper-casing a passage or changing its
//! spacing leaves its normal form unchanged, which is how the normalized metrics see
//! through the paper's style changes while the verbatim ones miss them.
//!
//! Tokenizers: bytes (one token per UTF-8 byte) or a Hugging Face tokenizer.json.

use super::corpus::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};

/// The normal form of `text`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = true;
        } else if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            for l in c.to_lowercase() {
                out.push(l);
            }
        }
        // Anything else (punctuation, symbols, control characters) is dropped and does
        // not separate words: "don't" and "dont" agree.
    }
    out
}

/// Turns text into the corpus's token ids.
pub enum Encoder {
    Bytes,
    Json(Box<tokenizers::Tokenizer>),
}

impl Encoder {
    pub fn new(tokenizer: &Tokenizer) -> Result<Encoder> {
        Ok(match tokenizer {
            Tokenizer::Bytes => Encoder::Bytes,
            Tokenizer::Json(path) => Encoder::Json(Box::new(
                tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("cannot read the tokenizer {}: {e}", path.display()))?,
            )),
            Tokenizer::External => bail!("this corpus was tokenized elsewhere: give generations as token ids ({{\"tokens\": [...]}}), not text"),
        })
    }

    pub fn from_spec(spec: &str) -> Result<(Encoder, Tokenizer)> {
        if spec == "bytes" {
            return Ok((Encoder::Bytes, Tokenizer::Bytes));
        }
        let path = std::fs::canonicalize(spec).with_context(|| format!("--tokenizer {spec}: expected `bytes` or the path of a tokenizer.json"))?;
        let tok = Tokenizer::Json(path);
        Ok((Encoder::new(&tok)?, tok))
    }

    pub fn vocab(&self) -> u64 {
        match self {
            Encoder::Bytes => 256,
            Encoder::Json(t) => t.get_vocab_size(true) as u64,
        }
    }

    /// Token ids of `text`, and the byte range of `text` each came from.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        match self {
            Encoder::Bytes => Ok((text.bytes().map(u32::from).collect(), (0..text.len()).map(|i| (i, i + 1)).collect())),
            Encoder::Json(t) => {
                let enc = t.encode(text, false).map_err(|e| anyhow!("tokenizer failed: {e}"))?;
                Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
            }
        }
    }

    /// The text of `ids` (lossy for bytes that are not UTF-8).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Encoder::Bytes => Ok(String::from_utf8_lossy(&ids.iter().map(|&t| t as u8).collect::<Vec<u8>>()).into_owned()),
            Encoder::Json(t) => t.decode(ids, false).map_err(|e| anyhow!("tokenizer failed to decode: {e}")),
        }
    }
}
