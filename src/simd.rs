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

/// Runs `f`, compiled for AVX2 + POPCNT when available. `f` must be a closure whose
/// body (and the `#[inline]` functions it calls) should be specialized.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were detected at run time.
        return unsafe { with_avx2(f) };
    }
    f()
}
