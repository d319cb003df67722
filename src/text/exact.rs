//! The exact index: a suffix array of every document's suffixes, with its LCP array,
//! built by libsais (ALGORITHMS.md §6). It answers n-gram counts (the width of the
//! range of suffixes that start with the n-gram, two binary searches) and the matching
//! statistic ms\[i\] — the length of the longest prefix of gen\[i..\] that occurs in the
//! corpus — so the longest verbatim match of a generation is max_i ms\[i\], with where it
//! occurs. No match runs across a document boundary.
//!
//! libsais sorts one text, so the documents are laid end to end as i32 ids t + 1, each
//! followed by the sentinel 0. Sentinels sort before every token, so the suffixes that
//! start with one come first and are dropped; the rest are stored as u32 positions in
//! the corpus, in the order of their suffixes cut at their document's end. The LCP of
//! two suffixes that both reach their sentinel at the same depth counts past it, so it
//! is capped at the suffix's length within its document.

use super::corpus::Corpus;
use super::index_file::{self, CorpusRef, Header, Opened};
use anyhow::{bail, Context, Result};
use libsais::SuffixArrayConstruction;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::ops::Range;
use std::path::Path;

pub const KIND: &str = "suffix-array";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExactFields {
    /// Suffixes stored (tokens inside documents).
    pub suffixes: u64,
}

/// The suffix array (corpus positions, sorted) and LCP (lcp\[j\] = longest common prefix
/// of suffixes j − 1 and j within their documents; lcp\[0\] = 0).
pub struct SuffixArrays {
    pub sa: Vec<u32>,
    pub lcp: Vec<u32>,
}

/// Builds the suffix and LCP arrays of `corpus`'s documents.
pub fn build(corpus: &Corpus) -> Result<SuffixArrays> {
    let docs: Vec<(u64, u64)> = corpus.docs.iter().copied().filter(|&(s, e)| e > s).collect();
    let in_docs: u64 = docs.iter().map(|&(s, e)| e - s).sum();
    let aug_len = in_docs + docs.len() as u64;
    if aug_len >= i32::MAX as u64 || corpus.meta.n_tokens >= u32::MAX as u64 {
        bail!(
            "{}: {} tokens in {} documents: the exact index holds up to 2^31 − 1 tokens and separators; index this corpus with --kind bloom, or split it",
            corpus.dir.display(),
            in_docs,
            docs.len()
        );
    }
    let tokens = corpus.tokens();
    let mut aug: Vec<i32> = Vec::with_capacity(aug_len as usize);
    let mut aug_starts = Vec::with_capacity(docs.len());
    for &(s, e) in &docs {
        aug_starts.push(aug.len() as u64);
        crate::with_tokens!(tokens, |t| {
            for &x in &t[s as usize..e as usize] {
                let id = x as u32 as u64 + 1;
                if id >= i32::MAX as u64 {
                    bail!("{}: token id {} is too large for the exact index (ids up to 2^31 − 3)", corpus.dir.display(), id - 1);
                }
                aug.push(id as i32);
            }
        });
        aug.push(0);
    }
    let with_text = SuffixArrayConstruction::for_text_mut(&mut aug)
        .in_owned_buffer32()
        .single_threaded()
        .run()
        .map_err(|e| anyhow::anyhow!("libsais failed to build the suffix array: {e:?}"))?;
    let with_plcp = with_text.plcp_construction().single_threaded().run().map_err(|e| anyhow::anyhow!("libsais failed to build the PLCP array: {e:?}"))?;
    let with_lcp = with_plcp.lcp_construction().single_threaded().run().map_err(|e| anyhow::anyhow!("libsais failed to build the LCP array: {e:?}"))?;
    let sa_aug = with_lcp.suffix_array();
    let lcp_aug = with_lcp.lcp();
    let skip = docs.len();
    // Aug position → (document, corpus position, tokens left in the document).
    let place = |p: u64| {
        let d = aug_starts.partition_point(|&a| a <= p) - 1;
        let off = p - aug_starts[d];
        (docs[d].0 + off, docs[d].1 - docs[d].0 - off)
    };
    let placed: Vec<(u32, u32)> = sa_aug[skip..]
        .par_iter()
        .map(|&p| {
            let (pos, left) = place(p as u64);
            (pos as u32, left as u32)
        })
        .collect();
    let sa: Vec<u32> = placed.iter().map(|&(p, _)| p).collect();
    let lcp: Vec<u32> = (0..placed.len())
        .into_par_iter()
        .map(|j| if j == 0 { 0 } else { (lcp_aug[skip + j] as u32).min(placed[j].1).min(placed[j - 1].1) })
        .collect();
    Ok(SuffixArrays { sa, lcp })
}

