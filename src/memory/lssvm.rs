//! Least-squares SVM (Suykens; ALGORITHMS.md §7), binary and one-vs-rest, solved
//! directly. With M = K + I/γ (K the kernel matrix), the system
//!     \[ 0   yᵀ        \] \[b\]   \[0\]
//!     \[ y   Ω + I/γ   \] \[α\] = \[1\],   Ω = D K D,  D = diag(y),
//! has Ω + I/γ = D M D, so with u = M⁻¹1 and v = M⁻¹y:
//!     b = 1ᵀv / 1ᵀu,   α_i y_i = v_i − b·u_i,   f(x) = Σ_i (v_i − b u_i) K(x_i, x) + b.
//! One Cholesky factorization of M serves every class of a one-vs-rest fit (only the
//! right-hand sides y differ). The factorization is blocked on the tuned GEMM
//! (nn/linalg.rs), in float64.
//!
//! Memory (rote's least-squares generalization–memorization machines; the MIMM/WIMM
//! equations of Wang, Wang & Shao were not available to us, so these are least-squares
//! solutions of Wang & Shao's GMM objective, derived here). The decision
//!     f(x) = ⟨w, φ(x)⟩ + b + Σ_j y_j c_j G_j(x)
//! with ½‖w‖² + (1/2μ)‖c‖² + (γ/2)Σ_i ξ_i² under y_i f(x_i) = 1 − ξ_i, where G_j(x) is
//! the memory impact of training point j on x. Stationarity:
//! w = Σ_i α_i y_i φ(x_i), c_j = μ y_j Σ_i α_i y_i G_j(x_i), Σ α_i y_i = 0, γξ_i = α_i.
//! Substituted, f(x) = Σ_k α_k y_k [K(x, x_k) + μ Σ_j G_j(x) G_j(x_k)] + b: the LSSVM
//! above with the kernel K + μ·GᵀG in the system and in the decision.
//! - WIMM (weighted impact): every memory weighs in, G_j(x) = δ(x_j, x) for a memory
//!   influence function δ (identity, Gaussian, radius).
//! - MIMM (maximum impact): only the memory of largest impact, G_j(x) = δ(x_j, x) for
//!   j = j*(x), the nearest training point (δ falls with the distance; ties to the
//!   lowest index, and a training point's own memory is its own), else 0. On the
//!   training points G = I, so the system is LSSVM's with 1/γ + μ on the diagonal, and
//!   the decision is that LSSVM's plus μ·δ(x_{j*}, x)·α_{j*} y_{j*}.
//! With the identity δ both are the same machine: LSSVM with 1/γ + μ, plus μ·α_i y_i at
//! training point i; away from the training points the memory term vanishes. Without a
//! memory it is exactly LSSVM.

use anyhow::{bail, Context, Result};
pub use super::cg::{CgOptions, CgReport};
use rayon::prelude::*;

/// A kernel; RBF as LS-SVMlab writes it, exp(−‖x − z‖²/σ²).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kernel {
    Rbf { sigma: f64 },
    Linear,
    /// (x·z + 1)^degree
    Poly { degree: u32 },
}

/// The number after `key=` in a `name:key=value,…` spec.
fn parameter(spec: &str, key: &str) -> Result<f64, String> {
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let text = rest.split(',').find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('='))).ok_or(format!("'{spec}': give {name}:{key}=…"))?;
    text.parse::<f64>().map_err(|_| format!("'{spec}': {key} must be a number"))
}

impl std::str::FromStr for Kernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.split_once(':').map_or(s, |p| p.0);
        let value = |key: &str| parameter(s, key);
        match name {
            "rbf" => {
                let sigma = value("sigma")?;
                if !(sigma.is_finite() && sigma > 0.0) {
                    return Err(format!("'{s}': sigma must be positive"));
                }
                Ok(Self::Rbf { sigma })
            }
            "linear" => Ok(Self::Linear),
            "poly" => {
                let d = value("degree")?;
                if d < 1.0 || d.fract() != 0.0 {
                    return Err(format!("'{s}': degree must be a whole number ≥ 1"));
                }
                Ok(Self::Poly { degree: d as u32 })
            }
            _ => Err(format!("'{s}': the kernel is rbf:sigma=S, linear or poly:degree=D")),
        }
    }
}

/// a·bᵀ for rows of a (n, d) and b (m, d): (n, m), on the tuned GEMM in float64, 256
/// rows of a per task (each task packs all of b once, so fewer rows repack it often).
fn gram(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    const ROWS: usize = 256;
    let m = b.len() / d.max(1);
    let mut g = vec![0f64; (a.len() / d.max(1)) * m];
    g.par_chunks_mut(m.max(1) * ROWS).zip(a.par_chunks(d * ROWS)).for_each(|(c, rows)| {
        // SAFETY: the strides describe the slices exactly.
        unsafe { crate::nn::linalg::gemm_strided((rows.len() / d, d, m), rows.as_ptr(), (d as isize, 1), b.as_ptr(), (1, d as isize), false, c.as_mut_ptr(), (m as isize, 1)) };
    });
    g
}

/// Squared norms of the rows of x (·, d), summed in index order.
pub(super) fn sq_norms(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d.max(1)).map(|r| r.iter().map(|v| v * v).sum::<f64>()).collect()
}

/// ‖a − b‖² from a·b and the squared norms (clamped at 0).
pub(super) fn sq_distance(dot: f64, na: f64, nb: f64) -> f64 {
    (na + nb - 2.0 * dot).max(0.0)
}

