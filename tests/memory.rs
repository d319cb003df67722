//! Retrieval-augmented prediction (issue 21): p_knn against a brute-force float64 search
//! and softmax written here, the interpolation's limits and formulas, and `rote knn
//! classify` end to end on digits.

mod common;

use common::*;
use rote::diffusion::knn::{Metric, Neighbours};
use rote::memory::retrieval::{combine, knn_probabilities, predictions, Combine};
use rote::rng::Philox;

fn random(seed: u64, n: usize) -> Vec<f64> {
    let r = Philox::new(seed, 0);
    (0..n).map(|i| r.uniform(i as u64) as f64).collect()
}

/// Rows normalized to sum to 1.
fn distributions(seed: u64, q: usize, c: usize) -> Vec<f64> {
    let mut v = random(seed, q * c);
    for row in v.chunks_mut(c) {
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= s);
    }
    v
}

#[test]
fn interpolation_limits_and_formulas() {
    let (q, c) = (40, 7);
    let (m, r) = (distributions(1, q, c), distributions(2, q, c));
    assert_eq!(combine(&m, &r, 0.0, Combine::Standard).unwrap(), m);
    assert_eq!(combine(&m, &r, 1.0, Combine::Standard).unwrap(), r);
    let p = combine(&m, &r, 0.3, Combine::Standard).unwrap();
    for (row, (a, b)) in p.chunks(c).zip(m.chunks(c).zip(r.chunks(c))) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for j in 0..c {
            assert!((row[j] - (0.7 * a[j] + 0.3 * b[j])).abs() < 1e-15);
        }
    }
    let rp = combine(&m, &r, 0.2, Combine::Retroprompt).unwrap();
    for i in 0..q * c {
        assert!((rp[i] - (0.8 * m[i].exp() + 0.2 * r[i].exp()).ln()).abs() < 1e-14);
    }
    assert!(combine(&m, &r, 1.5, Combine::Standard).is_err());
    assert!(combine(&m, &r[1..], 0.5, Combine::Standard).is_err());
}