/// Builds and writes the exact index of `corpus` to `path`.
pub fn write_index(corpus: &Corpus, path: &Path) -> Result<ExactFields> {
    let arrays = build(corpus)?;
    let fields = ExactFields { suffixes: arrays.sa.len() as u64 };
    let header = Header { kind: KIND.into(), corpus: CorpusRef::of(corpus), payload_bytes: arrays.sa.len() as u64 * 8, fields: fields.clone() };
    index_file::write(path, &header, |w| {
        w.write_all(bytemuck::cast_slice(&arrays.sa))?;
        w.write_all(bytemuck::cast_slice(&arrays.lcp))?;
        Ok(())
    })?;
    Ok(fields)
}

/// The suffix and LCP arrays, borrowed from memory or from a mapped index file.
pub enum Arrays {
    Owned(SuffixArrays),
    Mapped(Opened<ExactFields>),
}

/// An exact index over an open corpus.
pub struct Exact {
    pub corpus: Corpus,
    arrays: Arrays,
    /// Bit q set: token q continues the document of token q − 1.
    continues: Vec<u64>,
}

/// A longest verbatim match: `len` tokens of the generation from `start`, found in the
/// corpus at token `corpus_pos` (document `doc`, `offset` tokens in).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Match {
    pub start: usize,
    pub len: usize,
    pub corpus_pos: u64,
    pub doc: usize,
    pub offset: u64,
}

impl Exact {
    pub fn from_arrays(corpus: Corpus, arrays: SuffixArrays) -> Exact {
        let continues = continuation_bits(&corpus);
        Exact { corpus, arrays: Arrays::Owned(arrays), continues }
    }

    /// Opens the index at `path` over the corpus it names, or over `corpus_dir` when
    /// given (a corpus that moved); refuses a corpus it was not built from.
    pub fn open(path: &Path, corpus_dir: Option<&Path>) -> Result<Exact> {
        let opened: Opened<ExactFields> = index_file::open(path, Some(KIND))?;
        let dir = corpus_dir.map(Path::to_path_buf).unwrap_or_else(|| opened.header.corpus.dir.clone());
        let corpus = Corpus::open(&dir).with_context(|| format!("the corpus of {}", path.display()))?;
        opened.header.corpus.check(&corpus, path)?;
        if opened.header.payload_bytes != opened.header.fields.suffixes * 8 {
            bail!("{}: header describes {} suffixes in {} bytes: damaged; rebuild the index", path.display(), opened.header.fields.suffixes, opened.header.payload_bytes);
        }
        let continues = continuation_bits(&corpus);
        Ok(Exact { corpus, arrays: Arrays::Mapped(opened), continues })
    }

    pub fn sa(&self) -> &[u32] {
        match &self.arrays {
            Arrays::Owned(a) => &a.sa,
            Arrays::Mapped(o) => {
                let n = o.header.fields.suffixes as usize;
                bytemuck::cast_slice(&o.map[o.payload_offset..o.payload_offset + 4 * n])
            }
        }
    }

    pub fn lcp(&self) -> &[u32] {
        match &self.arrays {
            Arrays::Owned(a) => &a.lcp,
            Arrays::Mapped(o) => {
                let n = o.header.fields.suffixes as usize;
                bytemuck::cast_slice(&o.map[o.payload_offset + 4 * n..o.payload_offset + 8 * n])
            }
        }
    }

    /// Token `d` of the suffix at corpus position `p`, or None past its document's end.
    #[inline]
    fn at(&self, p: u32, d: usize) -> Option<u32> {
        let q = p as usize + d;
        if d > 0 && (q >= self.corpus.n_tokens() || self.continues[q >> 6] >> (q & 63) & 1 == 0) {
            return None;
        }
        Some(self.corpus.tokens().get(q))
    }

    /// The suffix at `p` cut to |pattern| tokens against `pattern` (a suffix that ends
    /// first is smaller).
    fn cmp_prefix(&self, p: u32, pattern: &[u32]) -> Ordering {
        for (d, &want) in pattern.iter().enumerate() {
            match self.at(p, d) {
                None => return Ordering::Less,
                Some(t) if t != want => return t.cmp(&want),
                _ => {}
            }
        }
        Ordering::Equal
    }

