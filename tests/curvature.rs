//! Curvature against independent float64 references: central differences of a
//! float64 MLP written here, closed forms, explicit Hessians; and the science check
//! on a CI-sized run.

mod common;
use common::*;
use rote::curvature::{self, Estimator, ScoreConfig, Statistic};
use rote::nn::mlp::{Activation, Mlp};

/// The same network in float64, written independently of rote's.
struct Reference {
    sizes: Vec<usize>,
    act: Activation,
    w: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
}

impl Reference {
    fn of(m: &Mlp) -> Self {
        Reference {
            sizes: m.sizes.clone(),
            act: m.activation,
            w: m.weights.iter().map(|w| w.iter().map(|&v| v as f64).collect()).collect(),
            b: m.biases.iter().map(|b| b.iter().map(|&v| v as f64).collect()).collect(),
        }
    }

    fn sigma(&self, z: f64) -> (f64, f64) {
        match self.act {
            Activation::Relu => if z > 0.0 { (z, 1.0) } else { (0.0, 0.0) },
            Activation::Tanh => (z.tanh(), 1.0 - z.tanh().powi(2)),
            Activation::Softplus => ((1.0 + z.exp()).ln(), 1.0 / (1.0 + (-z).exp())),
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-z).exp());
                (z * s, s * (1.0 + z * (1.0 - s)))
            }
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(z / 2f64.sqrt()));
                let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (z * cdf, cdf + z * pdf)
            }
        }
    }

    /// (pre-activations per layer, inputs per layer)
    fn forward(&self, x: &[f64]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let mut a = x.to_vec();
        let (mut zs, mut ins) = (vec![], vec![]);
        for l in 0..self.w.len() {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            let z: Vec<f64> = (0..o).map(|k| self.b[l][k] + (0..i).map(|j| self.w[l][k * i + j] * a[j]).sum::<f64>()).collect();
            ins.push(a.clone());
            a = if l + 1 < self.w.len() { z.iter().map(|&t| self.sigma(t).0).collect() } else { z.clone() };
            zs.push(z);
        }
        (zs, ins)
    }

    fn loss(&self, x: &[f64], y: usize) -> f64 {
        let (zs, _) = self.forward(x);
        let z = zs.last().unwrap();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        lse - z[y]
    }

    fn grad(&self, x: &[f64], y: usize) -> Vec<f64> {
        let (zs, _) = self.forward(x);
        let z = zs.last().unwrap();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
        let mut g: Vec<f64> = z.iter().map(|v| (v - m).exp() / s).collect();
        g[y] -= 1.0;
        for l in (0..self.w.len()).rev() {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            let ga: Vec<f64> = (0..i).map(|j| (0..o).map(|k| g[k] * self.w[l][k * i + j]).sum()).collect();
            if l == 0 {
                return ga;
            }
            g = ga.iter().zip(&zs[l - 1]).map(|(a, &zz)| a * self.sigma(zz).1).collect();
        }
        unreachable!()
    }
}

impl Reference {
    /// J = ∂z_L/∂x (C, d), row-major, by the chain rule in float64.
    fn jacobian(&self, x: &[f64]) -> Vec<f64> {
        let (zs, _) = self.forward(x);
        let layers = self.w.len();
        let c = self.sizes[layers];
        // Rows: output units; start with W_L and walk towards the input.
        let mut j = self.w[layers - 1].clone();
        for l in (0..layers - 1).rev() {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            let mut next = vec![0f64; c * i];
            for r in 0..c {
                for k in 0..o {
                    let t = j[r * o + k] * self.sigma(zs[l][k]).1;
                    for q in 0..i {
                        next[r * i + q] += t * self.w[l][k * i + q];
                    }
                }
            }
            j = next;
        }
        j
    }

