//! The iterative LSSVM solver: preconditioned conjugate gradients on the machine's
//! matrix K (+ μGᵀG) + I/γ, whose entries are computed tile by tile inside each product
//! and never stored, so a fit needs O(n·(d + r + m)) memory instead of the direct
//! solver's n² (r right-hand sides, m the preconditioner's rank).
//!
//! Preconditioner: a rank-m pivoted partial Cholesky factor L of K (the greedy
//! largest-residual-diagonal pivots, as GPyTorch's), so P = L Lᵀ + λI with λ the
//! system's diagonal, applied by Woodbury: P⁻¹v = (v − L (λI + LᵀL)⁻¹ Lᵀ v)/λ. Kernel
//! matrices of smooth kernels have fast-decaying spectra, so a few hundred pivots take
//! most of the conditioning away; a WIMM memory term is left out of P (it is still SPD).
//! Each right-hand side runs its own CG recurrence; the products are shared.

use super::lssvm::{cholesky, cholesky_solve, Kernel, Memory, MemoryModel};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Settings of the conjugate-gradient solver.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CgOptions {
    /// Stop a right-hand side when ‖r‖ ≤ tolerance·‖b‖.
    pub tolerance: f64,
    pub max_iterations: usize,
    /// Pivots of the partial Cholesky preconditioner (0: none).
    pub preconditioner_rank: usize,
    /// A progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for CgOptions {
    fn default() -> Self {
        Self { tolerance: 1e-6, max_iterations: 1000, preconditioner_rank: 200, progress: false }
    }
}

/// How a conjugate-gradient solve went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CgReport {
    pub iterations: usize,
    /// The largest ‖r‖/‖b‖ over the right-hand sides at the end.
    pub relative_residual: f64,
    pub converged: bool,
    /// Pivots the preconditioner took (fewer than asked when K's residual diagonal ran out).
    pub preconditioner_rank: usize,
}

/// Rows of one product task, and columns of one kernel tile.
const TILE_ROWS: usize = 128;
const TILE_COLS: usize = 2048;

/// The machine's matrix as an operator over (n, r) row-major blocks.
pub(super) struct Operator<'a> {
    kernel: Kernel,
    memory: Option<Memory>,
    x: &'a [f64],
    d: usize,
    n: usize,
    norms: Vec<f64>,
    /// The system's diagonal: 1/γ, plus μ for a MIMM memory.
    diagonal: f64,
}

