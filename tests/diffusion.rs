//! The optimal denoiser, the Heun sampler, exact kNN and the memorization ratio,
//! against independent float64 references written here.

mod common;
use common::*;

use rote::data::{self, Array};
use rote::diffusion::knn::{knn, memorization_ratio, Metric};
use rote::diffusion::optimal::denoise;
use rote::diffusion::sampler::{heun, initial_noise, Denoiser, Schedule};
use rote::diffusion::{PixelRange, TrainingSet};
use rote::rng::Philox;

/// Reference D*(x; σ) in float64: log-sum-exp over direct distances.
fn reference_denoise(y: &[f64], d: usize, x: &[f64], sigma: f64) -> Vec<f64> {
    let logits: Vec<f64> = y.chunks_exact(d).map(|yi| -yi.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / (2.0 * sigma * sigma)).collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = w.iter().sum();
    let mut out = vec![0f64; d];
    for (wi, yi) in w.iter().zip(y.chunks_exact(d)) {
        out.iter_mut().zip(yi).for_each(|(o, v)| *o += wi * v / s);
    }
    out
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// N points in [−1, 1]^d (clipped normals around a few centres), with near-duplicate
/// pairs (differing by 1e-4 in one coordinate) and exact duplicates mixed in.
fn training_points(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let rng = Philox::new(seed, 9);
    let mut z = vec![0f32; n * d];
    rng.fill_normal(0, &mut z);
    let mut y: Vec<f32> = z.iter().enumerate().map(|(i, v)| (0.4 * v + if (i / d) % 3 == 0 { 0.3 } else { -0.2 }).clamp(-1.0, 1.0)).collect();
    for pair in 0..n / 10 {
        let (a, b) = (pair * 7 % n, (pair * 7 + 3) % n);
        let src = y[a * d..(a + 1) * d].to_vec();
        y[b * d..(b + 1) * d].copy_from_slice(&src);
        if pair % 2 == 0 {
            y[b * d + pair % d] += 1e-4;
        }
    }
    y
}

fn queries_near(y: &[f32], d: usize, count: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let n = y.len() / d;
    let mut z = vec![0f32; count * d];
    Philox::new(seed, 11).fill_normal(0, &mut z);
    (0..count * d).map(|k| y[((k / d) * 13 % n) * d + k % d] + (sigma * z[k] as f64) as f32).collect()
}

fn check_denoiser(n: usize, d: usize, sigmas: &[f64]) {
    let y = training_points(n, d, 1);
    let arr = Array::from_f32(vec![n, d], &y, "test points");
    check_denoiser_on(&arr, PixelRange::MODEL, &y, sigmas);
}

/// The denoiser of `arr` (whose rows are `y` in model space) against the float64
/// reference at each σ; returns each σ's statistics.
fn check_denoiser_on(arr: &Array, range: PixelRange, y: &[f32], sigmas: &[f64]) -> Vec<rote::diffusion::optimal::Stats> {
    let (n, d) = (arr.rows(), arr.row_len());
    let train = TrainingSet::new(arr, range).unwrap();
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    let mut all = vec![];
    for &sigma in sigmas {
        let x = queries_near(y, d, 48, sigma, (sigma * 1000.0) as u64);
        let (out, stats) = denoise(&train, &x, sigma).unwrap();
        let mut worst = 0f64;
        for (q, row) in out.chunks_exact(d).enumerate() {
            let x64: Vec<f64> = x[q * d..(q + 1) * d].iter().map(|&v| v as f64).collect();
            worst = worst.max(rel_err(row, &reference_denoise(&y64, d, &x64, sigma)));
        }
        eprintln!("n={n} d={d} σ={sigma}: max relative error {worst:.2e} ({stats:?})");
        assert!(worst <= 1e-4, "σ = {sigma}: relative error {worst:.3e} > 1e-4");
        all.push(stats);
    }
    all
}

/// 8-bit images take the integer-tile screen and the dense pass's exact integer dot
/// products where the CPU has AMX (float32 and float64 GEMMs elsewhere): both must
/// match the float64 reference, including at σ = 0.002 among near-duplicates.
#[test]
fn optimal_denoiser_is_exact_on_eight_bit_images() {
    use rote::diffusion::{dequantize, quantize};
    let (n, d) = (1500, 784);
    let pixels: Vec<u8> = training_points(n, d, 5).iter().map(|&v| quantize(v)).collect();
    let arr = Array::from_u8(vec![n, d], &pixels, "test images");
    let range = PixelRange::of(&arr).unwrap();
    assert_eq!((range.lo, range.hi), (0.0, 255.0));
    let y: Vec<f32> = pixels.iter().map(|&p| dequantize(p)).collect();
    let stats = check_denoiser_on(&arr, range, &y, &[0.002, 0.3, 1.0, 3.0, 10.0, 80.0]);
    let dense: usize = stats.iter().map(|s| s.dense_queries).sum();
    let integer: usize = stats.iter().map(|s| s.integer_dots).sum();
    assert!(dense >= 3 * 48, "the larger σ should take the dense pass: {stats:?}");
    // A range other than 0…255 (pixels 0…16, as the digits set has them): y = p/8 − 1.
    let small: Vec<u8> = pixels.iter().map(|&p| ((p as u32 * 16 + 127) / 255) as u8).collect();
    let arr16 = Array::from_u8(vec![n, d], &small, "test images, 0…16");
    let range16 = PixelRange::of(&arr16).unwrap();
    assert_eq!((range16.lo, range16.hi), (0.0, 16.0));
    let y16: Vec<f32> = small.iter().map(|&p| p as f32 / 8.0 - 1.0).collect();
    let stats16 = check_denoiser_on(&arr16, range16, &y16, &[0.002, 1.0, 10.0, 80.0]);
    let amx = rote::amx::available();
    assert!(stats.iter().chain(&stats16).all(|s| s.integer_screen == amx), "{stats:?} {stats16:?}");
    if amx {
        assert_eq!(integer, dense, "with AMX every dense query here should use the integer tiles: {stats:?}");
    } else {
        assert_eq!(integer, 0);
    }
}

#[test]
fn optimal_denoiser_matches_float64_over_the_whole_sigma_range() {
    check_denoiser(600, 64, &[0.002, 0.01, 0.1, 1.0, 10.0, 80.0]);
}

#[test]
fn optimal_denoiser_is_exact_in_high_dimension_with_near_duplicates() {
    check_denoiser(1500, 784, &[0.002, 0.01, 0.1, 1.0, 10.0, 80.0]);
}

#[test]
fn optimal_denoiser_limits_are_the_nearest_point_and_the_mean() {
    let (n, d) = (300, 16);
    let y = training_points(n, d, 4);
    let arr = Array::from_f32(vec![n, d], &y, "test points");
    let train = TrainingSet::new(&arr, PixelRange::MODEL).unwrap();
    // σ → 0: the nearest training point itself (the query sits a little off point 17,
    // which has no duplicate).
    let x: Vec<f32> = (0..d).map(|j| y[17 * d + j] + 0.01).collect();
    let (out, _) = denoise(&train, &x, 1e-4).unwrap();
    let nearest = (0..n).min_by(|&a, &b| {
        let da: f64 = (0..d).map(|j| (x[j] as f64 - y[a * d + j] as f64).powi(2)).sum();
        let db: f64 = (0..d).map(|j| (x[j] as f64 - y[b * d + j] as f64).powi(2)).sum();
        da.total_cmp(&db)
    });
    assert_eq!(&out[..], &y[nearest.unwrap() * d..(nearest.unwrap() + 1) * d]);
    // σ → ∞: the mean of the training set.
    let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|i| y[i * d + j] as f64).sum::<f64>() / n as f64).collect();
    let (out, _) = denoise(&train, &x, 1e6).unwrap();
    assert!(rel_err(&out, &mean) < 1e-5, "{}", rel_err(&out, &mean));
}