    /// (tr((JᵀAJ)²), tr(JᵀAJ)) with A = diag p − ppᵀ, through the explicit d × d matrix.
    fn gauss_newton(&self, x: &[f64]) -> (f64, f64) {
        let (zs, _) = self.forward(x);
        let z = zs.last().unwrap();
        let (c, d) = (z.len(), x.len());
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
        let p: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
        let j = self.jacobian(x);
        let mut h = vec![0f64; d * d];
        for a in 0..c {
            for b in 0..c {
                let ab = if a == b { p[a] } else { 0.0 } - p[a] * p[b];
                for u in 0..d {
                    for v in 0..d {
                        h[u * d + v] += j[a * d + u] * ab * j[b * d + v];
                    }
                }
            }
        }
        (h.iter().map(|v| v * v).sum(), (0..d).map(|u| h[u * d + u]).sum())
    }
}

fn input(d: usize, seed: u64) -> Vec<f32> {
    let mut x = vec![0f32; d];
    rote::rng::Philox::new(seed, 77).fill_normal(0, &mut x);
    x
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&u, &v)| (u as f64 - v).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    num / den.max(1e-12)
}

const ACTS: [Activation; 5] = [Activation::Relu, Activation::Tanh, Activation::Softplus, Activation::Gelu, Activation::Silu];

#[test]
fn input_gradient_matches_float64_central_differences() {
    for act in ACTS {
        let m = Mlp::init(&[12, 20, 16, 5], act, 3);
        let r = Reference::of(&m);
        for s in 0..4 {
            let x = input(12, s);
            let y = (s % 5) as usize;
            let g = m.input_grad(&x, &[y as i64], 1);
            let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let h = 1e-6;
            let fd: Vec<f64> = (0..12)
                .map(|i| {
                    let (mut p, mut q) = (xd.clone(), xd.clone());
                    p[i] += h;
                    q[i] -= h;
                    (r.loss(&p, y) - r.loss(&q, y)) / (2.0 * h)
                })
                .collect();
            let e = rel_err(&g, &fd);
            assert!(e < 1e-4, "{act:?}: gradient relative error {e}");
        }
    }
}

#[test]
fn exact_hvp_matches_central_differences_of_the_gradient() {
    for act in ACTS {
        let m = Mlp::init(&[10, 24, 12, 4], act, 9);
        let r = Reference::of(&m);
        let (rows, probes) = (3, 2);
        let x: Vec<f32> = (0..rows).flat_map(|s| input(10, 100 + s as u64)).collect();
        let y: Vec<i64> = (0..rows as i64).map(|s| s % 4).collect();
        let v: Vec<f32> = (0..rows * probes).flat_map(|k| input(10, 500 + k as u64)).collect();
        let hv = m.input_hvp(&x, &y, rows, &v, probes);
        for s in 0..rows {
            for j in 0..probes {
                let row = s * probes + j;
                let xd: Vec<f64> = x[s * 10..(s + 1) * 10].iter().map(|&t| t as f64).collect();
                let vd: Vec<f64> = v[row * 10..(row + 1) * 10].iter().map(|&t| t as f64).collect();
                let h = 1e-5;
                let p: Vec<f64> = xd.iter().zip(&vd).map(|(a, b)| a + h * b).collect();
                let q: Vec<f64> = xd.iter().zip(&vd).map(|(a, b)| a - h * b).collect();
                let (gp, gq) = (r.grad(&p, y[s] as usize), r.grad(&q, y[s] as usize));
                let fd: Vec<f64> = gp.iter().zip(&gq).map(|(a, b)| (a - b) / (2.0 * h)).collect();
                let e = rel_err(&hv[row * 10..(row + 1) * 10], &fd);
                assert!(e < 1e-3, "{act:?} sample {s} probe {j}: HVP relative error {e}");
            }
        }
    }
}