/// p_knn from the neighbours, against a softmax over a brute-force search written here.
#[test]
fn knn_probabilities_against_a_direct_search() {
    let (n, q, d, c, k) = (200, 30, 5, 4, 9);
    let keys = random(3, n * d);
    let queries = random(4, q * d);
    let labels: Vec<i64> = (0..n).map(|i| (i * 7 % c) as i64).collect();
    for (metric, t) in [(Metric::L2, 0.05), (Metric::Ip, 0.5)] {
        let mut indices = vec![];
        let mut values = vec![];
        let mut want = vec![0f64; q * c];
        for r in 0..q {
            let x = &queries[r * d..(r + 1) * d];
            let mut scored: Vec<(f64, usize)> = (0..n)
                .map(|j| {
                    let y = &keys[j * d..(j + 1) * d];
                    let s = match metric {
                        Metric::L2 => -x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>(),
                        Metric::Ip => x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>(),
                    };
                    (s, j)
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top = &scored[..k];
            let z: f64 = top.iter().map(|(s, _)| (s / t).exp()).sum();
            for &(s, j) in top {
                want[r * c + labels[j] as usize] += (s / t).exp() / z;
                indices.push(j as u32);
                values.push(if metric == Metric::L2 { -s } else { s });
            }
        }
        let got = knn_probabilities(&Neighbours { k, indices, values }, metric, &labels, c, t).unwrap();
        for i in 0..q * c {
            assert!((got[i] - want[i]).abs() < 1e-12, "{metric:?} {i}: {} vs {}", got[i], want[i]);
        }
        for row in got.chunks(c) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
    assert_eq!(predictions(&[0.1, 0.5, 0.5, 0.2], 4), vec![1]);
}

fn write_f64(path: &std::path::Path, shape: &str, v: &[f64]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, raw_npy("<f8", false, shape, &bytes)).unwrap();
}

/// Digits: the first 1500 images as the store, the rest as queries; retrieval alone is
/// a good classifier, λ = 0 returns a (deliberately wrong) model's predictions, and bad
/// input is refused.
#[test]
fn knn_classify_on_digits_end_to_end() {
    let dir = tempdir();
    let ds = rote::data::open("digits").unwrap();
    let x: Vec<f64> = ds.train.x.to_f32().iter().map(|&v| v as f64 / 16.0).collect();
    let (n, d) = (ds.train.len(), 64);
    let (store, q) = (1500, n - 1500);
    write_f64(&dir.path().join("keys.npy"), &format!("({store}, {d})"), &x[..store * d]);
    write_f64(&dir.path().join("queries.npy"), &format!("({q}, {d})"), &x[store * d..]);
    std::fs::write(dir.path().join("labels.npy"), raw_npy("<i8", false, &format!("({store},)"), &i64_bytes(&ds.train.y[..store]))).unwrap();
    std::fs::write(dir.path().join("truth.npy"), raw_npy("<i8", false, &format!("({q},)"), &i64_bytes(&ds.train.y[store..]))).unwrap();
    // A model that is always wrong by one class, confidently.
    let mut probs = vec![0.01f64; q * 10];
    for (i, &y) in ds.train.y[store..].iter().enumerate() {
        probs[i * 10 + ((y as usize + 1) % 10)] = 0.91;
    }
    write_f64(&dir.path().join("probs.npy"), &format!("({q}, 10)"), &probs);
    let f = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        let (keys, labels, queries, truth, out) = (f("keys.npy"), f("labels.npy"), f("queries.npy"), f("truth.npy"), f("out"));
        let mut a = vec!["knn", "classify", "--store", &keys, "--labels", &labels, "--queries", &queries, "--query-labels", &truth, "--out", &out, "--metric", "l2", "--json"];
        a.extend_from_slice(extra);
        json(&rote_ok(&a))
    };
    let alone = run(&["-k", "5", "--temperature", "0.5"]);
    assert!(alone["accuracy"].as_f64().unwrap() > 0.9, "{alone}");
    let probs_path = f("probs.npy");
    let model_only = run(&["--probs", &probs_path, "--lambda", "0"]);
    assert_eq!(model_only["accuracy"].as_f64(), Some(0.0));
    assert_eq!(model_only["accuracy_model"].as_f64(), Some(0.0));
    let mixed = run(&["--probs", &probs_path, "--lambda", "0.95", "-k", "5", "--temperature", "0.5"]);
    assert!(mixed["accuracy"].as_f64().unwrap() > 0.85, "{mixed}");
    let e = rote_err(&["knn", "classify", "--store", &f("keys.npy"), "--labels", &f("truth.npy"), "--queries", &f("queries.npy"), "--out", &f("bad")]);
    assert!(e.contains("labels for the 1500 keys"), "{e}");
    let e = rote_err(&["knn", "classify", "--store", &f("keys.npy"), "--labels", &f("labels.npy"), "--queries", &f("probs.npy"), "--out", &f("bad")]);
    assert!(e.contains("dimensions"), "{e}");
}

/// Gaussian elimination with partial pivoting in float64: the tests' independent solver.
fn solve_dense(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs())).unwrap();
        for j in 0..n {
            a.swap(c * n + j, p * n + j);
        }
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r * n + c] / a[c * n + c];
            for j in c..n {
                a[r * n + j] -= f * a[c * n + j];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0f64; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|j| a[r * n + j] * x[j]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    x
}

#[test]
fn blocked_cholesky_solves_like_gaussian_elimination() {
    use rote::memory::lssvm::{cholesky, cholesky_solve};
    // Several blocks and row chunks, not a multiple of either; three right-hand sides.
    let n = 600;
    let b = random(9, n * n);
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
        }
    }
    let r = 3;
    let rhs = random(10, n * r);
    let mut l = a.clone();
    cholesky(&mut l, n).unwrap();
    let mut x = rhs.clone();
    cholesky_solve(&l, n, &mut x, r);
    for c in 0..r {
        let want = solve_dense(a.clone(), (0..n).map(|i| rhs[i * r + c]).collect(), n);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in 0..n {
            assert!((x[i * r + c] - want[i]).abs() < 1e-8 * scale, "column {c}, row {i}: {} vs {}", x[i * r + c], want[i]);
        }
    }
    let mut bad = vec![0f64; 4];
    bad[0] = 1.0;
    bad[3] = -1.0;
    assert!(cholesky(&mut bad, 2).is_err());
}

