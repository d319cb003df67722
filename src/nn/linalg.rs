//! Dense products for the CPU backend: the `gemm` crate's kernels (AVX-512 where the CPU
//! has it, AVX2 otherwise), split over rows across threads. Row-major everywhere; shapes
//! in comments as (rows, cols).

use rayon::prelude::*;

/// The element types the products run in.
pub trait Real: Copy + 'static {
    const ONE: Self;
}
impl Real for f32 {
    const ONE: Self = 1.0;
}
impl Real for f64 {
    const ONE: Self = 1.0;
}

/// C (m, n) = A (m, k) · B (k, n), plus C itself when `accumulate`, on the calling
/// thread; every matrix is a pointer with (row, column) strides, so transposes and
/// sub-blocks cost nothing.
///
/// # Safety
/// The pointers and strides must address valid memory for the shapes, and C must not
/// overlap A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided<T: Real>(
    (m, k, n): (usize, usize, usize),
    a: *const T, (rsa, csa): (isize, isize),
    b: *const T, (rsb, csb): (isize, isize),
    accumulate: bool,
    c: *mut T, (rsc, csc): (isize, isize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // gemm's convention: dst := alpha·dst + beta·lhs·rhs, strides as (column, row).
    gemm::gemm(m, n, k, c, csc, rsc, accumulate, a, csa, rsa, b, csb, rsb, T::ONE, T::ONE, false, false, false, gemm::Parallelism::None);
}

/// C (m, n) = A (m, k) · op(B) (+ C when `accumulate`), with op(B) = B (k, n) or Bᵀ for B (n, k).
pub fn gemm(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, b_transposed: bool, accumulate: bool, c: &mut [f32]) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    let (rsb, csb) = if b_transposed { (1, k as isize) } else { (n as isize, 1) };
    // One block of rows per thread: each task packs B once, so fewer, larger tasks.
    let rows_per_task = m.div_ceil(rayon::current_num_threads().max(1)).max(8);
    let run = |a: &[f32], c: &mut [f32]| {
        let rows = c.len() / n.max(1);
        // SAFETY: strides describe the slices exactly.
        unsafe {
            gemm_strided((rows, k, n), a.as_ptr(), (k as isize, 1), b.as_ptr(), (rsb, csb), accumulate, c.as_mut_ptr(), (n as isize, 1));
        }
    };
    if m * k * n < 1 << 20 || n == 0 {
        run(a, c);
    } else {
        c.par_chunks_mut(rows_per_task * n).zip(a.par_chunks(rows_per_task * k)).for_each(|(cc, ac)| run(ac, cc));
    }
}

/// C (m, n) = Aᵀ · B for A (k, m), B (k, n): the weight gradient gᵀ·a.
pub fn gemm_at_b(a: &[f32], k: usize, m: usize, b: &[f32], n: usize, c: &mut [f32]) {
    assert_eq!(a.len(), k * m);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    // Split the output rows (columns of A) across threads.
    let rows = (m / rayon::current_num_threads().max(1)).max(16);
    c.par_chunks_mut(rows * n).enumerate().for_each(|(t, cc)| {
        let r0 = t * rows;
        let mr = cc.len() / n.max(1);
        // SAFETY: A's column block r0..r0+mr read with row stride m; B and C exact.
        unsafe {
            gemm_strided((mr, k, n), a.as_ptr().add(r0), (1, m as isize), b.as_ptr(), (n as isize, 1), false, cc.as_mut_ptr(), (n as isize, 1));
        }
    });
}

/// C (m, n) = A (m, k) · op(B) (+ C when `accumulate`) on the calling thread, for
/// callers already running one task per core.
pub fn gemm_serial(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, b_transposed: bool, accumulate: bool, c: &mut [f32]) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    let (rsb, csb) = if b_transposed { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: strides describe the slices exactly.
    unsafe {
        gemm_strided((m, k, n), a.as_ptr(), (k as isize, 1), b.as_ptr(), (rsb, csb), accumulate, c.as_mut_ptr(), (n as isize, 1));
    }
}

