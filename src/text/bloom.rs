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
        if m / BLOCK_BITS > u32::MAX as u64 {
            bail!("{items} n-grams at false-positive rate {fp} need {m} bits: more than this filter addresses (2^41); raise --fp or split the corpus");
        }
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

    /// The 512-bit block of a blocked filter that the n-gram with hash h1 uses.
    #[inline(always)]
    pub fn block_of(&self, h1: u64) -> usize {
        ((h1 as u128 * (self.m / BLOCK_BITS) as u128) >> 64) as usize
    }

    /// A blocked filter's bits for hash h2 inside the block, as the block's eight words:
    /// the first k distinct 9-bit values of the stream h2, fmix64(h2 ⊕ φ), ….
    #[inline(always)]
    pub fn block_mask(&self, h2: u64) -> [u64; LINE_WORDS] {
        let mut chosen = [0u64; LINE_WORDS];
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
            got += (chosen[cw] & cm == 0) as u32;
            chosen[cw] |= cm;
        }
        chosen
    }

    /// Calls `f(word, mask)` for the bits of the n-gram with hashes (h1, h2): one call
    /// per word of its block that holds a bit (blocked), or one per bit (classic).
    #[inline(always)]
    pub fn bits(&self, h1: u64, h2: u64, mut f: impl FnMut(usize, u64)) {
        match self.layout {
            Layout::Blocked => {
                let base = self.block_of(h1) * LINE_WORDS;
                for (i, &mask) in self.block_mask(h2).iter().enumerate() {
                    if mask != 0 {
                        f(base + i, mask);
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

/// Words per 512-bit block (one 64-byte cache line).
pub const LINE_WORDS: usize = (BLOCK_BITS / 64) as usize;

/// One block, aligned to its cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Line(pub [u64; LINE_WORDS]);

#[repr(C, align(64))]
struct AtomicLine([AtomicU64; LINE_WORDS]);

/// n-grams hashed this far ahead of their use, their blocks prefetched meanwhile: a
/// filter larger than the caches costs one memory latency per n-gram otherwise.
const AHEAD: usize = 16;

#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Calls `f(start, block, h2)` for every n-gram of `seq` in order, each block
/// prefetched AHEAD n-grams before its call (blocked filters).
#[inline(always)]
fn pipelined<T: Copy + Into<u32>>(params: &BloomParams, seq: &[T], base: *const u8, mut f: impl FnMut(usize, usize, u64)) {
    let mut ring = [(0usize, 0usize, 0u64); AHEAD];
    let mut count = 0usize;
    for_each_ngram(seq, params.n, |s, h1, h2| {
        let block = params.block_of(h1);
        prefetch(base.wrapping_add(block * 64));
        let slot = &mut ring[count % AHEAD];
        if count >= AHEAD {
            f(slot.0, slot.1, slot.2);
        }
        *slot = (s, block, h2);
        count += 1;
    });
    for i in count.saturating_sub(AHEAD)..count {
        let e = ring[i % AHEAD];
        f(e.0, e.1, e.2);
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
    lines: Vec<AtomicLine>,
}

impl BloomBuilder {
    pub fn new(params: BloomParams) -> BloomBuilder {
        let lines = (0..params.m / BLOCK_BITS).map(|_| AtomicLine(std::array::from_fn(|_| AtomicU64::new(0)))).collect();
        BloomBuilder { params, lines }
    }

    #[inline(always)]
    fn word(&self, w: usize) -> &AtomicU64 {
        &self.lines[w / LINE_WORDS].0[w % LINE_WORDS]
    }

    #[inline(always)]
    fn or_word(word: &AtomicU64, mask: u64) {
        // Reading first skips the locked write (and the cache line's ownership
        // transfer) for bits already set, which repeats in real text make common.
        if word.load(Ordering::Relaxed) & mask != mask {
            word.fetch_or(mask, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn insert_hashes(&self, h1: u64, h2: u64) {
        self.params.bits(h1, h2, |w, mask| Self::or_word(self.word(w), mask));
    }

    /// Inserts every n-gram of `seq` (one document, or part of one).
    pub fn insert_seq<T: Copy + Into<u32>>(&self, seq: &[T]) {
        match self.params.layout {
            Layout::Blocked => pipelined(&self.params, seq, self.lines.as_ptr() as *const u8, |_, block, h2| {
                let line = &self.lines[block].0;
                for (word, mask) in line.iter().zip(self.params.block_mask(h2)) {
                    if mask != 0 {
                        Self::or_word(word, mask);
                    }
                }
            }),
            Layout::Classic => for_each_ngram(seq, self.params.n, |_, h1, h2| self.insert_hashes(h1, h2)),
        }
    }

    /// Inserts every n-gram of every document of `corpus`, on all threads, with
    /// atomic writes (`build_from_corpus` builds the same bits faster).
    pub fn insert_corpus(&self, corpus: &Corpus, progress: &(dyn Fn(u64) + Sync)) {
        let tokens = corpus.tokens();
        let tasks = corpus_tasks(corpus, self.params.n);
        crate::with_tokens!(tokens, |t| tasks.par_iter().for_each(|segments| {
            for &(a, b) in segments {
                self.insert_seq(&t[a..b]);
                progress((b - a) as u64);
            }
        }));
    }

    pub fn finish(self) -> Bloom {
        let lines = self.lines.into_iter().map(|l| Line(l.0.map(AtomicU64::into_inner))).collect();
        Bloom { params: self.params, words: BloomWords::Owned(lines) }
    }
}

/// Tokens per task when a corpus is shared among threads.
const TASK_TOKENS: usize = 1 << 20;
/// n-grams hashed per round of `build_from_corpus` (16 bytes each while buffered).
const ROUND_NGRAMS: usize = 1 << 23;

/// The corpus's documents cut into tasks of about TASK_TOKENS tokens: runs of short
/// documents together, long ones in pieces that overlap by n − 1 tokens, so that every
/// n-gram lies in exactly one segment.
pub(crate) fn corpus_tasks(corpus: &Corpus, n: usize) -> Vec<Vec<(usize, usize)>> {
    let mut tasks = Vec::new();
    let mut current: Vec<(usize, usize)> = Vec::new();
    let mut size = 0usize;
    for &(s, e) in &corpus.docs {
        let (mut a, e) = (s as usize, e as usize);
        while a + n <= e {
            let b = (a + (TASK_TOKENS - size).max(n) + n - 1).min(e);
            current.push((a, b));
            size += b - a;
            if size >= TASK_TOKENS {
                tasks.push(std::mem::take(&mut current));
                size = 0;
            }
            a = b + 1 - n;
        }
    }
    if !current.is_empty() {
        tasks.push(current);
    }
    tasks
}

/// Builds the filter of every n-gram inside a document of `corpus` on all threads.
///
/// A blocked filter is built without atomic writes, in rounds of ROUND_NGRAMS n-grams:
/// the threads hash their tasks into buckets, one per range of blocks; then each range
/// is owned by one thread, which ORs its buckets' masks into its lines, prefetching
/// AHEAD ahead. Locked read-modify-writes cost more than the hashing, and the result is
/// the same set of bits whatever the order. A classic filter uses `BloomBuilder`.
pub fn build_from_corpus(params: BloomParams, corpus: &Corpus, progress: &(dyn Fn(u64) + Sync)) -> Bloom {
    if params.layout == Layout::Classic {
        let b = BloomBuilder::new(params);
        b.insert_corpus(corpus, progress);
        return b.finish();
    }
    let n = params.n;
    let blocks = (params.m / BLOCK_BITS) as usize;
    let parts = (4 * rayon::current_num_threads()).clamp(1, blocks);
    let per = blocks.div_ceil(parts);
    let mut lines = vec![Line([0; LINE_WORDS]); blocks];
    let tasks = corpus_tasks(corpus, n);
    let tokens = corpus.tokens();
    let mut i = 0;
    while i < tasks.len() {
        let (mut j, mut grams, mut round_tokens) = (i, 0usize, 0u64);
        while j < tasks.len() && (j == i || grams < ROUND_NGRAMS) {
            for &(a, b) in &tasks[j] {
                grams += b + 1 - a - n;
                round_tokens += (b - a) as u64;
            }
            j += 1;
        }
        let buckets: Vec<Vec<Vec<(u32, u64)>>> = crate::with_tokens!(tokens, |t| tasks[i..j]
            .par_iter()
            .map(|segments| {
                let size: usize = segments.iter().map(|&(a, b)| b - a).sum();
                let mut out: Vec<Vec<(u32, u64)>> = (0..parts).map(|_| Vec::with_capacity(size / parts + size / (4 * parts) + 16)).collect();
                for &(a, b) in segments {
                    for_each_ngram(&t[a..b], n, |_, h1, h2| {
                        let block = params.block_of(h1);
                        out[block / per].push((block as u32, h2));
                    });
                }
                out
            })
            .collect());
        lines.par_chunks_mut(per).enumerate().for_each(|(p, mine)| {
            let first = p * per;
            for task in &buckets {
                let items = &task[p];
                for (k, &(block, h2)) in items.iter().enumerate() {
                    if let Some(&(ahead, _)) = items.get(k + AHEAD) {
                        prefetch(&mine[ahead as usize - first]);
                    }
                    let mask = params.block_mask(h2);
                    let line = &mut mine[block as usize - first].0;
                    for (w, m) in line.iter_mut().zip(mask) {
                        *w |= m;
                    }
                }
            }
        });
        progress(round_tokens);
        i = j;
    }
    Bloom { params, words: BloomWords::Owned(lines) }
}

pub enum BloomWords {
    Owned(Vec<Line>),
    /// Words borrowed from a memory-mapped index file.
    Mapped { map: memmap2::Mmap, offset: usize },
}

/// A finished filter, owned or memory-mapped from an index file.
pub struct Bloom {
    pub params: BloomParams,
    pub words: BloomWords,
}

impl Bloom {
    pub fn from_words(params: BloomParams, words: &[u64]) -> Bloom {
        assert_eq!(words.len(), params.words());
        Bloom { params, words: BloomWords::Owned(words.chunks_exact(LINE_WORDS).map(|c| Line(c.try_into().unwrap())).collect()) }
    }

    pub fn words(&self) -> &[u64] {
        match &self.words {
            BloomWords::Owned(lines) => bytemuck::cast_slice(lines),
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

    #[inline(always)]
    fn block_holds(words: &[u64], params: &BloomParams, block: usize, h2: u64) -> bool {
        let line = &words[block * LINE_WORDS..block * LINE_WORDS + LINE_WORDS];
        let mask = params.block_mask(h2);
        line.iter().zip(mask).fold(true, |all, (&w, m)| all & (w & m == m))
    }

    /// For every n-gram of `seq`, whether the filter holds it, into `out`.
    fn hits_into<T: Copy + Into<u32>>(&self, seq: &[T], out: &mut [bool]) {
        let words = self.words();
        match self.params.layout {
            Layout::Blocked => pipelined(&self.params, seq, words.as_ptr() as *const u8, |s, block, h2| out[s] = Self::block_holds(words, &self.params, block, h2)),
            Layout::Classic => for_each_ngram(seq, self.params.n, |s, h1, h2| out[s] = self.contains_hashes(h1, h2)),
        }
    }

    /// Whether `gram` (exactly n tokens) may be in the corpus: false means certainly not.
    pub fn contains(&self, gram: &[u32]) -> bool {
        debug_assert_eq!(gram.len(), self.params.n);
        let (h1, h2) = hash_ngram(gram);
        self.contains_hashes(h1, h2)
    }

    /// For every n-gram of `seq`, whether the filter holds it (len − n + 1 answers).
    pub fn hits<T: Copy + Into<u32>>(&self, seq: &[T]) -> Vec<bool> {
        let mut out = vec![false; (seq.len() + 1).saturating_sub(self.params.n)];
        self.hits_into(seq, &mut out);
        out
    }

    /// `hits` on all threads: the sequence cut into pieces of 64 Ki n-grams that overlap
    /// by n − 1 tokens.
    pub fn hits_par<T: Copy + Into<u32> + Sync>(&self, seq: &[T]) -> Vec<bool> {
        let n = self.params.n;
        let mut out = vec![false; (seq.len() + 1).saturating_sub(n)];
        let piece = 1usize << 16;
        out.par_chunks_mut(piece).enumerate().for_each(|(i, chunk)| {
            let start = i * piece;
            self.hits_into(&seq[start..start + chunk.len() + n - 1], chunk);
        });
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