/// ‖a_i − b_j‖² from the Gram matrix g = a·bᵀ, in place.
fn to_sq_distances(g: &mut [f64], a: &[f64], b: &[f64], d: usize) {
    let (na, nb) = (sq_norms(a, d), sq_norms(b, d));
    let m = nb.len();
    g.par_chunks_mut(m.max(1)).enumerate().for_each(|(i, row)| {
        for (v, &nj) in row.iter_mut().zip(&nb) {
            *v = sq_distance(*v, na[i], nj);
        }
    });
}

/// The lower triangle (with the diagonal) of K(x_i, x_j) for the rows of x (n, d), by
/// blocks of 256 rows: each block's product covers the columns up to its last row, so
/// the symmetric matrix costs half the products and kernel evaluations of `matrix`.
/// Entries right of a block's columns are 0; those right of the diagonal inside a block
/// are filled too. (The Cholesky factorization reads the lower triangle only.)
fn lower_matrix(kernel: Kernel, x: &[f64], d: usize) -> Vec<f64> {
    const ROWS: usize = 256;
    let n = x.len() / d.max(1);
    let norms = sq_norms(x, d);
    let mut out = vec![0f64; n * n];
    out.par_chunks_mut(n.max(1) * ROWS).enumerate().for_each(|(blk, c)| {
        let (r0, rows) = (blk * ROWS, c.len() / n.max(1));
        let cols = (r0 + rows).min(n);
        // SAFETY: rows r0.. of x (rows × d) times the first `cols` rows of x transposed,
        // into the first `cols` columns of this block's rows (row stride n).
        unsafe { crate::nn::linalg::gemm_strided((rows, d, cols), x.as_ptr().add(r0 * d), (d as isize, 1), x.as_ptr(), (1, d as isize), false, c.as_mut_ptr(), (n as isize, 1)) };
        for (i, row) in c.chunks_mut(n).enumerate() {
            kernel.of_products(&mut row[..cols], norms[r0 + i], &norms);
        }
    });
    out
}

impl Kernel {
    /// K(a, b) from the product a·b and the squared norms ‖a‖², ‖b‖² (read by RBF).
    pub(super) fn of_product(&self, dot: f64, na: f64, nb: f64) -> f64 {
        match *self {
            Self::Linear => dot,
            Self::Poly { degree } => (dot + 1.0).powi(degree as i32),
            Self::Rbf { sigma } => crate::simd::exp_f64(-sq_distance(dot, na, nb) / (sigma * sigma)),
        }
    }

    /// `of_product` over a row in place: row\[j\] = a·b_j becomes K(a, b_j), ‖b_j‖² =
    /// nb\[j\] (vectorized: the kernel is matched once per row, not per entry).
    pub(super) fn of_products(&self, row: &mut [f64], na: f64, nb: &[f64]) {
        match *self {
            Self::Linear => {}
            Self::Poly { .. } => row.iter_mut().for_each(|v| *v = self.of_product(*v, 0.0, 0.0)),
            Self::Rbf { sigma } => {
                #[cfg(target_arch = "x86_64")]
                if crate::simd::has_avx2() {
                    // SAFETY: the features were detected at run time.
                    return unsafe { rbf_row_avx2(row, na, nb, sigma * sigma) };
                }
                rbf_row(row, na, nb, sigma * sigma)
            }
        }
    }

    /// K(a_i, b_j) for rows of a (n, d) and b (m, d): (n, m), from one product a·bᵀ.
    pub fn matrix(&self, a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
        let mut g = gram(a, b, d);
        let (na, nb) = (sq_norms(a, d), sq_norms(b, d));
        let m = nb.len();
        g.par_chunks_mut(m.max(1)).enumerate().for_each(|(i, row)| self.of_products(row, na[i], &nb));
        g
    }
}

/// row\[j\] = exp(−‖a − b_j‖²/s) from row\[j\] = a·b_j, in place.
#[inline(always)]
fn rbf_row(row: &mut [f64], na: f64, nb: &[f64], s: f64) {
    for (v, &nj) in row.iter_mut().zip(nb) {
        *v = crate::simd::exp_f64(-sq_distance(*v, na, nj) / s);
    }
}

/// `rbf_row` compiled for AVX2 + FMA (a closure handed to `simd::dispatch` is compiled
/// apart from it and stays at SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rbf_row_avx2(row: &mut [f64], na: f64, nb: &[f64], s: f64) {
    rbf_row(row, na, nb, s)
}

/// The memory influence function δ(x_j, x) of a generalization–memorization machine.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MemoryFn {
    /// 1 where x is the stored point itself (equal rows), else 0.
    Identity,
    /// exp(−‖x_j − x‖²/σ²).
    Gauss { sigma: f64 },
    /// 1 where ‖x_j − x‖ ≤ r.
    Radius { r: f64 },
}

impl std::str::FromStr for MemoryFn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.split_once(':').map_or(s, |p| p.0);
        let value = |key: &str| -> Result<f64, String> {
            let v = parameter(s, key)?;
            if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("'{s}': {key} must be positive")) }
        };
        match name {
            "identity" => Ok(Self::Identity),
            "gauss" => Ok(Self::Gauss { sigma: value("sigma")? }),
            "radius" => Ok(Self::Radius { r: value("r")? }),
            _ => Err(format!("'{s}': the memory function is identity, gauss:sigma=S or radius:r=R")),
        }
    }
}

