//! Layer 1: random hyperplanes. W_jl ~ N(0, 1), b_j ~ U[−λ, λ], φ(x) = H(Wx + b) as bits.
//!
//! Randomness is keyed by unit index, so the first n units of a width-N layer are the
//! width-n layer (sweeps reuse one product across widths), and b_j = λ·v_j with v_j
//! fixed per seed (sweeps reuse it across λ).
//!
//! Signs are exact: a float32 product decides every entry whose |z| clears the
//! rounding-error bound; the rest are recomputed in float64 (see kernels/construct.cu).

use crate::rng::Philox;
use std::mem::MaybeUninit;
use rayon::prelude::*;

const STREAM_WEIGHTS: u64 = 0x5731;
const STREAM_BIASES: u64 = 0xB1A5;

/// Row-major bit matrix: `rows` × `words` u64, unit j of row r is bit j%64 of word j/64.
/// Bits beyond the layer's width are zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bits {
    pub rows: usize,
    pub words: usize,
    pub data: Vec<u64>,
}

impl Bits {
    pub fn zeros(rows: usize, units: usize) -> Self {
        let words = units.div_ceil(64);
        Self { rows, words, data: vec![0; rows * words] }
    }

    #[inline]
    pub fn row(&self, r: usize) -> &[u64] {
        &self.data[r * self.words..(r + 1) * self.words]
    }

    #[inline]
    pub fn get(&self, r: usize, j: usize) -> bool {
        (self.data[r * self.words + j / 64] >> (j % 64)) & 1 == 1
    }
}

/// The random first layer for `units` units on `dim`-dimensional inputs.
#[derive(Clone, Debug, Default)]
pub struct Layer1 {
    pub units: usize,
    pub dim: usize,
    /// (units, dim) row-major.
    pub weight: Vec<f32>,
    /// (units)
    pub bias: Vec<f32>,
}

impl Layer1 {
    /// W from Philox normals (unit j, input l at index j·dim + l); b_j = λ·(2u_j − 1).
    pub fn random(seed: u64, units: usize, dim: usize, max_bias: f32) -> Self {
        let mut weight = vec![0f32; units * dim];
        Philox::new(seed, STREAM_WEIGHTS).fill_normal(0, &mut weight);
        Self { units, dim, weight, bias: bias_directions(seed, units).iter().map(|v| max_bias * v).collect() }
    }

    /// The first `units` units.
    pub fn prefix(&self, units: usize) -> Layer1 {
        Layer1 { units, dim: self.dim, weight: self.weight[..units * self.dim].to_vec(), bias: self.bias[..units].to_vec() }
    }

    pub fn weight_norms(&self) -> Vec<f32> {
        let mut norms = Vec::new();
        self.weight_norms_into(&mut norms);
        norms
    }

    /// `weight_norms` into `norms` (replacing what it held).
    pub fn weight_norms_into(&self, norms: &mut Vec<f32>) {
        if (1..=3).contains(&self.dim) {
            // The same numbers, in loops that vectorize.
            return tiny_norms_into(&self.weight, self.dim, norms);
        }
        norms.clear();
        norms.extend(self.weight.chunks(self.dim).map(|w| crate::data::norms::sum_of_squares(w).sqrt()));
    }
}

/// v_j = 2u_j − 1 ∈ (−1, 1): the bias of unit j is λ·v_j.
pub fn bias_directions(seed: u64, units: usize) -> Vec<f32> {
    let mut u = vec![0f32; units];
    Philox::new(seed, STREAM_BIASES).fill_uniform(0, &mut u);
    u.iter().map(|&t| 2.0 * t - 1.0).collect()
}

/// Factor of (‖w‖‖x‖ + |b|) inside which a float32 z is recomputed: twice the bound
/// γ_{d+2} ≤ (d+2)·2⁻²⁴/(1 − (d+2)·2⁻²⁴) on the rounding error of a length-d dot
/// product plus one addition, in any summation order (FMA or not).
pub fn margin_coef(dim: usize) -> f32 {
    let k = (dim + 2) as f64 * 2f64.powi(-24);
    (2.0 * k / (1.0 - k)) as f32
}

/// The exact sign: float64 sum in index order of exact float32 products, plus b.
#[inline]
pub fn exact_positive(x: &[f32], w: &[f32], b: f32) -> bool {
    let mut z = 0f64;
    for (a, c) in x.iter().zip(w) {
        z += *a as f64 * *c as f64;
    }
    z + b as f64 > 0.0
}