#[test]
fn linear_softmax_hessian_is_the_closed_form() {
    // No hidden layer: H = Wᵀ(diag p − ppᵀ)W exactly.
    let (d, c) = (7, 4);
    let m = Mlp::init(&[d, c], Activation::Relu, 5);
    let x = input(d, 1);
    let w: Vec<f64> = m.weights[0].iter().map(|&v| v as f64).collect();
    let z: Vec<f64> = (0..c).map(|k| m.biases[0][k] as f64 + (0..d).map(|j| w[k * d + j] * x[j] as f64).sum::<f64>()).collect();
    let mx = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
    let p: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
    let h = |i: usize, j: usize| -> f64 {
        let mut s = 0.0;
        for a in 0..c {
            for b in 0..c {
                let ab = if a == b { p[a] } else { 0.0 } - p[a] * p[b];
                s += w[a * d + i] * ab * w[b * d + j];
            }
        }
        s
    };
    let v = input(d, 2);
    let hv = m.input_hvp(&x, &[1], 1, &v, 1);
    let want: Vec<f64> = (0..d).map(|i| (0..d).map(|j| h(i, j) * v[j] as f64).sum()).collect();
    assert!(rel_err(&hv, &want) < 1e-5, "{}", rel_err(&hv, &want));
}

#[test]
fn probe_free_scores_equal_the_explicit_hessian() {
    // For relu, build H column by column (H e_i) and compare tr(H²) = ‖H‖²_F, tr(H).
    let d = 9;
    let m = Mlp::init(&[d, 30, 30, 6], Activation::Relu, 11);
    for s in 0..3 {
        let x = input(d, 40 + s);
        let y = [(s % 6) as i64];
        let basis: Vec<f32> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
        let h = m.input_hvp(&x, &y, 1, &basis, d);
        let fro: f64 = h.iter().map(|&v| (v as f64).powi(2)).sum();
        let tr: f64 = (0..d).map(|i| h[i * d + i] as f64).sum();
        let (tsq, t) = curvature::gauss_newton(&m, &x, 1);
        assert!((tsq[0] as f64 - fro).abs() <= 1e-4 * fro.max(1e-12), "tr(H²) {} vs {fro}", tsq[0]);
        assert!((t[0] as f64 - tr).abs() <= 1e-4 * tr.abs().max(1e-12), "tr(H) {} vs {tr}", t[0]);
    }
}

#[test]
fn gauss_newton_scores_match_the_float64_jacobian() {
    // Widths with partial 32-column strips, and 13 classes (more than one register
    // block of output rows), for every activation; several samples per call.
    // A first layer narrower than the input (the Cholesky route for the part beside
    // Hutchinson) and none at all, smooth.
    let nets = ACTS.iter().map(|&act| (vec![45, 70, 37, 13], act)).chain([(vec![45, 13], Activation::Relu), (vec![45, 30, 20, 13], Activation::Gelu), (vec![45, 13], Activation::Tanh)]);
    for (sizes, act) in nets {
        let m = Mlp::init(&sizes, act, 21);
        let r = Reference::of(&m);
        let rows = 6;
        let x: Vec<f32> = (0..rows).flat_map(|s| input(45, 300 + s as u64)).collect();
        let (tsq, t) = curvature::gauss_newton(&m, &x, rows);
        // The exact estimator of a smooth network computes the part beside its
        // Hutchinson scores, in the same passes.
        let y: Vec<i64> = (0..rows as i64).map(|s| s % 13).collect();
        let cfg = ScoreConfig { estimator: Estimator::Exact, statistic: Statistic::Paper, probes: 2, h: 0.0, seed: 1 };
        let beside = curvature::scores(&m, &x, &y, 0, &cfg).unwrap().gauss_newton.unwrap();
        for s in 0..rows {
            let xd: Vec<f64> = x[s * 45..(s + 1) * 45].iter().map(|&v| v as f64).collect();
            let (want_sq, want_tr) = r.gauss_newton(&xd);
            assert!((tsq[s] as f64 - want_sq).abs() <= 1e-4 * want_sq, "{act:?} sample {s}: tr((JᵀAJ)²) {} vs {want_sq}", tsq[s]);
            assert!((t[s] as f64 - want_tr).abs() <= 1e-4 * want_tr, "{act:?} sample {s}: tr(JᵀAJ) {} vs {want_tr}", t[s]);
            assert!((beside[s] as f64 - want_sq).abs() <= 1e-4 * want_sq, "{act:?} sample {s}: beside Hutchinson, tr((JᵀAJ)²) {} vs {want_sq}", beside[s]);
        }
    }
}