impl MemoryFn {
    /// The same function with width `w` (σ of gauss, r of radius); None for the
    /// identity, which has no width.
    pub fn with_width(self, w: f64) -> Option<Self> {
        match self {
            Self::Identity => None,
            Self::Gauss { .. } => Some(Self::Gauss { sigma: w }),
            Self::Radius { .. } => Some(Self::Radius { r: w }),
        }
    }

    /// δ(a_i, b_j): (n, m).
    pub fn matrix(&self, a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
        let mut g = gram(a, b, d);
        to_sq_distances(&mut g, a, b, d);
        let m = b.len() / d.max(1);
        // The identity compares rows exactly, not by a distance threshold: the Gram route rounds.
        let identity = matches!(self, Self::Identity);
        g.par_chunks_mut(m.max(1)).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.of_sq_distance(*v, identity && a[i * d..(i + 1) * d] == b[j * d..(j + 1) * d]);
            }
        });
        g
    }

    /// δ from a squared distance (`same`: the rows are equal, for the identity).
    pub(super) fn of_sq_distance(&self, sq: f64, same: bool) -> f64 {
        match *self {
            Self::Identity => same as u8 as f64,
            Self::Gauss { sigma } => crate::simd::exp_f64(-sq / (sigma * sigma)),
            Self::Radius { r } => (sq <= r * r) as u8 as f64,
        }
    }
}

/// How the memories of a generalization–memorization machine combine (module notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryModel {
    /// Maximum impact: the nearest training point's memory alone.
    Mimm,
    /// Weighted impact: every training point's memory, weighted by δ.
    Wimm,
}

impl MemoryModel {
    /// `none`, `mimm` or `wimm` (as `--memory` and Python's `memory=` take it).
    pub fn parse_choice(s: &str) -> Result<Option<Self>, String> {
        match s {
            "none" => Ok(None),
            "mimm" => Ok(Some(Self::Mimm)),
            "wimm" => Ok(Some(Self::Wimm)),
            _ if s.parse::<MemoryFn>().is_ok() => Err(format!("'{s}' is a memory influence function: give it as --memory-fn {s} with --memory mimm or wimm")),
            _ => Err(format!("'{s}': the memory is none, mimm (maximum impact) or wimm (weighted impact)")),
        }
    }
}

/// The memory of a machine: which model, its influence function δ and its weight μ.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub model: MemoryModel,
    pub function: MemoryFn,
    pub weight: f64,
}

impl Memory {
    /// The extra diagonal of the system (μ for MIMM, whose GᵀG is I on the training
    /// points), or None when the memory needs the full μ·GᵀG (WIMM).
    pub(super) fn diagonal(&self) -> Option<f64> {
        match self.model {
            MemoryModel::Mimm => Some(self.weight),
            MemoryModel::Wimm => None,
        }
    }
}

/// Per row of `a`, the nearest row of `x` (lowest index among equals) and δ there.
fn nearest_memory(f: MemoryFn, a: &[f64], x: &[f64], d: usize) -> Vec<(usize, f64)> {
    let mut g = gram(a, x, d);
    to_sq_distances(&mut g, a, x, d);
    let n = x.len() / d.max(1);
    g.par_chunks(n.max(1))
        .enumerate()
        .map(|(i, row)| {
            let q = &a[i * d..(i + 1) * d];
            // An equal row is the nearest whatever the rounding of the Gram route.
            let j = (0..n).find(|&j| &x[j * d..(j + 1) * d] == q).unwrap_or_else(|| (0..n).fold(0, |b, j| if row[j] < row[b] { j } else { b }));
            (j, f.of_sq_distance(row[j], &x[j * d..(j + 1) * d] == q))
        })
        .collect()
}

/// The kernel of the machine between rows of `a` and the training rows `x` (rote's
/// least-squares GMM, see the module notes): K, plus with a WIMM memory
/// μ·Σ_j δ(x_j, a)·δ(x_j, x_k), with a MIMM memory μ·δ(x_{j*}, a) at column j*(a).
/// `training`: a are the training rows themselves (MIMM's memory is then μ·I).
fn machine_kernel(kernel: Kernel, memory: Option<Memory>, a: &[f64], x: &[f64], d: usize, training: bool) -> Vec<f64> {
    let mut k = kernel.matrix(a, x, d);
    let n = x.len() / d.max(1);
    match memory {
        None => {}
        Some(Memory { model: MemoryModel::Wimm, function: f, weight: mu }) => {
            let (fa, fx) = (f.matrix(a, x, d), f.matrix(x, x, d));
            // fx is symmetric, so a·fxᵀ is the product wanted.
            let memory = gram(&fa, &fx, n);
            k.par_iter_mut().zip(memory.par_iter()).for_each(|(k, m)| *k += mu * m);
        }
        Some(Memory { model: MemoryModel::Mimm, function: f, weight: mu }) => {
            let nearest: Vec<(usize, f64)> = if training { (0..n).map(|i| (i, 1.0)).collect() } else { nearest_memory(f, a, x, d) };
            for (i, (j, delta)) in nearest.into_iter().enumerate() {
                k[i * n + j] += mu * delta;
            }
        }
    }
    k
}

const BLOCK: usize = 128;
/// Rows per task of the blocked updates: large enough that each GEMM amortizes packing
/// its right-hand factor.
const PANEL_ROWS: usize = 256;

