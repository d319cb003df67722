//! Layer 2: the randomized greedy covering of X⁻ (ALGORITHMS.md §1), batched.
//!
//! The candidate order is a random permutation of X⁻ fixed up front. Walking it, a
//! candidate still uncovered is "picked"; its m = min over X⁺ of s(x) does not depend
//! on the state, so m is computed for a batch of upcoming candidates at once (on the
//! CPU or the GPU), and the batch is then accepted or skipped in order exactly as the
//! one-at-a-time loop would: a candidate covered by a neuron accepted earlier in the
//! same batch is skipped. The result is identical to the sequential algorithm.

use super::layer1::{Bits, WordMajor, LANES};
use std::borrow::Cow;
use anyhow::Result;
use rayon::prelude::*;

/// One layer-2 neuron ψ(x) = H(m − s(x)), s(x) = ⟨mask, φ(x)⟩.
#[derive(Clone, Debug, PartialEq)]
pub struct Neuron {
    /// The units OFF at the candidate (over the layer's width), as bits.
    pub mask: Vec<u64>,
    /// m: the neuron fires when s(x) < m.
    pub threshold: f32,
}

/// The result of covering one class's X⁻.
#[derive(Clone, Debug)]
pub struct Cover {
    pub neurons: Vec<Neuron>,
    /// X⁻ points left uncovered (0 means this class is interpolated).
    pub uncovered: usize,
    /// Candidates picked (reached while still uncovered).
    pub picked: usize,
}

/// The two scans the covering needs; implemented by the CPU and the CUDA backend.
pub trait CoverScanner {
    /// For each of `count` masks (each `used_words` long, concatenated): the minimum
    /// over X⁺ rows of popcount(mask ∧ φ(row)).
    fn min_over_positives(&mut self, masks: &[u64], count: usize) -> Result<Vec<u32>>;
    /// Marks `covered[i] = 1` for X⁻ row i when some neuron (mask_k, m_k) has
    /// popcount(mask_k ∧ φ(row)) < m_k.
    fn mark_covered(&mut self, masks: &[u64], thresholds: &[u32], covered: &mut [u8]) -> Result<()>;
}

#[inline(always)]
pub fn masked_popcount(mask: &[u64], row: &[u64]) -> u32 {
    mask.iter().zip(row).map(|(a, b)| (a & b).count_ones()).sum()
}