/// Pre-activations z = X·Wᵀ (no bias) for a chunk of rows, float32.
#[inline]
pub fn products(x: &[f32], rows: usize, layer: &Layer1, out: &mut [f32]) {
    let (d, n) = (layer.dim, layer.units);
    assert_eq!(out.len(), rows * n);
    if d < SMALL_DIM {
        return products_small(x, rows, layer, &transpose(layer), out);
    }
    // SAFETY: shapes and strides describe the slices exactly.
    unsafe {
        crate::nn::linalg::gemm_strided(
            (rows, d, n),
            x.as_ptr(), (d as isize, 1),
            layer.weight.as_ptr(), (1, d as isize),
            false, out.as_mut_ptr(), (n as isize, 1),
        );
    }
}

const CHUNK_ROWS: usize = 256;
const CHUNK_BYTES: usize = 256 << 10;
/// Entries (rows × units) below which a small layer is not worth splitting further.
const SMALL_CHUNK_ENTRIES: usize = 1 << 15;

/// φ(X) for all rows of `x` (row-major, `layer.dim` columns), exact bits. CPU twin of
/// layer1_threshold_pack + layer1_fix.
pub fn threshold_bits(x: &[f32], layer: &Layer1) -> Bits {
    let (d, n) = (layer.dim, layer.units);
    let rows = x.len() / d.max(1);
    let words = n.div_ceil(64);
    let margins = Margins::new(layer);
    let transposed = (d < SMALL_DIM).then(|| transpose(layer));
    #[cfg(target_arch = "x86_64")]
    let tiny = transposed.is_some() && d <= 3 && crate::simd::has_avx512f();
    #[cfg(not(target_arch = "x86_64"))]
    let tiny = false;
    // Chunks of products (or, for `pack_rows_tiny`, of its second bit matrix) small
    // enough to stay in the L2 cache.
    let mut chunk_rows = if tiny { (CHUNK_BYTES / (8 * words.max(1))).clamp(8, 1 << 16) } else { (CHUNK_BYTES / (4 * n.max(1))).clamp(8, 1024) };
    // Rayon's sleeping workers take longer to wake than small layers take: those go in
    // up to four chunks to the calling thread and whichever quick-pool helper is awake.
    let small = rows * n * d.max(4) < 1 << 22;
    if small {
        let chunks = (rows * n / SMALL_CHUNK_ENTRIES).clamp(1, 8);
        chunk_rows = chunk_rows.min(rows.div_ceil(chunks)).max(1);
    }
    // Each chunk's words are written where the chunk is computed (no zeroing pass on
    // the calling thread, whose cache would then own every line).
    let work = |c: usize, out: &mut [MaybeUninit<u64>]| {
        let r0 = c * chunk_rows;
        let nr = out.len() / words.max(1);
        let xc = &x[r0 * d..(r0 + nr) * d];
        #[cfg(target_arch = "x86_64")]
        if tiny {
            return pack_rows_tiny(xc, &tiny_norms(xc, d), transposed.as_ref().unwrap(), layer, &margins, out);
        }
        out.fill(MaybeUninit::new(0));
        // SAFETY: every element was just initialized.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<u64>] as *mut [u64]) };
        if let Some(wt) = &transposed {
            for r in 0..nr {
                pack_row_small(&xc[r * d..(r + 1) * d], wt, layer, &margins, &mut out[r * words..(r + 1) * words]);
            }
            return;
        }
        let mut z = vec![0f32; nr * n];
        products(xc, nr, layer, &mut z);
        for r in 0..nr {
            pack_row(&xc[r * d..(r + 1) * d], &z[r * n..(r + 1) * n], layer, &margins, &mut out[r * words..(r + 1) * words]);
        }
    };
    let mut data: Vec<u64> = Vec::with_capacity(rows * words);
    let spare = &mut data.spare_capacity_mut()[..rows * words];
    if small {
        let parts: Vec<std::sync::Mutex<&mut [MaybeUninit<u64>]>> = spare.chunks_mut(chunk_rows * words).map(std::sync::Mutex::new).collect();
        crate::quick_pool::for_each(parts.len(), |c| work(c, &mut parts[c].lock().unwrap()));
    } else {
        spare.par_chunks_mut(chunk_rows * words).enumerate().for_each(|(c, out)| work(c, out));
    }
    // SAFETY: the chunks cover all rows × words elements, and `work` writes each one.
    unsafe { data.set_len(rows * words) };
    Bits { rows, words, data }
}

/// Rows per vector of the word-major layout.
pub const LANES: usize = 8;

/// A set of rows' bits word-major: word w of rows 8b..8b + 8 is one 512-bit vector at
/// data[(b·used + w)·8..], rows past the end zero. The covering scans then count eight
/// rows at once with vertical popcounts and adds, and never sum across a vector's lanes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordMajor {
    pub rows: usize,
    pub padded: usize,
    pub used: usize,
    pub data: Vec<u64>,
}