/// In-place Cholesky factorization A = L Lᵀ of a symmetric positive-definite (n, n)
/// row-major matrix; L is left in the lower triangle (the upper is not read).
pub fn cholesky(a: &mut [f64], n: usize) -> Result<()> {
    assert_eq!(a.len(), n * n);
    for j0 in (0..n).step_by(BLOCK) {
        let j1 = (j0 + BLOCK).min(n);
        let w = j1 - j0;
        if j0 > 0 {
            // A[j0.., j0..j1] −= L[j0.., ..j0] · L[j0..j1, ..j0]ᵀ, rows split across threads.
            let mut minus_top = Vec::with_capacity(w * j0);
            for r in j0..j1 {
                minus_top.extend(a[r * n..r * n + j0].iter().map(|v| -v));
            }
            let rows = &mut a[j0 * n..];
            rows.par_chunks_mut(n * PANEL_ROWS).for_each(|chunk| {
                let r = chunk.len() / n;
                let p = chunk.as_mut_ptr();
                // SAFETY: within this chunk, columns ..j0 are read and j0..j1 written: disjoint.
                unsafe { crate::nn::linalg::gemm_strided((r, j0, w), p, (n as isize, 1), minus_top.as_ptr(), (1, j0 as isize), true, p.add(j0), (n as isize, 1)) };
            });
        }
        // The diagonal block, unblocked.
        for j in j0..j1 {
            let mut d = a[j * n + j];
            for k in j0..j {
                d -= a[j * n + k] * a[j * n + k];
            }
            if !(d > 0.0) || !d.is_finite() {
                bail!("the kernel matrix plus I/γ is not positive definite at row {j} (pivot {d:e}); try a larger σ or a smaller γ");
            }
            let l = d.sqrt();
            a[j * n + j] = l;
            for i in j + 1..j1 {
                let mut s = a[i * n + j];
                for k in j0..j {
                    s -= a[i * n + k] * a[j * n + k];
                }
                a[i * n + j] = s / l;
            }
        }
        // The panel below solves X L_jjᵀ = A[j1.., j0..j1]: X = A · (L_jj⁻¹)ᵀ, one GEMM
        // per chunk of rows (a triangular solve row by row would be O(n²·BLOCK) scalar
        // work, more than the trailing updates' GEMMs cost).
        if j1 < n {
            let inverse = lower_inverse(&a[j0 * n..], n, j0, w);
            let below = &mut a[j1 * n..];
            below.par_chunks_mut(n * PANEL_ROWS).for_each(|chunk| {
                let r = chunk.len() / n;
                let mut panel = Vec::with_capacity(r * w);
                for row in chunk.chunks(n) {
                    panel.extend_from_slice(&row[j0..j1]);
                }
                // SAFETY: `panel` is a copy, so the product writes columns j0..j1 of this
                // chunk without reading them; B = (L_jj⁻¹)ᵀ through its strides.
                unsafe { crate::nn::linalg::gemm_strided((r, w, w), panel.as_ptr(), (w as isize, 1), inverse.as_ptr(), (1, w as isize), false, chunk.as_mut_ptr().add(j0), (n as isize, 1)) };
            });
        }
    }
    Ok(())
}

/// The inverse of the lower-triangular (w, w) block of `l` at rows 0.., columns j0..
/// (row stride n), by forward substitution on the identity: (w, w) row-major.
fn lower_inverse(l: &[f64], n: usize, j0: usize, w: usize) -> Vec<f64> {
    let at = |i: usize, k: usize| l[i * n + j0 + k];
    let mut inv = vec![0f64; w * w];
    for c in 0..w {
        for i in c..w {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= at(i, k) * inv[k * w + c];
            }
            inv[i * w + c] = s / at(i, i);
        }
    }
    inv
}

/// Solves L Lᵀ x = b for each column of b (n, r) in place, L from `cholesky`: forward
/// then backward substitution by blocks of rows, each block's coupling to the solved
/// rows one GEMM over all r columns (row-major L is read by rows in both directions).
pub fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64], r: usize) {
    assert_eq!(b.len(), n * r);
    let mut coupling = vec![0f64; BLOCK * r];
    // L y = b.
    for j0 in (0..n).step_by(BLOCK) {
        let j1 = (j0 + BLOCK).min(n);
        let w = j1 - j0;
        if j0 > 0 {
            // SAFETY: reads L[j0..j1, ..j0] and y[..j0], writes the separate `coupling`.
            unsafe { crate::nn::linalg::gemm_strided((w, j0, r), l.as_ptr().add(j0 * n), (n as isize, 1), b.as_ptr(), (r as isize, 1), false, coupling.as_mut_ptr(), (r as isize, 1)) };
            b[j0 * r..j1 * r].iter_mut().zip(&coupling).for_each(|(v, c)| *v -= c);
        }
        for i in j0..j1 {
            for k in j0..i {
                let lik = l[i * n + k];
                for c in 0..r {
                    b[i * r + c] -= lik * b[k * r + c];
                }
            }
            let d = l[i * n + i];
            b[i * r..(i + 1) * r].iter_mut().for_each(|v| *v /= d);
        }
    }
    // Lᵀ x = y, from the last block up.
    let starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
    for &j0 in starts.iter().rev() {
        let j1 = (j0 + BLOCK).min(n);
        let w = j1 - j0;
        if j1 < n {
            // coupling = L[j1.., j0..j1]ᵀ · x[j1..]: A's (i, k) = L[j1 + k, j0 + i].
            // SAFETY: reads L and x[j1..], writes the separate `coupling`.
            unsafe { crate::nn::linalg::gemm_strided((w, n - j1, r), l.as_ptr().add(j1 * n + j0), (1, n as isize), b.as_ptr().add(j1 * r), (r as isize, 1), false, coupling.as_mut_ptr(), (r as isize, 1)) };
            b[j0 * r..j1 * r].iter_mut().zip(&coupling).for_each(|(v, c)| *v -= c);
        }
        for i in (j0..j1).rev() {
            for k in i + 1..j1 {
                let lki = l[k * n + i];
                for c in 0..r {
                    b[i * r + c] -= lki * b[k * r + c];
                }
            }
            let d = l[i * n + i];
            b[i * r..(i + 1) * r].iter_mut().for_each(|v| *v /= d);
        }
    }
}

