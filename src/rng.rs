//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
//! a counter-based generator, so the i-th number of a stream is a pure function of
//! (seed, stream, i). The same arithmetic lives in `kernels/common.cuh`; CPU and GPU
//! therefore draw the same numbers whatever the thread count, chunking or shard.
//!
//! Layout of one block: key = (seed_lo, seed_hi), counter = (block_lo, block_hi,
//! stream_lo, stream_hi). Each block yields four 32-bit words.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// The raw Philox4x32 bijection with 10 rounds.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32_10_lanes::<1>(counter.map(|word| [word]), key).map(|[word]| word)
}

/// `philox4x32_10` of L counters at once (counter[j][l] is word j of counter l), lane by
/// lane so that the rounds vectorize across the L counters.
#[inline(always)]
fn philox4x32_10_lanes<const L: usize>(counter: [[u32; L]; 4], key: [u32; 2]) -> [[u32; L]; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let mut next = [[0u32; L]; 4];
        for l in 0..L {
            let p0 = (PHILOX_M0 as u64) * (c[0][l] as u64);
            let p1 = (PHILOX_M1 as u64) * (c[2][l] as u64);
            next[0][l] = ((p1 >> 32) as u32) ^ c[1][l] ^ k[0];
            next[1][l] = p1 as u32;
            next[2][l] = ((p0 >> 32) as u32) ^ c[3][l] ^ k[1];
            next[3][l] = p0 as u32;
        }
        c = next;
    }
    c
}

/// A keyed stream of Philox blocks: `(seed, stream)` names the stream, the block index
/// is the position in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Philox {
    pub seed: u64,
    pub stream: u64,
}

impl Philox {
    pub fn new(seed: u64, stream: u64) -> Self {
        Self { seed, stream }
    }