impl WordMajor {
    /// The given rows of `bits` (their first `used` words), by gathers on AVX-512, else
    /// word by word.
    pub fn gather(bits: &Bits, rows: &[u32], used: usize) -> Self {
        let padded = rows.len().next_multiple_of(LANES);
        assert!(used <= bits.words && rows.iter().all(|&r| (r as usize) < bits.rows));
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx512f() {
            let mut data = Vec::with_capacity(padded * used);
            // SAFETY: AVX-512F was detected; every row index was checked against the
            // matrix, and the gathers fill all padded·used words of `data`.
            unsafe {
                gather_word_major(&bits.data, bits.words, rows, used, data.spare_capacity_mut());
                data.set_len(padded * used);
            }
            return WordMajor { rows: rows.len(), padded, used, data };
        }
        let mut data = vec![0u64; padded * used];
        for (i, &r) in rows.iter().enumerate() {
            for (w, &word) in bits.row(r as usize)[..used].iter().enumerate() {
                data[Self::index(used, i, w)] = word;
            }
        }
        WordMajor { rows: rows.len(), padded, used, data }
    }

    /// Where word w of row i lives.
    #[inline(always)]
    pub fn index(used: usize, i: usize, w: usize) -> usize {
        (i / LANES * used + w) * LANES + i % LANES
    }

    /// Row i's words.
    pub fn row_into(&self, i: usize, out: &mut [u64]) {
        for (w, o) in out.iter_mut().enumerate().take(self.used) {
            *o = self.data[Self::index(self.used, i, w)];
        }
    }

    /// Lanes of block b that hold rows.
    #[inline(always)]
    pub fn valid(&self, block: usize) -> u8 {
        let left = self.rows - block * LANES;
        if left >= LANES { 0xFF } else { (1u8 << left) - 1 }
    }
}

/// Word w of rows 8b..8b + 8 into dst[(b·used + w)·8..]: one gather per word of a
/// block, zero in the lanes past the last row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_word_major(bits: &[u64], words: usize, rows: &[u32], used: usize, dst: &mut [MaybeUninit<u64>]) {
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

/// Whether `random_word_major` serves inputs of this dimension here: 1 to 3 inputs
/// (`pack_rows_tiny`) on a processor whose AVX-512 also counts bits (the scans that
/// read the layout).
pub fn word_major_applies(dim: usize) -> bool {
    cfg!(target_arch = "x86_64") && (1..=3).contains(&dim) && crate::simd::has_avx512f() && crate::simd::has_avx512_popcount()
}

/// A pointer that chunks running on several threads write through, each to its own
/// elements.
struct SharedOut(*mut u64);
// SAFETY: the chunks write disjoint elements, and the owner reads only after all ended.
unsafe impl Sync for SharedOut {}

/// What a chunk of `random_word_major` works in: its units' layer, transposed
/// weights, margins and bits. Each thread keeps one from chunk to chunk.
#[derive(Default)]
struct ChunkScratch {
    part: Layer1,
    transposed: Vec<f32>,
    margins: Margins,
    bits: Vec<MaybeUninit<u64>>,
}

