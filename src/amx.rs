//! Intel AMX integer tiles: exact products of unsigned 8-bit by signed 8-bit matrices,
//! accumulated in 32-bit integers, at about a thousand multiply-adds per cycle and
//! core (`tdpbusd`) — some twenty times the float32 rate of AVX-512 FMAs. Exact
//! integer sums let callers build high-precision products from 8-bit digits (see
//! diffusion::optimal's screen and dense pass) and exact pixel distances
//! (diffusion::knn_u8).
//!
//! Linux hands out the tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM),
//! once per process; `available` asks for it and says whether the kernel can run.
//! Every caller needs a fallback: most CPUs have no AMX.

use std::sync::OnceLock;

/// Rows (and 4-byte column groups) of one tile; tiles here are 16 rows × 64 bytes.
pub const TILE: usize = 16;
/// The multiple m and n must be (2 × 2 tiles per step).
pub const MN_STEP: usize = 32;
/// The multiple k must be (bytes per tile row).
pub const K_STEP: usize = 64;

/// Whether AMX-INT8 is present, enabled by the OS and granted to this process.
/// `ROTE_NO_AMX=1` turns it off, and so does `ROTE_NO_SIMD=1`, like the other vector
/// paths.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var_os("ROTE_NO_SIMD").is_none() && std::env::var_os("ROTE_NO_AMX").is_none() && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    // SAFETY: cpuid leaf 7 exists on every x86-64 CPU this runs on (checked below via
    // the maximum leaf); xgetbv only after OSXSAVE says it is enabled.
    unsafe {
        if __cpuid_count(0, 0).eax < 7 {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (amx_tile, amx_int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
        let osxsave = __cpuid_count(1, 0).ecx >> 27 & 1 == 1;
        if !(amx_tile && amx_int8 && osxsave) {
            return false;
        }
        // XCR0 bits 17 and 18: tile configuration and tile data state.
        if _xgetbv(0) >> 17 & 3 != 3 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// B (k × n, signed 8-bit, row-major) in the layout the kernel loads: for each strip of
/// 16 columns, for each group of four k, the 16 columns' four values side by side —
/// \[n/16\]\[k/4\]\[16\]\[4\], so that one tile (16 groups of k) is 1 KiB of consecutive bytes.
/// `k` must be a multiple of 4 and `n` of 16.
pub fn pack_b(b: &[i8], k: usize, n: usize) -> Vec<i8> {
    assert!(k.is_multiple_of(4) && n.is_multiple_of(TILE) && b.len() == k * n);
    let mut out = vec![0i8; k * n];
    for kk in 0..k {
        for j in 0..n {
            out[(j / TILE) * k * TILE + (kk / 4) * TILE * 4 + (j % TILE) * 4 + kk % 4] = b[kk * n + j];
        }
    }
    out
}

/// C (m × n, row stride ldc) = A (m × k unsigned bytes, row stride lda) · B, B packed
/// by `pack_b` (k × n); exact in 32-bit integers while k·255·128 < 2³¹. m and n must be
/// multiples of MN_STEP, k of K_STEP; `available()` must have returned true.
pub fn gemm_u8_i8(a: &[u8], lda: usize, b_packed: &[i8], c: &mut [i32], ldc: usize, (m, k, n): (usize, usize, usize)) {
    assert!(available(), "AMX is not available on this CPU");
    assert!(m % MN_STEP == 0 && n % MN_STEP == 0 && k % K_STEP == 0, "AMX tiles need m, n multiples of 32 and k of 64 (got {m}, {n}, {k})");
    assert!(lda >= k && ldc >= n && (m == 0 || a.len() >= (m - 1) * lda + k) && b_packed.len() >= k * n && (m == 0 || c.len() >= (m - 1) * ldc + n));
    assert!((k as u64) * 255 * 128 < i32::MAX as u64, "k = {k} can overflow 32-bit sums");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tile state was granted (available), and the asserts above keep every
    // tile load and store inside the slices.
    unsafe {
        tiles::gemm(a.as_ptr(), lda, b_packed.as_ptr(), c.as_mut_ptr(), ldc, m, k, n)
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    /// The 64-byte tile configuration: palette 1, tmm0–tmm7 all 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    fn config() -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row, little-endian u16
            c[48 + t] = super::TILE as u8;
        }
        Config(c)
    }

    /// tmm0–3: C tiles of a 32 × 32 block; tmm4–5: two 16-row strips of A; tmm6–7: two
    /// 16-column strips of B.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(a: *const u8, lda: usize, b: *const i8, c: *mut i32, ldc: usize, m: usize, k: usize, n: usize) {
        let cfg = config();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        // One strip of 16 columns is k·16 bytes; its rows of four k are 64 bytes apart.
        let strip = k * super::TILE;
        let b_stride = 64usize;
        let c_stride = ldc * 4;
        for i in (0..m).step_by(32) {
            for j in (0..n).step_by(32) {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for kk in (0..k).step_by(64) {
                    let a0 = a.add(i * lda + kk);
                    let a1 = a.add((i + 16) * lda + kk);
                    let b0 = b.add((j / 16) * strip + (kk / 4) * 64);
                    let b1 = b0.add(strip);
                    asm!(
                        // Loads interleaved with the products that need them, so
                        // that the next load overlaps the previous product.
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {bs}*1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {bs}*1]",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                        lda = in(reg) lda, bs = in(reg) b_stride,
                        options(nostack, readonly),
                    );
                }
                let c00 = c.add(i * ldc + j);
                let c01 = c00.add(16);
                let c10 = c.add((i + 16) * ldc + j);
                let c11 = c10.add(16);
                asm!(
                    "tilestored [{c00} + {cs}*1], tmm0",
                    "tilestored [{c01} + {cs}*1], tmm1",
                    "tilestored [{c10} + {cs}*1], tmm2",
                    "tilestored [{c11} + {cs}*1], tmm3",
                    c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                    cs = in(reg) c_stride,
                    options(nostack),
                );
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_multiply_bytes_exactly() {
        if !available() {
            eprintln!("AMX not available: skipped");
            return;
        }
        let (m, k, n) = (64, 192, 96);
        let lda = k + 8;
        let a: Vec<u8> = (0..m * lda).map(|i| (i * 37 % 256) as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|i| ((i * 53 % 256) as i32 - 128) as i8).collect();
        let ldc = n + 5;
        let mut c = vec![i32::MIN; m * ldc];
        gemm_u8_i8(&a, lda, &pack_b(&b, k, n), &mut c, ldc, (m, k, n));
        for i in 0..m {
            for j in 0..n {
                let want: i32 = (0..k).map(|t| a[i * lda + t] as i32 * b[t * n + j] as i32).sum();
                assert_eq!(c[i * ldc + j], want, "C[{i}][{j}]");
            }
            // Columns past n are left alone.
            assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == i32::MIN));
        }
        // The extremes: 255 × −128 over every k.
        let a = vec![255u8; 32 * 64];
        let b = vec![-128i8; 64 * 32];
        let mut c = vec![0i32; 32 * 32];
        gemm_u8_i8(&a, 64, &pack_b(&b, 64, 32), &mut c, 32, (32, 64, 32));
        assert!(c.iter().all(|&v| v == 64 * 255 * -128));
    }
}