/// Brute force in float64 with ties broken by the lower index.
fn reference_knn(y: &[f32], d: usize, x: &[f32], k: usize, metric: Metric) -> Vec<u32> {
    let mut order: Vec<(f64, u32)> = y
        .chunks_exact(d)
        .enumerate()
        .map(|(i, yi)| {
            let v = match metric {
                Metric::L2 => yi.iter().zip(x).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>(),
                Metric::Ip => -yi.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>(),
            };
            (v, i as u32)
        })
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    order.iter().take(k).map(|p| p.1).collect()
}

#[test]
fn knn_matches_brute_force_exactly_including_ties() {
    let (n, d) = (5000, 48);
    // Integer-valued pixels make many exact ties; duplicates make more.
    let y: Vec<f32> = training_points(n, d, 5).iter().map(|v| ((v + 1.0) * 3.0).round()).collect();
    let arr = Array::from_f32(vec![n, d], &y, "pixels");
    let train = TrainingSet::new(&arr, PixelRange::MODEL).unwrap();
    let mut x: Vec<f32> = queries_near(&y, d, 70, 0.7, 3).iter().map(|v| v.round()).collect();
    x.extend_from_slice(&y[7 * d..8 * d]);
    let q = x.len() / d;
    for metric in [Metric::L2, Metric::Ip] {
        for k in [1, 2, 5, 32] {
            let got = knn(&train, &x, k, metric).unwrap();
            for i in 0..q {
                let want = reference_knn(&y, d, &x[i * d..(i + 1) * d], k, metric);
                assert_eq!(&got.indices[i * k..(i + 1) * k], &want[..], "query {i}, k = {k}, {metric:?}");
            }
        }
    }
}

