//! A Bloom filter over a corpus's n-grams (ALGORITHMS.md §6). Sized up front for a
//! false-positive rate p over N n-grams: m = −N ln p / (ln 2)² bits, k = (m/N) ln 2
//! hashes, positions by double hashing from the two n-gram hashes (hash.rs).
//!
//! Two layouts:
//! - blocked (the default): all k bits of an n-gram lie in one 512-bit block (a 64-byte
//!   cache line): block = ⌊h1·B / 2^64⌋, and the bits are the first k distinct 9-bit
//!   values of the stream h2, fmix64(h2 ⊕ φ), fmix64(h2 ⊕ 2φ), … (seven per word, low
//!   bits first): a uniformly random k-subset of the block. One cache miss per query.
//!   Double hashing inside so small a block (bit_i = a + i·b mod 512) is not good
//!   enough: arithmetic progressions overlap more than random sets and raised the rate
//!   by half at 40 n-grams per block. Blocks fill unevenly, so the rate is a little above
//!   the classic one, and sizing adds bits until the blocked rate (`blocked_rate`)
//!   reaches p.
//! - classic: bit_i = (h1 + i·h2) mod m (Kirsch–Mitzenmacher), rate (1 − e^{−kN/m})^k.
//!
//! Inserting is `fetch_or` on 64-bit words, so threads build one filter together and
//! the result does not depend on the order.
//! A filter never answers "absent" for an inserted n-gram.

use super::corpus::Corpus;
use super::hash::{fmix64, for_each_ngram, hash_ngram};
use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

pub const BLOCK_BITS: u64 = 512;
/// The golden-ratio constant that separates the words of a block's bit stream.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Blocked,
    Classic,
}

impl Layout {
    pub fn parse(s: &str) -> Result<Layout> {
        Ok(match s {
            "blocked" => Layout::Blocked,
            "classic" => Layout::Classic,
            _ => bail!("unknown Bloom layout {s:?}: expected blocked or classic"),
        })
    }
}

/// What fixes a filter's bits: with equal parameters and n-grams, two filters are equal.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BloomParams {
    pub layout: Layout,
    /// n-gram length in tokens.
    pub n: usize,
    /// Bits (a whole number of 512-bit blocks).
    pub m: u64,
    pub k: u32,
}

impl BloomParams {
    /// The smallest filter whose predicted rate for `items` n-grams is at most `fp`.
    pub fn for_rate(layout: Layout, n: usize, items: u64, fp: f64) -> Result<BloomParams> {
        if !(fp > 0.0 && fp < 1.0) {
            bail!("--fp {fp}: a false-positive rate lies strictly between 0 and 1");
        }
        if n == 0 {
            bail!("-n 0: an n-gram has at least one token");
        }
        let items_f = items.max(1) as f64;
        let ln2 = std::f64::consts::LN_2;
        let bits = (-items_f * fp.ln() / (ln2 * ln2)).ceil();
        let k = ((bits / items_f) * ln2).round().clamp(1.0, 64.0) as u32;
        let m = ((bits as u64).max(BLOCK_BITS)).div_ceil(BLOCK_BITS) * BLOCK_BITS;
        // Rounding k, and for blocked filters the uneven block loads, raise the rate a
        // little above p: grow m by 1/256 until the layout's own rate fits.
        let mut params = BloomParams { layout, n, m, k };
        while params.predicted_rate(items) > fp {
            params.m = (params.m + params.m / 256).div_ceil(BLOCK_BITS) * BLOCK_BITS;
        }
        Ok(params)
    }

    pub fn words(&self) -> usize {
        (self.m / 64) as usize
    }

    /// The predicted false-positive rate after `items` distinct n-grams.
    pub fn predicted_rate(&self, items: u64) -> f64 {
        match self.layout {
            Layout::Classic => classic_rate(self.m, self.k, items),
            Layout::Blocked => blocked_rate(self.m, self.k, items),
        }
    }

