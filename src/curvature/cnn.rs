//! Per-sample input curvature of convolutional networks (nn/graph.rs) on the CPU, in
//! evaluation mode with BatchNorm folded into the convolutions (ALGORITHMS.md §4: the
//! authors call net.eval(), so every sample is independent).
//!
//! Piecewise-linear networks (relu, max-pool; every other layer affine) have the input
//! Hessian H = Jᵀ A J exactly, A = diag p − ppᵀ, J the C × d logit Jacobian. J comes from
//! C backward passes of the evaluation graph (one per class, all samples at once); then
//! G = JJᵀ and the probe projections u = Jv feed the same low-rank finish as the MLPs'
//! (`finish_low_rank`): `exact` gives tr(H²) = tr((AG)²) and tr(H) = tr(AG) probe-free,
//! `hutchinson` the mean over probes of ‖Hv‖² and vᵀHv with the same Rademacher probes
//! as the MLP path. `fd` works for any activation: ∇L(x + hv) − ∇L(x) from two backward
//! passes per probe, with the paper's or the released code's statistic.

use super::{finish_low_rank, probe, Estimator, LowRank, ScoreConfig, Scores, Statistic};
use crate::nn::graph::{Graph, Mode, Op};
use crate::nn::layers::dense::{cross_entropy_grad, softmax_cross_entropy};
use crate::nn::layers::Tensor;
use crate::nn::mlp::Activation;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Whether every activation of `g` is piecewise linear (so H = JᵀAJ).
pub fn piecewise_linear(g: &Graph) -> bool {
    g.nodes.iter().all(|n| !matches!(n.op, Op::Act(a) if !a.piecewise_linear()))
}

/// Scores of samples `x` (rows, C·H·W, inputs as the network reads them) with labels
/// `y`, whose training-set indices start at `first_global`; `g` in evaluation mode
/// (pass `Graph::folded`).
pub fn scores(g: &Graph, x: &[f32], y: &[i64], first_global: u64, cfg: &ScoreConfig) -> Result<Scores> {
    let linear = piecewise_linear(g);
    cfg.validate(if linear { Activation::Relu } else { Activation::Tanh })?;
    let [c, h, w] = g.input;
    let d = c * h * w;
    let rows = y.len();
    if x.len() != rows * d {
        bail!("internal error: {} inputs for {rows} samples of {d} values", x.len());
    }
    let input = Tensor::new(vec![rows, c, h, w], x.to_vec());
    match cfg.estimator {
        Estimator::Fd => fd(g, input, y, first_global, cfg),
        _ if !linear => bail!(
            "exact Hessian-vector products of a convolutional network with smooth activations need second-order terms rote does not have for CNNs yet; use --estimator fd"
        ),
        est => {
            let f = g.forward(input, Mode::Eval)?;
            let classes = g.classes;
            let (probs, _) = softmax_cross_entropy(f.logits(), y);
            // J[s, k, :] = ∂z_k/∂x for sample s: backward from the one-hot e_k.
            let mut jac = vec![0f32; rows * classes * d];
            for k in 0..classes {
                let mut onehot = vec![0f32; rows * classes];
                (0..rows).for_each(|s| onehot[s * classes + k] = 1.0);
                let (gx, _) = g.backward(&f, Tensor::new(vec![rows, classes], onehot), true)?;
                let gx = gx.unwrap();
                for s in 0..rows {
                    jac[(s * classes + k) * d..(s * classes + k + 1) * d].copy_from_slice(&gx.data[s * d..(s + 1) * d]);
                }
            }
            let probes = if est == Estimator::Exact && cfg.statistic == Statistic::Paper { 0 } else { cfg.probes };
            let per_sample: Vec<(Vec<f64>, Vec<f64>)> = (0..rows)
                .into_par_iter()
                .map(|s| {
                    let j = &jac[s * classes * d..(s + 1) * classes * d];
                    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
                    let mut gram = vec![0f64; classes * classes];
                    for a in 0..classes {
                        for b in 0..classes {
                            gram[a * classes + b] = dot(&j[a * d..(a + 1) * d], &j[b * d..(b + 1) * d]);
                        }
                    }
                    let mut v = vec![0f32; d];
                    let mut proj = Vec::with_capacity(probes * classes);
                    for k in 0..probes {
                        probe(cfg.seed, first_global + s as u64, k, d, &mut v);
                        proj.extend((0..classes).map(|a| dot(&j[a * d..(a + 1) * d], &v)));
                    }
                    (gram, proj)
                })
                .collect();
            let (gram, projections) = per_sample.into_iter().fold((vec![], vec![]), |(mut g, mut p), (a, b)| {
                g.extend(a);
                p.extend(b);
                (g, p)
            });
            let lr = LowRank { rows, classes, probes, gram, probs, projections };
            Ok(finish_low_rank(&lr, est == Estimator::Exact))
        }
    }
}

