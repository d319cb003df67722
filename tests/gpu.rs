//! CPU↔GPU agreement. Each test runs on CUDA device 0 when one is usable, and
//! otherwise skips with a message; scripts/gpu-check.sh sets ROTE_REQUIRE_GPU=1, which
//! turns a missing GPU into a failure.

use rote::data::{self, Array, DType};
use rote::device::cuda::CudaBackend;
use rote::device::{Backend, Device, DeviceRequest};
use rote::rng::{philox4x32_10, Distribution, Philox};
use std::sync::Arc;

fn gpu(test: &str) -> Option<Arc<CudaBackend>> {
    let required = std::env::var("ROTE_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match DeviceRequest::Auto.resolve().unwrap() {
        Device::Cuda(i) => Some(Arc::new(CudaBackend::new(i).expect("open CUDA device"))),
        Device::Cpu => {
            let why = rote::device::cuda::probe().unavailable.clone().unwrap_or_else(|| "kernels unavailable".into());
            assert!(!required, "{test}: ROTE_REQUIRE_GPU=1 but no usable GPU: {why}");
            eprintln!("SKIPPED {test}: no usable CUDA device ({why})");
            None
        }
    }
}

/// Prints one summary line that scripts/gpu-check.sh collects.
fn summary(kernel: &str, max_err: f64, seconds: f64) {
    println!("\nGPU-CHECK kernel={kernel} max_err={max_err:.3e} seconds={seconds:.4}");
}

#[test]
fn philox_known_answers_on_gpu() {
    let Some(g) = gpu("philox_known_answers_on_gpu") else { return };
    let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (ctr, key, want) in cases {
        let rng = Philox::new(key[0] as u64 | (key[1] as u64) << 32, ctr[2] as u64 | (ctr[3] as u64) << 32);
        let mut out = [0u32; 4];
        g.fill_blocks(rng, ctr[0] as u64 | (ctr[1] as u64) << 32, &mut out).unwrap();
        assert_eq!(out, want);
        assert_eq!(philox4x32_10(ctr, key), want);
    }
    summary("philox_fill_blocks (known answers)", 0.0, 0.0);
}

#[test]
fn philox_streams_agree_bit_for_bit() {
    let Some(g) = gpu("philox_streams_agree_bit_for_bit") else { return };
    let backend = Backend::Cuda(g.clone());
    let n = 1 << 20;
    for (seed, stream, start) in [(0u64, 0u64, 0u64), (12345, 7, 999_983), (u64::MAX, 3, (1u64 << 34) + 5)] {
        let rng = Philox::new(seed, stream);
        let mut cpu_words = vec![0u32; n];
        let mut gpu_words = vec![0u32; n];
        Backend::Cpu.fill_words(rng, start, &mut cpu_words).unwrap();
        backend.fill_words(rng, start, &mut gpu_words).unwrap();
        assert_eq!(cpu_words, gpu_words, "words differ for seed {seed}");
        for dist in [Distribution::Uniform, Distribution::Sign] {
            let mut c = vec![0f32; n];
            let mut d = vec![0f32; n];
            Backend::Cpu.fill_random(dist, rng, start, &mut c).unwrap();
            let t0 = std::time::Instant::now();
            backend.fill_random(dist, rng, start, &mut d).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            assert!(c.iter().zip(&d).all(|(a, b)| a.to_bits() == b.to_bits()), "{dist:?} differs");
            summary(&format!("philox_fill_{dist:?} (1M, bitwise)"), 0.0, secs);
        }
    }
}