/// For each mask (concatenated, `used` words each): min over `rows` of
/// popcount(mask ∧ φ(row)), with `popcount` computing one such count. Rows are the
/// outer loop so each is read once for all masks; a chunk stops early once every mask
/// has reached 0.
#[inline(always)]
fn min_scan_with(popcount: impl Fn(&[u64], &[u64]) -> u32, masks: &[u64], used: usize, bits: &Bits, rows: &[u32], best: &mut [u32]) {
    for &p in rows {
        let row = &bits.row(p as usize)[..used];
        let mut all_zero = true;
        for (k, b) in best.iter_mut().enumerate() {
            if *b != 0 {
                *b = (*b).min(popcount(&masks[k * used..(k + 1) * used], row));
                all_zero &= *b == 0;
            }
        }
        if all_zero {
            break;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn min_scan_avx2(masks: &[u64], used: usize, bits: &Bits, rows: &[u32], best: &mut [u32]) {
    min_scan_with(masked_popcount, masks, used, bits, rows, best)
}

/// The CPU twin of the cover_min kernel over a chunk of X⁺ rows, with hardware
/// popcount when the processor has it. `best` holds running minima. (Processors with
/// AVX-512 VPOPCNTDQ take `min_scan_word_major` instead.)
pub fn min_scan(masks: &[u64], used: usize, bits: &Bits, rows: &[u32], best: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the features were detected at run time.
        return unsafe { min_scan_avx2(masks, used, bits, rows, best) };
    }
    min_scan_with(masked_popcount, masks, used, bits, rows, best)
}

/// Marks `covered` for the rows on which some neuron (masks concatenated, with
/// `thresholds`) fires, with `popcount` computing one masked count.
#[inline(always)]
fn mark_chunk_with(popcount: impl Fn(&[u64], &[u64]) -> u32, masks: &[u64], thresholds: &[u32], bits: &Bits, rows: &[u32], covered: &mut [u8]) {
    let used = masks.len() / thresholds.len().max(1);
    for (c, &r) in covered.iter_mut().zip(rows) {
        if *c == 0 {
            let row = &bits.row(r as usize)[..used];
            if thresholds.iter().enumerate().any(|(k, &m)| popcount(&masks[k * used..(k + 1) * used], row) < m) {
                *c = 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn mark_chunk_avx2(masks: &[u64], thresholds: &[u32], bits: &Bits, rows: &[u32], covered: &mut [u8]) {
    mark_chunk_with(masked_popcount, masks, thresholds, bits, rows, covered)
}

/// The CPU twin of the cover_mark kernel over a chunk of X⁻ rows. (Processors with
/// AVX-512 VPOPCNTDQ take `mark_word_major` instead.)
pub fn mark_chunk(masks: &[u64], thresholds: &[u32], bits: &Bits, rows: &[u32], covered: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the features were detected at run time.
        return unsafe { mark_chunk_avx2(masks, thresholds, bits, rows, covered) };
    }
    mark_chunk_with(masked_popcount, masks, thresholds, bits, rows, covered)
}

/// ¬φ(candidate) restricted to the first `units` units.
pub fn off_mask(row: &[u64], units: usize) -> Vec<u64> {
    let mut m = Vec::with_capacity(units.div_ceil(64));
    push_off_mask(row, units, &mut m);
    m
}

/// Appends `off_mask(row, units)` to `out`.
pub fn push_off_mask(row: &[u64], units: usize, out: &mut Vec<u64>) {
    let used = units.div_ceil(64);
    out.extend(row[..used].iter().map(|w| !w));
    if !units.is_multiple_of(64) {
        *out.last_mut().unwrap() &= (1u64 << (units % 64)) - 1;
    }
}

/// φ of the X⁻ points as the covering reads its candidates.
pub trait Candidates {
    /// The first `out.len()` words of X⁻ point c.
    fn candidate_into(&self, c: usize, out: &mut [u64]);
}

/// X⁻ as rows `neg` of a bit matrix.
pub struct ListedRows<'a>(pub &'a Bits, pub &'a [u32]);

impl Candidates for ListedRows<'_> {
    fn candidate_into(&self, c: usize, out: &mut [u64]) {
        out.copy_from_slice(&self.0.row(self.1[c] as usize)[..out.len()]);
    }
}

impl Candidates for WordMajor {
    fn candidate_into(&self, c: usize, out: &mut [u64]) {
        self.row_into(c, out);
    }
}

/// Covers X⁻ (read through `candidates`) using the first `units` units, walking
/// `order` (a permutation of X⁻'s indices). `batch` is the first and smallest batch size. The
/// size adapts to the data (it changes the wasted work, never the result): it doubles
/// while few candidates of a batch are made redundant by the batch's own acceptances
/// or while a batch accepts nothing, and halves when many are.
pub fn greedy_cover(
    candidates: &dyn Candidates,
    units: usize,
    order: &[u32],
    scanner: &mut dyn CoverScanner,
    batch: usize,
    max_batch: usize,
) -> Result<Cover> {
    let used = units.div_ceil(64);
    let mut covered = vec![0u8; order.len()];
    let mut uncovered = order.len();
    // Buffers reused from batch to batch.
    let (mut cands, mut rows, mut masks, mut acc_masks, mut acc_thresholds) = (Vec::new(), Vec::<u64>::new(), Vec::<u64>::new(), Vec::<u64>::new(), Vec::<u32>::new());
    let mut next = 0;
    let mut neurons = Vec::new();
    let mut picked = 0;
    let mut size = batch.max(1);
    while uncovered > 0 && next < order.len() {
        cands.clear();
        while cands.len() < size && next < order.len() {
            let c = order[next] as usize;
            next += 1;
            if covered[c] == 0 {
                cands.push(c);
            }
        }
        if cands.is_empty() {
            break;
        }
        // The candidates' rows, and their masks ¬φ over the used units.
        rows.resize(cands.len() * used, 0);
        for (&c, row) in cands.iter().zip(rows.chunks_exact_mut(used)) {
            candidates.candidate_into(c, row);
        }
        masks.clear();
        for row in rows.chunks_exact(used) {
            push_off_mask(row, units, &mut masks);
        }
        let mins = scanner.min_over_positives(&masks, cands.len())?;
        acc_masks.clear();
        acc_thresholds.clear();
        let mut redundant = 0;
        for (t, row) in rows.chunks_exact(used).enumerate() {
            let already = acc_thresholds
                .iter()
                .enumerate()
                .any(|(k, &m)| masked_popcount(&acc_masks[k * used..(k + 1) * used], row) < m);
            if already {
                redundant += 1;
                continue;
            }
            picked += 1;
            if mins[t] > 0 {
                acc_masks.extend_from_slice(&masks[t * used..(t + 1) * used]);
                acc_thresholds.push(mins[t]);
            }
        }
        if acc_thresholds.is_empty() || redundant * 8 < cands.len() {
            size = (size * 2).min(max_batch.max(1));
        } else if redundant * 2 > cands.len() {
            size = (size / 2).max(batch.max(1));
        }
        if acc_thresholds.is_empty() {
            continue;
        }
        scanner.mark_covered(&acc_masks, &acc_thresholds, &mut covered)?;
        uncovered = crate::simd::dispatch(
            #[inline(always)]
            || covered.iter().filter(|&&c| c == 0).count(),
        );
        for (k, &m) in acc_thresholds.iter().enumerate() {
            neurons.push(Neuron { mask: acc_masks[k * used..(k + 1) * used].to_vec(), threshold: m as f32 });
        }
    }
    if neurons.is_empty() {
        // A neuron that never fires keeps the OR layer well defined.
        neurons.push(Neuron { mask: vec![0; used], threshold: 0.0 });
    }
    Ok(Cover { neurons, uncovered, picked })
}

/// max over neurons of m − popcount(mask ∧ row): positive exactly when some neuron
/// fires on the row.
pub fn best_margin(neurons: &[Neuron], row: &[u64]) -> f32 {
    #[inline(always)]
    fn generic(neurons: &[Neuron], row: &[u64]) -> f32 {
        neurons.iter().map(|ne| ne.threshold - masked_popcount(&ne.mask, row) as f32).fold(f32::NEG_INFINITY, f32::max)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn fast(neurons: &[Neuron], row: &[u64]) -> f32 {
        generic(neurons, row)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn fast512(neurons: &[Neuron], row: &[u64]) -> f32 {
        neurons
            .iter()
            .map(|ne| ne.threshold - crate::simd::popcount_and_avx512(&ne.mask, row) as f32)
            .fold(f32::NEG_INFINITY, f32::max)
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512_popcount() {
        // SAFETY: the features were detected at run time.
        return unsafe { fast512(neurons, row) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the features were detected at run time.
        return unsafe { fast(neurons, row) };
    }
    generic(neurons, row)
}

/// The CPU scanner: threads over candidates (min scan, stopping at 0) and over X⁻ rows.
pub struct CpuScanner<'a> {
    units: usize,
    rows: Rows<'a>,
}

/// Where the CPU scanner reads X⁺ and X⁻.
enum Rows<'a> {
    /// Rows of the bit matrix, through the index lists.
    Listed { bits: &'a Bits, pos: &'a [u32], neg: &'a [u32] },
    /// X⁺ and X⁻ word-major, where the vector kernels run (AVX-512 VPOPCNTDQ only).
    WordMajor(Cow<'a, WordMajor>, Cow<'a, WordMajor>),
}

impl<'a> CpuScanner<'a> {
    pub fn new(bits: &'a Bits, units: usize, pos: &'a [u32], neg: &'a [u32]) -> Self {
        let used = units.div_ceil(64);
        let rows = if crate::simd::has_avx512_popcount() {
            Rows::WordMajor(Cow::Owned(WordMajor::gather(bits, pos, used)), Cow::Owned(WordMajor::gather(bits, neg, used)))
        } else {
            Rows::Listed { bits, pos, neg }
        };
        CpuScanner { units, rows }
    }

    /// X⁺ and X⁻ already word-major (`layer1::random_word_major`); only where
    /// `layer1::word_major_applies`.
    pub fn word_major(units: usize, pos: &'a WordMajor, neg: &'a WordMajor) -> Self {
        assert!(crate::simd::has_avx512_popcount() && pos.used == units.div_ceil(64) && neg.used == pos.used);
        CpuScanner { units, rows: Rows::WordMajor(Cow::Borrowed(pos), Cow::Borrowed(neg)) }
    }
}

impl CoverScanner for CpuScanner<'_> {
    fn min_over_positives(&mut self, masks: &[u64], count: usize) -> Result<Vec<u32>> {
        const ROWS: usize = 8192;
        let used = self.units.div_ceil(64);
        let merge = |a: Vec<u32>, b: Vec<u32>| a.iter().zip(&b).map(|(x, y)| *x.min(y)).collect();
        match &self.rows {
            #[cfg(target_arch = "x86_64")]
            Rows::WordMajor(pos, _) => {
                let scan = |blocks: std::ops::Range<usize>| {
                    let mut best = vec![u32::MAX; count];
                    // SAFETY: the word-major layout exists only where AVX-512 VPOPCNTDQ
                    // was detected.
                    unsafe { min_scan_word_major(masks, pos, blocks, &mut best) };
                    best
                };
                let blocks = pos.padded / LANES;
                if count * pos.rows * used < 1 << 16 {
                    return Ok(scan(0..blocks));
                }
                let per_task = ROWS / LANES;
                Ok((0..blocks.div_ceil(per_task)).into_par_iter().map(|t| scan(t * per_task..((t + 1) * per_task).min(blocks))).reduce(|| vec![u32::MAX; count], merge))
            }
            #[cfg(not(target_arch = "x86_64"))]
            Rows::WordMajor(..) => unreachable!("the word-major layout is built only on x86-64"),
            Rows::Listed { bits, pos, .. } => {
                let scan = |rows: &[u32]| {
                    let mut best = vec![u32::MAX; count];
                    min_scan(masks, used, bits, rows, &mut best);
                    best
                };
                if count * pos.len() * used < 1 << 16 {
                    return Ok(scan(pos));
                }
                Ok(pos.par_chunks(ROWS).map(scan).reduce(|| vec![u32::MAX; count], merge))
            }
        }
    }

    fn mark_covered(&mut self, masks: &[u64], thresholds: &[u32], covered: &mut [u8]) -> Result<()> {
        const ROWS: usize = 4096;
        let serial = covered.len() * masks.len() < 1 << 16;
        match &self.rows {
            #[cfg(target_arch = "x86_64")]
            Rows::WordMajor(_, neg) => {
                // SAFETY (both calls): the word-major layout exists only where AVX-512
                // VPOPCNTDQ was detected; each task gets whole blocks of LANES rows.
                if serial {
                    unsafe { mark_word_major(masks, thresholds, neg, 0, covered) };
                } else {
                    covered.par_chunks_mut(ROWS).enumerate().for_each(|(t, c)| unsafe { mark_word_major(masks, thresholds, neg, t * ROWS / LANES, c) });
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Rows::WordMajor(..) => unreachable!("the word-major layout is built only on x86-64"),
            Rows::Listed { bits, neg, .. } => {
                if serial {
                    mark_chunk(masks, thresholds, bits, neg, covered);
                } else {
                    covered.par_chunks_mut(ROWS).zip(neg.par_chunks(ROWS)).for_each(|(c, rows)| mark_chunk(masks, thresholds, bits, rows, c));
                }
            }
        }
        Ok(())
    }
}

/// popcount(mask ∧ row) for the eight rows of block b.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
#[inline]
unsafe fn block_counts(mask: &[u64], t: &WordMajor, block: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let mut acc = _mm512_setzero_si512();
    let base = t.data.as_ptr().add(block * t.used * LANES);
    for (w, &m) in mask[..t.used].iter().enumerate() {
        let rows = _mm512_loadu_si512(base.add(w * LANES) as *const _);
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(_mm512_set1_epi64(m as i64), rows)));
    }
    acc
}

/// `min_scan` over blocks `blocks` of a word-major X⁺: 64 rows at a time for every
/// mask still above 0, stopping once all are 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn min_scan_word_major(masks: &[u64], t: &WordMajor, blocks: std::ops::Range<usize>, best: &mut [u32]) {
    use std::arch::x86_64::*;
    const GROUP: usize = 8;
    let used = t.used;
    let mut b0 = blocks.start;
    while b0 < blocks.end {
        let b1 = (b0 + GROUP).min(blocks.end);
        let mut all_zero = true;
        for (k, bk) in best.iter_mut().enumerate() {
            if *bk == 0 {
                continue;
            }
            let mask = &masks[k * used..(k + 1) * used];
            let mut lows = _mm512_set1_epi64(u32::MAX as i64);
            for b in b0..b1 {
                lows = _mm512_mask_min_epu64(lows, t.valid(b), lows, block_counts(mask, t, b));
            }
            *bk = (*bk).min(_mm512_reduce_min_epu64(lows) as u32);
            all_zero &= *bk == 0;
        }
        if all_zero {
            return;
        }
        b0 = b1;
    }
}

/// Per row of `rows`: whether some neuron fires on it (s(x) < m).
pub fn firing(neurons: &[Neuron], rows: &WordMajor) -> Vec<bool> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512_popcount() {
        let mut fired = Vec::with_capacity(rows.padded);
        for b in 0..rows.padded / LANES {
            // SAFETY: AVX-512 VPOPCNTDQ was detected.
            let hits = unsafe { block_firing(neurons, rows, b) };
            fired.extend((0..LANES).map(|l| (hits >> l) & 1 == 1));
        }
        fired.truncate(rows.rows);
        return fired;
    }
    let mut row = vec![0u64; rows.used];
    (0..rows.rows)
        .map(|i| {
            rows.row_into(i, &mut row);
            best_margin(neurons, &row) > 0.0
        })
        .collect()
}

/// The lanes of block b on which some neuron fires.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn block_firing(neurons: &[Neuron], rows: &WordMajor, block: usize) -> u8 {
    use std::arch::x86_64::*;
    let mut hit = 0u8;
    for ne in neurons {
        // Thresholds are whole numbers of units (0 for the neuron that never fires).
        let m = _mm512_set1_epi64(ne.threshold as i64);
        hit |= _mm512_cmplt_epu64_mask(block_counts(&ne.mask, rows, block), m);
    }
    hit & rows.valid(block)
}

/// `mark_chunk` on a word-major X⁻ from block `first_block`, for `covered` (a whole
/// number of blocks' rows, or the last rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn mark_word_major(masks: &[u64], thresholds: &[u32], t: &WordMajor, first_block: usize, covered: &mut [u8]) {
    use std::arch::x86_64::*;
    let used = t.used;
    for (i, chunk) in covered.chunks_mut(LANES).enumerate() {
        let b = first_block + i;
        // The flags (0 or 1) of a whole block as one word: bit l of the product's top
        // byte is flag l.
        let flags = match <&[u8; LANES]>::try_from(&*chunk) {
            Ok(bytes) => (u64::from_le_bytes(*bytes).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8,
            Err(_) => chunk.iter().enumerate().fold(0u8, |m, (l, &c)| m | ((c & 1) << l)),
        };
        let uncovered = !flags & t.valid(b);
        let mut hit = 0u8;
        for (k, &m) in thresholds.iter().enumerate() {
            if hit == uncovered {
                break;
            }
            hit |= _mm512_mask_cmplt_epu64_mask(uncovered & !hit, block_counts(&masks[k * used..(k + 1) * used], t, b), _mm512_set1_epi64(m as i64));
        }
        match <&mut [u8; LANES]>::try_from(&mut *chunk) {
            // Bit l of `hit` to byte l: copies of the byte, each masked to its own bit,
            // carried to the byte's top bit and down.
            Ok(bytes) => {
                let spread = ((((hit as u64).wrapping_mul(0x0101_0101_0101_0101) & 0x8040_2010_0804_0201) + 0x7F7F_7F7F_7F7F_7F7F) >> 7) & 0x0101_0101_0101_0101;
                *bytes = (u64::from_le_bytes(*bytes) | spread).to_le_bytes();
            }
            Err(_) => {
                for (l, c) in chunk.iter_mut().enumerate() {
                    *c |= (hit >> l) & 1;
                }
            }
        }
    }
}

/// s(x) of the ReLU variant: Σ over masked units of the real-valued features, summed
/// in unit order (the same code evaluates saved networks).
#[inline]
pub fn relu_score(mask: &[u64], feats: &[f32]) -> f32 {
    let mut s = 0f32;
    for (w, &word) in mask.iter().enumerate() {
        let mut bitsleft = word;
        while bitsleft != 0 {
            let j = bitsleft.trailing_zeros() as usize;
            s += feats[w * 64 + j];
            bitsleft &= bitsleft - 1;
        }
    }
    s
}

/// The ReLU variant's covering (CPU): the same walk with real-valued s.
pub fn greedy_cover_relu(bits: &Bits, feats: &[f32], units: usize, pos: &[u32], neg: &[u32], order: &[u32]) -> Cover {
    let mut covered = vec![false; neg.len()];
    let mut uncovered = neg.len();
    let mut neurons = Vec::new();
    let mut picked = 0;
    let row = |r: u32| &feats[r as usize * units..(r as usize + 1) * units];
    for &c in order {
        if uncovered == 0 {
            break;
        }
        if covered[c as usize] {
            continue;
        }
        picked += 1;
        let mask = off_mask(bits.row(neg[c as usize] as usize), units);
        let m = pos.par_iter().map(|&p| relu_score(&mask, row(p))).reduce(|| f32::INFINITY, f32::min);
        if m > 0.0 {
            covered.par_iter_mut().enumerate().for_each(|(i, cv)| {
                if !*cv && relu_score(&mask, row(neg[i])) < m {
                    *cv = true;
                }
            });
            uncovered = covered.iter().filter(|&&c| !c).count();
            neurons.push(Neuron { mask, threshold: m });
        }
    }
    if neurons.is_empty() {
        neurons.push(Neuron { mask: vec![0; units.div_ceil(64)], threshold: 0.0 });
    }
    Cover { neurons, uncovered, picked }
}
