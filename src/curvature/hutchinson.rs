//! Hutchinson scores with exact Hessian-vector products on the CPU: the forward-over-
//! reverse of `Mlp::input_hvp` (ALGORITHMS.md §2), run as one serial task per group of
//! samples on each core. Every step of a group — its primal passes, its probes, the
//! tangents' products and the elementwise terms between them — runs on the core that
//! holds the group's buffers, so nothing waits on a single-threaded loop between two
//! parallel products, and the buffers are allocated once per core, not once per
//! layer.

use super::{dot, dot_in_lanes, probe, Scores};
use crate::nn::linalg::gemm_serial;
use crate::nn::mlp::{Activation, Mlp};
use rayon::prelude::*;

/// Samples per group: G·P tangent rows of a layer (320 × 512 floats for P = 10 is
/// 640 KiB) stay in L2 between the product that writes them and the one that reads
/// them, while G·P rows are enough to pay for packing the weights in every product
/// (16 samples ran 20% slower, 32 to 64 the same).
const GROUP: usize = 32;

/// The second factor of ‖Hv‖²: with ġ₁ the tangent reaching the first layer
/// (Hv = ġ₁W₁), ‖Hv‖² = ġ₁ K ġ₁ᵀ for K = W₁W₁ᵀ, and K = RRᵀ (Cholesky) turns that
/// into ‖ġ₁R‖², whose triangular product needs about half of ġ₁K's multiply-adds.
pub enum FirstLayerNorm {
    /// R (n₁, n₁), lower triangular, row-major.
    Cholesky(Vec<f32>),
    /// Hv itself through W₁ (the first layer does not narrow the input, or K is
    /// singular).
    Direct,
}

impl FirstLayerNorm {
    pub fn new(m: &Mlp) -> Self {
        let (d, n1) = (m.input_dim(), m.sizes[1]);
        if n1 >= d {
            return FirstLayerNorm::Direct;
        }
        let k = m.first_gram();
        cholesky(&k, n1).map_or(FirstLayerNorm::Direct, FirstLayerNorm::Cholesky)
    }
}

/// Lower-triangular R with RRᵀ = K, in float64, or None when K is not numerically
/// positive definite (a pivot below 1e-10 of the largest diagonal entry).
fn cholesky(k: &[f32], n: usize) -> Option<Vec<f32>> {
    let mut r = vec![0f64; n * n];
    let largest = (0..n).map(|i| k[i * n + i] as f64).fold(0.0, f64::max);
    for j in 0..n {
        let diag = k[j * n + j] as f64 - dot_in_lanes(&r[j * n..j * n + j], &r[j * n..j * n + j]);
        if !(diag > 1e-10 * largest) {
            return None;
        }
        let rjj = diag.sqrt();
        r[j * n + j] = rjj;
        for i in j + 1..n {
            let (ri, rj) = (&r[i * n..i * n + j], &r[j * n..j * n + j]);
            let s = k[i * n + j] as f64 - dot_in_lanes(ri, rj);
            r[i * n + j] = s / rjj;
        }
    }
    Some(r.into_iter().map(|v| v as f32).collect())
}

/// ż₁ = vW₁ᵀ on the AMX integer tiles. The probes are signs, v = 2b − 1 with bits
/// b ∈ {0, 1}, so with W₁'s rows written as fixed-point integers N (per row o,
/// W₁[o] ≈ scale_o·N[o], |N| ≤ 127·2¹⁶) in three signed 8-bit digits,
/// N = 2¹⁶D₀ + 2⁸D₁ + D₂, every v·N[o] = 2·b·N[o] − ΣN[o] is exact in integers, and the
/// only error is W₁'s rounding to 24 bits of its row's largest magnitude (below
/// float32's own rounding of a 784-term dot product).
pub struct SignProduct {
    /// d rounded up to the tiles' k step.
    k: usize,
    /// n₁ rounded up to the tiles' n step: the columns of one digit.
    width: usize,
    /// The digits as one packed (k × 3·width) matrix: digit q in columns q·width.. .
    digits: Vec<i8>,
    /// Per output unit: scale_o, and ΣN[o].
    scale: Vec<f64>,
    row_sums: Vec<f64>,
}

/// Digits per weight (`product` recombines exactly three).
const DIGITS: usize = 3;
/// Tangent rows per tile product: 64 rows' 32-bit results for 3·512 columns (384 KiB)
/// stay in L2 until they are recombined.
const SIGN_ROWS: usize = 64;

