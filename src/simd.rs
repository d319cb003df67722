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