/// rote's Hutchinson scores for `m` against the norms of the Hv that `input_hvp` forms
/// (forward-over-reverse) on the same probes, to relative error `tol` (vᵀHv relative to
/// the mean Σ|Hv|).
fn check_hutchinson_against_explicit_hvps(m: &Mlp, probe_seed: u64, rows: usize, tol: f64) {
    let (d, p, first) = (m.input_dim(), 3, 100u64);
    let x: Vec<f32> = (0..rows).flat_map(|s| input(d, 500 + s as u64)).collect();
    let y: Vec<i64> = (0..rows as i64).map(|s| s % m.classes() as i64).collect();
    let cfg = ScoreConfig { estimator: Estimator::Hutchinson, statistic: Statistic::Paper, probes: p, h: 0.0, seed: probe_seed };
    let got = curvature::scores(m, &x, &y, first, &cfg).unwrap();
    let mut v = vec![0f32; rows * p * d];
    for s in 0..rows {
        for j in 0..p {
            curvature::probe(probe_seed, first + s as u64, j, d, &mut v[(s * p + j) * d..(s * p + j + 1) * d]);
        }
    }
    let hv = m.input_hvp(&x, &y, rows, &v, p);
    for s in 0..rows {
        let (mut sq, mut tr, mut scale) = (0f64, 0f64, 0f64);
        for j in 0..p {
            let (hvr, vr) = (&hv[(s * p + j) * d..(s * p + j + 1) * d], &v[(s * p + j) * d..(s * p + j + 1) * d]);
            sq += hvr.iter().map(|&t| (t as f64).powi(2)).sum::<f64>();
            tr += hvr.iter().zip(vr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
            scale += hvr.iter().map(|&t| t.abs() as f64).sum::<f64>();
        }
        let (sq, tr, scale) = (sq / p as f64, tr / p as f64, scale / p as f64);
        let act = m.activation;
        assert!((got.score[s] as f64 - sq).abs() <= tol * sq, "{act:?} sample {s}: ‖Hv‖² {} vs {sq}", got.score[s]);
        assert!((got.trace[s] as f64 - tr).abs() <= tol * scale, "{act:?} sample {s}: vᵀHv {} vs {tr}", got.trace[s]);
    }
}

#[test]
fn relu_hutchinson_equals_forward_over_reverse_probes() {
    // The low-rank shortcut for relu must give the scores of the plain HVPs.
    check_hutchinson_against_explicit_hvps(&Mlp::init(&[45, 70, 37, 13], Activation::Relu, 8), 4, 5, 1e-4);
}

#[test]
fn hutchinson_scores_equal_the_explicit_hvps() {
    // With a first layer narrower than the input, ‖Hv‖² and vᵀHv come from the tangent
    // at the first layer and K = W₁W₁ᵀ, never forming Hv; wider first layers form Hv.
    // Where the CPU has AMX, ż₁ = vW₁ᵀ runs on the integer tiles.
    for (sizes, act) in [([30, 12, 9, 4], Activation::Gelu), ([30, 12, 9, 4], Activation::Tanh), ([6, 12, 9, 4], Activation::Softplus)] {
        check_hutchinson_against_explicit_hvps(&Mlp::init(&sizes, act, 13), 9, 5, 1e-5);
    }
    // Several groups of samples, the last one partial, and more tangent rows than one
    // pass of the tiles takes.
    check_hutchinson_against_explicit_hvps(&Mlp::init(&[150, 70, 33, 7], Activation::Gelu, 21), 2, 75, 1e-5);
}

#[test]
fn large_batches_score_like_single_samples() {
    // Batches are scored in groups; each sample keeps its own probes (keyed by its index).
    let (d, rows) = (20, 300);
    let m = Mlp::init(&[d, 16, 5], Activation::Gelu, 6);
    let x: Vec<f32> = (0..rows).flat_map(|s| input(d, 700 + s as u64)).collect();
    let y: Vec<i64> = (0..rows as i64).map(|s| s % 5).collect();
    for estimator in [Estimator::Hutchinson, Estimator::Exact, Estimator::Fd] {
        let cfg = ScoreConfig { estimator, statistic: Statistic::Paper, probes: 2, h: 1e-2, seed: 3 };
        let batch = curvature::scores(&m, &x, &y, 40, &cfg).unwrap();
        for s in (0..rows).step_by(37) {
            let one = curvature::scores(&m, &x[s * d..(s + 1) * d], &y[s..s + 1], 40 + s as u64, &cfg).unwrap();
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-6);
            assert!(close(batch.score[s], one.score[0]), "{estimator:?} sample {s}: {} vs {}", batch.score[s], one.score[0]);
            assert!(close(batch.trace[s], one.trace[0]), "{estimator:?} sample {s}: {} vs {}", batch.trace[s], one.trace[0]);
            if let (Some(a), Some(b)) = (&batch.gauss_newton, &one.gauss_newton) {
                assert!(close(a[s], b[0]), "{estimator:?} sample {s}: Gauss–Newton {} vs {}", a[s], b[0]);
            }
        }
    }
}