    /// Calls `f(word, mask)` for the bits of the n-gram with hashes (h1, h2).
    #[inline(always)]
    pub fn bits(&self, h1: u64, h2: u64, mut f: impl FnMut(usize, u64)) {
        match self.layout {
            Layout::Blocked => {
                let blocks = self.m / BLOCK_BITS;
                let block = ((h1 as u128 * blocks as u128) >> 64) as u64;
                let base = block * BLOCK_BITS;
                let mut chosen = [0u64; (BLOCK_BITS / 64) as usize];
                let (mut got, mut word, mut left, mut j) = (0u32, h2, 7u32, 0u64);
                while got < self.k {
                    if left == 0 {
                        j += 1;
                        word = fmix64(h2 ^ j.wrapping_mul(GOLDEN));
                        left = 7;
                    }
                    let b = word & (BLOCK_BITS - 1);
                    word >>= 9;
                    left -= 1;
                    let (cw, cm) = ((b >> 6) as usize, 1u64 << (b & 63));
                    if chosen[cw] & cm == 0 {
                        chosen[cw] |= cm;
                        got += 1;
                        let bit = base + b;
                        f((bit >> 6) as usize, 1u64 << (bit & 63));
                    }
                }
            }
            Layout::Classic => {
                let mut pos = h1 % self.m;
                let step = h2 % self.m;
                for _ in 0..self.k {
                    f((pos >> 6) as usize, 1u64 << (pos & 63));
                    pos += step;
                    if pos >= self.m {
                        pos -= self.m;
                    }
                }
            }
        }
    }
}

/// (1 − e^{−kN/m})^k.
pub fn classic_rate(m: u64, k: u32, items: u64) -> f64 {
    (1.0 - (-(k as f64) * items as f64 / m as f64).exp()).powi(k as i32)
}

/// The blocked filter's rate: a block's load x is Poisson with mean λ = N·512/m, each
/// n-gram sets a uniformly random k-subset of its block, and a query asks whether its
/// own k-subset is covered. Given x, by inclusion–exclusion over the query's bits that
/// stay clear,
///
///   q(x) = Σ_{j=0..k} (−1)^j C(k, j) r_j^x,  r_j = C(512 − j, k) / C(512, k),
///
/// exactly (r_j: one n-gram misses j given bits). The alternating sum loses precision
/// for large k, where the independent-bits form (1 − (1 − k/512)^x)^k (a slight
/// overestimate) is used instead. The rate is the Poisson mixture of q(x).
pub fn blocked_rate(m: u64, k: u32, items: u64) -> f64 {
    let lambda = items as f64 * BLOCK_BITS as f64 / m as f64;
    let bb = BLOCK_BITS as f64;
    let exact = k <= 16;
    // ln r_j for j = 0..=k, and the binomials C(k, j).
    let ln_r: Vec<f64> = (0..=k).map(|j| (0..k).map(|i| ((bb - j as f64 - i as f64) / (bb - i as f64)).ln()).sum()).collect();
    let binom: Vec<f64> = (0..=k).scan(1.0f64, |c, j| {
        let v = *c;
        *c = *c * (k - j) as f64 / (j + 1) as f64;
        Some(v)
    }).collect();
    let q = |x: u64| -> f64 {
        if exact {
            let s: f64 = (0..=k as usize).map(|j| if j % 2 == 0 { 1.0 } else { -1.0 } * binom[j] * (ln_r[j] * x as f64).exp()).sum();
            s.clamp(0.0, 1.0)
        } else {
            (1.0 - (1.0 - k as f64 / bb).powi(x as i32)).powi(k as i32)
        }
    };
    let hi = (lambda + 12.0 * lambda.sqrt() + 20.0) as u64;
    let mut log_pmf = -lambda; // ln P(x = 0)
    let mut rate = 0.0;
    for x in 0..=hi {
        if x > 0 {
            log_pmf += lambda.ln() - (x as f64).ln();
        }
        rate += log_pmf.exp() * q(x);
    }
    rate
}

/// A filter being filled: shared by threads, each setting bits with `fetch_or`.
pub struct BloomBuilder {
    pub params: BloomParams,
    words: Vec<AtomicU64>,
}

impl BloomBuilder {
    pub fn new(params: BloomParams) -> BloomBuilder {
        BloomBuilder { params, words: (0..params.words()).map(|_| AtomicU64::new(0)).collect() }
    }

