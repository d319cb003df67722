//! The n-gram hash every filter uses (kernels/text.cu computes the same bits):
//! two polynomial hashes of the token ids over 2^64,
//!
//!   P_b(t_0 … t_{n−1}) = Σ_j (t_j + 1) · b^{n−1−j}  (mod 2^64),
//!
//! with two fixed odd bases, each passed through murmur3's 64-bit finalizer. A
//! polynomial hash rolls: sliding the window one token costs one multiply per base, so
//! hashing every n-gram of a corpus costs O(1) per n-gram whatever n is. The +1 keeps a
//! leading run of id 0 from hashing like a shorter n-gram. The finalizer spreads the
//! polynomial's low-entropy high bits; the polynomial's known weakness (crafted strings
//! such as Thue–Morse words collide for every odd base) costs at most a false positive,
//! never a false negative.

pub const BASE1: u64 = 0x9e37_79b9_7f4a_7c15;
pub const BASE2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// murmur3's fmix64: a bijection of u64 with full avalanche.
#[inline(always)]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The two hashes (h1, h2) of one n-gram, from its raw polynomials.
#[inline(always)]
pub fn finish(p1: u64, p2: u64) -> (u64, u64) {
    (fmix64(p1), fmix64(p2 ^ 0x5851_f42d_4c95_7f2d))
}

/// (h1, h2) of `gram`, by Horner's rule (the reference the rolling form must equal).
pub fn hash_ngram(gram: &[u32]) -> (u64, u64) {
    let (mut p1, mut p2) = (0u64, 0u64);
    for &t in gram {
        let x = t as u64 + 1;
        p1 = p1.wrapping_mul(BASE1).wrapping_add(x);
        p2 = p2.wrapping_mul(BASE2).wrapping_add(x);
    }
    finish(p1, p2)
}

/// Calls `f(start, h1, h2)` for every n-gram of `seq` (seq[start..start+n]), rolling.
#[inline]
pub fn for_each_ngram<T: Copy + Into<u32>>(seq: &[T], n: usize, mut f: impl FnMut(usize, u64, u64)) {
    if n == 0 || seq.len() < n {
        return;
    }
    let top1 = BASE1.wrapping_pow(n as u32 - 1);
    let top2 = BASE2.wrapping_pow(n as u32 - 1);
    let (mut p1, mut p2) = (0u64, 0u64);
    for &t in &seq[..n] {
        let x = t.into() as u64 + 1;
        p1 = p1.wrapping_mul(BASE1).wrapping_add(x);
        p2 = p2.wrapping_mul(BASE2).wrapping_add(x);
    }
    let (h1, h2) = finish(p1, p2);
    f(0, h1, h2);
    for s in 1..=seq.len() - n {
        let out = seq[s - 1].into() as u64 + 1;
        let inn = seq[s + n - 1].into() as u64 + 1;
        p1 = p1.wrapping_sub(out.wrapping_mul(top1)).wrapping_mul(BASE1).wrapping_add(inn);
        p2 = p2.wrapping_sub(out.wrapping_mul(top2)).wrapping_mul(BASE2).wrapping_add(inn);
        let (h1, h2) = finish(p1, p2);
        f(s, h1, h2);
    }
}