#[test]
fn finite_differences_approach_the_exact_estimator() {
    let m = Mlp::init(&[16, 32, 8], Activation::Tanh, 2);
    let rows = 5;
    let x: Vec<f32> = (0..rows).flat_map(|s| input(16, 900 + s as u64)).collect();
    let y: Vec<i64> = (0..rows as i64).map(|s| s % 8).collect();
    let score = |estimator, h| {
        let cfg = ScoreConfig { estimator, statistic: Statistic::Paper, probes: 4, h, seed: 1 };
        curvature::scores(&m, &x, &y, 0, &cfg).unwrap().score
    };
    let exact = score(Estimator::Hutchinson, 0.0);
    let err = |h: f32| -> f64 {
        let fd = score(Estimator::Fd, h);
        fd.iter().zip(&exact).map(|(a, b)| ((a - b) / b).abs() as f64).fold(0.0, f64::max)
    };
    let (coarse, fine) = (err(0.3), err(0.03));
    assert!(fine < coarse / 4.0, "error at h=0.3: {coarse}, at h=0.03: {fine}");
    assert!(fine < 0.05, "finite differences at h=0.03 are {fine} off");
}

#[test]
fn auroc_and_precision_known_values() {
    // scikit-learn's roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75.
    let auc = curvature::auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
    assert!((auc - 0.75).abs() < 1e-12);
    // Ties count half.
    assert_eq!(curvature::auroc(&[1.0, 1.0], &[true, false]), Some(0.5));
    assert_eq!(curvature::precision_at_k(&[0.9, 0.1, 0.8, 0.7], &[true, false, false, true], 2), 0.5);
}