/// A fitted LSSVM: one machine for two classes, one per class otherwise (one-vs-rest).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Lssvm {
    pub kernel: Kernel,
    pub gamma: f64,
    /// The memory (None: plain LSSVM).
    pub memory: Option<Memory>,
    /// The labels, sorted; machine c separates classes\[c\] (+1) from the rest (−1); for
    /// two classes the one machine has classes\[1\] as +1.
    pub classes: Vec<i64>,
    pub dim: usize,
    /// Per machine, the coefficients α_i y_i (machines × n) and the bias.
    pub coef: Vec<f64>,
    pub bias: Vec<f64>,
    /// The training inputs (n, dim).
    pub x: Vec<f64>,
}

impl std::str::FromStr for Solver {
    type Err = String;
    /// `auto`, `direct` or `cg`, with the default CG settings.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto(CgOptions::default())),
            "direct" => Ok(Self::Direct),
            "cg" => Ok(Self::Cg(CgOptions::default())),
            _ => Err(format!("'{s}': the solver is auto, direct or cg")),
        }
    }
}

impl Solver {
    /// The same solver with these CG settings (Direct has none).
    pub fn with_cg(self, options: CgOptions) -> Self {
        match self {
            Self::Auto(_) => Self::Auto(options),
            Self::Cg(_) => Self::Cg(options),
            Self::Direct => Self::Direct,
        }
    }
}

/// How `Lssvm::fit_with` solves the system.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Solver {
    /// Direct when the (n, n) float64 matrix fits in half the available memory, else CG.
    Auto(CgOptions),
    /// One Cholesky factorization of the stored matrix: exact, O(n³) time, n² memory.
    Direct,
    /// Preconditioned conjugate gradients on kernel products computed on the fly.
    Cg(CgOptions),
}

impl Default for Solver {
    fn default() -> Self {
        Self::Auto(CgOptions::default())
    }
}

/// Which solver ran, and how.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SolveReport {
    /// "direct" or "cg".
    pub solver: &'static str,
    pub why: String,
    pub cg: Option<CgReport>,
}

impl Lssvm {
    pub fn machines(&self) -> usize {
        self.bias.len()
    }

    /// `fit_with` and the default solver.
    pub fn fit(x: &[f64], dim: usize, y: &[i64], kernel: Kernel, gamma: f64, memory: Option<Memory>) -> Result<Self> {
        Ok(Self::fit_with(x, dim, y, kernel, gamma, memory, Solver::default())?.0)
    }

    pub fn fit_with(x: &[f64], dim: usize, y: &[i64], kernel: Kernel, gamma: f64, memory: Option<Memory>, solver: Solver) -> Result<(Self, SolveReport)> {
        let n = y.len();
        if x.len() != n * dim || n == 0 {
            bail!("internal error: {} inputs for {n} labels of dimension {dim}", x.len());
        }
        if !(gamma.is_finite() && gamma > 0.0) {
            bail!("--gamma must be a positive number, got {gamma}");
        }
        let classes = sorted_classes(y);
        if classes.len() < 2 {
            bail!("an SVM needs at least two classes; the labels are all {}", classes[0]);
        }
        if let Some(m) = memory {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                bail!("--memory-weight must be a positive number, got {}", m.weight);
            }
        }
        let matrix_bytes = crate::resources::product(&[n, n, 8]);
        let (direct, why) = match solver {
            Solver::Direct => (true, "--solver direct".to_string()),
            Solver::Cg(_) => (false, "--solver cg".to_string()),
            Solver::Auto(_) => match crate::resources::available_memory() {
                Some(avail) if matrix_bytes > avail / 2 => (false, format!("the {} kernel matrix is more than half the available memory ({})", crate::resources::human_bytes(matrix_bytes), crate::resources::human_bytes(avail))),
                _ => (true, format!("the {} kernel matrix fits in memory", crate::resources::human_bytes(matrix_bytes))),
            },
        };
        let rhs = right_hand_sides(y, &classes);
        let r = rhs.len() / n;
        let (z, report) = if direct {
            crate::resources::check_memory(&[("the kernel matrix", matrix_bytes)], "the training-set size (a subset, e.g. --data …:subset=K), or --solver cg")?;
            let mut m = system_matrix(kernel, memory, x, dim);
            let mut z = rhs;
            factor_and_solve(&mut m, n, gamma, &mut z, r)?;
            (z, SolveReport { solver: "direct", why, cg: None })
        } else {
            let options = match solver {
                Solver::Cg(o) | Solver::Auto(o) => o,
                Solver::Direct => unreachable!(),
            };
            let op = super::cg::Operator::new(kernel, memory, x, dim, gamma);
            let (z, cg) = super::cg::solve(&op, &rhs, r, &options)?;
            (z, SolveReport { solver: "cg", why, cg: Some(cg) })
        };
        let (coef, bias) = coefficients(&z, n, r);
        Ok((Self { kernel, gamma, memory, classes, dim, coef, bias, x: x.to_vec() }, report))
    }

    /// Decision values (q, machines) for query rows (q, dim).
    pub fn decision(&self, queries: &[f64]) -> Vec<f64> {
        let q = queries.len() / self.dim;
        let n = self.x.len() / self.dim;
        let machines = self.machines();
        let mut out = vec![0f64; q * machines];
        // Kernel rows of at most ~64 MiB at a time.
        for rows in crate::sched::chunks(0..q, ((1 << 23) / n.max(1)).clamp(16, 1024)) {
            let k = machine_kernel(self.kernel, self.memory, &queries[rows.start * self.dim..rows.end * self.dim], &self.x, self.dim, false);
            out[rows.start * machines..rows.end * machines].copy_from_slice(&decide(&k, &self.coef, &self.bias));
        }
        out
    }

    /// Predicted labels: the sign for two classes, the largest decision otherwise.
    pub fn predict(&self, queries: &[f64]) -> Vec<i64> {
        labels_of(&self.decision(queries), &self.classes)
    }
}