/// `Layer1::random` and φ of each row set, word-major, for 1- to 3-dimensional inputs
/// (`word_major_applies`). The work goes in chunks of 64 units on the quick pool; each
/// chunk draws its own units' weights and biases (the same numbers as
/// `Layer1::random`: the streams are counter-based), computes their bits for every row
/// in its thread's buffer (stores straight into lines another core holds would stall)
/// and copies them into the word-major layouts in one sweep, where each 64-byte line
/// belongs to one chunk. `beside` runs as one more task, the first a helper takes.
pub fn random_word_major<R: Send>(seed: u64, units: usize, max_bias: f32, x: &[f32], dim: usize, sets: &[&[u32]], beside: impl FnOnce() -> R + Send) -> (Layer1, Vec<WordMajor>, R) {
    assert!(word_major_applies(dim));
    let used = units.div_ceil(64);
    // The rows in set order, and their norms as `pack_rows_tiny` computes them.
    let (ordered, norms) = match dim {
        1 => rows_in_order::<1>(x, sets),
        2 => rows_in_order::<2>(x, sets),
        _ => rows_in_order::<3>(x, sets),
    };
    let mut weight = vec![0f32; units * dim];
    let mut bias = vec![0f32; units];
    let weight_parts: Vec<std::sync::Mutex<&mut [f32]>> = weight.chunks_mut(64 * dim).map(std::sync::Mutex::new).collect();
    let bias_parts: Vec<std::sync::Mutex<&mut [f32]>> = bias.chunks_mut(64).map(std::sync::Mutex::new).collect();
    let mut outs: Vec<Vec<u64>> = sets.iter().map(|s| Vec::with_capacity(s.len().next_multiple_of(LANES) * used)).collect();
    let targets: Vec<SharedOut> = outs.iter_mut().map(|o| SharedOut(o.as_mut_ptr())).collect();
    let beside = std::sync::Mutex::new(Some(beside));
    let beside_result = std::sync::Mutex::new(None);
    let inner = |task: usize| {
        if task == 0 {
            let f = beside.lock().unwrap().take().unwrap();
            *beside_result.lock().unwrap() = Some(f());
            return;
        }
        let w = task - 1;
        let (first, count) = (64 * w, (units - 64 * w).min(64));
        let mut weights = weight_parts[w].lock().unwrap();
        let mut biases = bias_parts[w].lock().unwrap();
        Philox::new(seed, STREAM_WEIGHTS).fill_normal((first * dim) as u64, &mut weights);
        Philox::new(seed, STREAM_BIASES).fill_uniform(first as u64, &mut biases);
        // As `bias_directions` then `Layer1::random` scale them.
        biases.iter_mut().for_each(|b| *b = max_bias * (2.0 * *b - 1.0));
        thread_local! {
            static SCRATCH: std::cell::Cell<Option<ChunkScratch>> = const { std::cell::Cell::new(None) };
        }
        let mut scratch = SCRATCH.take().unwrap_or_default();
        let ChunkScratch { part, transposed: wt, margins, bits } = &mut scratch;
        (part.units, part.dim) = (count, dim);
        part.weight.clear();
        part.weight.extend_from_slice(&weights);
        part.bias.clear();
        part.bias.extend_from_slice(&biases);
        wt.resize(part.weight.len(), 0.0);
        crate::nn::linalg::transpose(&part.weight, count, dim, wt);
        margins.refill(part);
        bits.resize(norms.len(), MaybeUninit::new(0));
        #[cfg(target_arch = "x86_64")]
        pack_rows_tiny(&ordered, &norms, wt, part, margins, bits);
        // Word w of a block of eight rows is eight consecutive words of `bits`.
        let mut first_row = 0;
        for (set, target) in sets.iter().zip(&targets) {
            let rows = &bits[first_row..first_row + set.len()];
            let (whole, rest) = rows.split_at(rows.len() / LANES * LANES);
            // SAFETY: `pack_rows_tiny` wrote every word of `bits`; block b's word w is
            // this chunk's own line of a buffer with room for padded·used words.
            unsafe {
                for (b, block) in whole.chunks_exact(LANES).enumerate() {
                    std::ptr::copy_nonoverlapping(block.as_ptr() as *const u64, target.0.add(WordMajor::index(used, b * LANES, w)), LANES);
                }
                if !rest.is_empty() {
                    let mut lanes = [0u64; LANES];
                    std::ptr::copy_nonoverlapping(rest.as_ptr() as *const u64, lanes.as_mut_ptr(), rest.len());
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), target.0.add(WordMajor::index(used, whole.len(), w)), LANES);
                }
            }
            first_row += set.len();
        }
        SCRATCH.set(Some(scratch));
    };
    crate::quick_pool::for_each(used + 1, inner);
    let layouts = outs
        .into_iter()
        .zip(sets)
        .map(|(mut data, set)| {
            let padded = set.len().next_multiple_of(LANES);
            // SAFETY: the chunks together wrote every (row, word) of the padded layout.
            unsafe { data.set_len(padded * used) };
            WordMajor { rows: set.len(), padded, used, data }
        })
        .collect();
    let layer = Layer1 { units, dim, weight, bias };
    (layer, layouts, beside_result.into_inner().unwrap().unwrap())
}

/// Per-unit constants of the margin test: |z| ≤ coef·(‖w_j‖·‖x‖ + |b_j|) is written
/// as |z| ≤ slope_j·‖x‖ + floor_j.
#[derive(Default)]
pub struct Margins {
    pub slope: Vec<f32>,
    pub floor: Vec<f32>,
    /// max_j slope_j and max_j floor_j: a row-wide bound checked first, so the
    /// per-unit test runs only for the rare entries that come near zero.
    pub max_slope: f32,
    pub max_floor: f32,
}

impl Margins {
    pub fn new(layer: &Layer1) -> Self {
        let mut margins = Margins::default();
        margins.refill(layer);
        margins
    }

    /// The margins of `layer`, in this one's buffers.
    pub fn refill(&mut self, layer: &Layer1) {
        let coef = margin_coef(layer.dim);
        layer.weight_norms_into(&mut self.slope);
        self.slope.iter_mut().for_each(|w| *w *= coef);
        self.floor.clear();
        self.floor.extend(layer.bias.iter().map(|b| coef * b.abs()));
        let max = |v: &[f32]| v.iter().cloned().fold(0f32, f32::max);
        (self.max_slope, self.max_floor) = (max(&self.slope), max(&self.floor));
    }
}