#[test]
fn label_noise_ranks_at_the_top_on_digits() {
    let dir = tempdir();
    let run = dir.path().join("run");
    rote_ok(&[
        "train", "--data", "digits", "--model", "mlp:64-256-256-10,act=relu", "--epochs", "60", "--batch", "32", "--lr", "0.05",
        "--label-noise", "0.05", "--duplicate-conflicts", "10", "--out", p(&run),
    ]);
    assert!(run.join("checkpoints/epoch-060.safetensors").is_file());
    let out = dir.path().join("scores");
    let v = json(&rote_ok(&["curvature", "--run", p(&run), "--every", "5", "--out", p(&out), "--json"]));
    assert_eq!(v["checkpoints"], 12);
    assert!(v["auroc"].as_f64().unwrap() >= 0.8, "{v}");
    assert!(out.join("score.npy").is_file() && out.join("trace.npy").is_file());
    // The conflicting duplicates (the last 10 samples) rank high: against the clean
    // samples their AUROC is well above chance. (For relu, H does not depend on the
    // label, so a duplicate and its original score the same.)
    let score = rote::data::Array::open_npy(&out.join("score.npy")).unwrap().to_f32();
    let corrupted = rote::data::Array::open_npy(&run.join("corrupted.npy")).unwrap().to_i64().unwrap();
    let n = score.len();
    let (dup_or_clean, is_dup): (Vec<f32>, Vec<bool>) =
        (0..n).filter(|&i| i >= n - 10 || corrupted[i] == 0).map(|i| (score[i], i >= n - 10)).unzip();
    let dup_auroc = curvature::auroc(&dup_or_clean, &is_dup).unwrap();
    assert!(dup_auroc >= 0.75, "duplicates vs clean samples: AUROC {dup_auroc}");
}

#[test]
fn checkpoints_from_pytorch_names_load_and_bad_ones_are_rejected() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = tempdir();
    let m = Mlp::init(&[6, 5, 3], Activation::Tanh, 1);
    let mut tensors = vec![];
    for l in 0..2 {
        tensors.push((format!("{}.weight", 2 * l), vec![m.sizes[l + 1], m.sizes[l]], bytemuck::cast_slice(&m.weights[l]).to_vec()));
        tensors.push((format!("{}.bias", 2 * l), vec![m.sizes[l + 1]], bytemuck::cast_slice(&m.biases[l]).to_vec()));
    }
    let views: Vec<(String, TensorView)> = tensors.iter().map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap())).collect();
    let path = dir.path().join("torch.safetensors");
    std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
    let loaded = rote::nn::checkpoint::load(&path, &[6, 5, 3], Activation::Tanh).unwrap();
    assert_eq!(loaded.weights, m.weights);
    let err = rote::nn::checkpoint::load(&path, &[6, 4, 3], Activation::Tanh).unwrap_err().to_string();
    assert!(err.contains("0.weight") && err.contains("shape"), "{err}");
    let err = rote::nn::checkpoint::load(&path, &[6, 5, 3, 2], Activation::Tanh).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn bad_training_and_scoring_input_is_rejected() {
    let dir = tempdir();
    let err = rote_err(&["train", "--data", "digits", "--model", "mlp:784-10", "--epochs", "1", "--out", p(&dir.path().join("a"))]);
    assert!(err.contains("784 inputs") && err.contains("64 features"), "{err}");
    let err = rote_err(&["train", "--data", "digits", "--model", "mlp:64-32-10", "--epochs", "3", "--lr", "1e6", "--out", p(&dir.path().join("b"))]);
    assert!(err.contains("epoch 1") && err.contains("--lr"), "{err}");
    let run = dir.path().join("c");
    rote_ok(&["train", "--data", "digits:subset=20", "--model", "mlp:64-16-10,act=tanh", "--epochs", "1", "--out", p(&run)]);
    let err = rote_err(&["curvature", "--run", p(&run), "--estimator", "hutchinson", "--probes", "0", "--out", p(&dir.path().join("s"))]);
    assert!(err.contains("--probes"), "{err}");
    for h in ["0", "-0.01", "inf"] {
        let err = rote_err(&["curvature", "--run", p(&run), "--estimator", "fd", &format!("--h={h}"), "--out", p(&dir.path().join("s"))]);
        assert!(err.contains("--h must be a positive step"), "--h {h}: {err}");
    }
}