fn sorted_classes(y: &[i64]) -> Vec<i64> {
    let mut classes = y.to_vec();
    classes.sort_unstable();
    classes.dedup();
    classes
}

/// The system's matrix without I/γ: K's lower triangle (the factorization reads only
/// that), plus μ on the diagonal for MIMM; the full K + μGᵀG for WIMM.
fn system_matrix(kernel: Kernel, memory: Option<Memory>, x: &[f64], d: usize) -> Vec<f64> {
    match memory {
        Some(m) if m.diagonal().is_none() => machine_kernel(kernel, memory, x, x, d, true),
        _ => {
            let n = x.len() / d.max(1);
            let mut k = lower_matrix(kernel, x, d);
            let extra = memory.and_then(|m| m.diagonal()).unwrap_or(0.0);
            for i in 0..n {
                k[i * n + i] += extra;
            }
            k
        }
    }
}

/// Right-hand sides (n, 1 + machines): 1, then each machine's ±1 labels.
fn right_hand_sides(y: &[i64], classes: &[i64]) -> Vec<f64> {
    let n = y.len();
    let machines = if classes.len() == 2 { 1 } else { classes.len() };
    let r = 1 + machines;
    let mut rhs = vec![0f64; n * r];
    for i in 0..n {
        rhs[i * r] = 1.0;
        for c in 0..machines {
            let positive = if machines == 1 { classes[1] } else { classes[c] };
            rhs[i * r + 1 + c] = if y[i] == positive { 1.0 } else { -1.0 };
        }
    }
    rhs
}

/// M + I/γ factorized in place, and the right-hand sides (n, r) solved in place.
fn factor_and_solve(m: &mut [f64], n: usize, gamma: f64, rhs: &mut [f64], r: usize) -> Result<()> {
    for i in 0..n {
        m[i * n + i] += 1.0 / gamma;
    }
    cholesky(m, n).context("LSSVM fit")?;
    cholesky_solve(m, n, rhs, r);
    Ok(())
}

/// Coefficients α_i y_i (machines × n) and biases from the solutions z (n, r) of
/// M u = 1 (column 0) and M v_c = y_c: b = 1ᵀv/1ᵀu, α_i y_i = v_i − b·u_i.
fn coefficients(z: &[f64], n: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    let machines = r - 1;
    let sum_u: f64 = (0..n).map(|i| z[i * r]).sum();
    let mut coef = vec![0f64; machines * n];
    let mut bias = vec![0f64; machines];
    for c in 0..machines {
        let b = (0..n).map(|i| z[i * r + 1 + c]).sum::<f64>() / sum_u;
        bias[c] = b;
        for i in 0..n {
            coef[c * n + i] = z[i * r + 1 + c] - b * z[i * r];
        }
    }
    (coef, bias)
}

/// Decision values (q, machines) from kernel rows (q, n) against the training points:
/// K · coefᵀ + b, one GEMM per block of rows.
fn decide(k: &[f64], coef: &[f64], bias: &[f64]) -> Vec<f64> {
    const ROWS: usize = 256;
    let machines = bias.len();
    let n = coef.len() / machines.max(1);
    let mut out = vec![0f64; (k.len() / n.max(1)) * machines];
    out.par_chunks_mut(machines * ROWS).zip(k.par_chunks(n.max(1) * ROWS)).for_each(|(o, kr)| {
        for row in o.chunks_mut(machines) {
            row.copy_from_slice(bias);
        }
        // SAFETY: kr is (rows, n), coef (machines, n) read transposed, o (rows, machines).
        unsafe { crate::nn::linalg::gemm_strided((o.len() / machines.max(1), n, machines), kr.as_ptr(), (n as isize, 1), coef.as_ptr(), (1, n as isize), true, o.as_mut_ptr(), (machines as isize, 1)) };
    });
    out
}

/// Labels from decision values: the sign for one machine, the largest otherwise.
fn labels_of(decisions: &[f64], classes: &[i64]) -> Vec<i64> {
    let machines = if classes.len() == 2 { 1 } else { classes.len() };
    decisions
        .chunks(machines)
        .map(|d| if machines == 1 { classes[(d[0] > 0.0) as usize] } else { classes[(0..machines).fold(0, |b, j| if d[j] > d[b] { j } else { b })] })
        .collect()
}