/// The Heun sampler in float64 with the float64 reference denoiser.
fn reference_sample(y: &[f64], d: usize, x0: &[f64], schedule: &Schedule) -> Vec<f64> {
    let t = schedule.sigmas();
    let mut x = x0.to_vec();
    for i in 0..schedule.steps {
        let (ti, tn) = (t[i], t[i + 1]);
        let dn = reference_denoise(y, d, &x, ti);
        let di: Vec<f64> = x.iter().zip(&dn).map(|(a, b)| (a - b) / ti).collect();
        let xe: Vec<f64> = x.iter().zip(&di).map(|(a, b)| a + (tn - ti) * b).collect();
        if tn > 0.0 {
            let dn2 = reference_denoise(y, d, &xe, tn);
            x = (0..d).map(|j| x[j] + (tn - ti) * 0.5 * (di[j] + (xe[j] - dn2[j]) / tn)).collect();
        } else {
            x = xe;
        }
    }
    x
}

struct Optimal<'a>(TrainingSet<'a>);

impl Denoiser for Optimal<'_> {
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn denoise(&mut self, x: &[f32], sigma: f64) -> anyhow::Result<Vec<f32>> {
        Ok(denoise(&self.0, x, sigma)?.0)
    }
}

#[test]
fn heun_sampler_matches_a_float64_reference() {
    let (n, d) = (12, 6);
    let y = training_points(n, d, 6);
    let arr = Array::from_f32(vec![n, d], &y, "tiny");
    let schedule = Schedule::default();
    let t = schedule.sigmas();
    assert_eq!(t.len(), 19);
    assert!((t[0] - 80.0).abs() < 1e-12 && (t[17] - 0.002).abs() < 1e-15 && t[18] == 0.0);
    let x0 = initial_noise(3, 0, 8, d, schedule.sigma_max);
    let mut den = Optimal(TrainingSet::new(&arr, PixelRange::MODEL).unwrap());
    let mut steps = 0;
    let got = heun(&mut den, x0.clone(), &schedule, &mut |_| steps += 1).unwrap();
    assert_eq!(steps, 18);
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    for (s, row) in got.chunks_exact(d).enumerate() {
        let x64: Vec<f64> = x0[s * d..(s + 1) * d].iter().map(|&v| v as f64).collect();
        let want = reference_sample(&y64, d, &x64, &schedule);
        let err = row.iter().zip(&want).map(|(&a, b)| (a as f64 - b).abs()).fold(0f64, f64::max);
        assert!(err < 1e-4, "sample {s}: max abs error {err:.3e}");
        // The optimal denoiser only reproduces training points.
        let copies = (0..n).any(|i| (0..d).all(|j| (want[j] - y64[i * d + j]).abs() < 1e-3));
        assert!(copies, "sample {s} is not a training point");
    }
}