    /// The four words of block `block`.
    #[inline(always)]
    pub fn block(&self, block: u64) -> [u32; 4] {
        philox4x32_10(
            [block as u32, (block >> 32) as u32, self.stream as u32, (self.stream >> 32) as u32],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// Blocks first..first + L as four arrays of words (words\[j\]\[l\] is word j of block
    /// first + l, as `block` gives it), computed lane by lane so that the rounds
    /// vectorize across the L blocks.
    #[inline(always)]
    pub fn blocks<const L: usize>(&self, first: u64) -> [[u32; L]; 4] {
        let mut c = [[0u32; L]; 4];
        for l in 0..L {
            let b = first + l as u64;
            (c[0][l], c[1][l], c[2][l], c[3][l]) = (b as u32, (b >> 32) as u32, self.stream as u32, (self.stream >> 32) as u32);
        }
        philox4x32_10_lanes(c, [self.seed as u32, (self.seed >> 32) as u32])
    }

    /// Word `index` of the stream (word i is word i % 4 of block i / 4).
    #[inline(always)]
    pub fn word(&self, index: u64) -> u32 {
        self.block(index / 4)[(index % 4) as usize]
    }

    /// Uniform float in the open interval (0, 1), from word `index`.
    #[inline(always)]
    pub fn uniform(&self, index: u64) -> f32 {
        uniform_from_word(self.word(index))
    }

    /// Standard normal number `index`; block i gives normals 4i..4i+4 by Box–Muller on
    /// its two word pairs.
    #[inline(always)]
    pub fn normal(&self, index: u64) -> f32 {
        let w = self.block(index / 4);
        let lane = (index % 4) as usize;
        let pair = lane / 2;
        let (z0, z1) = box_muller(w[2 * pair], w[2 * pair + 1]);
        if lane % 2 == 0 { z0 } else { z1 }
    }

    /// Rademacher sign (±1) number `index`: bit (index % 128) of block index / 128.
    #[inline(always)]
    pub fn sign(&self, index: u64) -> f32 {
        let w = self.block(index / 128);
        let bit = (index % 128) as u32;
        if (w[(bit / 32) as usize] >> (bit % 32)) & 1 == 1 { 1.0 } else { -1.0 }
    }

    /// 64-bit key of item `index`, used to order items for permutations.
    #[inline(always)]
    pub fn key64(&self, index: u64) -> u64 {
        let w = self.block(index);
        ((w[0] as u64) << 32) | w[1] as u64
    }

    /// Uniforms `start..start+out.len()`: one Philox block per four outputs (the same
    /// values as `uniform(i)` one at a time).
    pub fn fill_uniform(&self, start: u64, out: &mut [f32]) {
        const GRAIN: usize = 1 << 14;
        let fill = |offset: usize, chunk: &mut [f32]| {
            let mut i = 0;
            while i < chunk.len() {
                let index = start + (offset + i) as u64;
                let lane = (index % 4) as usize;
                let w = self.block(index / 4);
                let take = (4 - lane).min(chunk.len() - i);
                for (slot, &word) in chunk[i..i + take].iter_mut().zip(&w[lane..]) {
                    *slot = uniform_from_word(word);
                }
                i += take;
            }
        };
        if out.len() <= GRAIN {
            return fill(0, out);
        }
        use rayon::prelude::*;
        out.par_chunks_mut(GRAIN).enumerate().for_each(|(c, chunk)| fill(c * GRAIN, chunk));
    }

    /// Normals `start..start+out.len()`: one Philox block and two Box–Muller pairs
    /// per four outputs (the same values as `normal(i)` one at a time).
    pub fn fill_normal(&self, start: u64, out: &mut [f32]) {
        const GRAIN: usize = 1 << 14;
        /// Blocks per vectorized batch.
        const BATCH: usize = 16;
        let fill = |offset: usize, chunk: &mut [f32]| {
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    let mut i = 0;
                    while i < chunk.len() {
                        let index = start + (offset + i) as u64;
                        let lane = (index % 4) as usize;
                        if lane == 0 && chunk.len() - i >= 4 * BATCH {
                            // Whole blocks: the words first, then Box–Muller over
                            // 2·BATCH pairs in one loop that vectorizes.
                            let (mut first, mut second) = ([0u32; 2 * BATCH], [0u32; 2 * BATCH]);
                            for b in 0..BATCH {
                                let w = self.block(index / 4 + b as u64);
                                (first[2 * b], second[2 * b], first[2 * b + 1], second[2 * b + 1]) = (w[0], w[1], w[2], w[3]);
                            }
                            for (k, pair) in chunk[i..i + 4 * BATCH].chunks_exact_mut(2).enumerate() {
                                (pair[0], pair[1]) = box_muller(first[k], second[k]);
                            }
                            i += 4 * BATCH;
                            continue;
                        }
                        let w = self.block(index / 4);
                        let (a, b) = box_muller(w[0], w[1]);
                        let (c, d) = box_muller(w[2], w[3]);
                        let four = [a, b, c, d];
                        let take = (4 - lane).min(chunk.len() - i);
                        chunk[i..i + take].copy_from_slice(&four[lane..lane + take]);
                        i += take;
                    }
                },
            )
        };
        if out.len() <= GRAIN {
            return fill(0, out);
        }
        use rayon::prelude::*;
        out.par_chunks_mut(GRAIN).enumerate().for_each(|(c, chunk)| fill(c * GRAIN, chunk));
    }

    /// Signs `start..start+out.len()`: one Philox block per 128 outputs (the same
    /// values as `sign(i)` one at a time).
    pub fn fill_sign(&self, start: u64, out: &mut [f32]) {
        let fill = |offset: u64, chunk: &mut [f32]| {
            let mut i = 0;
            while i < chunk.len() {
                let index = offset + i as u64;
                let w = self.block(index / 128);
                let first = (index % 128) as usize;
                let take = (128 - first).min(chunk.len() - i);
                for (k, slot) in chunk[i..i + take].iter_mut().enumerate() {
                    let bit = first + k;
                    *slot = if (w[bit / 32] >> (bit % 32)) & 1 == 1 { 1.0 } else { -1.0 };
                }
                i += take;
            }
        };
        const GRAIN: usize = 1 << 16;
        if out.len() <= GRAIN {
            return fill(start, out);
        }
        use rayon::prelude::*;
        out.par_chunks_mut(GRAIN).enumerate().for_each(|(c, chunk)| fill(start + (c * GRAIN) as u64, chunk));
    }