impl<'a> Operator<'a> {
    pub(super) fn new(kernel: Kernel, memory: Option<Memory>, x: &'a [f64], d: usize, gamma: f64) -> Self {
        let n = x.len() / d.max(1);
        let extra = memory.and_then(|m| m.diagonal()).unwrap_or(0.0);
        Self { kernel, memory, x, d, n, norms: super::lssvm::sq_norms(x, d), diagonal: 1.0 / gamma + extra }
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// T·p for the symmetric (n, n) matrix T_ij = entry(x_i·x_j, i, j) and p (n, r): tiles
    /// of T_ij are built from one GEMM of the rows each and multiplied into p at once.
    /// Only the tiles on and right of each block of rows' diagonal are built: the square
    /// on the diagonal adds T·p into its own rows, every tile right of it also Tᵀ·p into
    /// its columns' rows — half the entries of the whole matrix. Blocks are dealt
    /// round-robin to a few groups (balancing the shrinking rows of tiles), each adding
    /// into its own output, summed at the end.
    /// `entry(i, j0, row)` turns row i's products with x_j0.. into T_ij in place.
    fn product<F: Fn(usize, usize, &mut [f64]) + Sync>(&self, entry: F, p: &[f64], r: usize) -> Vec<f64> {
        let (n, d) = (self.n, self.d);
        let blocks = n.div_ceil(TILE_ROWS);
        let groups = (4 * rayon::current_num_threads()).clamp(1, blocks.max(1));
        let partial = |g: usize| {
            let x = self.x.as_ptr();
            let mut out = vec![0f64; n * r];
            let mut tile = vec![0f64; TILE_ROWS * TILE_COLS];
            for blk in (g..blocks).step_by(groups) {
                let i0 = blk * TILE_ROWS;
                let rows = TILE_ROWS.min(n - i0);
                for j0 in (i0..n).step_by(TILE_COLS) {
                    let cols = TILE_COLS.min(n - j0);
                    // SAFETY: rows i0.. of x (rows, d) times rows j0.. (cols, d) transposed
                    // into `tile` (rows, cols); tile · p[j0..] (cols, r) added into out[i0..]
                    // (rows, r); the columns past the diagonal square, tileᵀ · p[i0..]
                    // (rows, r), added into out[those columns].
                    unsafe {
                        crate::nn::linalg::gemm_strided((rows, d, cols), x.add(i0 * d), (d as isize, 1), x.add(j0 * d), (1, d as isize), false, tile.as_mut_ptr(), (cols as isize, 1));
                    }
                    for (ii, t) in tile.chunks_mut(cols).take(rows).enumerate() {
                        entry(i0 + ii, j0, t);
                    }
                    let past = (i0 + rows).saturating_sub(j0).min(cols);
                    unsafe {
                        crate::nn::linalg::gemm_strided((rows, cols, r), tile.as_ptr(), (cols as isize, 1), p.as_ptr().add(j0 * r), (r as isize, 1), true, out.as_mut_ptr().add(i0 * r), (r as isize, 1));
                        if past < cols {
                            crate::nn::linalg::gemm_strided((cols - past, rows, r), tile.as_ptr().add(past), (1, cols as isize), p.as_ptr().add(i0 * r), (r as isize, 1), true, out.as_mut_ptr().add((j0 + past) * r), (r as isize, 1));
                        }
                    }
                }
            }
            out
        };
        (0..groups).into_par_iter().map(partial).reduce(
            || vec![0f64; n * r],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
    }

    fn kernel_entry(&self, dot: f64, i: usize, j: usize) -> f64 {
        self.kernel.of_product(dot, self.norms[i], self.norms[j])
    }

    /// (K + μGᵀG + diagonal·I)·p.
    pub(super) fn apply(&self, p: &[f64], r: usize) -> Vec<f64> {
        let mut out = self.product(|i, j0, row| self.kernel.of_products(row, self.norms[i], &self.norms[j0..]), p, r);
        if let Some(Memory { model: MemoryModel::Wimm, function: f, weight: mu }) = self.memory {
            // G = F is symmetric: GᵀG·p = F·(F·p).
            let identity = matches!(f, super::lssvm::MemoryFn::Identity);
            let delta = |i: usize, j0: usize, row: &mut [f64]| {
                for (jj, v) in row.iter_mut().enumerate() {
                    let j = j0 + jj;
                    *v = f.of_sq_distance(super::lssvm::sq_distance(*v, self.norms[i], self.norms[j]), identity && self.row(i) == self.row(j));
                }
            };
            let fp = self.product(&delta, p, r);
            let ffp = self.product(&delta, &fp, r);
            out.iter_mut().zip(&ffp).for_each(|(o, v)| *o += mu * v);
        }
        out.iter_mut().zip(p).for_each(|(o, v)| *o += self.diagonal * v);
        out
    }

    /// K's column j.
    fn kernel_column(&self, j: usize) -> Vec<f64> {
        let xj = self.row(j);
        (0..self.n).into_par_iter().map(|i| self.kernel_entry(self.row(i).iter().zip(xj).map(|(a, b)| a * b).sum(), i, j)).collect()
    }
}

/// The rank-≤m pivoted partial Cholesky factor of K, (n, rank) row-major, and P⁻¹'s
/// small factor: the Cholesky factor of λI + LᵀL.
struct Preconditioner {
    l: Vec<f64>,
    rank: usize,
    small: Vec<f64>,
    lambda: f64,
}

impl Preconditioner {
    fn new(op: &Operator, m: usize) -> Result<Self> {
        let n = op.n;
        let m = m.min(n);
        let mut diag: Vec<f64> = (0..n).map(|i| op.kernel_entry(op.norms[i], i, i)).collect();
        let start = diag.iter().cloned().fold(0.0, f64::max);
        let mut cols: Vec<Vec<f64>> = Vec::with_capacity(m);
        for _ in 0..m {
            let pivot = (0..n).fold(0, |b, i| if diag[i] > diag[b] { i } else { b });
            // Stop when what is left of K's diagonal is rounding.
            if !(diag[pivot] > 1e-10 * start.max(f64::MIN_POSITIVE)) {
                break;
            }
            let mut c = op.kernel_column(pivot);
            for prev in &cols {
                let lp = prev[pivot];
                c.iter_mut().zip(prev).for_each(|(v, l)| *v -= l * lp);
            }
            let s = diag[pivot].sqrt();
            c.iter_mut().for_each(|v| *v /= s);
            diag.iter_mut().zip(&c).for_each(|(d, l)| *d = (*d - l * l).max(0.0));
            diag[pivot] = 0.0;
            cols.push(c);
        }
        let rank = cols.len();
        let mut l = vec![0f64; n * rank];
        for (k, c) in cols.iter().enumerate() {
            for i in 0..n {
                l[i * rank + k] = c[i];
            }
        }
        let lambda = op.diagonal;
        let mut small = vec![0f64; rank * rank];
        if rank > 0 {
            // SAFETY: Lᵀ (rank, n) via strides times L (n, rank) into small (rank, rank).
            unsafe { crate::nn::linalg::gemm_strided((rank, n, rank), l.as_ptr(), (1, rank as isize), l.as_ptr(), (rank as isize, 1), false, small.as_mut_ptr(), (rank as isize, 1)) };
            for k in 0..rank {
                small[k * rank + k] += lambda;
            }
            cholesky(&mut small, rank)?;
        }
        Ok(Self { l, rank, small, lambda })
    }

    /// P⁻¹·v for v (n, r).
    fn apply(&self, v: &[f64], r: usize) -> Vec<f64> {
        let n = v.len() / r;
        let mut out = v.to_vec();
        if self.rank > 0 {
            let m = self.rank;
            let mut w = vec![0f64; m * r];
            // SAFETY: Lᵀ (m, n) · v (n, r) → w (m, r); then out −= L (n, m) · w.
            unsafe { crate::nn::linalg::gemm_strided((m, n, r), self.l.as_ptr(), (1, m as isize), v.as_ptr(), (r as isize, 1), false, w.as_mut_ptr(), (r as isize, 1)) };
            cholesky_solve(&self.small, m, &mut w, r);
            w.iter_mut().for_each(|x| *x = -*x);
            unsafe { crate::nn::linalg::gemm_strided((n, m, r), self.l.as_ptr(), (m as isize, 1), w.as_ptr(), (r as isize, 1), true, out.as_mut_ptr(), (r as isize, 1)) };
        }
        out.iter_mut().for_each(|x| *x /= self.lambda);
        out
    }
}

/// Solves A·Z = B for B (n, r) with A = `op`, each column by preconditioned CG from 0.
pub(super) fn solve(op: &Operator, b: &[f64], r: usize, options: &CgOptions) -> Result<(Vec<f64>, CgReport)> {
    let n = op.n;
    if !(options.tolerance > 0.0 && options.tolerance < 1.0) {
        bail!("the CG tolerance must be in (0, 1), got {}", options.tolerance);
    }
    let pre = Preconditioner::new(op, options.preconditioner_rank)?;
    let column_dot = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut s = vec![0f64; r];
        for (ra, rb) in a.chunks(r).zip(b.chunks(r)) {
            for c in 0..r {
                s[c] += ra[c] * rb[c];
            }
        }
        s
    };
    let b_norm: Vec<f64> = column_dot(b, b).into_iter().map(f64::sqrt).collect();
    let mut z = vec![0f64; n * r];
    let mut res = b.to_vec();
    let mut y = pre.apply(&res, r);
    let mut p = y.clone();
    let mut rz = column_dot(&res, &y);
    let relative = |res: &[f64]| -> Vec<f64> { column_dot(res, res).into_iter().zip(&b_norm).map(|(s, bn)| if *bn > 0.0 { s.sqrt() / bn } else { 0.0 }).collect() };
    let mut rel = relative(&res);
    let mut done: Vec<bool> = rel.iter().map(|v| *v <= options.tolerance).collect();
    let bar = crate::sched::progress(options.max_iterations as u64, "conjugate gradients", options.progress);
    let mut iterations = 0;
    while iterations < options.max_iterations && done.iter().any(|d| !d) {
        let q = op.apply(&p, r);
        let pq = column_dot(&p, &q);
        let alpha: Vec<f64> = (0..r).map(|c| if done[c] || pq[c] <= 0.0 { 0.0 } else { rz[c] / pq[c] }).collect();
        for i in 0..n {
            for c in 0..r {
                z[i * r + c] += alpha[c] * p[i * r + c];
                res[i * r + c] -= alpha[c] * q[i * r + c];
            }
        }
        iterations += 1;
        rel = relative(&res);
        for c in 0..r {
            done[c] = done[c] || rel[c] <= options.tolerance;
        }
        y = pre.apply(&res, r);
        let rz_new = column_dot(&res, &y);
        for c in 0..r {
            let beta = if done[c] || rz[c] == 0.0 { 0.0 } else { rz_new[c] / rz[c] };
            for i in 0..n {
                p[i * r + c] = if done[c] { 0.0 } else { y[i * r + c] + beta * p[i * r + c] };
            }
        }
        rz = rz_new;
        bar.set_position(iterations as u64);
        bar.set_message(format!("conjugate gradients (residual {:.1e})", rel.iter().cloned().fold(0.0, f64::max)));
    }
    bar.finish_and_clear();
    let worst = rel.iter().cloned().fold(0.0, f64::max);
    Ok((z, CgReport { iterations, relative_residual: worst, converged: done.iter().all(|d| *d), preconditioner_rank: pre.rank }))
}