#[test]
fn memorization_ratio_counts_the_top_two_rule() {
    // Known answers: squared distances (1, 100) → ratio 0.1 (memorized); (4, 9) → 2/3.
    let n = rote::diffusion::knn::Neighbours { k: 2, indices: vec![0, 1, 2, 3, 4, 5], values: vec![1.0, 100.0, 4.0, 9.0, 0.0, 0.0] };
    let m = memorization_ratio(n, 1.0 / 3.0).unwrap();
    assert_eq!(m.ratios, vec![0.1, 2.0 / 3.0, 0.0]);
    assert_eq!(m.memorized, 2);
    assert!((m.memorization_ratio - 2.0 / 3.0).abs() < 1e-15);
}

#[test]
fn optimal_denoiser_samples_of_digits_are_copies_and_held_out_digits_are_not() {
    let dir = tempdir();
    let train = data::open("digits:subset-random=1500,subset-seed=1").unwrap();
    let out = dir.path().join("s");
    rote_ok(&["denoise", "sample", "--data", "digits", "--samples", "64", "--out", p(&out), "--grid", p(&out.join("grid.png"))]);
    let s = rote_ok(&["memratio", "--generated", p(&out.join("samples.npy")), "--data", "digits", "--json", "--gallery", p(&out.join("nn.png"))]);
    let v = json(&s);
    assert_eq!(v["samples"], 64);
    assert!(v["memorization_ratio"].as_f64().unwrap() >= 0.99, "{s}");
    assert!(out.join("grid.png").exists() && out.join("nn.png").exists());
    assert!(out.join("ratios.npy").exists() && out.join("neighbours.npy").exists());
    // Held-out digits (those the random subset left out) as "generated" samples.
    drop(train);
    let all = data::open("digits").unwrap();
    let kept = data::open("digits:subset-random=1500,subset-seed=1").unwrap();
    let kept_rows: std::collections::HashSet<Vec<u32>> =
        (0..kept.train.len()).map(|i| kept.train.x.rows_f32(i, i + 1).iter().map(|v| v.to_bits()).collect()).collect();
    let mut held = Vec::new();
    for i in 0..all.train.len() {
        let r = all.train.x.rows_f32(i, i + 1);
        if !kept_rows.contains(&r.iter().map(|v| v.to_bits()).collect::<Vec<_>>()) {
            held.extend(r.iter().map(|&v| rote::diffusion::quantize(v / 8.0 - 1.0)));
        }
    }
    let count = held.len() / 64;
    assert!(count > 200, "{count}");
    let held_path = dir.path().join("held.npy");
    rote::report::write_npy(&held_path, &[count, 8, 8], &held).unwrap();
    let train_dir = dir.path().join("train");
    kept.write_dir(&train_dir).unwrap();
    let s = rote_ok(&["memratio", "--generated", p(&held_path), "--data", p(&train_dir), "--json"]);
    let ratio = json(&s)["memorization_ratio"].as_f64().unwrap();
    assert!(ratio < 0.2, "held-out digits memorization ratio {ratio}");
}