#[test]
fn philox_normals_agree_within_one_ulp() {
    let Some(g) = gpu("philox_normals_agree_within_one_ulp") else { return };
    let n = 1 << 22;
    let rng = Philox::new(2024, 11);
    let mut c = vec![0f32; n];
    let mut d = vec![0f32; n];
    Backend::Cpu.fill_random(Distribution::Normal, rng, 17, &mut c).unwrap();
    let t0 = std::time::Instant::now();
    g.fill_random(Distribution::Normal, rng, 17, &mut d).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let mut max_ulps = 0i64;
    let mut exact = 0usize;
    let mut max_err = 0f64;
    for (a, b) in c.iter().zip(&d) {
        let ulps = (a.to_bits() as i32 as i64 - b.to_bits() as i32 as i64).abs();
        max_ulps = max_ulps.max(ulps);
        exact += (ulps == 0) as usize;
        max_err = max_err.max((a - b).abs() as f64);
    }
    println!("normals: {exact} of {n} bit-identical, max {max_ulps} ulp apart");
    assert!(max_ulps <= 1, "normals differ by {max_ulps} ulp");
    assert!(exact as f64 >= 0.9999 * n as f64);
    summary("philox_fill_normal (4M)", max_err, secs);
}

fn reference_sq_norms(x: &Array) -> Vec<f64> {
    x.to_f32().chunks(x.row_len()).map(|r| r.iter().map(|&t| (t as f64).powi(2)).sum()).collect()
}

#[test]
fn row_norms_agree_across_dtypes_and_chunkings() {
    let Some(g) = gpu("row_norms_agree_across_dtypes_and_chunkings") else { return };
    let ds = data::open("blobs:n=20000,dim=784,centers=10,seed=1").unwrap();
    let f32x = ds.train.x.clone();
    let f16: Vec<half::f16> = f32x.to_f32().iter().map(|&v| half::f16::from_f32(v)).collect();
    let f16x = Array::from_bytes(DType::F16, f32x.shape.clone(), bytemuck::cast_slice(&f16), "f16");
    let u8x = Array::from_u8(vec![20000, 784], &(0..20000 * 784).map(|i| (i * 13 % 251) as u8).collect::<Vec<_>>(), "u8");
    for x in [&f32x, &f16x, &u8x] {
        let want = reference_sq_norms(x);
        let cpu = Backend::Cpu.row_sq_norms(x, 0..x.rows(), &|_| {}).unwrap();
        // Small chunks force many double-buffered rounds and a partial last chunk.
        for chunk in [7usize, 1000, 1 << 20] {
            let range = 13..x.rows() - 5;
            let t0 = std::time::Instant::now();
            let got = g.row_sq_norms(x, range.clone(), chunk, &|_| {}).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let mut max_rel = 0f64;
            for (k, v) in got.iter().enumerate() {
                let w = want[range.start + k];
                let rel = (*v as f64 - w).abs() / w.max(1.0);
                max_rel = max_rel.max(rel);
                let c = cpu[range.start + k] as f64;
                assert!((*v as f64 - c).abs() / c.max(1.0) < 2e-5, "GPU {v} vs CPU {c}");
            }
            assert!(max_rel < 1e-5, "{:?} chunk {chunk}: max relative error {max_rel}", x.dtype);
            summary(&format!("row_sq_norms_{:?} chunk={chunk}", x.dtype), max_rel, secs);
        }
    }
}

#[test]
fn construct_layer1_bits_identical() {
    use rote::construct::layer1::{threshold_bits, Layer1};
    let Some(g) = gpu("construct_layer1_bits_identical") else { return };
    // Widths and row counts that are not multiples of the 64×64 tile; λ = 0 and zero
    // rows exercise the exact fix-up path.
    for (spec, width, lambda) in [
        ("blobs:n=3001,dim=784,centers=10,seed=2", 1000, 0.5f32),
        ("blobs:n=777,dim=33,centers=3,seed=3", 300, 0.0),
        ("moons:n=5000,seed=4", 4099, 1.0),
    ] {
        let ds = data::open(spec).unwrap();
        let d = ds.train.features();
        let mut x = ds.train.x.to_f32();
        let scale = rote::construct::unit_norm_scale(&x, d);
        rote::construct::scale_inputs(&mut x, scale);
        x[..3 * d].iter_mut().for_each(|v| *v = 0.0);
        let layer = Layer1::random(7, width, d, lambda);
        let cpu = threshold_bits(&x, &layer);
        let t0 = std::time::Instant::now();
        let (gpu_bits, _) = g.construct_layer1(&x, &layer).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let differing = cpu.data.iter().zip(&gpu_bits.data).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{spec}: {differing} words differ");
        summary(&format!("layer1_threshold_pack+fix {spec} n={width}"), 0.0, secs);
    }
}

