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
fn layer_one_bits_are_the_float64_signs() {
    // Every width remainder (partial last words), the small-input path (d < 16) and
    // the GEMM path, with a zero row and λ = 0 (hyperplanes through the origin).
    for (dim, width, lambda) in [(1, 1, 0.5f32), (2, 40, 0.5), (2, 130, 0.0), (3, 64, 1.0), (7, 500, 0.3), (20, 77, 0.2)] {
        let layer = Layer1::random(dim as u64 + width as u64, width, dim, lambda);
        let rows = 97;
        let mut x = vec![0f32; rows * dim];
        rote::rng::Philox::new(5, dim as u64).fill_normal(0, &mut x[dim..]);
        let bits = rote::construct::layer1::threshold_bits(&x, &layer);
        for r in 0..rows {
            for j in 0..width {
                let z: f64 = layer.bias[j] as f64 + (0..dim).map(|l| x[r * dim + l] as f64 * layer.weight[j * dim + l] as f64).sum::<f64>();
                assert_eq!(bits.get(r, j), z > 0.0, "d={dim} n={width} λ={lambda} row {r} unit {j}: z = {z}");
            }
            // Bits past the width stay zero.
            for j in width..bits.words * 64 {
                assert!(!bits.get(r, j), "d={dim} n={width}: bit {j} past the width is set");
            }
        }
    }
}

#[test]
fn weight_norms_of_small_inputs_are_the_general_formula() {
    // The vectorized norms for 1 to 3 inputs must be the numbers the general path
    // (and the CUDA margins) use.
    for dim in 1..=3 {
        let layer = Layer1::random(dim as u64, 1000, dim, 1.0);
        let general: Vec<f32> = layer.weight.chunks(dim).map(|w| rote::data::norms::sum_of_squares(w).sqrt()).collect();
        assert!(layer.weight_norms().iter().zip(&general).all(|(a, b)| a.to_bits() == b.to_bits()), "d={dim}");
    }
}

#[test]
fn word_major_layer_one_is_the_same_layer_and_the_float64_signs() {
    use rote::construct::layer1::{random_word_major, word_major_applies, LANES};
    if !word_major_applies(2) {
        eprintln!("skipped: the word-major first layer needs AVX-512 with VPOPCNTDQ");
        return;
    }
    for (dim, width, lambda) in [(1, 1, 0.5f32), (2, 40, 0.5), (2, 130, 0.0), (3, 64, 1.0), (2, 500, 0.5), (3, 333, 2.0)] {
        let seed = 11 * dim as u64 + width as u64;
        let reference = Layer1::random(seed, width, dim, lambda);
        let rows = 203;
        let mut x = vec![0f32; rows * dim];
        rote::rng::Philox::new(9, dim as u64).fill_normal(0, &mut x[dim..]);
        // Rows on (or within rounding of) some units' hyperplanes: x = −b·w/‖w‖².
        for (r, j) in [(5usize, 0usize), (6, width / 2), (7, width - 1)] {
            let w = &reference.weight[j * dim..(j + 1) * dim];
            let norm2: f32 = w.iter().map(|v| v * v).sum();
            for l in 0..dim {
                x[r * dim + l] = -reference.bias[j] * w[l] / norm2;
            }
        }
        // Two sets in an arbitrary interleaving, one of them a multiple of eight long,
        // and an empty one.
        let first: Vec<u32> = (0..rows as u32).filter(|r| r % 3 == 1).take(64).collect();
        let second: Vec<u32> = (0..rows as u32).filter(|r| !first.contains(r)).rev().collect();
        let sets: [&[u32]; 3] = [&first, &second, &[]];
        let (layer, layouts, beside) = random_word_major(seed, width, lambda, &x, dim, &sets, || 42);
        assert_eq!(beside, 42);
        assert_eq!((layer.units, layer.dim), (width, dim));
        assert!(layer.weight.iter().zip(&reference.weight).all(|(a, b)| a.to_bits() == b.to_bits()), "d={dim} n={width}: weights differ from Layer1::random");
        assert!(layer.bias.iter().zip(&reference.bias).all(|(a, b)| a.to_bits() == b.to_bits()), "d={dim} n={width}: biases differ from Layer1::random");
        let used = width.div_ceil(64);
        for (set, layout) in sets.iter().zip(&layouts) {
            assert_eq!((layout.rows, layout.padded, layout.used), (set.len(), set.len().next_multiple_of(LANES), used));
            let mut words = vec![0u64; used];
            for i in 0..layout.padded {
                layout.row_into(i, &mut words);
                for j in 0..used * 64 {
                    let bit = (words[j / 64] >> (j % 64)) & 1 == 1;
                    let expected = i < set.len() && j < width && {
                        let r = set[i] as usize;
                        let z: f64 = layer.bias[j] as f64 + (0..dim).map(|l| x[r * dim + l] as f64 * layer.weight[j * dim + l] as f64).sum::<f64>();
                        z > 0.0
                    };
                    assert_eq!(bit, expected, "d={dim} n={width} λ={lambda}: position {i} of a set, unit {j}");
                }
            }
        }
    }
}