/// Packs one row's exact threshold bits from its float32 products `z` (no bias):
/// 64 units at a time, branch-free, then the few entries within the rounding margin
/// are recomputed by `exact_positive`.
#[inline]
pub fn pack_row(x: &[f32], z: &[f32], layer: &Layer1, margins: &Margins, out: &mut [u64]) {
    let xn = crate::data::norms::sum_of_squares(x).sqrt();
    for (w, zc) in z.chunks(64).enumerate() {
        let base = w * 64;
        let end = base + zc.len();
        let (bias, slope, floor) = (&layer.bias[base..end], &margins.slope[base..end], &margins.floor[base..end]);
        let (on, unsure) = sign_bits(zc, bias, slope, floor, xn);
        out[w] = fix_unsure(on, unsure, x, layer, base);
    }
}

/// Replaces the bits of `on` flagged in `unsure` (units base + k) by exact signs.
#[inline]
fn fix_unsure(mut on: u64, mut unsure: u64, x: &[f32], layer: &Layer1, base: usize) -> u64 {
    let d = layer.dim;
    while unsure != 0 {
        let k = unsure.trailing_zeros() as usize;
        unsure &= unsure - 1;
        let j = base + k;
        let exact = exact_positive(x, &layer.weight[j * d..(j + 1) * d], layer.bias[j]);
        on = (on & !(1u64 << k)) | ((exact as u64) << k);
    }
    on
}

/// For up to 64 units: bit k of the first word is z_k + b_k > 0, of the second
/// |z_k + b_k| ≤ slope_k·xn + floor_k (the sign needs the exact recomputation).
#[inline]
fn sign_bits(z: &[f32], bias: &[f32], slope: &[f32], floor: &[f32], xn: f32) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if z.len() == 64 && crate::simd::has_avx2() {
        // SAFETY: AVX2 and FMA were detected; all slices hold 64 elements.
        return unsafe { sign_bits_avx2(z, bias, slope, floor, xn) };
    }
    let mut on = 0u64;
    let mut unsure = 0u64;
    for k in 0..z.len() {
        let v = z[k] + bias[k];
        on |= ((v > 0.0) as u64) << k;
        unsure |= ((v.abs() <= slope[k] * xn + floor[k]) as u64) << k;
    }
    (on, unsure)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sign_bits_avx2(z: &[f32], bias: &[f32], slope: &[f32], floor: &[f32], xn: f32) -> (u64, u64) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let xnv = _mm256_set1_ps(xn);
    let mut on = 0u64;
    let mut unsure = 0u64;
    for g in 0..8 {
        let v = _mm256_add_ps(_mm256_loadu_ps(z.as_ptr().add(8 * g)), _mm256_loadu_ps(bias.as_ptr().add(8 * g)));
        let margin = _mm256_fmadd_ps(_mm256_loadu_ps(slope.as_ptr().add(8 * g)), xnv, _mm256_loadu_ps(floor.as_ptr().add(8 * g)));
        let pos = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)) as u32 as u64;
        let near = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(v, abs_mask), margin)) as u32 as u64;
        on |= pos << (8 * g);
        unsure |= near << (8 * g);
    }
    (on, unsure)
}

/// Wᵀ, (dim, units) row-major.
fn transpose(layer: &Layer1) -> Vec<f32> {
    let mut wt = vec![0f32; layer.weight.len()];
    crate::nn::linalg::transpose(&layer.weight, layer.units, layer.dim, &mut wt);
    wt
}

/// `pack_row` for inputs of few dimensions: products computed 64 units at a time on
/// the fly from Wᵀ (`wt`), never stored.
#[inline]
fn pack_row_small(x: &[f32], wt: &[f32], layer: &Layer1, margins: &Margins, out: &mut [u64]) {
    let (d, n) = (layer.dim, layer.units);
    let xn = crate::data::norms::sum_of_squares(x).sqrt();
    let mut z = [0f32; 64];
    for (w, word) in out.iter_mut().enumerate() {
        let base = w * 64;
        let end = (base + 64).min(n);
        let (bias, slope, floor) = (&layer.bias[base..end], &margins.slope[base..end], &margins.floor[base..end]);
        let bound = margins.max_slope * xn + margins.max_floor;
        #[cfg(target_arch = "x86_64")]
        let fused = if crate::simd::has_avx512f() {
            // SAFETY: AVX-512F was detected; W has end − base units from `base` in each row.
            let (on, near) = unsafe { small_word_avx512(x, wt, n, base, end - base, bias, bound) };
            Some((on, refine_near(near, x, wt, n, base, bias, slope, floor, xn)))
        } else {
            (end - base == 64 && crate::simd::has_avx2()).then(|| {
                // SAFETY: AVX2 and FMA were detected; W has 64 units from `base` in each row.
                let (on, near) = unsafe { small_word_avx2(x, wt, n, base, bias, bound) };
                (on, refine_near(near, x, wt, n, base, bias, slope, floor, xn))
            })
        };
        #[cfg(not(target_arch = "x86_64"))]
        let fused: Option<(u64, u64)> = None;
        let (on, unsure) = fused.unwrap_or_else(|| {
            let zc = &mut z[..end - base];
            zc.fill(0.0);
            for l in 0..d {
                for (zj, &wv) in zc.iter_mut().zip(&wt[l * n + base..l * n + end]) {
                    *zj += x[l] * wv;
                }
            }
            sign_bits(zc, bias, slope, floor, xn)
        });
        *word = fix_unsure(on, unsure, x, layer, base);
    }
}