impl SignProduct {
    pub fn new(w1: &[f32], n1: usize, d: usize) -> Self {
        use crate::amx::{pack_b, K_STEP, MN_STEP};
        let k = d.next_multiple_of(K_STEP);
        let width = n1.next_multiple_of(MN_STEP);
        let mut digits = vec![0i8; k * DIGITS * width];
        let mut scale = vec![0f64; width];
        let mut row_sums = vec![0f64; width];
        let unit = (127u64 << 16) as f64;
        for o in 0..n1 {
            let row = &w1[o * d..(o + 1) * d];
            let largest = row.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            if largest == 0.0 {
                continue;
            }
            scale[o] = largest / unit;
            for (kk, &wv) in row.iter().enumerate() {
                let mut n = (wv as f64 / scale[o]).round() as i64;
                row_sums[o] += n as f64;
                for q in (0..DIGITS).rev() {
                    // Balanced digits in [−128, 127]; the top one stays within ±127.
                    let digit = ((n + 128).rem_euclid(256) - 128) as i8;
                    digits[kk * DIGITS * width + q * width + o] = digit;
                    n = (n - digit as i64) >> 8;
                }
                debug_assert_eq!(n, 0);
            }
        }
        SignProduct { k, width, digits: pack_b(&digits, k, DIGITS * width), scale, row_sums }
    }

    /// ż₁ (rows, n₁) for the probes' bits (rows, self.k; zero past d), `rows` a
    /// multiple of the tiles' step; `ints` holds SIGN_ROWS·3·width 32-bit results.
    fn product(&self, bits: &[u8], rows: usize, n1: usize, ints: &mut [i32], out: &mut [f32]) {
        let (k, width) = (self.k, self.width);
        let n = DIGITS * width;
        for r0 in (0..rows).step_by(SIGN_ROWS) {
            let r1 = (r0 + SIGN_ROWS).min(rows);
            crate::amx::gemm_u8_i8(&bits[r0 * k..r1 * k], k, &self.digits, &mut ints[..(r1 - r0) * n], n, (r1 - r0, k, n));
            for r in r0..r1 {
                let c = &ints[(r - r0) * n..(r - r0 + 1) * n];
                let (high, mid, low) = (&c[..n1], &c[width..width + n1], &c[2 * width..2 * width + n1]);
                let row = &mut out[r * n1..(r + 1) * n1];
                // v·N = 2·b·N − ΣN, each term an integer below 2⁵³: exact in float64.
                for o in 0..n1 {
                    let bn = (high[o] as f64 * 65536.0 + mid[o] as f64 * 256.0) + low[o] as f64;
                    row[o] = ((2.0 * bn - self.row_sums[o]) * self.scale[o]) as f32;
                }
            }
        }
    }
}

/// Byte b spread over eight bytes, bit t of b in byte t.
const BYTE_OF_BITS: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut t = 0;
        while t < 8 {
            table[b] |= (((b >> t) & 1) as u64) << (8 * t);
            t += 1;
        }
        b += 1;
    }
    table
};

/// Probe j of sample `global` as one byte per sign (1 for +1) in out[..d]: the draws
/// of `super::probe`, through `super::probe_words` (`words` is scratch for d bits).
fn probe_bits(seed: u64, global: u64, j: usize, d: usize, words: &mut [u64], out: &mut [u8]) {
    super::probe_words(seed, global, j, d, words);
    for (i, chunk) in out[..d].chunks_mut(8).enumerate() {
        let byte = (words[i / 8] >> (8 * (i % 8))) as u8;
        chunk.copy_from_slice(&BYTE_OF_BITS[byte as usize].to_le_bytes()[..chunk.len()]);
    }
}

/// Column blocks of the triangular products (`triangular_product`).
const TRIANGLE_BLOCK: usize = 64;

/// Per-core buffers, sized for one group.
struct Work {
    z: Vec<Vec<f32>>,
    a: Vec<f32>,
    d1: Vec<Vec<f32>>,
    curv: Vec<Vec<f32>>,
    g: Vec<f32>,
    ga: Vec<f32>,
    v: Vec<f32>,
    zd: Vec<Vec<f32>>,
    adot: Vec<f32>,
    gd: Vec<f32>,
    gad: Vec<f32>,
    out: Vec<f32>,
    bits: Vec<u8>,
    ints: Vec<i32>,
    /// One probe's signs as 64-bit words, on their way to `bits`.
    words: Vec<u64>,
    /// The Gauss–Newton part's C rows per sample: the logit Jacobian at each layer,
    /// and at the end its product with R (or W₁).
    jac: Vec<f32>,
    jac_next: Vec<f32>,
    /// The finite-difference path's pre-activations at x + hv, per layer (σ′ in place
    /// of the hidden ones once used).
    perturbed: Vec<Vec<f32>>,
}