/// dst (cols, rows) = srcᵀ for src (rows, cols), both row-major: 16×16 tiles in
/// AVX-512 registers where the CPU has it, element by element at the edges and
/// elsewhere.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert_eq!(src.len(), rows * cols);
    assert_eq!(dst.len(), rows * cols);
    let (mut full_rows, mut full_cols) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512f() {
        (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
        for r0 in (0..full_rows).step_by(16) {
            for c0 in (0..full_cols).step_by(16) {
                // SAFETY: AVX-512F was detected; the tile lies inside both matrices.
                unsafe { transpose_avx512::tile(src.as_ptr().add(r0 * cols + c0), cols, dst.as_mut_ptr().add(c0 * rows + r0), rows) };
            }
        }
    }
    for r in 0..rows {
        let c_start = if r < full_rows { full_cols } else { 0 };
        for c in c_start..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod transpose_avx512 {
    use std::arch::x86_64::*;

    /// One 16×16 tile: 4×4 transposes inside each 128-bit lane (unpack ps, then pd),
    /// then the lanes gathered across registers (two rounds of shuffle_f32x4).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, ri) in r.iter_mut().enumerate() {
            *ri = _mm512_loadu_ps(src.add(i * src_stride));
        }
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let pd = _mm512_castps_pd;
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            // Lane j of r[4i + q] now holds rows 4i … 4i+3 of source column 4j + q.
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        for q in 0..4 {
            let even_lo = _mm512_shuffle_f32x4::<0x88>(r[q], r[4 + q]);
            let odd_lo = _mm512_shuffle_f32x4::<0xDD>(r[q], r[4 + q]);
            let even_hi = _mm512_shuffle_f32x4::<0x88>(r[8 + q], r[12 + q]);
            let odd_hi = _mm512_shuffle_f32x4::<0xDD>(r[8 + q], r[12 + q]);
            _mm512_storeu_ps(dst.add(q * dst_stride), _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi));
            _mm512_storeu_ps(dst.add((8 + q) * dst_stride), _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi));
            _mm512_storeu_ps(dst.add((4 + q) * dst_stride), _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi));
            _mm512_storeu_ps(dst.add((12 + q) * dst_stride), _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi));
        }
    }
}

/// Columns `cols` of out (c, n) = g · w[active, :] for g (c, active.len()) row-major:
/// the product with only the listed rows of w (n columns). A relu network's backward
/// pass only flows through the units a sample switches on, about half of them, so a
/// per-sample product over those rows does half a dense GEMM's work. Callers walk the
/// columns in blocks so that a block of w stays in cache across samples.
pub fn active_rows_product(g: &[f32], c: usize, active: &[u32], w: &[f32], n: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
    let k = active.len();
    assert_eq!(g.len(), c * k);
    assert_eq!(out.len(), c * n);
    assert!(cols.end <= n);
    assert!(active.iter().all(|&i| (i as usize + 1) * n <= w.len()), "active row outside w");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512f() {
        // SAFETY: the CPU has AVX-512F; the asserts above bound every access.
        unsafe { active_rows_avx512::product(g, c, active, w, n, cols, out) };
        return;
    }
    active_rows_portable(g, active, w, n, cols, out);
}