/// ∇ₓ CE per sample at `x` (evaluation mode).
fn input_gradients(g: &Graph, x: Tensor, y: &[i64]) -> Result<Vec<f32>> {
    let f = g.forward(x, Mode::Eval)?;
    let (probs, _) = softmax_cross_entropy(f.logits(), y);
    let grad = Tensor::new(f.logits().shape.clone(), cross_entropy_grad(&probs, y, g.classes, 1.0));
    Ok(g.backward(&f, grad, true)?.0.unwrap().data)
}

fn fd(g: &Graph, x: Tensor, y: &[i64], first_global: u64, cfg: &ScoreConfig) -> Result<Scores> {
    let rows = y.len();
    let d = x.per_sample();
    let base = input_gradients(g, x.clone(), y)?;
    let (h, released) = (cfg.h, cfg.statistic == Statistic::ReleasedCode);
    let scale = if released { 1.0 } else { 1.0 / h as f64 };
    let (mut score, mut trace) = (vec![0f64; rows], vec![0f64; rows]);
    let mut v = vec![0f32; d];
    for k in 0..cfg.probes {
        let mut shifted = x.clone();
        let mut probes = vec![0f32; rows * d];
        for s in 0..rows {
            probe(cfg.seed, first_global + s as u64, k, d, &mut v);
            probes[s * d..(s + 1) * d].copy_from_slice(&v);
            shifted.data[s * d..(s + 1) * d].iter_mut().zip(&v).for_each(|(a, &b)| *a += h * b);
        }
        let moved = input_gradients(g, shifted, y)?;
        for s in 0..rows {
            let diff = (s * d..(s + 1) * d).map(|i| (moved[i] - base[i]) as f64 * scale);
            let (mut sq, mut tr) = (0f64, 0f64);
            for (t, &p) in diff.zip(&probes[s * d..(s + 1) * d]) {
                sq += t * t;
                tr += t * p as f64;
            }
            score[s] += if released { sq.sqrt() } else { sq };
            trace[s] += tr;
        }
    }
    let n = cfg.probes.max(1) as f64;
    Ok(Scores { score: score.iter().map(|v| (v / n) as f32).collect(), trace: trace.iter().map(|v| (v / n) as f32).collect(), gauss_newton: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::models::build;

    /// H = JᵀAJ with J by central differences of the evaluation logits (exact for a
    /// piecewise-linear network away from its kinks), in float64.
    fn explicit_hessians(g: &Graph, x: &[f32], rows: usize) -> Vec<Vec<f64>> {
        let [c, hh, ww] = g.input;
        let d = c * hh * ww;
        let classes = g.classes;
        let logits = |x: &[f32]| g.forward(Tensor::new(vec![rows, c, hh, ww], x.to_vec()), Mode::Eval).unwrap().logits().data.clone();
        let z = logits(x);
        let step = 1e-3f32;
        let mut jac = vec![0f64; rows * classes * d];
        for i in 0..d {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            for s in 0..rows {
                a[s * d + i] += step;
                b[s * d + i] -= step;
            }
            let (za, zb) = (logits(&a), logits(&b));
            for s in 0..rows {
                for k in 0..classes {
                    jac[(s * classes + k) * d + i] = (za[s * classes + k] as f64 - zb[s * classes + k] as f64) / (2.0 * step as f64);
                }
            }
        }
        (0..rows)
            .map(|s| {
                let zs = &z[s * classes..(s + 1) * classes];
                let top = zs.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let e: Vec<f64> = zs.iter().map(|&v| (v as f64 - top).exp()).collect();
                let p: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
                let j = &jac[s * classes * d..(s + 1) * classes * d];
                let mut hm = vec![0f64; d * d];
                for a in 0..classes {
                    for b in 0..classes {
                        let aab = if a == b { p[a] } else { 0.0 } - p[a] * p[b];
                        if aab == 0.0 {
                            continue;
                        }
                        for i in 0..d {
                            for k in 0..d {
                                hm[i * d + k] += j[a * d + i] * aab * j[b * d + k];
                            }
                        }
                    }
                }
                hm
            })
            .collect()
    }

    #[test]
    fn relu_cnn_scores_equal_the_explicit_hessian() {
        let mut g = build("cnn:c3-bn-relu-p2-c4k3s1-relu-fc5", [2, 6, 6], 4).unwrap();
        // BN statistics away from their start, then evaluation mode with BN folded.
        if let Op::BatchNorm(bn) = &mut g.nodes[1].op {
            bn.running_mean = vec![0.2, -0.1, 0.05];
            bn.running_var = vec![0.5, 1.7, 0.9];
            bn.weight = vec![1.3, 0.7, 1.1];
        }
        let g = g.folded().unwrap();
        let rows = 4;
        let d = 2 * 36;
        let x = crate::nn::layers::uniform_values(8, 1, rows * d, -1.0, 1.0);
        let y = vec![0, 3, 1, 4];
        let hs = explicit_hessians(&g, &x, rows);
        let cfg = |estimator, probes| ScoreConfig { estimator, statistic: Statistic::Paper, probes, h: 1e-3, seed: 11 };
        let exact = scores(&g, &x, &y, 100, &cfg(Estimator::Exact, 0)).unwrap();
        let hutch = scores(&g, &x, &y, 100, &cfg(Estimator::Hutchinson, 6)).unwrap();
        let fd = scores(&g, &x, &y, 100, &cfg(Estimator::Fd, 6)).unwrap();
        for (s, hm) in hs.iter().enumerate() {
            let frob: f64 = hm.iter().map(|v| v * v).sum();
            let tr: f64 = (0..d).map(|i| hm[i * d + i]).sum();
            assert!((exact.score[s] as f64 - frob).abs() <= 1e-3 * frob, "sample {s}: tr(H²) {} vs {frob}", exact.score[s]);
            assert!((exact.trace[s] as f64 - tr).abs() <= 1e-3 * frob.sqrt(), "sample {s}: tr(H) {} vs {tr}", exact.trace[s]);
            // Hutchinson with the same probes, against Hv from the explicit matrix.
            let (mut sq, mut vhv) = (0f64, 0f64);
            let mut v = vec![0f32; d];
            for k in 0..6 {
                probe(11, 100 + s as u64, k, d, &mut v);
                let hv: Vec<f64> = (0..d).map(|i| (0..d).map(|j| hm[i * d + j] * v[j] as f64).sum()).collect();
                sq += hv.iter().map(|t| t * t).sum::<f64>();
                vhv += hv.iter().zip(&v).map(|(a, &b)| a * b as f64).sum::<f64>();
            }
            let (sq, vhv) = (sq / 6.0, vhv / 6.0);
            assert!((hutch.score[s] as f64 - sq).abs() <= 1e-3 * sq, "sample {s}: ‖Hv‖² {} vs {sq}", hutch.score[s]);
            assert!((hutch.trace[s] as f64 - vhv).abs() <= 1e-3 * sq.sqrt(), "sample {s}: vᵀHv {} vs {vhv}", hutch.trace[s]);
            // Finite differences of the gradient: the same Hv up to O(h) and float32.
            assert!((fd.score[s] as f64 - sq).abs() <= 3e-2 * sq, "sample {s}: fd ‖Hv‖² {} vs {sq}", fd.score[s]);
        }
        // Smooth activations: finite differences only.
        let smooth = build("cnn:c3-tanh-p2-fc5", [2, 6, 6], 4).unwrap();
        assert!(scores(&smooth, &x, &y, 0, &cfg(Estimator::Hutchinson, 2)).unwrap_err().to_string().contains("--estimator fd"));
        assert!(scores(&smooth, &x, &y, 0, &cfg(Estimator::Fd, 2)).is_ok());
    }
}