/// Suykens' (N+1)×(N+1) system for labels s = ±1 and kernel k(i, j), its right-hand
/// side, and its solution (b, α) by Gaussian elimination.
fn suykens_system(s: &[f64], gamma: f64, k: impl Fn(usize, usize) -> f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = s.len();
    let size = n + 1;
    let mut a = vec![0f64; size * size];
    for i in 0..n {
        a[i + 1] = s[i];
        a[(i + 1) * size] = s[i];
        for j in 0..n {
            a[(i + 1) * size + j + 1] = s[i] * s[j] * k(i, j) + if i == j { 1.0 / gamma } else { 0.0 };
        }
    }
    let mut rhs = vec![1f64; size];
    rhs[0] = 0.0;
    let sol = solve_dense(a.clone(), rhs.clone(), size);
    (a, rhs, sol)
}

/// The binary LSSVM's (b, α) against the whole (N+1)×(N+1) system solved directly, and
/// its KKT residual.
#[test]
fn lssvm_solves_suykens_system() {
    use rote::memory::lssvm::{Kernel, Lssvm};
    let (n, d, gamma) = (80, 3, 5.0);
    let x = random(11, n * d);
    let y: Vec<i64> = (0..n).map(|i| if x[i * d] + 0.3 * x[i * d + 1] > 0.6 { 7 } else { 2 }).collect();
    for kernel in [Kernel::Rbf { sigma: 0.7 }, Kernel::Linear, Kernel::Poly { degree: 3 }] {
        let m = Lssvm::fit(&x, d, &y, kernel, gamma, None).unwrap();
        let k = |i: usize, j: usize| {
            let (a, b) = (&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
            match kernel {
                Kernel::Rbf { sigma } => (-a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / (sigma * sigma)).exp(),
                Kernel::Linear => a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>(),
                Kernel::Poly { degree } => (a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>() + 1.0).powi(degree as i32),
            }
        };
        let s: Vec<f64> = y.iter().map(|&v| if v == 7 { 1.0 } else { -1.0 }).collect();
        let size = n + 1;
        let (a, rhs, sol) = suykens_system(&s, gamma, k);
        assert!((m.bias[0] - sol[0]).abs() < 1e-8, "{kernel:?}: b {} vs {}", m.bias[0], sol[0]);
        for i in 0..n {
            assert!((m.coef[i] - sol[i + 1] * s[i]).abs() < 1e-7, "{kernel:?}: α_{i}");
        }
        let ours: Vec<f64> = std::iter::once(m.bias[0]).chain((0..n).map(|i| m.coef[i] * s[i])).collect();
        let residual = (0..size).map(|r| ((0..size).map(|c| a[r * size + c] * ours[c]).sum::<f64>() - rhs[r]).abs()).fold(0f64, f64::max);
        assert!(residual < 1e-8, "{kernel:?}: KKT residual {residual}");
    }
}

/// `rote lssvm fit` and `predict` on digits: a held-out accuracy an RBF LSSVM reaches,
/// predict reproducing fit's numbers from the saved model, and bad input refused.
#[test]
fn lssvm_fit_and_predict_on_digits() {
    let dir = tempdir();
    let model = dir.path().join("m");
    let v = json(&rote_ok(&["lssvm", "fit", "--data", "digits", "--kernel", "rbf:sigma=2", "--gamma", "10", "--holdout", "0.2", "--out", p(&model), "--json"]));
    assert!(v["test_accuracy"].as_f64().unwrap() > 0.97, "{v}");
    assert!(v["train_accuracy"].as_f64().unwrap() > 0.99, "{v}");
    assert_eq!(v["machines"].as_u64(), Some(10));
    // On all of digits (fit rows and held-out rows): between the two accuracies, weighted.
    let all = json(&rote_ok(&["lssvm", "predict", "--model", p(&model), "--split", "train", "--json"]));
    let (tr, te) = (v["train_accuracy"].as_f64().unwrap(), v["test_accuracy"].as_f64().unwrap());
    let want = (tr * 1438.0 + te * 359.0) / 1797.0;
    assert!((all["accuracy"].as_f64().unwrap() - want).abs() < 1e-9, "{all} vs {want}");
    // Two classes make one machine.
    let v = json(&rote_ok(&["lssvm", "fit", "--data", "moons:n=300,noise=0.1,seed=1,test=200", "--kernel", "rbf:sigma=0.5", "--out", p(&dir.path().join("moons")), "--json"]));
    assert_eq!(v["machines"].as_u64(), Some(1));
    assert!(v["test_accuracy"].as_f64().unwrap() > 0.95, "{v}");
    // The iterative solver: the direct solver's predictions, converged.
    let cg_model = dir.path().join("cg");
    let v = json(&rote_ok(&["lssvm", "fit", "--data", "digits", "--kernel", "rbf:sigma=2", "--gamma", "10", "--holdout", "0.2", "--solver", "cg", "--tol", "1e-10", "--out", p(&cg_model), "--json"]));
    assert_eq!(v["solver"]["solver"], "cg", "{v}");
    assert_eq!(v["solver"]["cg"]["converged"], true, "{v}");
    let cg_all = json(&rote_ok(&["lssvm", "predict", "--model", p(&cg_model), "--split", "train", "--json"]));
    assert_eq!(cg_all["accuracy"], all["accuracy"]);
    for (flag, value, says) in [
        ("--gamma", "0", "--gamma must be a positive"),
        ("--kernel", "rbf", "sigma"),
        ("--kernel", "cubic", "rbf:sigma=S"),
        ("--holdout", "1", "--holdout"),
        ("--memory", "gauss:sigma=1", "--memory-fn gauss:sigma=1"),
        ("--memory", "lru", "none, mimm (maximum impact) or wimm"),
        ("--memory-fn", "gauss:sigma=1", "need --memory mimm or wimm"),
        ("--solver", "qr", "auto, direct or cg"),
    ] {
        let out = dir.path().join("bad");
        let e = rote_err(&["lssvm", "fit", "--data", "digits:subset=5", flag, value, "--out", p(&out)]);
        assert!(e.contains(says), "{flag} {value}: {e}");
        assert!(!out.exists());
    }
    // A memory machine, and one saved before MIMM existed (its memory a [δ, μ] pair):
    // read as the weighted machine it was.
    let wimm = dir.path().join("wimm");
    rote_ok(&["lssvm", "fit", "--data", "digits:subset=20", "--memory", "wimm", "--memory-fn", "gauss:sigma=0.5", "--memory-weight", "2", "--out", p(&wimm)]);
    let before = json(&rote_ok(&["lssvm", "predict", "--model", p(&wimm), "--data", "digits", "--split", "train", "--json"]));
    let meta = wimm.join("lssvm.json");
    let mut stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    stored["memory"] = serde_json::json!([{"kind": "gauss", "sigma": 0.5}, 2.0]);
    std::fs::write(&meta, stored.to_string()).unwrap();
    let after = json(&rote_ok(&["lssvm", "predict", "--model", p(&wimm), "--data", "digits", "--split", "train", "--json"]));
    assert_eq!(before["accuracy"], after["accuracy"]);
    assert!(before["accuracy"].as_f64().unwrap() < 1.0);
    // Cross-validation over the memory's weight and width: every cell reported, the
    // best one fitted; the memory grid needs a memory (and a width to vary).
    let cv = dir.path().join("cv");
    let v = json(&rote_ok(&["lssvm", "fit", "--data", "digits:subset=30", "--kernel", "rbf:sigma=2", "--memory", "mimm", "--memory-fn", "gauss:sigma=1", "--cv", "3", "--grid-gamma", "1,10", "--grid-memory-weight", "0.5,4", "--grid-memory-width", "0.5,2", "--out", p(&cv), "--json"]));
    let cells = v["cv"].as_array().unwrap();
    assert_eq!(cells.len(), 8, "{v}");
    let best = cells.iter().fold(&cells[0], |b, c| if c["accuracy"].as_f64() > b["accuracy"].as_f64() { c } else { b });
    assert_eq!((&v["memory"], &v["gamma"]), (&best["memory"], &best["gamma"]), "{v}");
    assert!(cells.iter().any(|c| c["memory"]["function"]["sigma"] == 0.5) && cells.iter().any(|c| c["memory"]["weight"] == 4.0));
    for (args, says) in [(&["--grid-memory-weight", "1,2"][..], "need a memory: mimm or wimm"), (&["--memory", "wimm", "--grid-memory-width", "1,2"][..], "gauss and radius")] {
        let out = dir.path().join("bad");
        let mut a = vec!["lssvm", "fit", "--data", "digits:subset=5", "--cv", "2", "--out", p(&out)];
        a.extend_from_slice(args);
        let e = rote_err(&a);
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(!out.exists());
    }
    let e = rote_err(&["lssvm", "predict", "--model", p(dir.path())]);
    assert!(e.contains("not an LSSVM model directory"), "{e}");
    let e = rote_err(&["lssvm", "predict", "--model", p(&model), "--data", "moons:n=10"]);
    assert!(e.contains("features"), "{e}");
}

/// The memory machine as derived in lssvm.rs: the identity memory is LSSVM with 1/γ + μ
/// on the diagonal, plus μ·α_i y_i in the decision at training points; a narrow
/// Gaussian memory classifies noisy training labels correctly where LSSVM does not.
#[test]
fn memory_machine_reduces_and_memorizes() {
    use rote::memory::lssvm::{Kernel, Lssvm, Memory, MemoryFn, MemoryModel};
    let (n, d) = (120, 2);
    let x = random(21, n * d);
    // A linear boundary with 15% of the labels flipped.
    let flip = random(22, n);
    let y: Vec<i64> = (0..n).map(|i| ((x[i * d] > 0.5) != (flip[i] < 0.15)) as i64).collect();
    let kernel = Kernel::Rbf { sigma: 0.5 };
    let (gamma, mu) = (4.0, 0.5);
    let with = Lssvm::fit(&x, d, &y, kernel, gamma, Some(Memory { model: MemoryModel::Wimm, function: MemoryFn::Identity, weight: mu })).unwrap();
    let plain = Lssvm::fit(&x, d, &y, kernel, 1.0 / (1.0 / gamma + mu), None).unwrap();
    // With the identity δ the maximum-impact machine is the same machine.
    let maximum = Lssvm::fit(&x, d, &y, kernel, gamma, Some(Memory { model: MemoryModel::Mimm, function: MemoryFn::Identity, weight: mu })).unwrap();
    let (dm, dw0) = (maximum.decision(&x), with.decision(&x));
    assert!(dm.iter().zip(&dw0).all(|(a, b)| (a - b).abs() < 1e-9));
    for i in 0..n {
        assert!((with.coef[i] - plain.coef[i]).abs() < 1e-9, "α_{i}");
    }
    assert!((with.bias[0] - plain.bias[0]).abs() < 1e-9);
    let (dw, dp) = (with.decision(&x), plain.decision(&x));
    for i in 0..n {
        assert!((dw[i] - (dp[i] + mu * plain.coef[i])).abs() < 1e-9, "decision {i}");
    }
    // Away from the training points the identity memory adds nothing.
    let q = random(23, 50 * d);
    let (qw, qp) = (with.decision(&q), plain.decision(&q));
    assert!(qw.iter().zip(&qp).all(|(a, b)| (a - b).abs() < 1e-9));
    let accuracy = |m: &Lssvm| m.predict(&x).iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let lssvm = Lssvm::fit(&x, d, &y, kernel, 100.0, None).unwrap();
    assert!(accuracy(&lssvm) < 0.95, "LSSVM training accuracy {}", accuracy(&lssvm));
    for model in [MemoryModel::Wimm, MemoryModel::Mimm] {
        let gmm = Lssvm::fit(&x, d, &y, kernel, 100.0, Some(Memory { model, function: MemoryFn::Gauss { sigma: 0.01 }, weight: 10.0 })).unwrap();
        assert_eq!(accuracy(&gmm), 1.0, "{model:?}");
    }
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

/// WIMM against its definition built here in float64 loops: Suykens' system with the
/// kernel K + μ·FᵀF (F_jk = δ(x_j, x_k)) solved by Gaussian elimination, and the decision
/// Σ_k α_k y_k [K(q, x_k) + μ Σ_j δ(x_j, q) δ(x_j, x_k)] + b; MIMM against LSSVM with
/// 1/γ + μ plus μ·δ(x_j*, q)·α_j* y_j* at the nearest training point j*.
#[test]
fn memory_machines_against_their_definitions() {
    use rote::memory::lssvm::{Kernel, Lssvm, Memory, MemoryFn, MemoryModel};
    let (n, d, gamma, mu, sigma, width) = (60, 2, 3.0, 0.7, 0.6, 0.25);
    let x = random(41, n * d);
    let y: Vec<i64> = (0..n).map(|i| (x[i * d] + x[i * d + 1] > 1.0) as i64).collect();
    let s: Vec<f64> = y.iter().map(|&v| if v == 1 { 1.0 } else { -1.0 }).collect();
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let k = |a: &[f64], b: &[f64]| (-sq_dist(a, b) / (sigma * sigma)).exp();
    let delta = |a: &[f64], b: &[f64]| (-sq_dist(a, b) / (width * width)).exp();
    let machine = |a: &[f64], b: &[f64]| k(a, b) + mu * (0..n).map(|j| delta(row(j), a) * delta(row(j), b)).sum::<f64>();
    let (_, _, sol) = suykens_system(&s, gamma, |i, j| machine(row(i), row(j)));
    let w = Lssvm::fit(&x, d, &y, Kernel::Rbf { sigma }, gamma, Some(Memory { model: MemoryModel::Wimm, function: MemoryFn::Gauss { sigma: width }, weight: mu })).unwrap();
    assert!((w.bias[0] - sol[0]).abs() < 1e-8, "b {} vs {}", w.bias[0], sol[0]);
    for i in 0..n {
        assert!((w.coef[i] - sol[i + 1] * s[i]).abs() < 1e-7, "α_{i}: {} vs {}", w.coef[i], sol[i + 1] * s[i]);
    }
    let q = random(42, 30 * d);
    let got = w.decision(&q);
    for (t, qr) in q.chunks(d).enumerate() {
        let want = sol[0] + (0..n).map(|i| sol[i + 1] * s[i] * machine(qr, row(i))).sum::<f64>();
        assert!((got[t] - want).abs() < 1e-8, "WIMM decision {t}: {} vs {want}", got[t]);
    }
    // MIMM.
    let m = Lssvm::fit(&x, d, &y, Kernel::Rbf { sigma }, gamma, Some(Memory { model: MemoryModel::Mimm, function: MemoryFn::Gauss { sigma: width }, weight: mu })).unwrap();
    let plain = Lssvm::fit(&x, d, &y, Kernel::Rbf { sigma }, 1.0 / (1.0 / gamma + mu), None).unwrap();
    assert!(m.coef.iter().zip(&plain.coef).all(|(a, b)| (a - b).abs() < 1e-9) && (m.bias[0] - plain.bias[0]).abs() < 1e-9);
    let (got, base) = (m.decision(&q), plain.decision(&q));
    for (t, qr) in q.chunks(d).enumerate() {
        let nearest = (0..n).fold(0, |b, j| if sq_dist(row(j), qr) < sq_dist(row(b), qr) { j } else { b });
        let want = base[t] + mu * delta(row(nearest), qr) * plain.coef[nearest];
        assert!((got[t] - want).abs() < 1e-9, "MIMM decision {t}: {} vs {want}", got[t]);
    }
    // At a training point its own memory: μ·α_i y_i.
    let (got, base) = (m.decision(&x), plain.decision(&x));
    assert!((0..n).all(|i| (got[i] - base[i] - mu * plain.coef[i]).abs() < 1e-9));
}

/// The conjugate-gradient solver against the direct one (plain, WIMM and MIMM machines,
/// multi-class, more rows than one kernel tile), with and without its preconditioner.
#[test]
fn conjugate_gradients_agree_with_the_direct_solve() {
    use rote::memory::lssvm::{CgOptions, Kernel, Lssvm, Memory, MemoryFn, MemoryModel, Solver};
    let (n, d) = (2300, 3);
    let x = random(51, n * d);
    let y: Vec<i64> = (0..n).map(|i| (x[i * d] > 0.4) as i64 + (x[i * d + 1] > 0.6) as i64 * 2).collect();
    let kernel = Kernel::Rbf { sigma: 0.5 };
    let memories = [None, Some(Memory { model: MemoryModel::Wimm, function: MemoryFn::Gauss { sigma: 0.05 }, weight: 0.5 }), Some(Memory { model: MemoryModel::Mimm, function: MemoryFn::Radius { r: 0.05 }, weight: 0.5 })];
    for memory in memories {
        let (direct, report) = Lssvm::fit_with(&x, d, &y, kernel, 5.0, memory, Solver::Direct).unwrap();
        assert_eq!(report.solver, "direct");
        let mut iterations = vec![];
        // Without the preconditioner only once: it takes 15 times the iterations.
        let ranks: &[usize] = if memory.is_none() { &[0, 100] } else { &[100] };
        for &rank in ranks {
            let options = CgOptions { tolerance: 1e-10, max_iterations: 3000, preconditioner_rank: rank, progress: false };
            let (cg, report) = Lssvm::fit_with(&x, d, &y, kernel, 5.0, memory, Solver::Cg(options)).unwrap();
            let c = report.cg.unwrap();
            assert!(c.converged && c.relative_residual <= 1e-10, "{memory:?}, rank {rank}: {c:?}");
            let scale = direct.coef.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in cg.coef.iter().zip(&direct.coef).enumerate() {
                assert!((a - b).abs() < 1e-6 * scale, "{memory:?}, rank {rank}: coefficient {i}: {a} vs {b}");
            }
            for (a, b) in cg.bias.iter().zip(&direct.bias) {
                assert!((a - b).abs() < 1e-6, "{memory:?}, rank {rank}: bias {a} vs {b}");
            }
            iterations.push(c.iterations);
        }
        if let [without, with] = iterations[..] {
            assert!(with * 4 < without, "the preconditioner did not help: {iterations:?}");
        }
    }
}

/// Leave-one-out cross-validation (folds = n, so the folds do not depend on the draw)
/// against fitting every fold from scratch, over kernels, γ and memories.
#[test]
fn cross_validation_against_refitting_each_fold() {
    use rote::memory::lssvm::{cross_validate, Kernel, Lssvm, Memory, MemoryFn, MemoryModel};
    let (n, d) = (40, 2);
    let x = random(31, n * d);
    let y: Vec<i64> = (0..n).map(|i| (x[i * d] > 0.33) as i64 + (x[i * d] + 0.2 * x[i * d + 1] > 0.75) as i64).collect();
    let kernels = [Kernel::Rbf { sigma: 0.3 }, Kernel::Rbf { sigma: 1.0 }];
    let gammas = [0.5, 20.0];
    // Plain LSSVM and both memory machines with two weights and widths.
    let mut memories = vec![None];
    for (model, sigma, weight) in [(MemoryModel::Wimm, 0.3, 0.5), (MemoryModel::Wimm, 0.1, 4.0), (MemoryModel::Mimm, 0.3, 2.0)] {
        memories.push(Some(Memory { model, function: MemoryFn::Gauss { sigma }, weight }));
    }
    let cells = cross_validate(&x, d, &y, &kernels, &gammas, &memories, n, 0).unwrap();
    assert_eq!(cells.len(), 16);
    for c in &cells {
        let mut hits = 0;
        for i in 0..n {
            let keep: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            let xf: Vec<f64> = keep.iter().flat_map(|&j| x[j * d..(j + 1) * d].to_vec()).collect();
            let yf: Vec<i64> = keep.iter().map(|&j| y[j]).collect();
            let m = Lssvm::fit(&xf, d, &yf, c.kernel, c.gamma, c.memory).unwrap();
            hits += (m.predict(&x[i * d..(i + 1) * d])[0] == y[i]) as usize;
        }
        assert!((c.accuracy - hits as f64 / n as f64).abs() < 1e-12, "{c:?}: {hits} of {n}");
    }
    assert!(cross_validate(&x, d, &y, &kernels, &gammas, &[None], 1, 0).is_err());
}