    pub fn fill_words(&self, start: u64, out: &mut [u32]) {
        fill_parallel(out, |i| self.word(start + i as u64));
    }

    /// A uniformly random permutation of 0..n: items sorted by their Philox key (ties,
    /// which have probability ~n²/2⁶⁵, broken by index). Any device can compute any
    /// item's key, so the permutation does not depend on who computes it.
    pub fn permutation(&self, n: usize) -> Vec<u32> {
        use rayon::prelude::*;
        assert!(n <= u32::MAX as usize, "permutation of more than 2^32 items");
        if n < 1 << 15 {
            let mut keys: Vec<u64> = Vec::with_capacity(n.next_multiple_of(16));
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    for first in (0..n as u64).step_by(16) {
                        let w = self.blocks::<16>(first);
                        keys.extend((0..16).map(|l| ((w[0][l] as u64) << 32) | w[1][l] as u64));
                    }
                },
            );
            keys.truncate(n);
            return sort_by_key_then_index(&keys);
        }
        let mut keyed: Vec<(u64, u32)> = (0..n as u32).into_par_iter().map(|i| (self.key64(i as u64), i)).collect();
        keyed.par_sort_unstable();
        keyed.into_iter().map(|(_, i)| i).collect()
    }
}

/// The indices 0..keys.len() sorted by key and then index: a counting pass on the keys'
/// top bits (about one key per bucket for random keys; indices enter each bucket in
/// increasing order), then an insertion sort that only moves indices within a bucket
/// and keeps equal keys in index order — several times faster than a comparison sort
/// for the few hundred to thousands of candidates a covering walks.
fn sort_by_key_then_index(keys: &[u64]) -> Vec<u32> {
    let n = keys.len();
    let bits = n.next_power_of_two().trailing_zeros().max(1);
    let shift = 64 - bits;
    let mut start = vec![0u32; (1 << bits) + 1];
    for &k in keys {
        start[(k >> shift) as usize + 1] += 1;
    }
    for b in 1..start.len() {
        start[b] += start[b - 1];
    }
    let mut order = vec![0u32; n];
    for (i, &k) in keys.iter().enumerate() {
        let b = (k >> shift) as usize;
        order[start[b] as usize] = i as u32;
        start[b] += 1;
    }
    for i in 1..n {
        let item = order[i];
        let key = keys[item as usize];
        let mut j = i;
        while j > 0 && keys[order[j - 1] as usize] > key {
            order[j] = order[j - 1];
            j -= 1;
        }
        order[j] = item;
    }
    order
}