#[test]
fn bad_diffusion_input_is_rejected_with_the_file_and_the_problem() {
    let dir = tempdir();
    let d = dir.path();
    // Queries of the wrong dimension (digits samples have 64 numbers).
    let q = d.join("q.npy");
    rote::report::write_npy(&q, &[3, 10], &vec![0f32; 30]).unwrap();
    let e = rote_err(&["denoise", "eval", "--data", "digits", "--queries", p(&q), "--sigma", "1", "--out", p(&d.join("o.npy"))]);
    assert!(e.contains("q.npy") && e.contains("64"), "{e}");
    let e = rote_err(&["knn", "--data", "digits", "--queries", p(&q), "--k", "2", "--out", p(&d.join("nn"))]);
    assert!(e.contains("q.npy") && e.contains("64"), "{e}");
    // σ ≤ 0.
    let q64 = d.join("q64.npy");
    rote::report::write_npy(&q64, &[2, 8, 8], &vec![0f32; 128]).unwrap();
    for sigma in ["0", "-1"] {
        let e = rote_err(&["denoise", "eval", "--data", "digits", "--queries", p(&q64), "--sigma", sigma, "--out", p(&d.join("o.npy"))]);
        assert!(e.contains("σ must be a positive"), "{e}");
    }
    assert!(!d.join("o.npy").exists(), "nothing is written on bad input");
    // Integer queries to the denoiser (which works in model space).
    let qi = d.join("qi.npy");
    rote::report::write_npy(&qi, &[2, 64], &vec![1u8; 128]).unwrap();
    let e = rote_err(&["denoise", "eval", "--data", "digits", "--queries", p(&qi), "--sigma", "1", "--out", p(&d.join("o.npy"))]);
    assert!(e.contains("model space"), "{e}");
    // k out of range.
    let e = rote_err(&["knn", "--data", "digits", "--queries", p(&q64), "--k", "0", "--out", p(&d.join("nn"))]);
    assert!(e.contains("k = 0"), "{e}");
    // An empty training set.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    rote::report::write_npy(&empty.join("x.npy"), &[0, 64], &Vec::<f32>::new()).unwrap();
    rote::report::write_npy(&empty.join("y.npy"), &[0], &Vec::<i64>::new()).unwrap();
    let e = rote_err(&["denoise", "sample", "--data", p(&empty), "--samples", "2", "--out", p(&d.join("s"))]);
    assert!(e.contains("empty") || e.contains("no samples"), "{e}");
    // Generated samples of the wrong type or shape.
    let gen = d.join("gen.npy");
    rote::report::write_npy(&gen, &[4, 64], &vec![3i64; 256]).unwrap();
    let e = rote_err(&["memratio", "--generated", p(&gen), "--data", "digits"]);
    assert!(e.contains("gen.npy") && e.contains("uint8"), "{e}");
    rote::report::write_npy(&gen, &[4, 7, 7], &vec![3u8; 196]).unwrap();
    let e = rote_err(&["memratio", "--generated", p(&gen), "--data", "digits"]);
    assert!(e.contains("gen.npy") && e.contains("49"), "{e}");
    rote::report::write_npy(&gen, &[2, 64], &vec![100f32; 128]).unwrap();
    let e = rote_err(&["memratio", "--generated", p(&gen), "--data", "digits"]);
    assert!(e.contains("model space"), "{e}");
    let e = rote_err(&["memratio", "--generated", p(d), "--data", "digits"]);
    assert!(e.contains("is a directory"), "{e}");
    // Sampler settings.
    let e = rote_err(&["denoise", "sample", "--data", "digits", "--samples", "2", "--sigma-min", "0", "--out", p(&d.join("s"))]);
    assert!(e.contains("--sigma-min"), "{e}");
    let e = rote_err(&["denoise", "sample", "--data", "digits", "--subset", "5000", "--samples", "2", "--out", p(&d.join("s"))]);
    assert!(e.contains("5000") && e.contains("1797"), "{e}");
}

#[test]
fn knn_and_eval_commands_write_their_outputs() {
    let dir = tempdir();
    let d = dir.path();
    let ds = data::open("digits").unwrap();
    // Queries: training rows 5 and 9 themselves; their nearest neighbour is themselves
    // (or an identical earlier duplicate).
    let mut q = ds.train.x.rows_f32(5, 6);
    q.extend(ds.train.x.rows_f32(9, 10));
    let qp = d.join("q.npy");
    rote::report::write_npy(&qp, &[2, 8, 8], &q).unwrap();
    let s = rote_ok(&["knn", "--data", "digits", "--queries", p(&qp), "--k", "3", "--out", p(&d.join("nn")), "--json"]);
    assert_eq!(json(&s)["k"], 3);
    let idx = Array::open_npy(&d.join("nn/indices.npy")).unwrap().to_i64().unwrap();
    let dist = Array::open_npy(&d.join("nn/distances.npy")).unwrap().to_f32();
    assert_eq!(idx.len(), 6);
    assert_eq!(dist[0], 0.0);
    assert_eq!(dist[3], 0.0);
    assert!(idx[0] <= 5 && idx[3] <= 9);
    assert!(dist[1] >= dist[0] && dist[2] >= dist[1]);
    // eval: at σ = 1e-3 the optimal denoiser returns the training point a query sits on.
    let model: Vec<f32> = q.iter().map(|v| v / 8.0 - 1.0).collect();
    let mp = d.join("m.npy");
    rote::report::write_npy(&mp, &[2, 8, 8], &model).unwrap();
    let v = json(&rote_ok(&["denoise", "eval", "--data", "digits", "--queries", p(&mp), "--sigma", "0.001", "--out", p(&d.join("out.npy")), "--json", "--device", "cpu"]));
    // Both queries sit on a training point: screened, each down to a few candidates.
    assert_eq!(v["paths"]["screened_queries"], 2, "{v}");
    assert_eq!(v["paths"]["dense_queries"], 0, "{v}");
    let out = Array::open_npy(&d.join("out.npy")).unwrap();
    assert_eq!(out.shape, vec![2, 8, 8]);
    let err = out.to_f32().iter().zip(&model).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-6, "{err}");
}

