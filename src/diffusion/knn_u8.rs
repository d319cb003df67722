//! Exact kNN for 8-bit data (images as pixels) on CPUs with AVX-512 VNNI: dot products
//! of pixels as 16-bit integers accumulated in 32-bit integers (`vpdpwssd`, 64
//! multiply-adds per cycle and core), so every distance is exact without a screen —
//! and equal to the float64 values of the general path and the GPU.
//!
//! Layout: the training set is packed a panel of PANEL points at a time, 16 points per
//! group, as \[group\]\[k-pair\]\[16 points × 2 pixels\] (one 512-bit register per k-pair);
//! queries as \[query\]\[k-pair\] 32-bit pixel pairs, broadcast. The microkernel computes
//! 8 queries × 32 points.
//!
//! On CPUs with AMX the same integers come from the tiles instead (`knn_tiles`): points
//! as unsigned bytes times queries − 128 as signed bytes, about three times faster here.

use super::knn::{Metric, Neighbours};
use anyhow::Result;
use rayon::prelude::*;

/// Points per packed panel: 256 × 784 pixels as i16 is 400 KB, which stays in L2.
const PANEL: usize = 256;
const MR: usize = 8;
const QUERY_BLOCK: usize = 64;

/// Whether this CPU runs the integer kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::env::var_os("ROTE_NO_SIMD").is_none()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether 32-bit sums of d products of 8-bit pixels cannot overflow.
pub fn fits(d: usize) -> bool {
    (d as u64) * 255 * 255 < i32::MAX as u64
}

/// kNN of uint8 `queries` (Q×d) among uint8 rows `train(range)` (n of them); callers
/// check `available()` and `fits(d)`.
pub fn knn(train: &dyn Fn(std::ops::Range<usize>) -> Vec<u8>, n: usize, d: usize, queries: &[u8], k: usize, metric: Metric) -> Result<Neighbours> {
    if crate::amx::available() {
        return knn_tiles(train, n, d, queries, k, metric);
    }
    let q = queries.len() / d;
    let pairs = d.div_ceil(2);
    let packed_queries: Vec<Vec<i32>> = queries.chunks(QUERY_BLOCK * d).map(|b| pack_queries(b, d, pairs)).collect();
    let query_norms: Vec<i64> = queries.chunks_exact(d).map(sq_norm).collect();
    let mut best: Vec<Vec<(i64, u32)>> = vec![Vec::with_capacity(k + 1); q];
    // Stream the training set in slabs of panels, packed once and shared by all threads.
    let slab = PANEL * 64;
    for s0 in (0..n).step_by(slab) {
        let rows = train(s0..(s0 + slab).min(n));
        let count = rows.len() / d;
        let panels: Vec<(usize, Vec<i32>, Vec<i64>)> = (0..count)
            .step_by(PANEL)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|p0| {
                let p1 = (p0 + PANEL).min(count);
                let norms = rows[p0 * d..p1 * d].chunks_exact(d).map(sq_norm).collect();
                (s0 + p0, pack_panel(&rows[p0 * d..p1 * d], d, pairs), norms)
            })
            .collect();
        best.par_chunks_mut(QUERY_BLOCK).zip(packed_queries.par_iter()).enumerate().for_each(|(bi, (lists, xq))| {
            let nq = lists.len();
            let mut dots = vec![0i32; MR * 32];
            for (start, panel, norms) in &panels {
                let points = norms.len();
                // Point norms as i32 (they fit: d·255² < 2³¹), padded to whole groups.
                let mut norms32: Vec<i32> = norms.iter().map(|&v| v as i32).collect();
                norms32.resize(points.div_ceil(32) * 32, i32::MAX / 2);
                for m0 in (0..nq).step_by(MR) {
                    for g in (0..points.div_ceil(16)).step_by(2) {
                        // SAFETY: available() was checked by the caller; the packed buffers
                        // hold MR queries (padded) and two groups (padded) of `pairs` k-pairs.
                        unsafe { microkernel(&xq[m0 * pairs..(m0 + MR) * pairs], &panel[g * 16 * pairs..(g + 2) * 16 * pairs], pairs, &mut dots) };
                        let group_norms = &norms32[g * 16..g * 16 + 32];
                        for (mi, list) in lists[m0..(m0 + MR).min(nq)].iter_mut().enumerate() {
                            let qi = bi * QUERY_BLOCK + m0 + mi;
                            let full = list.len() == k;
                            // Points that might enter: cost < the k-th cost, as a mask.
                            let threshold = if full {
                                let kth = list[k - 1].0 - if metric == Metric::L2 { query_norms[qi] } else { 0 };
                                kth.clamp(i32::MIN as i64, i32::MAX as i64) as i32
                            } else {
                                i32::MAX
                            };
                            let row = &dots[mi * 32..(mi + 1) * 32];
                            // SAFETY: available() was checked by the caller.
                            let mut mask = if full { unsafe { below(row, group_norms, threshold, metric == Metric::L2) } } else { u32::MAX };
                            while mask != 0 {
                                let j = mask.trailing_zeros() as usize;
                                mask &= mask - 1;
                                let p = g * 16 + j;
                                if p >= points {
                                    break;
                                }
                                let dot = row[j] as i64;
                                let cost = match metric {
                                    Metric::L2 => query_norms[qi] + norms[p] - 2 * dot,
                                    Metric::Ip => -dot,
                                };
                                if cost < kth_cost(list, k) {
                                    offer(list, k, cost, (start + p) as u32);
                                }
                            }
                        }
                    }
                }
            }
        });
    }
    Ok(neighbours(best, k, metric))
}