/// (0, 1): the top 24 bits, offset by half a step so neither end is reachable
/// (Box–Muller takes a logarithm of it).
#[inline(always)]
pub fn uniform_from_word(w: u32) -> f32 {
    ((w >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Box–Muller in f64, rounded to f32: double precision makes the f32 results agree
/// between this and CUDA's libm (a difference would need an f64 result within a few
/// f64 ulp of an f32 rounding boundary). The logarithm and the sine and cosine are
/// branch-free polynomials (`ln_unit`, `sin_cos_turns`), so that fills of many
/// normals vectorize.
#[inline(always)]
pub fn box_muller(w0: u32, w1: u32) -> (f32, f32) {
    let u0 = uniform_from_word(w0) as f64;
    let u1 = uniform_from_word(w1) as f64;
    let r = (-2.0 * ln_unit(u0)).sqrt();
    let (sin, cos) = sin_cos_turns(u1);
    ((r * cos) as f32, (r * sin) as f32)
}

/// ln x for normal positive f64 x, to about an ulp: x = m·2^e with m = 1 + f in
/// [√½, √2), and ln m = 2·atanh(s), s = f/(2 + f), arranged as fdlibm does,
/// f − (f²/2 − s·(f²/2 + R)) with R = 2(s²/3 + s⁴/5 + … + s²⁴/25) (|s| ≤ 0.172, so the
/// first omitted term, 2s²⁷/27, is below 1e-21), so the large terms are exact; e·ln2 in
/// two parts, the high one exact.
#[inline(always)]
fn ln_unit(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_9e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let bits = x.to_bits();
    let mantissa = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    let high = mantissa > std::f64::consts::SQRT_2;
    let f = if high { 0.5 * mantissa } else { mantissa } - 1.0;
    let e = (((bits >> 52) & 0x7FF) as i64 - 1023 + high as i64) as f64;
    let s = f / (2.0 + f);
    let z = s * s;
    let r = 2.0 * z * (1.0 / 3.0 + z * (1.0 / 5.0 + z * (1.0 / 7.0 + z * (1.0 / 9.0 + z * (1.0 / 11.0 + z * (1.0 / 13.0 + z * (1.0 / 15.0 + z * (1.0 / 17.0 + z * (1.0 / 19.0 + z * (1.0 / 21.0 + z * (1.0 / 23.0 + z * (1.0 / 25.0))))))))))));
    let half_square = 0.5 * f * f;
    e * LN2_HI + ((f - (half_square - s * (half_square + r))) + e * LN2_LO)
}

/// (sin 2πt, cos 2πt) to a few ulp: t = q/4 + f with |f| ≤ 1/8 (exact for t with
/// fewer than 50 significant bits), Taylor series of x = 2πf (|x| ≤ π/4) through x¹⁷
/// and x¹⁶, rotated by the quarter turns q.
#[inline(always)]
fn sin_cos_turns(t: f64) -> (f64, f64) {
    let q = (4.0 * t).round();
    let x = (t - 0.25 * q) * std::f64::consts::TAU;
    let x2 = x * x;
    const S: [f64; 8] = [-1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362_880.0, -1.0 / 39_916_800.0, 1.0 / 6_227_020_800.0, -1.0 / 1_307_674_368_000.0, 1.0 / 355_687_428_096_000.0];
    const C: [f64; 8] = [-1.0 / 2.0, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40_320.0, -1.0 / 3_628_800.0, 1.0 / 479_001_600.0, -1.0 / 87_178_291_200.0, 1.0 / 20_922_789_888_000.0];
    let sin = x + x * x2 * (S[0] + x2 * (S[1] + x2 * (S[2] + x2 * (S[3] + x2 * (S[4] + x2 * (S[5] + x2 * (S[6] + x2 * S[7])))))));
    let cos = 1.0 + x2 * (C[0] + x2 * (C[1] + x2 * (C[2] + x2 * (C[3] + x2 * (C[4] + x2 * (C[5] + x2 * (C[6] + x2 * C[7])))))));
    // Quarter turns: q = 1 maps (sin, cos) to (cos, −sin), q = 2 to (−sin, −cos), …
    let quarter = (q as i64) & 3;
    let (s, c) = if quarter & 1 == 1 { (cos, -sin) } else { (sin, cos) };
    if quarter & 2 == 2 { (-s, -c) } else { (s, c) }
}

fn fill_parallel<T: Send>(out: &mut [T], f: impl Fn(usize) -> T + Sync) {
    use rayon::prelude::*;
    const GRAIN: usize = 1 << 14;
    if out.len() <= GRAIN {
        out.iter_mut().enumerate().for_each(|(i, slot)| *slot = f(i));
        return;
    }
    out.par_chunks_mut(GRAIN).enumerate().for_each(|(c, chunk)| {
        for (j, slot) in chunk.iter_mut().enumerate() {
            *slot = f(c * GRAIN + j);
        }
    });
}

/// Which distribution a fill draws from; shared by the CLI, the CPU and the CUDA path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Normal,
    Sign,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32 10).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniforms_are_open_interval_with_right_moments() {
        let p = Philox::new(7, 3);
        let mut u = vec![0f32; 200_000];
        p.fill_uniform(0, &mut u);
        assert!(u.iter().all(|&x| x > 0.0 && x < 1.0));
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
        let var = u.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
    }

    #[test]
    fn normals_have_unit_moments() {
        let p = Philox::new(11, 0);
        let mut z = vec![0f32; 400_000];
        p.fill_normal(0, &mut z);
        let n = z.len() as f64;
        let mean = z.iter().map(|&x| x as f64).sum::<f64>() / n;
        let m2 = z.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n;
        let m4 = z.iter().map(|&x| (x as f64).powi(4)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((m2 - 1.0).abs() < 0.01, "second moment {m2}");
        assert!((m4 - 3.0).abs() < 0.06, "fourth moment {m4}");
    }

    #[test]
    fn signs_are_balanced_and_streams_differ() {
        let a = Philox::new(1, 0);
        let b = Philox::new(1, 1);
        let mut sa = vec![0f32; 100_000];
        let mut sb = vec![0f32; 100_000];
        a.fill_sign(0, &mut sa);
        b.fill_sign(0, &mut sb);
        assert!(sa.iter().all(|&s| s == 1.0 || s == -1.0));
        let sum: f32 = sa.iter().sum();
        assert!(sum.abs() < 1500.0, "sign sum {sum}");
        let agree = sa.iter().zip(&sb).filter(|(x, y)| x == y).count();
        assert!((agree as f64 / 1e5 - 0.5).abs() < 0.01);
    }

    #[test]
    fn block_fills_equal_one_at_a_time() {
        let p = Philox::new(8, 1);
        for (start, len) in [(0u64, 5usize), (7, 1003), (3, 40_000), (100, 200_000)] {
            let mut v = vec![0f32; len];
            p.fill_normal(start, &mut v);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(x.to_bits(), p.normal(start + i as u64).to_bits(), "start {start} index {i}");
            }
            p.fill_sign(start, &mut v);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, p.sign(start + i as u64), "sign: start {start} index {i}");
            }
            p.fill_uniform(start, &mut v);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, p.uniform(start + i as u64), "uniform: start {start} index {i}");
            }
        }
    }

    #[test]
    fn fills_are_position_keyed() {
        let p = Philox::new(5, 9);
        let mut whole = vec![0f32; 1000];
        p.fill_normal(0, &mut whole);
        let mut tail = vec![0f32; 300];
        p.fill_normal(700, &mut tail);
        assert_eq!(&whole[700..], &tail[..]);
    }

    #[test]
    fn permutation_is_a_bijection_and_seeded() {
        let p = Philox::new(3, 2).permutation(10_000);
        let mut seen = vec![false; 10_000];
        for &i in &p {
            assert!(!seen[i as usize]);
            seen[i as usize] = true;
        }
        assert_eq!(p, Philox::new(3, 2).permutation(10_000));
        assert_ne!(p, Philox::new(4, 2).permutation(10_000));
        // First position is roughly uniform over items: its mean over seeds is near n/2.
        let mean = (0..400).map(|s| Philox::new(s, 0).permutation(100)[0] as f64).sum::<f64>() / 400.0;
        assert!((mean - 49.5).abs() < 5.0, "mean first item {mean}");
    }

    #[test]
    fn box_muller_matches_the_libm_formula() {
        // The polynomial logarithm and sine/cosine against f64 libm, over the words'
        // whole range (the smallest and largest uniforms, every quarter turn).
        let p = Philox::new(77, 1);
        let mut words: Vec<(u32, u32)> = (0..200_000u64).map(|i| { let w = p.block(i); (w[0], w[1]) }).collect();
        words.extend([(0, 0), (u32::MAX, u32::MAX), (0, u32::MAX), (u32::MAX, 0), (1 << 31, 1 << 30), (1 << 31, 3 << 30), (7 << 29, 1 << 29)]);
        let (mut identical, mut worst) = (0usize, 0f64);
        for &(w0, w1) in &words {
            let (u0, u1) = (uniform_from_word(w0) as f64, uniform_from_word(w1) as f64);
            let ln = ln_unit(u0);
            assert!((ln - u0.ln()).abs() <= 2.0 * f64::EPSILON * u0.ln().abs(), "ln {u0}: {ln} vs {}", u0.ln());
            let (sin, cos) = sin_cos_turns(u1);
            let (want_sin, want_cos) = (std::f64::consts::TAU * u1).sin_cos();
            // libm's argument 2πu₁ is itself rounded (≤ 7e-16 absolute).
            assert!((sin - want_sin).abs() <= 1.5e-15 && (cos - want_cos).abs() <= 1.5e-15, "sin/cos of {u1} turns");
            let r = (-2.0 * u0.ln()).sqrt();
            let want = ((r * want_cos) as f32, (r * want_sin) as f32);
            let got = box_muller(w0, w1);
            identical += (got == want) as usize;
            for (g, w) in [(got.0, want.0), (got.1, want.1)] {
                // At u₁ = ¼, ½, ¾, 1 the quarter turns give an exact 0 where libm's
                // rounded 2πu₁ leaves ~1e-15.
                worst = worst.max(((g - w) as f64).abs() / (w.abs() as f64 + 1e-7));
            }
        }
        // f32 results differ only where the f64 value sits within a few f64 ulp of
        // an f32 rounding boundary (one in millions), and at those exact zeros.
        assert!(words.len() - identical <= 4, "{} of {} pairs differ", words.len() - identical, words.len());
        assert!(worst <= 1.2e-7, "worst relative difference {worst}");
    }

    #[test]
    fn lane_blocks_equal_single_blocks() {
        for (seed, stream, first) in [(0u64, 0u64, 0u64), (u64::MAX, 7, (1 << 32) - 5), (0x9E37_79B9_7F4A_7C15, u64::MAX, 12_345)] {
            let p = Philox::new(seed, stream);
            let w = p.blocks::<16>(first);
            for l in 0..16 {
                assert_eq!([w[0][l], w[1][l], w[2][l], w[3][l]], p.block(first + l as u64), "seed {seed} stream {stream} block {}", first + l as u64);
            }
        }
    }

    #[test]
    fn bucketed_sort_orders_like_a_comparison_sort() {
        // Random keys at several sizes, and keys crowded into a few buckets, with ties
        // (broken by index) and the extremes.
        for n in [1usize, 2, 3, 7, 100, 500, 1000, 5000] {
            let p = Philox::new(n as u64, 9);
            let sets: [Vec<(u64, u32)>; 3] = [
                (0..n as u32).map(|i| (p.key64(i as u64), i)).collect(),
                (0..n as u32).map(|i| (p.key64(i as u64) % 5, i)).collect(),
                (0..n as u32).map(|i| ([0, u64::MAX, 1 << 63][i as usize % 3] - (p.key64(i as u64) & 3) * (i % 3 != 0) as u64, i)).collect(),
            ];
            for keyed in sets {
                let mut want = keyed.clone();
                want.sort_unstable();
                let want: Vec<u32> = want.into_iter().map(|(_, i)| i).collect();
                let keys: Vec<u64> = keyed.iter().map(|&(k, _)| k).collect();
                assert_eq!(sort_by_key_then_index(&keys), want, "n = {n}");
            }
        }
    }
}