#[test]
fn optimal_denoiser_samples_of_fashion_mnist_are_copies_and_test_images_are_not() {
    if !std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        assert!(std::env::var("ROTE_REQUIRE_FASHION_MNIST").is_err(), "dataset-fashion-mnist is not installed but ROTE_REQUIRE_FASHION_MNIST is set");
        eprintln!("SKIPPED: apt-get install dataset-fashion-mnist to run this test");
        return;
    }
    let dir = tempdir();
    let out = dir.path().join("s");
    rote_ok(&["denoise", "sample", "--data", "fashion-mnist", "--subset", "2000", "--samples", "100", "--out", p(&out)]);
    let v = json(&rote_ok(&["memratio", "--generated", p(&out.join("samples.npy")), "--data", "fashion-mnist:subset=200", "--json"]));
    assert!(v["memorization_ratio"].as_f64().unwrap() >= 0.99, "{v}");
    // 500 test images as "generated" samples against all 60 000 training images.
    let ds = data::open("fashion-mnist").unwrap();
    let test = ds.test.unwrap();
    let held = dir.path().join("test500.npy");
    rote::report::write_npy(&held, &[500, 28, 28], test.x.row_bytes(0, 500)).unwrap();
    let v = json(&rote_ok(&["memratio", "--generated", p(&held), "--data", "fashion-mnist", "--json"]));
    let ratio = v["memorization_ratio"].as_f64().unwrap();
    assert!(ratio < 0.1, "test images: memorization ratio {ratio}");
    eprintln!("fashion-mnist test images: memorization ratio {ratio}");
}

#[test]
fn knn_on_pixels_matches_brute_force_exactly() {
    // uint8 data take the integer kernel where the CPU has AVX-512 VNNI (on the AMX
    // tiles where it has those; else the float screen); odd dimension, point and query
    // counts off the kernels' blocks.
    let (n, d) = (3001, 49);
    let mut y: Vec<u8> = (0..n * d).map(|i| (Philox::new(8, 0).word(i as u64) % 7 * 40) as u8).collect();
    for p in 0..200 {
        let (a, b) = (p * 13 % n, (p * 13 + 5) % n);
        let src = y[a * d..(a + 1) * d].to_vec();
        y[b * d..(b + 1) * d].copy_from_slice(&src);
    }
    let arr = Array::from_u8(vec![n, d], &y, "pixels");
    let train = TrainingSet::new(&arr, PixelRange::MODEL).unwrap();
    let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
    let mut x: Vec<f32> = (0..61 * d).map(|i| yf[(i / d * 37 % n) * d + i % d]).collect();
    x.extend((0..9 * d).map(|i| (Philox::new(9, 0).word(i as u64) % 256) as f32));
    let q = x.len() / d;
    eprintln!("integer kernel available: {} (AMX tiles: {})", rote::diffusion::knn_u8::available(), rote::amx::available());
    for metric in [Metric::L2, Metric::Ip] {
        for k in [1, 2, 5, 32] {
            let got = knn(&train, &x, k, metric).unwrap();
            for i in 0..q {
                let want = reference_knn(&yf, d, &x[i * d..(i + 1) * d], k, metric);
                assert_eq!(&got.indices[i * k..(i + 1) * k], &want[..], "query {i}, k = {k}, {metric:?}");
                let v0 = match metric {
                    Metric::L2 => (0..d).map(|j| (x[i * d + j] as f64 - yf[want[0] as usize * d + j] as f64).powi(2)).sum::<f64>(),
                    Metric::Ip => (0..d).map(|j| x[i * d + j] as f64 * yf[want[0] as usize * d + j] as f64).sum::<f64>(),
                };
                assert_eq!(got.values[i * k], v0);
            }
        }
    }
}