impl Work {
    /// Buffers for groups of GROUP samples with `probes` probes each.
    fn new(m: &Mlp, probes: usize, norm: &FirstLayerNorm, signs: Option<&SignProduct>, gauss_newton: bool) -> Self {
        let (d, layers, c) = (m.input_dim(), m.layers(), m.classes());
        let widest = *m.sizes[1..].iter().max().unwrap();
        let t_max = GROUP * probes;
        let jac_rows = if gauss_newton { GROUP * c } else { 0 };
        let first_out = if matches!(norm, FirstLayerNorm::Direct) { d } else { m.sizes[1] };
        Work {
            z: m.sizes[1..].iter().map(|&n| vec![0f32; GROUP * n]).collect(),
            a: vec![0f32; GROUP * widest],
            d1: m.sizes[1..layers].iter().map(|&n| vec![0f32; GROUP * n]).collect(),
            curv: m.sizes[1..layers].iter().map(|&n| vec![0f32; GROUP * n]).collect(),
            g: vec![0f32; GROUP * widest],
            ga: vec![0f32; GROUP * widest],
            v: if signs.is_some() { vec![] } else { vec![0f32; t_max * d] },
            zd: m.sizes[1..].iter().map(|&n| vec![0f32; t_max * n]).collect(),
            adot: vec![0f32; t_max * widest],
            gd: vec![0f32; t_max * widest],
            gad: vec![0f32; t_max * widest],
            out: vec![0f32; t_max.max(jac_rows) * first_out],
            bits: signs.map_or(vec![], |sp| vec![0u8; t_max.next_multiple_of(crate::amx::MN_STEP) * sp.k]),
            ints: signs.map_or(vec![], |sp| vec![0i32; SIGN_ROWS * DIGITS * sp.width]),
            words: vec![0u64; d.div_ceil(64)],
            jac: vec![0f32; jac_rows * widest],
            jac_next: vec![0f32; jac_rows * widest],
            perturbed: vec![],
        }
    }
}

/// What the scores need from the first layer's weights alone, built once per model
/// rather than once per batch.
pub struct Prepared {
    norm: FirstLayerNorm,
    /// The AMX product for ż₁, when the tiles are present.
    signs: Option<SignProduct>,
}

impl Prepared {
    fn new(m: &Mlp) -> Self {
        let (d, n1) = (m.input_dim(), m.sizes[1]);
        let norm = FirstLayerNorm::new(m);
        let signs = (crate::amx::available() && d * 255 * 128 < i32::MAX as usize).then(|| SignProduct::new(&m.weights[0], n1, d));
        Prepared { norm, signs }
    }
}