/// Rows `rows` of an array as float64, multiplied by `scale`.
pub fn scaled_rows(x: &crate::data::Array, rows: &[usize], scale: f64) -> Vec<f64> {
    rows.iter().flat_map(|&r| x.rows_f32(r, r + 1).into_iter().map(move |v| v as f64 * scale)).collect()
}

/// A Philox-seeded split of `0..n` into the rows fitted on and a held-out `fraction`
/// (at least one row on each side): (fit, held), each in draw order.
pub fn holdout_split(n: usize, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--holdout must be strictly between 0 and 1, got {fraction}");
    }
    if n < 2 {
        bail!("--holdout needs at least 2 samples, the data has {n}");
    }
    let order: Vec<usize> = crate::rng::Philox::new(seed, 0x401D_0000).permutation(n).into_iter().map(|i| i as usize).collect();
    let cut = n - ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    Ok((order[..cut].to_vec(), order[cut..].to_vec()))
}

/// The grid cell with the highest accuracy, the first of equals.
pub fn best_cell(cells: &[CvCell]) -> &CvCell {
    cells.iter().fold(&cells[0], |b, c| if c.accuracy > b.accuracy { c } else { b })
}

/// The kernels a cross-validation tries: the RBF kernel at each of `sigmas` (default:
/// `kernel`'s own σ), or `kernel` alone for the others (which take no σ).
pub fn kernel_grid(kernel: Kernel, sigmas: Option<&[f64]>) -> Result<Vec<Kernel>> {
    let kernels = match (kernel, sigmas) {
        (k, None) => vec![k],
        (Kernel::Rbf { .. }, Some(s)) => s.iter().map(|&sigma| Kernel::Rbf { sigma }).collect(),
        (_, Some(_)) => bail!("σ values to try are for the rbf kernel"),
    };
    if let Some(bad) = kernels.iter().find(|k| matches!(k, Kernel::Rbf { sigma } if !(sigma.is_finite() && *sigma > 0.0))) {
        bail!("{bad:?} needs a positive σ");
    }
    Ok(kernels)
}

/// The memories a cross-validation tries: `memory` with each of `weights` (μ) and each
/// of `widths` (σ of gauss, r of radius), each defaulting to the memory's own; without
/// a memory, plain LSSVM alone (and no weights or widths).
pub fn memory_grid(memory: Option<Memory>, weights: Option<&[f64]>, widths: Option<&[f64]>) -> Result<Vec<Option<Memory>>> {
    let Some(m) = memory else {
        if weights.is_some() || widths.is_some() {
            bail!("memory weights and widths to try need a memory: mimm or wimm");
        }
        return Ok(vec![None]);
    };
    let weights = weights.map_or_else(|| vec![m.weight], <[f64]>::to_vec);
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        bail!("memory weight {w} to try is not a non-negative number");
    }
    let functions = match widths {
        None => vec![m.function],
        Some(ws) => ws
            .iter()
            .map(|&w| match m.function.with_width(w) {
                None => bail!("memory widths are for the gauss and radius memory functions, not {:?}", m.function),
                Some(_) if !(w.is_finite() && w > 0.0) => bail!("memory width {w} to try is not positive"),
                Some(f) => Ok(f),
            })
            .collect::<Result<_>>()?,
    };
    Ok(functions.iter().flat_map(|&function| weights.iter().map(move |&weight| Some(Memory { weight, function, ..m }))).collect())
}

/// One cell of a cross-validation grid: its mean accuracy over the folds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CvCell {
    pub kernel: Kernel,
    pub gamma: f64,
    pub memory: Option<Memory>,
    pub accuracy: f64,
}

/// k-fold cross-validation over every (kernel, memory, γ): folds from a Philox
/// permutation (position p in fold p mod k); per (kernel, memory, fold) the kernel
/// matrices are computed once and every γ reuses them. `memories` is the grid of
/// memories (one `None` for plain LSSVM). Cells in grid order; the caller picks the best.
pub fn cross_validate(x: &[f64], dim: usize, y: &[i64], kernels: &[Kernel], gammas: &[f64], memories: &[Option<Memory>], folds: usize, seed: u64) -> Result<Vec<CvCell>> {
    let n = y.len();
    if folds < 2 || folds > n {
        bail!("--cv {folds}: need 2 ≤ folds ≤ {n} (the samples)");
    }
    if let Some(g) = gammas.iter().find(|g| !(g.is_finite() && **g > 0.0)) {
        bail!("--grid-gamma: {g} is not a positive number");
    }
    let order = crate::rng::Philox::new(seed, 0xC5_0000).permutation(n);
    let classes = sorted_classes(y);
    let mut fold_of = vec![0usize; n];
    for (p, &i) in order.iter().enumerate() {
        fold_of[i as usize] = p % folds;
    }
    if memories.is_empty() {
        bail!("cross-validation needs at least one memory setting (None for plain LSSVM)");
    }
    let grid: Vec<(Kernel, Option<Memory>)> = kernels.iter().flat_map(|&k| memories.iter().map(move |&m| (k, m))).collect();
    let mut hits = vec![0usize; grid.len() * gammas.len()];
    for f in 0..folds {
        let (val, fit): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == f);
        let rows = |idx: &[usize]| idx.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect::<Vec<f64>>();
        let (xf, xv) = (rows(&fit), rows(&val));
        let yf: Vec<i64> = fit.iter().map(|&i| y[i]).collect();
        if sorted_classes(&yf) != classes {
            bail!("fold {f} of {folds} lacks a class in its training part; use fewer folds");
        }
        for (ki, &(kernel, memory)) in grid.iter().enumerate() {
            let (kff, kvf) = (system_matrix(kernel, memory, &xf, dim), machine_kernel(kernel, memory, &xv, &xf, dim, false));
            let rhs = right_hand_sides(&yf, &classes);
            let r = rhs.len() / fit.len();
            for (gi, &gamma) in gammas.iter().enumerate() {
                let (mut m, mut z) = (kff.clone(), rhs.clone());
                factor_and_solve(&mut m, fit.len(), gamma, &mut z, r)?;
                let (coef, bias) = coefficients(&z, fit.len(), r);
                let predicted = labels_of(&decide(&kvf, &coef, &bias), &classes);
                hits[ki * gammas.len() + gi] += predicted.iter().zip(&val).filter(|(p, &i)| **p == y[i]).count();
            }
        }
    }
    Ok(grid.iter().flat_map(|&(kernel, memory)| gammas.iter().map(move |&gamma| (kernel, memory, gamma))).zip(hits).map(|((kernel, memory, gamma), h)| CvCell { kernel, gamma, memory, accuracy: h as f64 / n as f64 }).collect())
}

