//! Dense products for the CPU backend: matrixmultiply's tuned SGEMM, split over rows
//! across threads. Row-major everywhere; shapes in comments as (rows, cols).

use rayon::prelude::*;

/// C (m, n) = A (m, k) · op(B) + beta·C, with op(B) = B (k, n) or Bᵀ for B (n, k).
pub fn gemm(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, b_transposed: bool, beta: f32, c: &mut [f32]) {
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
            matrixmultiply::sgemm(rows, k, n, 1.0, a.as_ptr(), k as isize, 1, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1);
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
            matrixmultiply::sgemm(mr, k, n, 1.0, a.as_ptr().add(r0), 1, m as isize, b.as_ptr(), n as isize, 1, 0.0, cc.as_mut_ptr(), n as isize, 1);
        }
    });
}

/// C (m, n) = A (m, k) · op(B) on the calling thread, for callers already running one
/// task per core.
pub fn gemm_serial(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, b_transposed: bool, c: &mut [f32]) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    let (rsb, csb) = if b_transposed { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: strides describe the slices exactly.
    unsafe {
        matrixmultiply::sgemm(m, k, n, 1.0, a.as_ptr(), k as isize, 1, b.as_ptr(), rsb, csb, 0.0, c.as_mut_ptr(), n as isize, 1);
    }
}