    #[inline]
    pub fn insert_hashes(&self, h1: u64, h2: u64) {
        self.params.bits(h1, h2, |w, mask| {
            // Reading first skips the write (and the cache line's ownership transfer)
            // for bits already set, which repeats in real text make common.
            if self.words[w].load(Ordering::Relaxed) & mask != mask {
                self.words[w].fetch_or(mask, Ordering::Relaxed);
            }
        });
    }

    /// Inserts every n-gram of `seq` (one document, or part of one).
    pub fn insert_seq<T: Copy + Into<u32>>(&self, seq: &[T]) {
        for_each_ngram(seq, self.params.n, |_, h1, h2| self.insert_hashes(h1, h2));
    }

    /// Inserts every n-gram of every document of `corpus`, on all threads. Documents
    /// are cut into pieces of about 1 Mi tokens that overlap by n − 1, so a long
    /// document is shared too and every n-gram is inserted once.
    pub fn insert_corpus(&self, corpus: &Corpus, progress: &(dyn Fn(u64) + Sync)) {
        let n = self.params.n as u64;
        let piece = 1u64 << 20;
        let mut pieces = Vec::new();
        for &(s, e) in &corpus.docs {
            let mut a = s;
            while a + n <= e {
                let b = (a + piece + n - 1).min(e);
                pieces.push((a as usize, b as usize));
                a = b + 1 - n;
            }
        }
        let tokens = corpus.tokens();
        crate::with_tokens!(tokens, |t| pieces.par_iter().for_each(|&(a, b)| {
            self.insert_seq(&t[a..b]);
            progress((b - a) as u64);
        }));
    }

    pub fn finish(self) -> Bloom {
        Bloom { params: self.params, words: BloomWords::Owned(self.words.into_iter().map(AtomicU64::into_inner).collect()) }
    }
}

pub enum BloomWords {
    Owned(Vec<u64>),
    /// Words borrowed from a memory-mapped index file.
    Mapped { map: memmap2::Mmap, offset: usize },
}

/// A finished filter, owned or memory-mapped from an index file.
pub struct Bloom {
    pub params: BloomParams,
    pub words: BloomWords,
}

impl Bloom {
    pub fn from_words(params: BloomParams, words: Vec<u64>) -> Bloom {
        assert_eq!(words.len(), params.words());
        Bloom { params, words: BloomWords::Owned(words) }
    }

    pub fn words(&self) -> &[u64] {
        match &self.words {
            BloomWords::Owned(w) => w,
            BloomWords::Mapped { map, offset } => bytemuck::cast_slice(&map[*offset..*offset + self.params.words() * 8]),
        }
    }

    #[inline]
    pub fn contains_hashes(&self, h1: u64, h2: u64) -> bool {
        let words = self.words();
        let mut all = true;
        self.params.bits(h1, h2, |w, mask| all &= words[w] & mask == mask);
        all
    }

    /// Whether `gram` (exactly n tokens) may be in the corpus: false means certainly not.
    pub fn contains(&self, gram: &[u32]) -> bool {
        debug_assert_eq!(gram.len(), self.params.n);
        let (h1, h2) = hash_ngram(gram);
        self.contains_hashes(h1, h2)
    }

    /// For every n-gram of `seq`, whether the filter holds it (len − n + 1 answers).
    pub fn hits<T: Copy + Into<u32>>(&self, seq: &[T]) -> Vec<bool> {
        let mut out = Vec::with_capacity(seq.len().saturating_sub(self.params.n - 1));
        for_each_ngram(seq, self.params.n, |_, h1, h2| out.push(self.contains_hashes(h1, h2)));
        out
    }

    /// The fraction of bits set.
    pub fn fill(&self) -> f64 {
        let ones: u64 = self.words().par_iter().map(|w| w.count_ones() as u64).sum();
        ones as f64 / self.params.m as f64
    }

    /// The number of distinct n-grams the fill implies, −(m/k)·ln(1 − fill) (Swamidass &
    /// Baldi), for filters built without an exact count.
    pub fn estimated_items(&self) -> f64 {
        let f = self.fill();
        -(self.params.m as f64 / self.params.k as f64) * (1.0 - f).ln()
    }
}