/// A memory as lssvm.json holds it; models saved before MIMM existed stored the WIMM
/// machine as [function, weight].
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum StoredMemory {
    Memory(Memory),
    Weighted(MemoryFn, f64),
}

impl StoredMemory {
    fn memory(self) -> Memory {
        match self {
            Self::Memory(m) => m,
            Self::Weighted(function, weight) => Memory { model: MemoryModel::Wimm, function, weight },
        }
    }
}

/// What `save` writes beside the arrays.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    kernel: Kernel,
    gamma: f64,
    #[serde(default)]
    memory: Option<StoredMemory>,
    classes: Vec<i64>,
    dim: usize,
    /// How inputs were prepared: the data spec and the multiplier of its values.
    data: String,
    input_scale: f64,
}

impl Lssvm {
    /// A model directory: lssvm.json, x.npy, coef.npy, bias.npy (float64).
    pub fn save(&self, dir: &std::path::Path, data: &str, input_scale: f64) -> Result<()> {
        let n = self.x.len() / self.dim;
        crate::report::create_out_dir(dir)?;
        crate::report::write_npy(&dir.join("x.npy"), &[n, self.dim], &self.x)?;
        crate::report::write_npy(&dir.join("coef.npy"), &[self.machines(), n], &self.coef)?;
        crate::report::write_npy(&dir.join("bias.npy"), &[self.machines()], &self.bias)?;
        let stored = Stored { kernel: self.kernel, gamma: self.gamma, memory: self.memory.map(StoredMemory::Memory), classes: self.classes.clone(), dim: self.dim, data: data.into(), input_scale };
        crate::report::write_json(&dir.join("lssvm.json"), &stored)
    }

    /// The model and the data spec and input scale it was fitted with.
    pub fn load(dir: &std::path::Path) -> Result<(Self, String, f64)> {
        let meta = dir.join("lssvm.json");
        let text = std::fs::read_to_string(&meta).with_context(|| format!("{} is not an LSSVM model directory (no lssvm.json; make one with `rote lssvm fit`)", dir.display()))?;
        let s: Stored = serde_json::from_str(&text).with_context(|| format!("{} is damaged", meta.display()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let a = crate::data::Array::open_npy(&dir.join(name))?;
            if a.dtype != crate::data::DType::F64 {
                bail!("{} must be float64", dir.join(name).display());
            }
            Ok((a.shape.clone(), bytemuck::cast_slice::<u8, f64>(a.bytes()).to_vec()))
        };
        let (xs, x) = read("x.npy")?;
        let (cs, coef) = read("coef.npy")?;
        let (_, bias) = read("bias.npy")?;
        let machines = if s.classes.len() == 2 { 1 } else { s.classes.len() };
        if xs.len() != 2 || xs[1] != s.dim || cs != [machines, xs[0]] || bias.len() != machines {
            bail!("{}: the arrays' shapes ({xs:?}, {cs:?}, {} biases) do not fit {} classes of dimension {}", dir.display(), bias.len(), s.classes.len(), s.dim);
        }
        Ok((Self { kernel: s.kernel, gamma: s.gamma, memory: s.memory.map(StoredMemory::memory), classes: s.classes, dim: s.dim, coef, bias, x }, s.data, s.input_scale))
    }
}

/// Accuracy of predicted against true labels.
pub fn accuracy(predicted: &[i64], truth: &[i64]) -> f64 {
    predicted.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_triangle_is_the_full_kernel_matrix_below_the_diagonal() {
        // More rows than one block, not a multiple of it.
        let (n, d) = (600, 5);
        let x = crate::nn::layers::uniform_values(3, 1, n * d, -1.0, 1.0).into_iter().map(f64::from).collect::<Vec<f64>>();
        for kernel in [Kernel::Rbf { sigma: 1.5 }, Kernel::Linear, Kernel::Poly { degree: 3 }] {
            let (full, lower) = (kernel.matrix(&x, &x, d), lower_matrix(kernel, &x, d));
            for i in 0..n {
                for j in 0..=i {
                    let (a, b) = (full[i * n + j], lower[i * n + j]);
                    assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{kernel:?} ({i}, {j}): {a} vs {b}");
                }
            }
        }
    }
}