/// Queries per block of the AMX path: their digits (x − 128) packed as B.
const TILE_QUERIES: usize = 64;
/// Training points per tile product (their 32-bit results stay in L1/L2).
const TILE_POINTS: usize = 256;

/// The same on the AMX tiles (CPUs that have them): x·y = Σ y·(x − 128) + 128·Σy, the
/// first sum an exact unsigned × signed byte product in 32-bit integers. Every cost is
/// the same integer as in the VNNI path, so the neighbours and ties are identical.
fn knn_tiles(train: &dyn Fn(std::ops::Range<usize>) -> Vec<u8>, n: usize, d: usize, queries: &[u8], k: usize, metric: Metric) -> Result<Neighbours> {
    let q = queries.len() / d;
    let kp = d.next_multiple_of(crate::amx::K_STEP);
    let query_norms: Vec<i64> = queries.chunks_exact(d).map(sq_norm).collect();
    // Per block: B = (x − 128) as k × TILE_QUERIES signed bytes, padded with zeros.
    let packed: Vec<Vec<i8>> = queries
        .chunks(TILE_QUERIES * d)
        .map(|block| {
            let mut b = vec![0i8; kp * TILE_QUERIES];
            for (qi, row) in block.chunks_exact(d).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    b[j * TILE_QUERIES + qi] = (v as i32 - 128) as i8;
                }
            }
            crate::amx::pack_b(&b, kp, TILE_QUERIES)
        })
        .collect();
    let mut best: Vec<Vec<(i64, u32)>> = vec![Vec::with_capacity(k + 1); q];
    let slab = TILE_POINTS * 64;
    let mut padded = Vec::new();
    for s0 in (0..n).step_by(slab) {
        let rows = train(s0..(s0 + slab).min(n));
        let count = rows.len() / d;
        padded.clear();
        padded.resize(count.next_multiple_of(TILE_POINTS) * kp, 0u8);
        padded.par_chunks_mut(kp).zip(rows.par_chunks_exact(d)).for_each(|(o, r)| o[..d].copy_from_slice(r));
        let (norms, sums): (Vec<i64>, Vec<i64>) = rows.par_chunks_exact(d).map(|r| (sq_norm(r), r.iter().map(|&v| v as i64).sum::<i64>())).unzip();
        best.par_chunks_mut(TILE_QUERIES).zip(packed.par_iter()).enumerate().for_each(|(bi, (lists, b))| {
            let nq = lists.len();
            let mut c = vec![0i32; TILE_POINTS * TILE_QUERIES];
            let mut cost = vec![0i64; nq];
            let mut threshold = vec![i64::MAX; nq];
            let qn = &query_norms[bi * TILE_QUERIES..bi * TILE_QUERIES + nq];
            for p0 in (0..count).step_by(TILE_POINTS) {
                crate::amx::gemm_u8_i8(&padded[p0 * kp..], kp, b, &mut c, TILE_QUERIES, (TILE_POINTS, kp, TILE_QUERIES));
                for (list, t) in lists.iter().zip(threshold.iter_mut()) {
                    *t = kth_cost(list, k);
                }
                for (pi, row) in c.chunks_exact(TILE_QUERIES).take(count - p0).enumerate() {
                    let p = p0 + pi;
                    let (pn, ps) = (norms[p], 128 * sums[p]);
                    match metric {
                        Metric::L2 => cost.iter_mut().zip(row).zip(qn).for_each(|((o, &v), &x)| *o = x + pn - 2 * (v as i64 + ps)),
                        Metric::Ip => cost.iter_mut().zip(row).for_each(|(o, &v)| *o = -(v as i64 + ps)),
                    }
                    for (qi, &cq) in cost.iter().enumerate() {
                        if cq < threshold[qi] {
                            offer(&mut lists[qi], k, cq, (s0 + p) as u32);
                            threshold[qi] = kth_cost(&lists[qi], k);
                        }
                    }
                }
            }
        });
    }
    Ok(neighbours(best, k, metric))
}

/// The cost a point must beat to enter a query's list of k (sorted, best first).
fn kth_cost(list: &[(i64, u32)], k: usize) -> i64 {
    if list.len() == k { list[k - 1].0 } else { i64::MAX }
}