#[test]
fn construct_networks_identical() {
    use rote::construct::{self, Activation, FitConfig, Target};
    let Some(g) = gpu("construct_networks_identical") else { return };
    let cuda = Backend::Cuda(g);
    for (spec, width, lambda, target) in [
        ("moons:n=1000,noise=0.05,seed=0", 300, 0.5f32, Target::Binary { positive: None }),
        ("moons:n=20000,noise=0.1,seed=1", 700, 0.3, Target::Binary { positive: None }),
        ("digits", 300, 0.5, Target::OneVsRest),
        ("blobs:n=4000,dim=20,centers=5,std=6,seed=2", 500, 1.0, Target::OneVsRest),
    ] {
        let ds = data::open(spec).unwrap();
        for seed in 0..2 {
            let cfg = FitConfig { width, max_bias: lambda, activation: Activation::Threshold, seed, target, scale_to_unit_norm: true };
            let (a, ra) = construct::fit(&ds, &cfg, &Backend::Cpu).unwrap();
            let (b, rb) = construct::fit(&ds, &cfg, &cuda).unwrap();
            assert_eq!(a.nets, b.nets, "{spec} seed {seed}: networks differ");
            assert_eq!(ra.train_accuracy, rb.train_accuracy);
            summary(&format!("construct fit {spec} n={width} seed={seed} (cpu {:.4}s)", ra.fit_seconds), 0.0, rb.fit_seconds);
        }
    }
}

#[test]
fn curvature_scores_agree() {
    use rote::curvature::{scores_on, Estimator, ScoreConfig, Statistic};
    use rote::nn::mlp::{Activation, Mlp};
    let Some(g) = gpu("curvature_scores_agree") else { return };
    let cuda = Backend::Cuda(g);
    let rows = 301;
    // The last case has more classes than the device finish holds (32) and an input
    // size that is no multiple of 32: the projections then run in two class groups
    // and the probes' sign blocks straddle rows.
    for (sizes, act, est, probes) in [
        (&[784, 256, 128, 10][..], Activation::Relu, Estimator::Exact, 0),
        (&[784, 256, 128, 10], Activation::Relu, Estimator::Hutchinson, 7),
        (&[784, 256, 128, 10], Activation::Gelu, Estimator::Hutchinson, 5),
        (&[784, 256, 128, 10], Activation::Tanh, Estimator::Exact, 4),
        (&[784, 256, 128, 10], Activation::Softplus, Estimator::Hutchinson, 3),
        (&[100, 64, 40], Activation::Relu, Estimator::Hutchinson, 6),
        (&[100, 64, 40], Activation::Gelu, Estimator::Hutchinson, 4),
    ] {
        let (d, classes) = (sizes[0], *sizes.last().unwrap());
        let mut x = vec![0f32; rows * d];
        Philox::new(3, 3).fill_uniform(0, &mut x);
        let y: Vec<i64> = (0..rows as i64).map(|i| i % classes as i64).collect();
        let m = Mlp::init(sizes, act, 4);
        let cfg = ScoreConfig { estimator: est, statistic: Statistic::Paper, probes, h: 1e-3, seed: 5 };
        let cpu = scores_on(&Backend::Cpu, &m, &x, &y, 1000, &cfg).unwrap();
        let t0 = std::time::Instant::now();
        let gpu_scores = scores_on(&cuda, &m, &x, &y, 1000, &cfg).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let top = cpu.score.iter().cloned().fold(0f32, f32::max) as f64;
        let mut max_rel = 0f64;
        for (a, b) in gpu_scores.score.iter().zip(&cpu.score) {
            let err = (*a as f64 - *b as f64).abs();
            assert!(err <= 1e-3 * (*b as f64).abs() + 1e-6 * top, "{act:?} {est:?}: GPU {a} vs CPU {b}");
            max_rel = max_rel.max(err / (*b as f64).abs().max(1e-12));
        }
        // vᵀHv sums 784 terms of both signs: allow float32 rounding of ‖Hv‖·‖v‖.
        let trace_slack = 1e-4 * (d as f64 * top).sqrt();
        for (a, b) in gpu_scores.trace.iter().zip(&cpu.trace) {
            assert!(((a - b) as f64).abs() <= 1e-3 * (*b as f64).abs() + trace_slack, "{act:?} {est:?} trace: GPU {a} vs CPU {b}");
        }
        assert_eq!(gpu_scores.gauss_newton.is_some(), cpu.gauss_newton.is_some());
        if let (Some(a), Some(b)) = (&gpu_scores.gauss_newton, &cpu.gauss_newton) {
            let gtop = b.iter().cloned().fold(0f32, f32::max) as f64;
            for (u, v) in a.iter().zip(b) {
                assert!(((u - v) as f64).abs() <= 1e-3 * (*v as f64).abs() + 1e-6 * gtop, "{act:?} Gauss–Newton: GPU {u} vs CPU {v}");
            }
        }
        let shape = sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("-");
        summary(&format!("curvature {act:?} {est:?} {shape} B=301 P={probes}"), max_rel, secs);
    }
}

