//! The construction against a direct, unoptimized implementation of ALGORITHMS.md §1,
//! the paper's reported behaviour on moons, and bad input.

mod common;
use common::*;
use rote::construct::{self, layer1::Layer1, Activation, FitConfig, Target};
use rote::data;
use rote::device::Backend;

/// The algorithm exactly as written, one candidate at a time, float64 features.
/// Returns, per class, the neurons as (units in the mask, m).
fn reference(x: &[f32], y: &[i64], dim: usize, width: usize, max_bias: f32, seed: u64, classes: &[i64]) -> Vec<Vec<(Vec<usize>, u32)>> {
    let layer = Layer1::random(seed, width, dim, max_bias);
    let n_rows = y.len();
    // φ(x)_j = H(Σ_l x_l w_jl + b_j), the sum in float64 in index order.
    let phi: Vec<Vec<bool>> = (0..n_rows)
        .map(|r| {
            (0..width)
                .map(|j| {
                    let mut z = 0f64;
                    for l in 0..dim {
                        z += x[r * dim + l] as f64 * layer.weight[j * dim + l] as f64;
                    }
                    z + layer.bias[j] as f64 > 0.0
                })
                .collect()
        })
        .collect();
    classes
        .iter()
        .map(|&c| {
            let neg: Vec<usize> = (0..n_rows).filter(|&i| y[i] == c).collect();
            let pos: Vec<usize> = (0..n_rows).filter(|&i| y[i] != c).collect();
            let order = construct::candidate_order(seed, c, neg.len());
            let mut in_c = vec![true; neg.len()];
            let mut in_u = vec![true; neg.len()];
            let mut neurons = vec![];
            for &pick in &order {
                let pick = pick as usize;
                if !in_c.iter().any(|&b| b) || !in_u.iter().any(|&b| b) {
                    break;
                }
                if !in_c[pick] {
                    continue;
                }
                in_c[pick] = false;
                let u: Vec<bool> = phi[neg[pick]].iter().map(|&on| !on).collect();
                let s = |r: usize| (0..width).filter(|&j| u[j] && phi[r][j]).count() as u32;
                let m = pos.iter().map(|&p| s(p)).min().unwrap();
                if m > 0 {
                    neurons.push(((0..width).filter(|&j| u[j]).collect::<Vec<_>>(), m));
                    for (i, &r) in neg.iter().enumerate() {
                        if s(r) < m {
                            in_c[i] = false;
                            in_u[i] = false;
                        }
                    }
                }
            }
            if neurons.is_empty() {
                neurons.push((vec![], 0));
            }
            neurons
        })
        .collect()
}

fn as_units(net: &construct::Network) -> Vec<Vec<(Vec<usize>, u32)>> {
    let n = net.layer1.units;
    net.nets
        .iter()
        .map(|c| {
            c.neurons
                .iter()
                .map(|ne| ((0..n).filter(|&j| (ne.mask[j / 64] >> (j % 64)) & 1 == 1).collect(), ne.threshold as u32))
                .collect()
        })
        .collect()
}

fn config(width: usize, max_bias: f32, seed: u64, target: Target) -> FitConfig {
    FitConfig { width, max_bias, activation: Activation::Threshold, seed, target, scale_to_unit_norm: true }
}

#[test]
fn identical_to_the_one_at_a_time_algorithm() {
    let cases = [
        ("moons:n=300,noise=0.1,seed=1", 40, 0.5f32, Target::Binary { positive: None }),
        ("moons:n=400,noise=0.05,seed=2", 130, 0.8, Target::Binary { positive: Some(0) }),
        ("moons:n=200,noise=0.05,seed=3", 64, 0.0, Target::Binary { positive: None }),
        ("blobs:n=300,dim=7,centers=4,std=3,seed=4", 70, 0.3, Target::OneVsRest),
        ("blobs:n=250,dim=3,centers=3,std=5,seed=5", 200, 1.5, Target::OneVsRest),
    ];
    for (spec, width, lambda, target) in cases {
        let ds = data::open(spec).unwrap();
        for seed in 0..3 {
            let (net, report) = construct::fit(&ds, &config(width, lambda, seed, target), &Backend::Cpu).unwrap();
            let dim = ds.train.features();
            let x: Vec<f32> = ds.train.x.to_f32().iter().map(|v| v * net.input_scale).collect();
            let classes: Vec<i64> = net.nets.iter().map(|c| c.label).collect();
            let want = reference(&x, &ds.train.y, dim, width, lambda, seed, &classes);
            assert_eq!(as_units(&net), want, "{spec} width {width} λ {lambda} seed {seed}");
            assert_eq!(report.second_width, want.iter().map(|c| c.len()).sum::<usize>());
        }
    }
}