/// Puts (cost, index) into its place in the sorted list, after any equal cost (points
/// arrive in index order, so ties stay with the lower index), keeping k.
fn offer(list: &mut Vec<(i64, u32)>, k: usize, cost: i64, index: u32) {
    let at = list.partition_point(|e| e.0 <= cost);
    list.insert(at, (cost, index));
    list.truncate(k);
}

/// The lists as Neighbours: indices, and the costs as squared distances or inner
/// products.
fn neighbours(best: Vec<Vec<(i64, u32)>>, k: usize, metric: Metric) -> Neighbours {
    let mut out = Neighbours { k, indices: Vec::with_capacity(best.len() * k), values: Vec::with_capacity(best.len() * k) };
    for list in best {
        for (c, i) in list {
            out.indices.push(i);
            out.values.push(if metric == Metric::Ip { -c as f64 } else { c as f64 });
        }
    }
    out
}

fn sq_norm(r: &[u8]) -> i64 {
    r.iter().map(|&v| v as i64 * v as i64).sum()
}

/// Queries as [query][k-pair] dwords (low half pixel 2j, high half 2j+1), padded to a
/// multiple of MR queries with zeros.
fn pack_queries(x: &[u8], d: usize, pairs: usize) -> Vec<i32> {
    let q = x.len() / d;
    let mut out = vec![0i32; q.div_ceil(MR) * MR * pairs];
    for (qi, row) in x.chunks_exact(d).enumerate() {
        for j in 0..pairs {
            let lo = row[2 * j] as i32;
            let hi = if 2 * j + 1 < d { row[2 * j + 1] as i32 } else { 0 };
            out[qi * pairs + j] = lo | (hi << 16);
        }
    }
    out
}

/// A panel as [group of 16 points][k-pair][16 dwords], padded to an even number of
/// groups with zero points.
fn pack_panel(y: &[u8], d: usize, pairs: usize) -> Vec<i32> {
    let points = y.len() / d;
    let groups = points.div_ceil(32) * 2;
    let mut out = vec![0i32; groups * pairs * 16];
    for (p, row) in y.chunks_exact(d).enumerate() {
        let (g, lane) = (p / 16, p % 16);
        for j in 0..pairs {
            let lo = row[2 * j] as i32;
            let hi = if 2 * j + 1 < d { row[2 * j + 1] as i32 } else { 0 };
            out[(g * pairs + j) * 16 + lane] = lo | (hi << 16);
        }
    }
    out
}

/// dots[m][j] = Σ_k x[m][k]·y[j][k] for MR queries and the 32 points of two groups.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn microkernel(x: &[i32], y: &[i32], pairs: usize, dots: &mut [i32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    let y0 = y.as_ptr();
    let y1 = y.as_ptr().add(16 * pairs);
    for j in 0..pairs {
        let a = _mm512_loadu_si512(y0.add(j * 16) as *const _);
        let b = _mm512_loadu_si512(y1.add(j * 16) as *const _);
        for m in 0..MR {
            let xv = _mm512_set1_epi32(*x.get_unchecked(m * pairs + j));
            acc[m][0] = _mm512_dpwssd_epi32(acc[m][0], xv, a);
            acc[m][1] = _mm512_dpwssd_epi32(acc[m][1], xv, b);
        }
    }
    for m in 0..MR {
        _mm512_storeu_si512(dots.as_mut_ptr().add(m * 32) as *mut _, acc[m][0]);
        _mm512_storeu_si512(dots.as_mut_ptr().add(m * 32 + 16) as *mut _, acc[m][1]);
    }
}

/// Bit j set when point j's cost (‖y‖² − 2x·y for l2, −x·y for ip) is below `threshold`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn below(dots: &[i32], norms: &[i32], threshold: i32, l2: bool) -> u32 {
    use std::arch::x86_64::*;
    let t = _mm512_set1_epi32(threshold);
    let mut mask = 0u32;
    for h in 0..2 {
        let dot = _mm512_loadu_si512(dots.as_ptr().add(16 * h) as *const _);
        let cost = if l2 {
            let yy = _mm512_loadu_si512(norms.as_ptr().add(16 * h) as *const _);
            _mm512_sub_epi32(yy, _mm512_add_epi32(dot, dot))
        } else {
            _mm512_sub_epi32(_mm512_setzero_si512(), dot)
        };
        mask |= (_mm512_cmplt_epi32_mask(cost, t) as u32) << (16 * h);
    }
    mask
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn below(_dots: &[i32], _norms: &[i32], _threshold: i32, _l2: bool) -> u32 {
    unreachable!("available() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn microkernel(_x: &[i32], _y: &[i32], _pairs: usize, _dots: &mut [i32]) {
    unreachable!("available() is false off x86-64")
}