#[test]
fn training_steps_agree() {
    use rote::nn::{mlp::parse_spec, train};
    let Some(g) = gpu("training_steps_agree") else { return };
    let cuda = Backend::Cuda(g);
    let ds = data::open("digits").unwrap();
    for model in ["mlp:64-64-10,act=tanh", "mlp:64-128-64-10,act=relu"] {
        let cfg = train::TrainConfig {
            data: "digits".into(),
            model: model.into(),
            epochs: 3,
            batch: 32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: train::Schedule::Constant,
            label_noise: 0.05,
            duplicate_conflicts: 5,
            seed: 1,
            input_scale: train::input_scale_for(&ds),
            normalization: Default::default(),
            augment: String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::Instant::now();
        let a = train::train(&ds, &cfg, &dir.path().join("cpu"), &Backend::Cpu, false, &|_, _| {}).unwrap();
        let cpu_secs = t0.elapsed().as_secs_f64();
        let t0 = std::time::Instant::now();
        let b = train::train(&ds, &cfg, &dir.path().join("gpu"), &cuda, false, &|_, _| {}).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let (rote::nn::network::Network::Mlp(a), rote::nn::network::Network::Mlp(b)) = (a, b) else { panic!("{model} is an MLP") };
        let (sizes, _) = parse_spec(model).unwrap();
        let mut worst = 0f64;
        for l in 0..sizes.len() - 1 {
            let num: f64 = a.weights[l].iter().zip(&b.weights[l]).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
            let den: f64 = a.weights[l].iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            worst = worst.max(num / den);
        }
        // 171 SGD steps: float32 differences in the products may grow, but stay small.
        assert!(worst < 1e-3, "{model}: weights differ by {worst:.2e} (relative) after 3 epochs");
        let last = |run: &str| std::fs::read_to_string(dir.path().join(run).join("metrics.csv")).unwrap().lines().last().unwrap().to_string();
        let (lc, lg) = (last("cpu"), last("gpu"));
        let loss = |l: &str| l.split(',').nth(1).unwrap().parse::<f64>().unwrap();
        assert!((loss(&lc) - loss(&lg)).abs() <= 1e-3 * loss(&lc), "{model}: train loss CPU {lc} vs GPU {lg}");
        summary(&format!("train {model} 3 epochs (cpu {cpu_secs:.2}s)"), worst, secs);
    }
}

/// Points in [−1, 1]^d with exact and near duplicates (pairs 1e-4 apart).
fn denoiser_points(n: usize, d: usize) -> Vec<f32> {
    let mut z = vec![0f32; n * d];
    Philox::new(21, 0).fill_normal(0, &mut z);
    let mut y: Vec<f32> = z.iter().map(|v| (0.4 * v).clamp(-1.0, 1.0)).collect();
    for p in 0..n / 10 {
        let (a, b) = (p * 7 % n, (p * 7 + 3) % n);
        let src = y[a * d..(a + 1) * d].to_vec();
        y[b * d..(b + 1) * d].copy_from_slice(&src);
        y[b * d + p % d] += 1e-4;
    }
    y
}

fn reference_denoise(y: &[f32], d: usize, x: &[f32], sigma: f64) -> Vec<f64> {
    let logits: Vec<f64> = y
        .chunks_exact(d)
        .map(|yi| -yi.iter().zip(x).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / (2.0 * sigma * sigma))
        .collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = w.iter().sum();
    let mut out = vec![0f64; d];
    for (wi, yi) in w.iter().zip(y.chunks_exact(d)) {
        out.iter_mut().zip(yi).for_each(|(o, &v)| *o += wi * v as f64 / s);
    }
    out
}

#[test]
fn optimal_denoiser_on_gpu_matches_float64_and_streams_beyond_its_budget() {
    use rote::diffusion::{PixelRange, TrainingSet};
    let Some(g) = gpu("optimal_denoiser_on_gpu_matches_float64_and_streams_beyond_its_budget") else { return };
    let (n, d) = (20_000, 784);
    let y = denoiser_points(n, d);
    let arr = Array::from_f32(vec![n, d], &y, "points");
    let train = TrainingSet::new(&arr, PixelRange::MODEL).unwrap();
    let resident = rote::device::GpuDenoiser::new(g.clone(), &train).unwrap();
    assert_eq!(resident.resident_rows(), n);
    // A budget of a third of the set: two thirds are uploaded on every call.
    let streamed = rote::device::GpuDenoiser::with_budget(g.clone(), &train, n * (d + 1) * 8 / 3).unwrap();
    assert!(streamed.resident_rows() < n / 2);
    let mut worst = 0f64;
    let t0 = std::time::Instant::now();
    for sigma in [0.002f64, 0.01, 0.1, 1.0, 10.0, 80.0] {
        let mut z = vec![0f32; 64 * d];
        Philox::new(5, sigma.to_bits()).fill_normal(0, &mut z);
        let x: Vec<f32> = (0..64 * d).map(|k| y[((k / d) * 31 % n) * d + k % d] + (sigma * z[k] as f64) as f32).collect();
        let a = resident.denoise(&x, sigma).unwrap();
        let b = streamed.denoise(&x, sigma).unwrap();
        assert_eq!(a, b, "σ = {sigma}: streamed chunks changed the result");
        for q in 0..64 {
            let want = reference_denoise(&y, d, &x[q * d..(q + 1) * d], sigma);
            let got = &a[q * d..(q + 1) * d];
            let num: f64 = got.iter().zip(&want).map(|(&u, v)| (u as f64 - v).powi(2)).sum();
            let den: f64 = want.iter().map(|v| v * v).sum();
            let rel = (num / den).sqrt();
            assert!(rel <= 1e-4, "σ = {sigma}, query {q}: relative error {rel:.3e}");
            worst = worst.max(rel);
        }
    }
    summary("optimal denoiser vs float64 (σ 0.002…80, N=20000, D=784)", worst, t0.elapsed().as_secs_f64());
}

#[test]
fn knn_on_gpu_agrees_exactly_with_the_cpu() {
    use rote::diffusion::knn::Metric;
    use rote::diffusion::{knn_on, PixelRange, TrainingSet};
    let Some(g) = gpu("knn_on_gpu_agrees_exactly_with_the_cpu") else { return };
    let cuda = Backend::Cuda(g);
    let (n, d) = (30_000, 100);
    // Integer pixels: many exact ties, broken by the lower index on both sides.
    let y: Vec<f32> = denoiser_points(n, d).iter().map(|v| ((v + 1.0) * 4.0).round()).collect();
    let arr = Array::from_f32(vec![n, d], &y, "pixels");
    let train = TrainingSet::new(&arr, PixelRange::MODEL).unwrap();
    let q: Vec<f32> = (0..300 * d).map(|k| y[((k / d) * 97 % n) * d + k % d] + ((k * 7919) % 3) as f32 - 1.0).collect();
    let t0 = std::time::Instant::now();
    for metric in [Metric::L2, Metric::Ip] {
        for k in [1, 2, 32] {
            let a = knn_on(&Backend::Cpu, &train, &q, k, metric).unwrap();
            let b = knn_on(&cuda, &train, &q, k, metric).unwrap();
            assert_eq!(a.indices, b.indices, "{metric:?} k={k}: indices differ");
            assert_eq!(a.values, b.values, "{metric:?} k={k}: values differ");
        }
    }
    summary("knn_tile exact (l2, ip; k 1, 2, 32; N=30000)", 0.0, t0.elapsed().as_secs_f64());
}

#[test]
fn optimal_denoiser_sampling_on_gpu_agrees_with_the_cpu() {
    use rote::diffusion::sampler::{initial_noise, Schedule};
    use rote::diffusion::{quantize, OptimalDenoiser, PixelRange, TrainingSet};
    let Some(g) = gpu("optimal_denoiser_sampling_on_gpu_agrees_with_the_cpu") else { return };
    let ds = data::open("digits").unwrap();
    let range = PixelRange::of(&ds.train.x).unwrap();
    let schedule = Schedule::default();
    let x0 = initial_noise(7, 0, 256, 64, schedule.sigma_max);
    let mut cpu = OptimalDenoiser::new(&Backend::Cpu, TrainingSet::new(&ds.train.x, range).unwrap()).unwrap();
    let a = cpu.sample(x0.clone(), &schedule, &mut |_| {}).unwrap();
    let t0 = std::time::Instant::now();
    let mut gpu_den = OptimalDenoiser::new(&Backend::Cuda(g), TrainingSet::new(&ds.train.x, range).unwrap()).unwrap();
    let b = gpu_den.sample(x0, &schedule, &mut |_| {}).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let worst = a.iter().zip(&b).map(|(u, v)| (u - v).abs() as f64).fold(0.0, f64::max);
    let same_pixels = a.iter().zip(&b).filter(|(u, v)| quantize(**u) == quantize(**v)).count();
    assert!(worst < 1e-3, "samples differ by {worst:.3e}");
    assert!(same_pixels as f64 >= 0.999 * a.len() as f64, "{same_pixels} of {} pixels agree", a.len());
    summary("Heun sampler with the optimal denoiser (digits, 256 samples)", worst, secs);
}

#[test]
fn denoiser_training_on_gpu_agrees_with_the_cpu() {
    use rote::diffusion::train::{self, DenoiserConfig, Labels, Recipe};
    use rote::diffusion::PixelRange;
    let Some(g) = gpu("denoiser_training_on_gpu_agrees_with_the_cpu") else { return };
    let cuda = Backend::Cuda(g);
    let ds = data::open("digits:subset=5").unwrap();
    for labels in [Labels::None, Labels::Random(10)] {
        let recipe = Recipe { model: "resmlp:width=64,blocks=2".into(), steps: 40, batch: 32, lr: 1e-3, ema: 0.9, seed: 3 };
        let range = PixelRange::of(&ds.train.x).unwrap();
        let cfg = DenoiserConfig::new("digits:subset=5", None, labels, recipe, &ds.train, &[8, 8], range, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = train::train(&Backend::Cpu, &ds.train, &cfg, &dir.path().join("cpu"), false, &|_| {}).unwrap();
        let t0 = std::time::Instant::now();
        let b = train::train(&cuda, &ds.train, &cfg, &dir.path().join("gpu"), false, &|_| {}).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let num: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let rel = num / den;
        assert!(rel < 1e-3, "{labels}: EMA weights differ by {rel:.2e} after 40 steps");
        let last = |run: &str| std::fs::read_to_string(dir.path().join(run).join("metrics.csv")).unwrap().lines().last().unwrap().split(',').nth(1).unwrap().parse::<f64>().unwrap();
        assert!((last("cpu") - last("gpu")).abs() <= 1e-3 * last("cpu"), "{labels}: loss {} vs {}", last("cpu"), last("gpu"));
        // Sampling from the trained weights on both.
        let layout = cfg.layout().unwrap();
        let schedule = rote::diffusion::sampler::Schedule::default();
        let sa = train::sample_trained(&cfg, layout.clone(), a.clone(), 16, &schedule, 1, &Backend::Cpu).unwrap();
        let sb = train::sample_trained(&cfg, layout, a.clone(), 16, &schedule, 1, &cuda).unwrap();
        let worst = sa.iter().zip(&sb).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
        assert!(worst < 1e-2, "{labels}: samples differ by {worst:.3e}");
        summary(&format!("denoiser training 40 steps + sampling, labels {labels}"), rel.max(worst), secs);
    }
}

#[test]
fn bloom_filters_are_bit_identical_on_gpu() {
    use rote::text::bloom::{build_from_corpus, BloomParams, Layout};
    use rote::text::corpus::{write_corpus, Corpus, Dtype, Tokenizer};
    let Some(g) = gpu("bloom_filters_are_bit_identical_on_gpu") else { return };
    let rng = Philox::new(2026, 12);
    let mut word = 0u64;
    let mut next = |below: u64| {
        word += 1;
        rng.word(word) as u64 % below
    };
    for (dtype, vocab) in [(Dtype::U8, 256u64), (Dtype::U16, 50_000), (Dtype::U32, 1 << 20)] {
        let dir = tempfile::tempdir().unwrap();
        // Many short documents (some shorter than n), and long ones cut into pieces.
        let mut lens: Vec<usize> = (0..2000).map(|_| next(300) as usize).collect();
        lens.extend([1 << 20, 3 << 19]);
        let mut tokens = Vec::new();
        let mut starts = Vec::new();
        for l in lens {
            starts.push(tokens.len() as u64);
            tokens.extend((0..l).map(|_| next(vocab) as u32));
        }
        write_corpus(dir.path(), &tokens, dtype, &starts, Tokenizer::External, None).unwrap();
        let corpus = Corpus::open(dir.path()).unwrap();
        for n in [1usize, 13, 50] {
            let params = BloomParams::for_rate(Layout::Blocked, n, corpus.ngram_positions(n), 1e-3).unwrap();
            let cpu = build_from_corpus(params, &corpus, &|_| {});
            let t0 = std::time::Instant::now();
            let gpu_filter = rote::text::cuda::build_bloom_chunked(&g, params, &corpus, 1 << 18, &|_| {}).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let differ = cpu.words().iter().zip(gpu_filter.words()).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{dtype:?} n={n}: {differ} words differ");
            // Queries on the GPU: corpus runs and random ids, several sequences at once.
            let probes: Vec<Vec<u32>> = (0..5).map(|i| if i % 2 == 0 { tokens[i * 1000..i * 1000 + 5000].to_vec() } else { (0..4000).map(|_| next(vocab) as u32).collect() }).collect();
            let on_gpu = rote::text::cuda::GpuBloom::upload(&g, &cpu).unwrap();
            let refs: Vec<&[u32]> = probes.iter().map(|p| p.as_slice()).collect();
            let got = on_gpu.hits_many(&refs).unwrap();
            for (p, h) in probes.iter().zip(&got) {
                assert_eq!(h, &cpu.hits(p), "{dtype:?} n={n}: GPU queries differ");
            }
            summary(&format!("bloom_insert_{dtype:?} n={n}").to_lowercase(), differ as f64, secs);
        }
    }
}