#[test]
fn probe_bits_are_the_probe_signs() {
    // Widths around word and Philox-block boundaries, probes that start mid-block.
    for d in [1usize, 63, 64, 65, 127, 128, 129, 300, 784, 3072] {
        for (global, j) in [(0u64, 0usize), (5, 1), (1 << 40, 2), (77, 9)] {
            let mut signs = vec![0f32; d];
            curvature::probe(3, global, j, d, &mut signs);
            let mut words = vec![u64::MAX; d.div_ceil(64) + 1];
            curvature::probe_words(3, global, j, d, &mut words);
            for (i, &s) in signs.iter().enumerate() {
                assert_eq!((words[i / 64] >> (i % 64)) & 1 == 1, s > 0.0, "d {d}, sample {global}, probe {j}, sign {i}");
            }
            if d % 64 != 0 {
                assert_eq!(words[d / 64] >> (d % 64), 0, "d {d}: bits past d");
            }
            assert_eq!(words[d.div_ceil(64)], u64::MAX, "d {d}: wrote past its words");
        }
    }
}

#[test]
fn finite_differences_equal_gradients_at_the_perturbed_inputs() {
    // Against ∇L(x + hv) − ∇L(x) formed from two plain gradient evaluations, for the
    // paper's statistic and the released code's, on networks that narrow and widen
    // the input, smooth and relu, over several groups of samples.
    for (sizes, act) in [(vec![30, 12, 9, 4], Activation::Gelu), (vec![30, 12, 9, 4], Activation::Relu), (vec![6, 12, 9, 4], Activation::Tanh)] {
        let m = Mlp::init(&sizes, act, 31);
        let (d, p, rows, first, h) = (m.input_dim(), 3, 70, 40u64, 1e-2f32);
        let x: Vec<f32> = (0..rows).flat_map(|s| input(d, 600 + s as u64)).collect();
        let y: Vec<i64> = (0..rows as i64).map(|s| s % 4).collect();
        let g0 = m.input_grad(&x, &y, rows);
        let mut v = vec![0f32; d];
        let mut shifted = vec![0f32; rows * p * d];
        let mut labels = vec![0i64; rows * p];
        for s in 0..rows {
            for j in 0..p {
                curvature::probe(5, first + s as u64, j, d, &mut v);
                let r = s * p + j;
                for l in 0..d {
                    shifted[r * d + l] = x[s * d + l] + h * v[l];
                }
                labels[r] = y[s];
            }
        }
        let g1 = m.input_grad(&shifted, &labels, rows * p);
        for statistic in [Statistic::Paper, Statistic::ReleasedCode] {
            let cfg = ScoreConfig { estimator: Estimator::Fd, statistic, probes: p, h, seed: 5 };
            let got = curvature::scores(&m, &x, &y, first, &cfg).unwrap();
            for s in 0..rows {
                let (mut sq, mut tr, mut scale) = (0f64, 0f64, 0f64);
                for j in 0..p {
                    curvature::probe(5, first + s as u64, j, d, &mut v);
                    let r = s * p + j;
                    let diff: Vec<f64> = (0..d).map(|l| (g1[r * d + l] - g0[s * d + l]) as f64).collect();
                    let norm_sq: f64 = diff.iter().map(|t| t * t).sum();
                    let (factor, square) = if statistic == Statistic::Paper { (1.0 / h as f64, norm_sq / (h as f64 * h as f64)) } else { (1.0, norm_sq.sqrt()) };
                    sq += square;
                    tr += diff.iter().zip(&v).map(|(t, &u)| t * u as f64).sum::<f64>() * factor;
                    scale += diff.iter().map(|t| t.abs()).sum::<f64>() * factor;
                }
                let (sq, tr, scale) = (sq / p as f64, tr / p as f64, scale / p as f64);
                // Differences of float32 gradients: their rounding, over h.
                assert!((got.score[s] as f64 - sq).abs() <= 2e-3 * sq, "{act:?} {statistic:?} sample {s}: {} vs {sq}", got.score[s]);
                assert!((got.trace[s] as f64 - tr).abs() <= 2e-3 * scale, "{act:?} {statistic:?} sample {s}: trace {} vs {tr}", got.trace[s]);
            }
        }
    }
}
