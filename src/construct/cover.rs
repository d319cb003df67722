//! Layer 2: the randomized greedy covering of X⁻ (ALGORITHMS.md §1), batched.
//!
//! The candidate order is a random permutation of X⁻ fixed up front. Walking it, a
//! candidate still uncovered is "picked"; its m = min over X⁺ of s(x) does not depend
//! on the state, so m is computed for a batch of upcoming candidates at once (on the
//! CPU or the GPU), and the batch is then accepted or skipped in order exactly as the
//! one-at-a-time loop would: a candidate covered by a neuron accepted earlier in the
//! same batch is skipped. The result is identical to the sequential algorithm.

use super::layer1::Bits;
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
    let used = units.div_ceil(64);
    let mut m: Vec<u64> = row[..used].iter().map(|w| !w).collect();
    if units % 64 != 0 {
        m[used - 1] &= (1u64 << (units % 64)) - 1;
    }
    m
}

/// Covers X⁻ (`neg`, rows of `bits`) using the first `units` units, walking `order`
/// (a permutation of 0..neg.len()). `batch` is the first and smallest batch size. The
/// size adapts to the data (it changes the wasted work, never the result): it doubles
/// while few candidates of a batch are made redundant by the batch's own acceptances
/// or while a batch accepts nothing, and halves when many are.
pub fn greedy_cover(
    bits: &Bits,
    units: usize,
    neg: &[u32],
    order: &[u32],
    scanner: &mut dyn CoverScanner,
    batch: usize,
    max_batch: usize,
) -> Result<Cover> {
    let used = units.div_ceil(64);
    let mut covered = vec![0u8; neg.len()];
    let mut uncovered = neg.len();
    let mut next = 0;
    let mut neurons = Vec::new();
    let mut picked = 0;
    let mut size = batch.max(1);
    while uncovered > 0 && next < order.len() {
        let mut cands = Vec::with_capacity(size);
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
        let masks: Vec<u64> = cands.iter().flat_map(|&c| off_mask(bits.row(neg[c] as usize), units)).collect();
        let mins = scanner.min_over_positives(&masks, cands.len())?;
        let mut acc_masks: Vec<u64> = Vec::new();
        let mut acc_thresholds: Vec<u32> = Vec::new();
        let mut redundant = 0;
        for (t, &c) in cands.iter().enumerate() {
            let row = &bits.row(neg[c] as usize)[..used];
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
        uncovered = covered.iter().filter(|&&c| c == 0).count();
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
    bits: &'a Bits,
    units: usize,
    pos: &'a [u32],
    neg: &'a [u32],
    /// X⁺ and X⁻ word-major, where the vector kernels run.
    word_major: Option<(WordMajor, WordMajor)>,
}

impl<'a> CpuScanner<'a> {
    pub fn new(bits: &'a Bits, units: usize, pos: &'a [u32], neg: &'a [u32]) -> Self {
        let used = units.div_ceil(64);
        let word_major = crate::simd::has_avx512_popcount().then(|| (WordMajor::new(bits, pos, used), WordMajor::new(bits, neg, used)));
        CpuScanner { bits, units, pos, neg, word_major }
    }
}

impl CoverScanner for CpuScanner<'_> {
    fn min_over_positives(&mut self, masks: &[u64], count: usize) -> Result<Vec<u32>> {
        const ROWS: usize = 8192;
        let used = self.units.div_ceil(64);
        let serial = count * self.pos.len() * used < 1 << 16;
        #[cfg(target_arch = "x86_64")]
        if let Some((pos, _)) = &self.word_major {
            let scan = |blocks: std::ops::Range<usize>| {
                let mut best = vec![u32::MAX; count];
                // SAFETY: word_major exists only where AVX-512 VPOPCNTDQ was detected.
                unsafe { min_scan_word_major(masks, pos, blocks, &mut best) };
                best
            };
            let blocks = pos.padded / LANES;
            if serial {
                return Ok(scan(0..blocks));
            }
            let per_task = ROWS / LANES;
            return Ok((0..blocks.div_ceil(per_task)).into_par_iter().map(|t| scan(t * per_task..((t + 1) * per_task).min(blocks))).reduce(
                || vec![u32::MAX; count],
                |a, b| a.iter().zip(&b).map(|(x, y)| *x.min(y)).collect(),
            ));
        }
        let scan = |rows: &[u32]| {
            let mut best = vec![u32::MAX; count];
            min_scan(masks, used, self.bits, rows, &mut best);
            best
        };
        if serial {
            return Ok(scan(self.pos));
        }
        Ok(self.pos.par_chunks(ROWS).map(scan).reduce(
            || vec![u32::MAX; count],
            |a, b| a.iter().zip(&b).map(|(x, y)| *x.min(y)).collect(),
        ))
    }

    fn mark_covered(&mut self, masks: &[u64], thresholds: &[u32], covered: &mut [u8]) -> Result<()> {
        const ROWS: usize = 4096;
        let serial = covered.len() * masks.len() < 1 << 16;
        #[cfg(target_arch = "x86_64")]
        if let Some((_, neg)) = &self.word_major {
            // SAFETY (both calls): word_major exists only where AVX-512 VPOPCNTDQ was
            // detected; each task gets whole blocks of LANES rows.
            if serial {
                unsafe { mark_word_major(masks, thresholds, neg, 0, covered) };
            } else {
                covered.par_chunks_mut(ROWS).enumerate().for_each(|(t, c)| unsafe { mark_word_major(masks, thresholds, neg, t * ROWS / LANES, c) });
            }
            return Ok(());
        }
        if serial {
            mark_chunk(masks, thresholds, self.bits, self.neg, covered);
        } else {
            covered
                .par_chunks_mut(ROWS)
                .zip(self.neg.par_chunks(ROWS))
                .for_each(|(c, rows)| mark_chunk(masks, thresholds, self.bits, rows, c));
        }
        Ok(())
    }
}

/// Rows per vector of the word-major layout.
const LANES: usize = 8;

/// A set of rows' bits word-major: word w of rows 8b..8b + 8 is one 512-bit vector at
/// data[(b·used + w)·8..], rows past the end zero. The scans then count eight rows at
/// once with vertical popcounts and adds, and never sum across a vector's lanes.
pub struct WordMajor {
    rows: usize,
    padded: usize,
    used: usize,
    data: Vec<u64>,
}

impl WordMajor {
    /// Only where AVX-512 is present (the scans that read it need VPOPCNTDQ).
    fn new(bits: &Bits, rows: &[u32], used: usize) -> Self {
        let padded = rows.len().next_multiple_of(LANES);
        let mut data = Vec::with_capacity(padded * used);
        assert!(used <= bits.words && rows.iter().all(|&r| (r as usize) < bits.rows));
        // SAFETY: AVX-512F is present (see above); every row index was checked against
        // the matrix, and the gathers fill all padded·used words of `data`.
        unsafe {
            gather_word_major(&bits.data, bits.words, rows, used, data.spare_capacity_mut());
            data.set_len(padded * used);
        }
        WordMajor { rows: rows.len(), padded, used, data }
    }

    /// Lanes of block b that hold rows.
    #[inline(always)]
    fn valid(&self, block: usize) -> u8 {
        let left = self.rows - block * LANES;
        if left >= LANES { 0xFF } else { (1u8 << left) - 1 }
    }
}

/// Word w of rows 8b..8b + 8 into dst[(b·used + w)·8..]: one gather per word of a
/// block, zero in the lanes past the last row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_word_major(bits: &[u64], words: usize, rows: &[u32], used: usize, dst: &mut [std::mem::MaybeUninit<u64>]) {
    use std::arch::x86_64::*;
    for (b, block) in rows.chunks(LANES).enumerate() {
        let valid = if block.len() == LANES { 0xFF } else { (1u8 << block.len()) - 1 };
        let mut starts = [0i64; LANES];
        for (s, &r) in starts.iter_mut().zip(block) {
            *s = (r as usize * words) as i64;
        }
        let index = _mm512_loadu_si512(starts.as_ptr() as *const _);
        let out = dst.as_mut_ptr().add(b * used * LANES) as *mut u64;
        for w in 0..used {
            let row_words = _mm512_mask_i64gather_epi64::<8>(_mm512_setzero_si512(), valid, index, bits.as_ptr().add(w) as *const _);
            _mm512_storeu_si512(out.add(w * LANES) as *mut _, row_words);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gather_word_major(_: &[u64], _: usize, _: &[u32], _: usize, _: &mut [std::mem::MaybeUninit<u64>]) {
    unreachable!("the word-major layout is built only on x86-64 with AVX-512")
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

/// `mark_chunk` on a word-major X⁻ from block `first_block`, for `covered` (a whole
/// number of blocks' rows, or the last rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn mark_word_major(masks: &[u64], thresholds: &[u32], t: &WordMajor, first_block: usize, covered: &mut [u8]) {
    use std::arch::x86_64::*;
    let used = t.used;
    for (i, chunk) in covered.chunks_mut(LANES).enumerate() {
        let b = first_block + i;
        let uncovered = chunk.iter().enumerate().fold(0u8, |m, (l, &c)| m | (((c == 0) as u8) << l)) & t.valid(b);
        let mut hit = 0u8;
        for (k, &m) in thresholds.iter().enumerate() {
            if hit == uncovered {
                break;
            }
            hit |= _mm512_mask_cmplt_epu64_mask(uncovered & !hit, block_counts(&masks[k * used..(k + 1) * used], t, b), _mm512_set1_epi64(m as i64));
        }
        for (l, c) in chunk.iter_mut().enumerate() {
            *c |= (hit >> l) & 1;
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