    /// The suffix-array range of the suffixes that start with `pattern`.
    pub fn range(&self, pattern: &[u32]) -> Range<usize> {
        let sa = self.sa();
        let lo = sa.partition_point(|&p| self.cmp_prefix(p, pattern) == Ordering::Less);
        let hi = lo + sa[lo..].partition_point(|&p| self.cmp_prefix(p, pattern) != Ordering::Greater);
        lo..hi
    }

    /// Occurrences of `pattern` in the corpus (within documents).
    pub fn count(&self, pattern: &[u32]) -> usize {
        self.range(pattern).len()
    }

    pub fn contains(&self, pattern: &[u32]) -> bool {
        !self.range(pattern).is_empty()
    }

    /// Within `range` (suffixes sharing their first d tokens), those whose token d is
    /// `token`.
    fn narrow(&self, range: Range<usize>, d: usize, token: u32) -> Range<usize> {
        let sa = &self.sa()[range.clone()];
        let lo = sa.partition_point(|&p| self.at(p, d) < Some(token));
        let hi = lo + sa[lo..].partition_point(|&p| self.at(p, d) <= Some(token));
        range.start + lo..range.start + hi
    }

    /// The matching statistics of `gen`: for each i, the length of the longest prefix of
    /// gen[i..] that occurs in the corpus and a suffix-array index where it does. Uses
    /// ms\[i + 1\] ≥ ms\[i\] − 1: the known part is found by one range search, the rest
    /// token by token.
    pub fn matching_statistics(&self, gen: &[u32]) -> Vec<(usize, usize)> {
        let mut out = Vec::with_capacity(gen.len());
        let mut known = 0usize;
        for i in 0..gen.len() {
            let mut range = if known == 0 { 0..self.sa().len() } else { self.range(&gen[i..i + known]) };
            let mut d = known;
            while i + d < gen.len() {
                let next = self.narrow(range.clone(), d, gen[i + d]);
                if next.is_empty() {
                    break;
                }
                range = next;
                d += 1;
            }
            out.push((d, if d == 0 { usize::MAX } else { range.start }));
            known = d.saturating_sub(1);
        }
        out
    }

    /// The longest verbatim match of `gen` in the corpus (the first, if several are
    /// longest), or None when not even one token occurs.
    pub fn longest_match(&self, gen: &[u32]) -> Option<Match> {
        let ms = self.matching_statistics(gen);
        let (start, &(len, j)) = ms.iter().enumerate().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(&a.0)))?;
        if len == 0 {
            return None;
        }
        let pos = self.sa()[j] as u64;
        let doc = self.corpus.doc_of(pos);
        Some(Match { start, len, corpus_pos: pos, doc, offset: pos - self.corpus.docs[doc].0 })
    }

    /// For every n-gram of `gen`, whether it occurs in the corpus, from the matching
    /// statistics (ms\[i\] ≥ n).
    pub fn hits(&self, gen: &[u32], n: usize) -> Vec<bool> {
        if gen.len() < n {
            return Vec::new();
        }
        let ms = self.matching_statistics(gen);
        (0..=gen.len() - n).map(|i| ms[i].0 >= n).collect()
    }

    /// Distinct n-grams in the corpus and n-gram positions (with repeats), from the LCP
    /// array: suffix j starts a new distinct n-gram when it is at least n long and shares
    /// fewer than n tokens with suffix j − 1.
    pub fn ngram_counts(&self, n: usize) -> (u64, u64) {
        let sa = self.sa();
        let lcp = self.lcp();
        let corpus = &self.corpus;
        (0..sa.len())
            .into_par_iter()
            .map(|j| {
                let p = sa[j] as u64;
                let left = corpus.docs[corpus.doc_of(p)].1 - p;
                if left < n as u64 {
                    (0, 0)
                } else {
                    ((lcp[j] < n as u32 || j == 0) as u64, 1)
                }
            })
            .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}

fn continuation_bits(corpus: &Corpus) -> Vec<u64> {
    let n = corpus.n_tokens();
    let mut bits = vec![0u64; n.div_ceil(64) + 1];
    for &(s, e) in &corpus.docs {
        for q in s as usize + 1..e as usize {
            bits[q >> 6] |= 1 << (q & 63);
        }
    }
    bits
}

