//! The paper's point on real data (ALGORITHMS.md §6): passages taken from the corpus,
//! changed in style the way the paper's prompts change them (ALL CAPS, changed spacing,
//! a few word substitutions), pass a verbatim filter untouched, while the normalized
//! metrics still find them.

use super::corpus::Corpus;
use super::index::Index;
use super::normalize::Encoder;
use super::scan::{scan, Generation, ScanOptions};
use crate::rng::Philox;
use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Verbatim,
    Upper,
    Spacing,
    Substitute,
}

pub const STYLES: [Style; 4] = [Style::Verbatim, Style::Upper, Style::Spacing, Style::Substitute];

impl Style {
    pub fn parse(s: &str) -> Result<Style> {
        Ok(match s {
            "verbatim" => Style::Verbatim,
            "upper" => Style::Upper,
            "spacing" => Style::Spacing,
            "substitute" => Style::Substitute,
            _ => bail!("unknown style {s:?}: expected verbatim, upper, spacing or substitute"),
        })
    }

    /// `text` in this style. Substitution swaps one word in 20 (deterministically from
    /// `seed`) for another word of the same passage.
    pub fn apply(self, text: &str, seed: u64) -> String {
        match self {
            Style::Verbatim => text.to_string(),
            Style::Upper => text.to_uppercase(),
            Style::Spacing => {
                // Every whitespace run doubled, and a space before each line break.
                let mut out = String::with_capacity(text.len() * 2);
                for c in text.chars() {
                    if c == '\n' {
                        out.push_str(" \n");
                    } else if c.is_whitespace() {
                        out.push(c);
                        out.push(c);
                    } else {
                        out.push(c);
                    }
                }
                out
            }
            Style::Substitute => {
                let words: Vec<&str> = text.split(' ').collect();
                let rng = Philox::new(seed, 20);
                words
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| {
                        let r = rng.word(i as u64);
                        if r % 20 == 0 && words.len() > 1 {
                            let j = (rng.word(i as u64 + (1 << 40)) as usize) % words.len();
                            if words[j] != w {
                                return words[j];
                            }
                        }
                        w
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }
}

/// One style's results over all passages.
#[derive(Clone, Debug, Serialize)]
pub struct StyleRow {
    pub style: Style,
    pub passages: usize,
    pub verbatim_hit_fraction: f64,
    pub verbatim_longest_match: Option<f64>,
    /// The fraction of passages MemFree would have changed at least once.
    pub memfree_changes: f64,
    pub normalized_hit_fraction: Option<f64>,
    pub normalized_longest_match: Option<f64>,
}

/// `count` passages of `chars` bytes of text from random documents of `corpus` (cut to
/// whole UTF-8 characters), reproducibly from `seed`.
pub fn sample_passages(corpus: &Corpus, count: usize, chars: usize, seed: u64) -> Result<Vec<String>> {
    let encoder = Encoder::new(&corpus.meta.tokenizer)?;
    let long: Vec<usize> = (0..corpus.docs.len()).filter(|&d| corpus.docs[d].1 - corpus.docs[d].0 >= 2 * chars as u64).collect();
    if long.is_empty() {
        bail!("{}: no document has {} tokens to take passages from", corpus.dir.display(), 2 * chars);
    }
    let rng = Philox::new(seed, 20);
    let tokens = corpus.tokens();
    let mut out = Vec::with_capacity(count);
    let mut i = 0u64;
    while out.len() < count && i < 100 * count as u64 {
        let d = long[rng.word(2 * i) as usize % long.len()];
        let (s, e) = corpus.docs[d];
        let start = s + rng.word(2 * i + 1) as u64 % (e - s - chars as u64);
        i += 1;
        let text = encoder.decode(&tokens.to_vec(start as usize, start as usize + chars))?;
        // Whole words only, and only passages with words to change.
        let text = text.trim_matches(|c: char| c == '\u{fffd}').to_string();
        if text.split_whitespace().count() >= 10 {
            out.push(text);
        }
    }
    Ok(out)
}

/// The whole demonstration: `count` passages of `length` tokens from `index`'s corpus
/// (`sample_passages`), each style scanned (`demonstrate`). Returns the passages taken
/// (fewer when the corpus has few long documents) and one row per style.
pub fn demo(index: &Index, normalized: Option<(&Index, usize)>, n: usize, count: usize, length: usize, seed: u64) -> Result<(usize, Vec<StyleRow>)> {
    let passages = sample_passages(index.corpus(), count, length, seed)?;
    Ok((passages.len(), demonstrate(index, normalized, n, &passages, seed)?))
}

/// Scans the passages in every style against `index` (and the normalized index).
pub fn demonstrate(index: &Index, normalized: Option<(&Index, usize)>, n: usize, passages: &[String], seed: u64) -> Result<Vec<StyleRow>> {
    let mut rows = Vec::new();
    for style in STYLES {
        let gens: Vec<Generation> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| Generation { text: Some(style.apply(p, seed ^ i as u64)), tokens: None, prompt: None, prompt_tokens: None })
            .collect();
        let (reports, summary) = scan(index, &gens, &ScanOptions { n, normalized })?;
        rows.push(StyleRow {
            style,
            passages: gens.len(),
            verbatim_hit_fraction: summary.mean_hit_fraction,
            verbatim_longest_match: summary.mean_longest_match,
            memfree_changes: summary.generations_memfree_changes as f64 / reports.len().max(1) as f64,
            normalized_hit_fraction: summary.normalized_mean_hit_fraction,
            normalized_longest_match: summary.normalized_mean_longest_match,
        });
    }
    Ok(rows)
}
