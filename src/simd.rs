//! Runtime CPU-feature dispatch. Hot loops are written as plain Rust that LLVM
//! vectorizes; `dispatch` runs them inside a function compiled for AVX2 + POPCNT
//! (hardware popcount, 256-bit vectors) when the processor has them, so the binary
//! still runs on any x86-64 while using what the machine offers. `ROTE_NO_SIMD=1`
//! forces the portable paths (the tests compare both).

use std::sync::OnceLock;

pub fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var("ROTE_NO_SIMD").is_ok_and(|v| v == "1") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,popcnt,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f`, compiled for AVX-512 (or else AVX2 + POPCNT) when available. `f` must be a
/// closure whose body (and the `#[inline]` functions it calls) should be specialized.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() && has_avx2() {
        // SAFETY: the features were detected at run time.
        return unsafe { with_avx512(f) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were detected at run time.
        return unsafe { with_avx2(f) };
    }
    f()
}

/// e^x for x in float32 range, branch-free so that loops over it vectorize: x = n·ln2 + r
/// with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7),
/// 2^n assembled in the exponent bits.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n + 1.5·2²³ holds n in its low mantissa bits: 2^n without a float→int conversion.
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// e^x in float64, branch-free so that loops over it vectorize: x = n·ln2 + r with
/// n = round(x·log2e), |r| ≤ ln2/2 (ln2 split in two, as fdlibm), e^r by its degree-12 Taylor polynomial
/// (truncation < 2e-16 relative), 2^n assembled in the exponent bits. x is clamped to
/// [−708, 709]: below, the result is e^−708 ≈ 3e−308 instead of a subnormal or 0.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238_2e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // t = x·log2e + 1.5·2⁵² rounds x·log2e to the nearest integer n and holds n in its
    // low mantissa bits: no floor (a libm call without SSE4.1) and no float→int conversion.
    const SHIFTER: f64 = 6_755_399_441_055_744.0;
    let x = x.clamp(-708.0, 709.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 479_001_600.0;
    for f in [39_916_800.0, 3_628_800.0, 362_880.0, 40_320.0, 5_040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p * r + 1.0 / f;
    }
    let n_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    p * f64::from_bits(n_bits.wrapping_add(1023) << 52)
}

/// AVX-512 Foundation: sixteen float32 lanes and masked loads and stores.
pub fn has_avx512f() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var("ROTE_NO_SIMD").is_ok_and(|v| v == "1") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The AVX-512 mask of the first min(count, 16) lanes of sixteen: masked loads and
/// stores for the tail of a row.
#[inline(always)]
pub fn first_lanes16(count: usize) -> u16 {
    if count >= 16 { u16::MAX } else { ((1u32 << count) - 1) as u16 }
}

/// AVX-512 with the VPOPCNTDQ extension: eight 64-bit popcounts per instruction.
pub fn has_avx512_popcount() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var("ROTE_NO_SIMD").is_ok_and(|v| v == "1") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vpopcntdq")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// popcount(a ∧ b) summed over the words, eight words per step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
#[inline]
pub unsafe fn popcount_and_avx512(a: &[u64], b: &[u64]) -> u32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = _mm512_setzero_si512();
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm512_loadu_si512(a.as_ptr().add(i) as *const _);
        let y = _mm512_loadu_si512(b.as_ptr().add(i) as *const _);
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(x, y)));
        i += 8;
    }
    if i < n {
        let k: __mmask8 = (1u8 << (n - i)) - 1;
        let x = _mm512_maskz_loadu_epi64(k, a.as_ptr().add(i) as *const _);
        let y = _mm512_maskz_loadu_epi64(k, b.as_ptr().add(i) as *const _);
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(x, y)));
    }
    _mm512_reduce_add_epi64(acc) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_float64_to_two_ulp_scale() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst:.2e}");
        // Sigmoid saturates cleanly.
        assert_eq!(1.0 / (1.0 + exp_f32(-200.0)), 1.0);
        assert!(1.0 / (1.0 + exp_f32(200.0)) < 1e-37);
    }

    #[test]
    fn exp_f64_to_a_few_ulp() {
        use std::f64::consts::{E, LN_10, LN_2};
        for (x, want) in [(0.0, 1.0), (1.0, E), (-1.0, 1.0 / E), (LN_2, 2.0), (LN_10, 10.0), (10.0 * LN_2, 1024.0)] {
            assert!(((exp_f64(x) - want) / want).abs() <= 4.0 * f64::EPSILON, "e^{x}: {} vs {want}", exp_f64(x));
        }
        // Against glibc's (< 1 ulp) across the range, on an irregular grid.
        let mut worst = 0f64;
        let mut x = -700.0;
        while x <= 700.0 {
            worst = worst.max(((exp_f64(x) - x.exp()) / x.exp()).abs());
            x += 0.013_7;
        }
        assert!(worst < 5.0 * f64::EPSILON, "worst relative error {worst:.2e}");
        assert!(exp_f64(-1e4) < 1e-307 && exp_f64(-1e4) > 0.0);
    }
}

/// Asks for every cache line of `data` to be brought to this core's L2 (a hint; no-op
/// off x86-64).
pub fn prefetch_lines<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        let start = data.as_ptr() as *const i8;
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch of an address inside the slice; it never faults.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(start.add(offset)) };
        }
    }
}