/// `Prepared` for m, reused while the first layer's weights are the same as last
/// time's (compared in full, so a changed checkpoint never meets a stale factor).
pub fn prepared(m: &Mlp) -> std::sync::Arc<Prepared> {
    use std::sync::{Arc, Mutex};
    static LAST: Mutex<Option<(Vec<usize>, Vec<f32>, Arc<Prepared>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((sizes, w1, p)) = last.as_ref() {
        if *sizes == m.sizes[..2] && w1 == &m.weights[0] {
            return p.clone();
        }
    }
    let p = Arc::new(Prepared::new(m));
    *last = Some((m.sizes[..2].to_vec(), m.weights[0].clone(), p.clone()));
    p
}

/// Mean over `probes` Rademacher probes of ‖Hv‖² (score) and vᵀHv (trace) for each
/// sample of x (rows, d), probes keyed by (seed, first_global + row, probe) as
/// `super::probe` draws them.
///
/// With `gauss_newton`, also tr((JᵀAJ)²), the exact Gauss–Newton part (J the logit
/// Jacobian, A = diag p − ppᵀ): G = JJᵀ = (J₁R)(J₁R)ᵀ from the C Jacobian rows at the
/// first layer, in the same group passes.
#[allow(clippy::too_many_arguments)]
pub fn scores(m: &Mlp, x: &[f32], y: &[i64], first_global: u64, seed: u64, probes: usize, prepared: &Prepared, gauss_newton: bool) -> Scores {
    let (norm, signs) = (&prepared.norm, prepared.signs.as_ref());
    let work = || Work::new(m, probes, norm, signs, gauss_newton);
    let all = in_groups(m, x, y, first_global, work, |x, y, first, w| group_scores(m, x, y, first, seed, probes, norm, signs, gauss_newton, w));
    Scores {
        score: all.iter().map(|t| t.0).collect(),
        trace: all.iter().map(|t| t.1).collect(),
        gauss_newton: gauss_newton.then(|| all.iter().map(|t| t.2).collect()),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_scores(m: &Mlp, x: &[f32], y: &[i64], first_global: u64, seed: u64, p: usize, norm: &FirstLayerNorm, signs: Option<&SignProduct>, gauss_newton: bool, w: &mut Work) -> Vec<(f32, f32, f32)> {
    let (c, layers) = (m.classes(), m.layers());
    let rows = y.len();
    let tp = rows * p;
    let smooth = !m.activation.piecewise_linear();
    primal(m, x, y, w);
    first_tangent(m, first_global, seed, p, signs, rows, w);
    let probs = &w.z[layers - 1][..rows * c];
    // Tangent forward: ż_l = ȧ_{l−1}W_lᵀ, ȧ_l = σ′(z_l)ż_l (ż₁ from `first_tangent`).
    for l in 0..layers {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        if l > 0 {
            gemm_serial(&w.adot[..tp * fan_in], tp, fan_in, &m.weights[l], out, true, false, &mut w.zd[l][..tp * out]);
        }
        if l + 1 < layers {
            let (zd, d1) = (&w.zd[l][..tp * out], &w.d1[l][..rows * out]);
            for (i, (adot, zd)) in w.adot[..tp * out].chunks_mut(out).zip(zd.chunks(out)).enumerate() {
                let slope = &d1[(i / p) * out..(i / p + 1) * out];
                for k in 0..out {
                    adot[k] = slope[k] * zd[k];
                }
            }
        }
    }
    // Output layer: ġ_L = p⊙ż_L − p (pᵀż_L).
    for (i, (gd, zd)) in w.gd[..tp * c].chunks_mut(c).zip(w.zd[layers - 1][..tp * c].chunks(c)).enumerate() {
        let pr = &probs[(i / p) * c..(i / p + 1) * c];
        let dot: f32 = pr.iter().zip(zd).map(|(a, b)| a * b).sum();
        for k in 0..c {
            gd[k] = pr[k] * (zd[k] - dot);
        }
    }
    // Tangent backward: ġ_{l−1} = σ″(z)⊙ż⊙g_a + σ′(z)⊙(ġ_l W_l).
    for l in (1..layers).rev() {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        gemm_serial(&w.gd[..tp * out], tp, out, &m.weights[l], fan_in, false, false, &mut w.gad[..tp * fan_in]);
        let (d1, curv, zd) = (&w.d1[l - 1][..rows * fan_in], &w.curv[l - 1][..rows * fan_in], &w.zd[l - 1][..tp * fan_in]);
        for (i, ((gd, gad), zd)) in w.gd[..tp * fan_in].chunks_mut(fan_in).zip(w.gad[..tp * fan_in].chunks(fan_in)).zip(zd.chunks(fan_in)).enumerate() {
            let s = (i / p) * fan_in;
            let (slope, curv) = (&d1[s..s + fan_in], &curv[s..s + fan_in]);
            if smooth {
                for k in 0..fan_in {
                    gd[k] = curv[k] * zd[k] + slope[k] * gad[k];
                }
            } else {
                for k in 0..fan_in {
                    gd[k] = slope[k] * gad[k];
                }
            }
        }
    }
    // ‖Hv‖² and vᵀHv = ż₁·ġ₁ per tangent, averaged over each sample's probes.
    let n1 = m.sizes[1];
    let squares = squared_norms(m, norm, tp, &w.gd[..tp * n1], &mut w.out);
    let (gd, z1) = (&w.gd[..tp * n1], &w.zd[0][..tp * n1]);
    let per_tangent: Vec<(f64, f64)> = (0..tp).map(|t| (squares[t], dot(&z1[t * n1..(t + 1) * n1], &gd[t * n1..(t + 1) * n1]))).collect();
    let gn = if gauss_newton { gauss_newton_part(m, rows, norm, w) } else { vec![0.0; rows] };
    per_tangent
        .chunks(p)
        .zip(gn)
        .map(|(probes, gn)| {
            let (sq, tr) = probes.iter().fold((0f64, 0f64), |(a, b), &(sq, tr)| (a + sq, b + tr));
            ((sq / p as f64) as f32, (tr / p as f64) as f32, gn)
        })
        .collect()
}

/// `task` on every group of GROUP samples (its rows of x and y, and the training-set
/// index of its first sample), compiled for the CPU's vector extensions; a few groups
/// per thread-pool task, each task with the buffers `work` makes (allocating and
/// faulting them in costs more than a group). Results in sample order.
///
/// A short last group is padded to GROUP rows (its last sample repeated) and the
/// padding's results dropped: the products then always have GROUP rows, so a sample's
/// scores do not depend on how many samples share its group — a shard, a batch size or
/// a run from Python gives every sample the bits the single run gives it.
fn in_groups<R: Send>(m: &Mlp, x: &[f32], y: &[i64], first_global: u64, work: impl Fn() -> Work + Sync + Send, task: impl Fn(&[f32], &[i64], u64, &mut Work) -> Vec<R> + Sync + Send) -> Vec<R> {
    let (d, rows) = (m.input_dim(), y.len());
    let groups = rows.div_ceil(GROUP);
    let per_task = groups.div_ceil(4 * rayon::current_num_threads()).max(1);
    let per_group: Vec<Vec<R>> = (0..groups)
        .into_par_iter()
        .with_min_len(per_task)
        .map_init(work, |w, group| {
            let (s0, s1) = (group * GROUP, ((group + 1) * GROUP).min(rows));
            if s1 - s0 == GROUP {
                return crate::simd::dispatch(
                    #[inline(always)]
                    || task(&x[s0 * d..s1 * d], &y[s0..s1], first_global + s0 as u64, w),
                );
            }
            let mut xp = x[s0 * d..s1 * d].to_vec();
            let mut yp = y[s0..s1].to_vec();
            for _ in s1 - s0..GROUP {
                xp.extend_from_slice(&x[(s1 - 1) * d..s1 * d]);
                yp.push(y[s1 - 1]);
            }
            let mut out = crate::simd::dispatch(
                #[inline(always)]
                || task(&xp, &yp, first_global + s0 as u64, w),
            );
            out.truncate(s1 - s0);
            out
        })
        .collect();
    per_group.into_iter().flatten().collect()
}

/// The finite-difference estimators for the samples of x, grouped like `scores`:
/// Hv ≈ (∇L(x + hv) − ∇L(x))/h with the same probes (`fd`), or the released code's
/// statistic ‖∇L(x + hv) − ∇L(x)‖ (`released`: not divided by h, unsquared). The
/// perturbed first-layer pre-activations are z₁ + h·ż₁, with ż₁ = vW₁ᵀ from the same
/// product `scores` uses; the two gradients then differ at the first layer by Δ, so
/// ∇L(x + hv) − ∇L(x) = ΔW₁, its squared norm is ‖ΔR‖² and its product with v is Δ·ż₁.
#[allow(clippy::too_many_arguments)]
pub fn fd_scores(m: &Mlp, x: &[f32], y: &[i64], first_global: u64, seed: u64, probes: usize, h: f32, released: bool, prepared: &Prepared) -> Scores {
    let (norm, signs) = (&prepared.norm, prepared.signs.as_ref());
    let t_max = GROUP * probes;
    let work = || {
        let mut w = Work::new(m, probes, norm, signs, false);
        w.perturbed = m.sizes[1..].iter().map(|&n| vec![0f32; t_max * n]).collect();
        w
    };
    let (score, trace) = in_groups(m, x, y, first_global, work, |x, y, first, w| fd_group(m, x, y, first, seed, probes, h, released, norm, signs, w)).into_iter().unzip();
    Scores { score, trace, gauss_newton: None }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fd_group(m: &Mlp, x: &[f32], y: &[i64], first_global: u64, seed: u64, p: usize, h: f32, released: bool, norm: &FirstLayerNorm, signs: Option<&SignProduct>, w: &mut Work) -> Vec<(f32, f32)> {
    let (c, layers, n1) = (m.classes(), m.layers(), m.sizes[1]);
    let rows = y.len();
    let tp = rows * p;
    primal(m, x, y, w);
    first_tangent(m, first_global, seed, p, signs, rows, w);
    // Forward at x + hv: z₁ + h·ż₁, then the layers as usual; σ′ replaces each hidden
    // z once σ(z) has gone to `adot` for the next layer.
    for l in 0..layers {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        let z = &mut w.perturbed[l][..tp * out];
        if l == 0 {
            let (z1, step) = (&w.z[0][..rows * out], &w.zd[0][..tp * out]);
            for (t, (zt, st)) in z.chunks_mut(out).zip(step.chunks(out)).enumerate() {
                let base = &z1[(t / p) * out..(t / p + 1) * out];
                for k in 0..out {
                    zt[k] = base[k] + h * st[k];
                }
            }
        } else {
            for r in z.chunks_mut(out) {
                r.copy_from_slice(&m.biases[l]);
            }
            gemm_serial(&w.adot[..tp * fan_in], tp, fan_in, &m.weights[l], out, true, true, z);
        }
        if l + 1 < layers {
            let act = m.activation;
            for (zk, ak) in z.iter_mut().zip(&mut w.adot[..tp * out]) {
                let (s, s1, _) = act.eval(*zk);
                (*ak, *zk) = (s, s1);
            }
        }
    }
    // Backward at x + hv to the first layer, then Δ = that gradient − the primal one.
    let probs = &mut w.perturbed[layers - 1][..tp * c];
    crate::nn::mlp::softmax_in_place(probs, c);
    w.gd[..tp * c].copy_from_slice(probs);
    for t in 0..tp {
        w.gd[t * c + y[t / p] as usize] -= 1.0;
    }
    for l in (1..layers).rev() {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        gemm_serial(&w.gd[..tp * out], tp, out, &m.weights[l], fan_in, false, false, &mut w.gad[..tp * fan_in]);
        let slope = &w.perturbed[l - 1][..tp * fan_in];
        for i in 0..tp * fan_in {
            w.gd[i] = w.gad[i] * slope[i];
        }
    }
    for (t, delta) in w.gd[..tp * n1].chunks_mut(n1).enumerate() {
        let base = &w.g[(t / p) * n1..(t / p + 1) * n1];
        delta.iter_mut().zip(base).for_each(|(a, &b)| *a -= b);
    }
    let squares = squared_norms(m, norm, tp, &w.gd[..tp * n1], &mut w.out);
    let (delta, step) = (&w.gd[..tp * n1], &w.zd[0][..tp * n1]);
    let scale = if released { 1.0 } else { 1.0 / h as f64 };
    (0..rows)
        .map(|s| {
            let (mut sq, mut tr) = (0f64, 0f64);
            for t in s * p..(s + 1) * p {
                let square = squares[t] * scale * scale;
                sq += if released { square.sqrt() } else { square };
                tr += dot(&delta[t * n1..(t + 1) * n1], &step[t * n1..(t + 1) * n1]) * scale;
            }
            ((sq / p as f64) as f32, (tr / p as f64) as f32)
        })
        .collect()
}

/// The group's primal passes: z_l of every layer (the last one replaced by the softmax
/// probabilities), σ(z) in `a` for the next layer, σ′ in `d1`, σ″·g_a in `curv`, and in
/// `g` the loss gradient at the first layer's pre-activations (rows × n₁).
#[inline(always)]
fn primal(m: &Mlp, x: &[f32], y: &[i64], w: &mut Work) {
    let (c, layers, rows) = (m.classes(), m.layers(), y.len());
    // Forward: z_l, and σ′(z_l), σ″(z_l) of every hidden layer.
    for l in 0..layers {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        let z = &mut w.z[l][..rows * out];
        for r in z.chunks_mut(out) {
            r.copy_from_slice(&m.biases[l]);
        }
        let input = if l == 0 { x } else { &w.a[..rows * fan_in] };
        gemm_serial(input, rows, fan_in, &m.weights[l], out, true, true, z);
        if l + 1 < layers {
            // σ″ goes into `curv` for now; the primal backward multiplies in g_a.
            activation_terms(m.activation, z, &mut w.a[..rows * out], &mut w.d1[l][..rows * out], &mut w.curv[l][..rows * out]);
        }
    }
    // Softmax probabilities, in place of the logits.
    let probs = &mut w.z[layers - 1][..rows * c];
    crate::nn::mlp::softmax_in_place(probs, c);
    // Primal backward: g_a of every hidden layer, folded into curv = σ″(z)·g_a.
    w.g[..rows * c].copy_from_slice(probs);
    for (r, &label) in y.iter().enumerate() {
        w.g[r * c + label as usize] -= 1.0;
    }
    for l in (1..layers).rev() {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        let ga = &mut w.ga[..rows * fan_in];
        gemm_serial(&w.g[..rows * out], rows, out, &m.weights[l], fan_in, false, false, ga);
        let (d1, curv) = (&w.d1[l - 1][..rows * fan_in], &mut w.curv[l - 1][..rows * fan_in]);
        for i in 0..rows * fan_in {
            curv[i] *= ga[i];
            w.g[i] = ga[i] * d1[i];
        }
    }
}

/// The probes of the group's samples and ż₁ = vW₁ᵀ (rows·p × n₁) into `zd[0]`: on the
/// AMX tiles from the probes' bits where present, else from v (kept in `v`).
#[inline(always)]
fn first_tangent(m: &Mlp, first_global: u64, seed: u64, p: usize, signs: Option<&SignProduct>, rows: usize, w: &mut Work) {
    let (d, n1) = (m.input_dim(), m.sizes[1]);
    let tp = rows * p;
    if let Some(sp) = signs {
        let padded = tp.next_multiple_of(crate::amx::MN_STEP);
        let bits = &mut w.bits[..padded * sp.k];
        for s in 0..rows {
            for j in 0..p {
                probe_bits(seed, first_global + s as u64, j, d, &mut w.words, &mut bits[(s * p + j) * sp.k..][..d]);
            }
        }
        let zd = &mut w.zd[0];
        if zd.len() < padded * n1 {
            zd.resize(padded * n1, 0.0);
        }
        sp.product(bits, padded, n1, &mut w.ints, &mut zd[..padded * n1]);
    } else {
        let v = &mut w.v[..tp * d];
        for s in 0..rows {
            for j in 0..p {
                probe(seed, first_global + s as u64, j, d, &mut v[(s * p + j) * d..(s * p + j + 1) * d]);
            }
        }
        gemm_serial(v, tp, d, &m.weights[0], n1, true, false, &mut w.zd[0][..tp * n1]);
    }
}

/// ‖g R‖² (Cholesky) or ‖g W₁‖² (`Direct`) of each of the t rows of g (t × n₁):
/// ‖Hv‖² for the tangent reaching the first layer. `out` is scratch.
#[inline(always)]
fn squared_norms(m: &Mlp, norm: &FirstLayerNorm, t: usize, g: &[f32], out: &mut [f32]) -> Vec<f64> {
    let (d, n1) = (m.input_dim(), m.sizes[1]);
    let width = match norm {
        FirstLayerNorm::Cholesky(r) => {
            triangular_product(g, t, n1, r, &mut out[..t * n1]);
            n1
        }
        FirstLayerNorm::Direct => {
            gemm_serial(g, t, n1, &m.weights[0], d, false, false, &mut out[..t * d]);
            d
        }
    };
    (0..t).map(|i| sum_sq(&out[i * width..(i + 1) * width])).collect()
}

/// tr((AG)²) for each sample of the group, G = JJᵀ: the C rows of the logit Jacobian
/// start as W_L's rows and go back through σ′ and the weights, as C more tangent rows
/// per sample, to the first layer (J₁, with J = J₁W₁); then G = (J₁R)(J₁R)ᵀ through
/// the Cholesky factor, or (J₁W₁)(J₁W₁)ᵀ. Needs the group's primal pass (σ′ in `d1`,
/// the probabilities in the last `z`).
#[inline(always)]
fn gauss_newton_part(m: &Mlp, rows: usize, norm: &FirstLayerNorm, w: &mut Work) -> Vec<f32> {
    let (d, c, layers) = (m.input_dim(), m.classes(), m.layers());
    let tc = rows * c;
    // Width of the rows: the last hidden layer's (the logits' for no hidden layer).
    let last = if layers == 1 { c } else { m.sizes[layers - 1] };
    // Rows (s, k): W_L[k] ⊙ σ′(z_{L−1}) of sample s (or e_k for a network without
    // hidden layers, whose Jacobian is W₁ itself).
    for s in 0..rows {
        for k in 0..c {
            let row = &mut w.jac[(s * c + k) * last..(s * c + k + 1) * last];
            if layers == 1 {
                row.fill(0.0);
                row[k] = 1.0;
            } else {
                let slope = &w.d1[layers - 2][s * last..(s + 1) * last];
                row.iter_mut().zip(&m.weights[layers - 1][k * last..(k + 1) * last]).zip(slope).for_each(|((j, &wv), &sl)| *j = wv * sl);
            }
        }
    }
    for l in (1..layers - 1).rev() {
        let (fan_in, out) = (m.sizes[l], m.sizes[l + 1]);
        gemm_serial(&w.jac[..tc * out], tc, out, &m.weights[l], fan_in, false, false, &mut w.jac_next[..tc * fan_in]);
        let slope = &w.d1[l - 1][..rows * fan_in];
        for (i, row) in w.jac_next[..tc * fan_in].chunks_mut(fan_in).enumerate() {
            row.iter_mut().zip(&slope[(i / c) * fan_in..(i / c + 1) * fan_in]).for_each(|(j, &sl)| *j *= sl);
        }
        std::mem::swap(&mut w.jac, &mut w.jac_next);
    }
    // J₁R (or J₁W₁ = J) into `out`, rows of n₁ (or d).
    let n1 = m.sizes[1];
    let (width, reduced) = match norm {
        FirstLayerNorm::Cholesky(r) => {
            let out = &mut w.out[..tc * n1];
            triangular_product(&w.jac[..tc * n1], tc, n1, r, out);
            (n1, &w.out[..tc * n1])
        }
        FirstLayerNorm::Direct => {
            let out = &mut w.out[..tc * d];
            gemm_serial(&w.jac[..tc * n1], tc, n1, &m.weights[0], d, false, false, out);
            (d, &w.out[..tc * d])
        }
    };
    let probs = &w.z[layers - 1][..rows * c];
    (0..rows)
        .map(|s| {
            let y = &reduced[s * c * width..(s + 1) * c * width];
            let mut g = vec![0f64; c * c];
            for a in 0..c {
                for b in a..c {
                    let v = dot(&y[a * width..(a + 1) * width], &y[b * width..(b + 1) * width]);
                    (g[a * c + b], g[b * c + a]) = (v, v);
                }
            }
            super::trace_sq_ag(&super::a_times(&probs[s * c..(s + 1) * c], &g, c), c) as f32
        })
        .collect()
}

/// out (rows, n) = a (rows, n) · R for lower-triangular R (n, n): column block
/// [c0, c1) of R is zero above row c0, so it needs only columns c0.. of a.
#[inline(always)]
fn triangular_product(a: &[f32], rows: usize, n: usize, r: &[f32], out: &mut [f32]) {
    for c0 in (0..n).step_by(TRIANGLE_BLOCK) {
        let c1 = (c0 + TRIANGLE_BLOCK).min(n);
        // SAFETY: a's columns c0.. (row stride n), R's rows c0.. and columns c0..c1,
        // and the same columns of `out` all lie inside their slices.
        unsafe {
            crate::nn::linalg::gemm_strided(
                (rows, n - c0, c1 - c0),
                a.as_ptr().add(c0), (n as isize, 1),
                r.as_ptr().add(c0 * n + c0), (n as isize, 1),
                false,
                out.as_mut_ptr().add(c0), (n as isize, 1),
            );
        }
    }
}

/// σ(z), σ′(z), σ″(z) of every element.
#[inline(always)]
fn activation_terms(act: Activation, z: &[f32], a: &mut [f32], d1: &mut [f32], d2: &mut [f32]) {
    for i in 0..z.len() {
        let (s, s1, s2) = act.eval(z[i]);
        a[i] = s;
        d1[i] = s1;
        d2[i] = s2;
    }
}

#[inline(always)]
fn sum_sq(a: &[f32]) -> f64 {
    dot(a, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_products_on_the_tiles_match_float64() {
        if !crate::amx::available() {
            eprintln!("no AMX here: the float product runs instead");
            return;
        }
        let (n1, d, rows) = (40, 200, 96);
        let mut w = vec![0f32; n1 * d];
        crate::rng::Philox::new(5, 0).fill_normal(0, &mut w);
        // An all-zero row, a row spanning twelve orders of magnitude, a constant row.
        w[3 * d..4 * d].fill(0.0);
        for (k, v) in w[7 * d..8 * d].iter_mut().enumerate() {
            *v *= 10f32.powi(k as i32 % 12 - 6);
        }
        w[9 * d..10 * d].fill(-0.75);
        let sp = SignProduct::new(&w, n1, d);
        let mut bits = vec![0u8; rows * sp.k];
        let mut words = vec![0u64; d.div_ceil(64)];
        for r in 0..rows {
            probe_bits(11, r as u64, r % 3, d, &mut words, &mut bits[r * sp.k..r * sp.k + d]);
        }
        let mut ints = vec![0i32; SIGN_ROWS * DIGITS * sp.width];
        let mut out = vec![0f32; rows * n1];
        sp.product(&bits, rows, n1, &mut ints, &mut out);
        let mut v = vec![0f32; d];
        for r in 0..rows {
            super::super::probe(11, r as u64, r % 3, d, &mut v);
            assert!(bits[r * sp.k..(r + 1) * sp.k].iter().enumerate().all(|(k, &b)| if k < d { (b == 1) == (v[k] > 0.0) } else { b == 0 }));
            for o in 0..n1 {
                let row = &w[o * d..(o + 1) * d];
                let want: f64 = row.iter().zip(&v).map(|(&a, &b)| a as f64 * b as f64).sum();
                // W₁'s rounding to steps of largest/(127·2¹⁶), half a step per term,
                // and the float32 result.
                let largest = row.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
                let bound = d as f64 * 0.5 * largest / (127.0 * 65536.0) + want.abs() * 2f64.powi(-24);
                assert!((out[r * n1 + o] as f64 - want).abs() <= bound, "row {r}, unit {o}: {} vs {want}", out[r * n1 + o]);
            }
        }
    }

    #[test]
    fn cholesky_factor_reproduces_the_gram_matrix() {
        let m = Mlp::init(&[40, 24, 10], Activation::Gelu, 3);
        let k = m.first_gram();
        let FirstLayerNorm::Cholesky(r) = FirstLayerNorm::new(&m) else { panic!("K = W₁W₁ᵀ of a random 24×40 W₁ is positive definite") };
        let n = 24;
        for i in 0..n {
            for j in 0..n {
                let rr: f64 = (0..n).map(|t| r[i * n + t] as f64 * r[j * n + t] as f64).sum();
                assert!((rr - k[i * n + j] as f64).abs() < 1e-5 * k[i * n + i] as f64, "({i},{j}): {rr} vs {}", k[i * n + j]);
                if j > i {
                    assert_eq!(r[i * n + j], 0.0);
                }
            }
        }
        // A first layer that widens the input has a singular K.
        assert!(matches!(FirstLayerNorm::new(&Mlp::init(&[8, 16, 3], Activation::Gelu, 1)), FirstLayerNorm::Direct));
    }
}