/// `pack_row` for every row of a chunk of 1- to 3-dimensional inputs (x: rows × d,
/// out: rows × words), on AVX-512. Each row's float32 values z (the same as
/// `pack_row_small`'s) go through two mask compares per 16 units, z > β and z > −β
/// against the row-wide rounding bound β, stored straight to memory: z > β is the
/// answer wherever the two agree, and the rare entries in between are settled as
/// `pack_row_small` settles them.
#[cfg(target_arch = "x86_64")]
fn pack_rows_tiny(x: &[f32], norms: &[f32], wt: &[f32], layer: &Layer1, margins: &Margins, out: &mut [MaybeUninit<u64>]) {
    let (d, n) = (layer.dim, layer.units);
    let words = n.div_ceil(64);
    let rows = x.len() / d;
    assert!(out.len() == rows * words && norms.len() == rows);
    // The row bounds and the second bit matrix live in per-thread buffers (the
    // matrix's only ever grows: the kernel overwrites every word, so clearing it on
    // each call would be wasted).
    thread_local! {
        static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<u64>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    BUFFERS.with_borrow_mut(|(bounds, buffer)| {
        bounds.clear();
        bounds.extend(norms.iter().map(|&xn| margins.max_slope * xn + margins.max_floor));
        let bounds = &bounds[..];
        if buffer.len() < rows * words {
            buffer.resize(rows * words, 0);
        }
        let above_minus = &mut buffer[..rows * words];
        let above_plus = out.as_mut_ptr() as *mut u64;
        // SAFETY: AVX-512F was detected (the caller checks); the slices hold rows × d
        // inputs, d × n weights, n biases, and rows × words bits each. The kernel
        // writes every word of `out`, which is therefore initialized after the call.
        let out = unsafe {
            match d {
                1 => tiny_rows_avx512::<1>(x, wt, n, &layer.bias, bounds, above_plus, above_minus),
                2 => tiny_rows_avx512::<2>(x, wt, n, &layer.bias, bounds, above_plus, above_minus),
                _ => tiny_rows_avx512::<3>(x, wt, n, &layer.bias, bounds, above_plus, above_minus),
            }
            &mut *(out as *mut [MaybeUninit<u64>] as *mut [u64])
        };
        settle_between_bounds(x, wt, layer, margins, norms, out, above_minus);
    });
}

/// Row norms of 1- to 3-dimensional inputs as `pack_row_small` computes them
/// (`sum_of_squares` of d ≤ 3 values adds their squares to 0 in order, which is their
/// plain sum of squares), in loops that vectorize over rows.
fn tiny_norms(x: &[f32], d: usize) -> Vec<f32> {
    let mut norms = Vec::new();
    tiny_norms_into(x, d, &mut norms);
    norms
}

/// `tiny_norms` into `norms` (replacing what it held).
fn tiny_norms_into(x: &[f32], d: usize, norms: &mut Vec<f32>) {
    norms.clear();
    match d {
        1 => norms.extend(x.iter().map(|a| a * a)),
        2 => norms.extend(x.chunks_exact(2).map(|r| r[0] * r[0] + r[1] * r[1])),
        _ => norms.extend(x.chunks_exact(3).map(|r| r[0] * r[0] + r[1] * r[1] + r[2] * r[2])),
    }
    // The square roots in a loop of their own, which vectorizes.
    crate::simd::dispatch(
        #[inline(always)]
        || norms.iter_mut().for_each(|n| *n = n.sqrt()),
    );
}

/// The rows of `sets` one after another, and their norms as `tiny_norms` computes
/// them.
fn rows_in_order<const D: usize>(x: &[f32], sets: &[&[u32]]) -> (Vec<f32>, Vec<f32>) {
    let (all, _) = x.as_chunks::<D>();
    let mut rows: Vec<[f32; D]> = Vec::with_capacity(sets.iter().map(|s| s.len()).sum());
    for set in sets {
        rows.extend(set.iter().map(|&r| all[r as usize]));
    }
    let norms = tiny_norms(rows.as_flattened(), D);
    (rows.into_flattened(), norms)
}

/// The entries of `pack_rows_tiny` with −β < z ≤ β (set in `above_minus`, clear in
/// `out`): their signs from `settle_near`, exact where their own margin asks for it.
#[cfg(target_arch = "x86_64")]
fn settle_between_bounds(x: &[f32], wt: &[f32], layer: &Layer1, margins: &Margins, norms: &[f32], out: &mut [u64], above_minus: &[u64]) {
    let (d, n) = (layer.dim, layer.units);
    let words = n.div_ceil(64);
    // Entries between −β and β are rare: look for them word by word only when the
    // chunk has one.
    if out.iter().zip(above_minus).fold(0, |any, (&a, &m)| any | (m & !a)) == 0 {
        return;
    }
    for (i, (word, &maybe)) in out.iter_mut().zip(above_minus).enumerate() {
        let near = maybe & !*word;
        if near != 0 {
            let (r, base) = (i / words, (i % words) * 64);
            let count = (n - base).min(64);
            let (bias, slope, floor) = (&layer.bias[base..base + count], &margins.slope[base..base + count], &margins.floor[base..base + count]);
            let xr = &x[r * d..(r + 1) * d];
            let (positive, unsure) = settle_near(near, xr, wt, n, base, bias, slope, floor, norms[r]);
            *word = fix_unsure((*word & !near) | positive, unsure, xr, layer, base);
        }
    }
}

/// Every row's bits for `pack_rows_tiny`: z > β into `above_plus`, z > −β into
/// `above_minus` (rows × words each, zero past the width; `above_plus` may point to
/// uninitialized memory). One word of units at a time, whose weights and biases stay
/// in registers while the rows stream past.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tiny_rows_avx512<const D: usize>(x: &[f32], wt: &[f32], n: usize, bias: &[f32], bounds: &[f32], above_plus: *mut u64, above_minus: &mut [u64]) {
    use std::arch::x86_64::*;
    let (rows, words) = (bounds.len(), n.div_ceil(64));
    assert!(x.len() >= rows * D && wt.len() >= D * n && bias.len() >= n && above_minus.len() >= rows * words);
    let zero = _mm512_setzero_ps();
    for w in 0..words {
        let (base, count) = (64 * w, (n - 64 * w).min(64));
        let mut lanes = [0u16; 4];
        let mut bv = [zero; 4];
        let mut wv = [[zero; D]; 4];
        for g in 0..4 {
            lanes[g] = crate::simd::first_lanes16(count.saturating_sub(16 * g));
            bv[g] = _mm512_maskz_loadu_ps(lanes[g], bias.as_ptr().add(base + 16 * g));
            for l in 0..D {
                wv[g][l] = _mm512_maskz_loadu_ps(lanes[g], wt.as_ptr().add(l * n + base + 16 * g));
            }
        }
        for (r, &bound) in bounds.iter().enumerate() {
            let mut xr = [zero; D];
            for l in 0..D {
                xr[l] = _mm512_set1_ps(*x.get_unchecked(r * D + l));
            }
            let (plus, minus) = (_mm512_set1_ps(bound), _mm512_set1_ps(-bound));
            // The masks go to memory 16 bits at a time (little-endian: units 16g.. of
            // the word are its bytes 2g, 2g + 1), never through a general register.
            let word_plus = above_plus.add(r * words + w) as *mut u16;
            let word_minus = above_minus.as_mut_ptr().add(r * words + w) as *mut u16;
            for g in 0..4 {
                let mut z = bv[g];
                for l in 0..D {
                    z = _mm512_fmadd_ps(xr[l], wv[g][l], z);
                }
                word_plus.add(g).write_unaligned(_mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes[g], z, plus));
                word_minus.add(g).write_unaligned(_mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes[g], z, minus));
            }
        }
    }
}