#[test]
fn identical_to_the_one_at_a_time_algorithm() {
    let cases = [
        ("moons:n=300,noise=0.1,seed=1", 40, 0.5f32, Target::Binary { positive: None }),
        ("moons:n=400,noise=0.05,seed=2", 130, 0.8, Target::Binary { positive: Some(0) }),
        ("moons:n=200,noise=0.05,seed=3", 64, 0.0, Target::Binary { positive: None }),
        ("blobs:n=300,dim=7,centers=4,std=3,seed=4", 70, 0.3, Target::OneVsRest),
        ("blobs:n=250,dim=3,centers=3,std=5,seed=5", 200, 1.5, Target::OneVsRest),
        // One covering layer over 1 and 3 inputs (the word-major path), one class
        // against the rest of three.
        ("blobs:n=300,dim=1,centers=2,std=2,seed=6", 100, 0.7, Target::Binary { positive: None }),
        ("blobs:n=260,dim=3,centers=3,std=4,seed=7", 190, 1.0, Target::Binary { positive: Some(1) }),
    ];
    for (spec, width, lambda, target) in cases {
        let ds = data::open(spec).unwrap();
        for seed in 0..3 {
            let (net, report) = construct::fit(&ds, &config(width, lambda, seed, target), &Backend::Cpu).unwrap();
            let dim = ds.train.features();
            let mut x: Vec<f32> = ds.train.x.to_f32();
            construct::scale_inputs(&mut x, net.input_scale);
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

fn rows_without_time(csv: &std::path::Path) -> Vec<String> {
    let mut rows: Vec<String> = std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    rows.sort();
    rows
}

#[test]
fn sweep_trials_equal_single_fits_and_resume() {
    let dir = tempdir();
    let csv = dir.path().join("grid.csv");
    let plots = dir.path().join("plots");
    let spec = "moons:n=300,noise=0.05,seed=1";
    let v = json(&rote_ok(&[
        "sweep", "construct", "--data", spec, "--widths", "20:100:40", "--max-biases", "0,0.6", "--restarts", "3",
        "--out", p(&csv), "--plots", p(&plots), "--json",
    ]));
    assert_eq!(v["trials_run"], 18);
    assert_eq!(v["figures"].as_array().unwrap().len(), 3);
    for f in v["figures"].as_array().unwrap() {
        let bytes = std::fs::read(f.as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{f} is not a PNG");
    }
    // Every trial is the network `rote construct` builds with the same settings.
    let ds = data::open(spec).unwrap();
    for row in std::fs::read_to_string(&csv).unwrap().lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        let (width, lambda, seed): (usize, f32, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[3].parse().unwrap());
        let (_, r) = construct::fit(&ds, &config(width, lambda, seed, Target::Binary { positive: None }), &Backend::Cpu).unwrap();
        assert_eq!(f[4] == "1", r.interpolated, "{row}");
        assert_eq!(f[6].parse::<usize>().unwrap(), r.second_width, "{row}");
        assert_eq!(f[7].parse::<usize>().unwrap(), r.parameters, "{row}");
    }
    // A rerun skips everything.
    let complete = rows_without_time(&csv);
    let v = json(&rote_ok(&["sweep", "construct", "--data", spec, "--widths", "20:100:40", "--max-biases", "0,0.6", "--restarts", "3", "--out", p(&csv), "--json"]));
    assert_eq!(v["trials_run"], 0);
    assert_eq!(rows_without_time(&csv), complete);
    // An interrupted run (last seed's rows lost, a partial line) is completed.
    let text = std::fs::read_to_string(&csv).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.ends_with(",2,") && l.split(',').nth(3) != Some("2")).collect();
    std::fs::write(&csv, format!("{}\n20,0.6,30", kept.join("\n"))).unwrap();
    let v = json(&rote_ok(&["sweep", "construct", "--data", spec, "--widths", "20:100:40", "--max-biases", "0,0.6", "--restarts", "3", "--out", p(&csv), "--json"]));
    assert_eq!(v["trials_run"], 6);
    assert_eq!(rows_without_time(&csv), complete);
}

#[test]
fn sweep_over_sizes_and_bad_grids() {
    let dir = tempdir();
    let csv = dir.path().join("sizes.csv");
    rote_ok(&["sweep", "construct", "--data", "moons:noise=0.05", "--sizes", "100,400", "--widths", "50", "--max-biases", "0.5", "--restarts", "2", "--out", p(&csv)]);
    let sizes: std::collections::BTreeSet<String> =
        std::fs::read_to_string(&csv).unwrap().lines().skip(1).map(|l| l.split(',').nth(2).unwrap().to_string()).collect();
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec!["100", "400"]);
    let err = rote_err(&["sweep", "construct", "--data", "moons", "--widths", "10:5:1", "--max-biases", "0.5", "--out", p(&dir.path().join("x.csv"))]);
    assert!(err.contains("start ≤ end"), "{err}");
    std::fs::write(dir.path().join("other.csv"), "a,b\n1,2\n").unwrap();
    let err = rote_err(&["sweep", "construct", "--data", "moons", "--widths", "10", "--max-biases", "0.5", "--out", p(&dir.path().join("other.csv"))]);
    assert!(err.contains("not a rote sweep CSV"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("other.csv")).unwrap(), "a,b\n1,2\n");
}

#[test]
fn portable_and_simd_paths_build_the_same_network() {
    let dir = tempdir();
    let mut nets = vec![];
    for (name, no_simd) in [("simd", "0"), ("portable", "1")] {
        // The last one is large enough for the scans to split across threads.
        for (spec, width) in [("moons:n=2000,seed=5", 300), ("digits", 130), ("moons:n=40000,seed=6", 64)] {
            let out = dir.path().join(format!("{name}-{width}.safetensors"));
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_rote"))
                .args(["construct", "--data", spec, "--width", &width.to_string(), "--max-bias", "0.4", "--out", p(&out), "--device", "cpu"])
                .env("ROTE_NO_SIMD", no_simd)
                .output()
                .unwrap();
            assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
            nets.push(construct::io::load(&out).unwrap());
        }
    }
    for (a, b) in [(&nets[0], &nets[3]), (&nets[1], &nets[4]), (&nets[2], &nets[5])] {
        // (Not assert_eq: the Debug dump of a network is enormous.)
        assert!(a.nets == b.nets, "covering layers differ between SIMD and portable paths");
        assert!(a.layer1.weight == b.layer1.weight && a.layer1.bias == b.layer1.bias);
    }
}

#[test]
fn large_sweeps_rethreshold_instead_of_keeping_products() {
    // 20 000 × 1000 products exceed what a sweep keeps in memory per seed.
    let dir = tempdir();
    let csv = dir.path().join("big.csv");
    let spec = "moons:n=20000,noise=0.05,seed=2";
    rote_ok(&["sweep", "construct", "--data", spec, "--widths", "600,1000", "--max-biases", "0.3,0.7", "--restarts", "1", "--out", p(&csv)]);
    let ds = data::open(spec).unwrap();
    for row in std::fs::read_to_string(&csv).unwrap().lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        let (width, lambda, seed): (usize, f32, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[3].parse().unwrap());
        let (_, r) = construct::fit(&ds, &config(width, lambda, seed, Target::Binary { positive: None }), &Backend::Cpu).unwrap();
        assert_eq!(f[6].parse::<usize>().unwrap(), r.second_width, "{row}");
        assert_eq!(f[4] == "1", r.interpolated, "{row}");
    }
}