/// `active_rows_product` without SIMD intrinsics (other CPUs, `ROTE_NO_SIMD=1`).
fn active_rows_portable(g: &[f32], active: &[u32], w: &[f32], n: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
    let k = active.len();
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let o = &mut o[cols.clone()];
        o.fill(0.0);
        for (&i, &s) in active.iter().zip(&g[r * k..(r + 1) * k]) {
            let wr = &w[i as usize * n..(i as usize + 1) * n][cols.clone()];
            o.iter_mut().zip(wr).for_each(|(a, &b)| *a += s * b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod active_rows_avx512 {
    use std::arch::x86_64::*;

    const PREFETCH_AHEAD: usize = 6;

    /// Rows of `out` in blocks of up to 12, each block in strips of 32 columns: 2·R
    /// accumulators stay in registers while the active rows of w stream past.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn product(g: &[f32], c: usize, active: &[u32], w: &[f32], n: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let k = active.len();
        let mut r0 = 0;
        while r0 < c {
            let rows = (c - r0).min(12);
            let (gp, op) = (g.as_ptr().add(r0 * k), out.as_mut_ptr().add(r0 * n));
            match rows {
                1 => block::<1>(gp, active, w.as_ptr(), n, cols.clone(), op),
                2 => block::<2>(gp, active, w.as_ptr(), n, cols.clone(), op),
                3 => block::<3>(gp, active, w.as_ptr(), n, cols.clone(), op),
                4 => block::<4>(gp, active, w.as_ptr(), n, cols.clone(), op),
                5 => block::<5>(gp, active, w.as_ptr(), n, cols.clone(), op),
                6 => block::<6>(gp, active, w.as_ptr(), n, cols.clone(), op),
                7 => block::<7>(gp, active, w.as_ptr(), n, cols.clone(), op),
                8 => block::<8>(gp, active, w.as_ptr(), n, cols.clone(), op),
                9 => block::<9>(gp, active, w.as_ptr(), n, cols.clone(), op),
                10 => block::<10>(gp, active, w.as_ptr(), n, cols.clone(), op),
                11 => block::<11>(gp, active, w.as_ptr(), n, cols.clone(), op),
                _ => block::<12>(gp, active, w.as_ptr(), n, cols.clone(), op),
            }
            r0 += rows;
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize>(g: *const f32, active: &[u32], w: *const f32, n: usize, cols: std::ops::Range<usize>, out: *mut f32) {
        let k = active.len();
        let mut j = cols.start;
        while j < cols.end {
            let width = (cols.end - j).min(32);
            let (m0, m1) = (crate::simd::first_lanes16(width), crate::simd::first_lanes16(width.saturating_sub(16)));
            let mut lo = [_mm512_setzero_ps(); R];
            let mut hi = [_mm512_setzero_ps(); R];
            for (t, &i) in active.iter().enumerate() {
                // The active rows are scattered, which the hardware prefetcher cannot
                // follow: ask for a row a few steps ahead.
                if let Some(&ahead) = active.get(t + PREFETCH_AHEAD) {
                    let pp = w.wrapping_add(ahead as usize * n + j) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(pp);
                    _mm_prefetch::<_MM_HINT_T0>(pp.wrapping_add(64));
                }
                let wp = w.add(i as usize * n + j);
                // The upper half may lie past the end when masked off, hence wrapping_add.
                let (w0, w1) = (_mm512_maskz_loadu_ps(m0, wp), _mm512_maskz_loadu_ps(m1, wp.wrapping_add(16)));
                for r in 0..R {
                    let s = _mm512_set1_ps(*g.add(r * k + t));
                    lo[r] = _mm512_fmadd_ps(s, w0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(s, w1, hi[r]);
                }
            }
            for r in 0..R {
                _mm512_mask_storeu_ps(out.add(r * n + j), m0, lo[r]);
                _mm512_mask_storeu_ps(out.wrapping_add(r * n + j + 16), m1, hi[r]);
            }
            j += 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (16, 16), (13, 70), (64, 256), (100, 33), (48, 17)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}×{cols} at ({r}, {c})");
                }
            }
        }
    }

    /// The dispatched product (AVX-512 here) and the portable loop, each against float64, for
    /// row counts around the 12-row register block and column ranges with partial
    /// strips.
    #[test]
    fn active_rows_product_matches_float64() {
        let rng = crate::rng::Philox::new(3, 9);
        for (c, m, n) in [(1, 5, 7), (10, 40, 70), (12, 33, 32), (13, 64, 100), (25, 20, 33)] {
            let mut w = vec![0f32; m * n];
            rng.fill_normal((c * 1000) as u64, &mut w);
            // Every third row active; with c = 1 none, as for a sample whose units are all off.
            let active: Vec<u32> = (0..m as u32).filter(|i| c > 1 && (i * 7 + c as u32) % 3 != 0).collect();
            let k = active.len();
            let mut g = vec![0f32; c * k];
            rng.fill_normal((c * 1000 + 500) as u64, &mut g);
            for (cols, portable) in [0..n, 3..n - 1, 0..n.min(17)].into_iter().flat_map(|r| [(r.clone(), false), (r, true)]) {
                let mut got = vec![f32::NAN; c * n];
                if portable {
                    active_rows_portable(&g, &active, &w, n, cols.clone(), &mut got);
                } else {
                    active_rows_product(&g, c, &active, &w, n, cols.clone(), &mut got);
                }
                for r in 0..c {
                    for j in cols.clone() {
                        let want: f64 = (0..k).map(|t| g[r * k + t] as f64 * w[active[t] as usize * n + j] as f64).sum();
                        let scale: f64 = (0..k).map(|t| (g[r * k + t] as f64 * w[active[t] as usize * n + j] as f64).abs()).sum();
                        assert!((got[r * n + j] as f64 - want).abs() <= 1e-6 * scale, "c={c} r={r} j={j} portable={portable}");
                    }
                    // Columns outside the range are left alone.
                    assert!((0..n).filter(|j| !cols.contains(j)).all(|j| got[r * n + j].is_nan()));
                }
            }
        }
    }
}