/// For the entries `near` (within the row-wide bound) of one row's word: their signs
/// from a float32 z, and which of them lie within their own unit's doubled margin
/// (those need the exact recomputation).
#[allow(clippy::too_many_arguments)]
#[inline]
fn settle_near(mut near: u64, x: &[f32], wt: &[f32], n: usize, base: usize, bias: &[f32], slope: &[f32], floor: &[f32], xn: f32) -> (u64, u64) {
    let (mut positive, mut unsure) = (0, 0);
    while near != 0 {
        let k = near.trailing_zeros() as usize;
        near &= near - 1;
        let z: f32 = x.iter().enumerate().map(|(l, xl)| xl * wt[l * n + base + k]).sum::<f32>() + bias[k];
        positive |= ((z > 0.0) as u64) << k;
        // Any float32 evaluation of z is within the bound, so test with a doubled margin.
        if z.abs() <= 2.0 * (slope[k] * xn + floor[k]) {
            unsure |= 1 << k;
        }
    }
    (positive, unsure)
}

/// Of the entries flagged by the row-wide bound, those within their own unit's margin.
#[allow(clippy::too_many_arguments)]
#[inline]
fn refine_near(near: u64, x: &[f32], wt: &[f32], n: usize, base: usize, bias: &[f32], slope: &[f32], floor: &[f32], xn: f32) -> u64 {
    settle_near(near, x, wt, n, base, bias, slope, floor, xn).1
}