#[test]
fn moons_behave_as_the_paper_reports() {
    let ds = data::open("moons:n=1000,noise=0.05,seed=0").unwrap();
    // λ = 0: hyperplanes through the origin never interpolate, for any width ≤ 500.
    for width in [100, 300, 500] {
        for seed in 0..5 {
            let (_, r) = construct::fit(&ds, &config(width, 0.0, seed, Target::Binary { positive: None }), &Backend::Cpu).unwrap();
            assert!(!r.interpolated, "λ=0 width {width} seed {seed} interpolated");
        }
    }
    // λ = 0.5, n = 300: interpolates in ≥ 95% of 50 restarts, with mean k in [4, 8].
    let mut hits = 0;
    let mut k_total = 0;
    for seed in 0..50 {
        let (_, r) = construct::fit(&ds, &config(300, 0.5, seed, Target::Binary { positive: None }), &Backend::Cpu).unwrap();
        hits += r.interpolated as usize;
        k_total += r.second_width;
    }
    let mean_k = k_total as f64 / 50.0;
    assert!(hits >= 48, "interpolated in {hits} of 50 restarts");
    assert!((4.0..=8.0).contains(&mean_k), "mean k {mean_k}");
}

#[test]
fn relu_variant_interpolates_and_round_trips() {
    let dir = tempdir();
    let net = dir.path().join("relu.safetensors");
    let v = json(&rote_ok(&[
        "construct", "--data", "moons:n=500,seed=1", "--width", "200", "--max-bias", "0.7", "--activation", "relu", "--out", p(&net), "--json",
    ]));
    assert_eq!(v["interpolated"], true, "{v}");
    let v = json(&rote_ok(&["predict", "--net", p(&net), "--data", "moons:n=500,seed=1", "--json"]));
    assert_eq!(v["train_accuracy"], 1.0);
}

#[test]
fn saved_networks_predict_what_the_fit_reported() {
    let dir = tempdir();
    let net = dir.path().join("digits.safetensors");
    let v = json(&rote_ok(&["construct", "--data", "digits", "--width", "200", "--max-bias", "0.5", "--out", p(&net), "--json"]));
    assert_eq!(v["interpolated"], true);
    assert_eq!(v["second_widths"].as_object().unwrap().len(), 10, "digits defaults to one-vs-rest");
    let first = v["first_width"].as_u64().unwrap() as usize;
    let k = v["second_width"].as_u64().unwrap() as usize;
    assert_eq!(v["parameters"].as_u64().unwrap() as usize, first * 65 + k * (first + 1) + k + 10);
    let p2 = json(&rote_ok(&["predict", "--net", p(&net), "--data", "digits", "--json"]));
    assert_eq!(p2["train_accuracy"], 1.0);
    // With a test split, test accuracy is reported.
    let v = json(&rote_ok(&["construct", "--data", "moons:n=600,test=400,seed=3", "--width", "300", "--max-bias", "0.5", "--json"]));
    assert!(v["test_accuracy"].as_f64().unwrap() > 0.9, "{v}");
}

#[test]
fn bad_input_is_rejected_clearly() {
    let err = rote_err(&["construct", "--data", "moons:n=100", "--width", "50", "--max-bias", "0.5", "--positive-class", "7"]);
    assert!(err.contains("class 7 has no training samples"), "{err}");
    let err = rote_err(&["construct", "--data", "moons:n=100", "--width", "0", "--max-bias", "0.5"]);
    assert!(err.contains("--width"), "{err}");
    let err = rote_err(&["construct", "--data", "moons:n=100", "--width", "10", "--max-bias=-1"]);
    assert!(err.contains("--max-bias"), "{err}");
    // One class only.
    let dir = tempdir();
    let d = dir.path().join("one");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("x.npy"), raw_npy("<f4", false, "(3, 2)", &f32_bytes(&[0., 1., 1., 0., 1., 1.]))).unwrap();
    std::fs::write(d.join("y.npy"), raw_npy("<i8", false, "(3,)", &i64_bytes(&[4, 4, 4]))).unwrap();
    let err = rote_err(&["construct", "--data", p(&d), "--width", "10", "--max-bias", "0.5", "--positive-class", "4"]);
    assert!(err.contains("every training sample has class 4"), "{err}");
}

#[test]
fn conflicting_duplicates_are_reported_not_looped_on() {
    let dir = tempdir();
    let d = dir.path().join("dup");
    std::fs::create_dir_all(&d).unwrap();
    // (0.5, 0.5) appears with labels 0 and 1.
    let x = [0.5f32, 0.5, 0.5, 0.5, -0.9, 0.1, 0.8, -0.3, 0.1, 0.9, -0.4, -0.6];
    std::fs::write(d.join("x.npy"), raw_npy("<f4", false, "(6, 2)", &f32_bytes(&x))).unwrap();
    std::fs::write(d.join("y.npy"), raw_npy("<i8", false, "(6,)", &i64_bytes(&[0, 1, 0, 1, 0, 1]))).unwrap();
    let v = json(&rote_ok(&["construct", "--data", p(&d), "--width", "300", "--max-bias", "0.5", "--json"]));
    assert_eq!(v["interpolated"], false);
    assert_eq!(v["conflicts"], 1);
}