/// 64 units of one row: (bits of z > 0, bits of |z| ≤ `bound`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn small_word_avx2(x: &[f32], wt: &[f32], n: usize, base: usize, bias: &[f32], bound: f32) -> (u64, u64) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let boundv = _mm256_set1_ps(bound);
    let mut on = 0u64;
    let mut near = 0u64;
    for g in 0..8 {
        let mut v = _mm256_loadu_ps(bias.as_ptr().add(8 * g));
        for (l, &xl) in x.iter().enumerate() {
            v = _mm256_fmadd_ps(_mm256_set1_ps(xl), _mm256_loadu_ps(wt.as_ptr().add(l * n + base + 8 * g)), v);
        }
        on |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)) as u32 as u64) << (8 * g);
        near |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(v, abs_mask), boundv)) as u32 as u64) << (8 * g);
    }
    (on, near)
}

/// `small_word_avx2` for the `count` ≤ 64 units from `base`, sixteen lanes at a time
/// with the comparisons straight into bit masks; lanes past `count` are neither loaded
/// nor set. (Inputs of one to three dimensions take `pack_rows_tiny` instead.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn small_word_avx512(x: &[f32], wt: &[f32], n: usize, base: usize, count: usize, bias: &[f32], bound: f32) -> (u64, u64) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let boundv = _mm512_set1_ps(bound);
    let mut on = 0u64;
    let mut near = 0u64;
    for g in 0..count.div_ceil(16) {
        let left = count - 16 * g;
        let lanes = crate::simd::first_lanes16(left);
        let mut v = _mm512_maskz_loadu_ps(lanes, bias.as_ptr().add(16 * g));
        for (l, &xl) in x.iter().enumerate() {
            v = _mm512_fmadd_ps(_mm512_set1_ps(xl), _mm512_maskz_loadu_ps(lanes, wt.as_ptr().add(l * n + base + 16 * g)), v);
        }
        on |= (_mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes, v, zero) as u64) << (16 * g);
        near |= (_mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(lanes, _mm512_abs_ps(v), boundv) as u64) << (16 * g);
    }
    (on, near)
}

/// Products for inputs of few dimensions, without a GEMM: z_j = Σ_l x_l·w_jl over a
/// unit-major transposed W, which vectorizes over j.
#[inline]
fn products_small(x: &[f32], rows: usize, layer: &Layer1, wt: &[f32], out: &mut [f32]) {
    let (d, n) = (layer.dim, layer.units);
    for r in 0..rows {
        let o = &mut out[r * n..(r + 1) * n];
        o.fill(0.0);
        for l in 0..d {
            let xl = x[r * d + l];
            for (oj, &w) in o.iter_mut().zip(&wt[l * n..(l + 1) * n]) {
                *oj += xl * w;
            }
        }
    }
}

/// Below this input dimension, products skip the GEMM.
const SMALL_DIM: usize = 16;

/// ReLU features max(0, Wx + b) (float32; zero exactly where the threshold bit is off),
/// row-major (rows, units). The ReLU variant's layer 2 works on these.
pub fn relu_features(x: &[f32], layer: &Layer1, bits: &Bits) -> Vec<f32> {
    let (d, n) = (layer.dim, layer.units);
    let rows = x.len() / d.max(1);
    let mut out = vec![0f32; rows * n];
    out.par_chunks_mut(CHUNK_ROWS * n).enumerate().for_each(|(c, o)| {
        let r0 = c * CHUNK_ROWS;
        let nr = o.len() / n.max(1);
        products(&x[r0 * d..(r0 + nr) * d], nr, layer, o);
        for r in 0..nr {
            for j in 0..n {
                let v = &mut o[r * n + j];
                *v = if bits.get(r0 + r, j) { (*v + layer.bias[j]).max(f32::MIN_POSITIVE) } else { 0.0 };
            }
        }
    });
    out
}
