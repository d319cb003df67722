//! Bad input and rough edges (issue 15): each test names the item it covers. Expected
//! values come from float64 loops written here, from the file formats' specifications,
//! or from the same computation on data that needs no special care (a scale-invariance
//! check uses power-of-two scales, under which the result must be bit-identical).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files left in `dir` whose name starts with `.rote-partial-`.
fn partial_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".rote-partial-")).collect()
}

/// A float32 dataset directory from rows and labels.
fn write_f32_dataset(dir: &Path, x: &[f32], d: usize, y: &[i64]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let n = y.len();
    std::fs::write(dir.join("x.npy"), raw_npy("<f4", false, &format!("({n}, {d})"), &f32_bytes(x))).unwrap();
    std::fs::write(dir.join("y.npy"), raw_npy("<i8", false, &format!("({n},)"), &i64_bytes(y))).unwrap();
    dir.to_path_buf()
}

fn write_f32_npy(path: &Path, x: &[f32], shape: &str) {
    std::fs::write(path, raw_npy("<f4", false, shape, &f32_bytes(x))).unwrap();
}

fn digits_f32() -> (Vec<f32>, Vec<i64>, usize) {
    let ds = rote::data::open("digits").unwrap();
    (ds.train.x.to_f32(), ds.train.y.clone(), ds.train.features())
}

// 1. A sweep resumes only the experiment it was started with.
#[test]
fn sweep_resume_refuses_other_settings() {
    let dir = tempdir();
    let csv = dir.path().join("s.csv");
    let base = ["sweep", "construct", "--widths", "10,20", "--max-biases", "0.5", "--restarts", "2", "--out", p(&csv), "--json"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |args: &[String]| rote(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let first = run(&with(&["--data", "digits", "--positive-class", "3"]));
    assert!(first.status.success(), "{}", stderr(&first));
    let rows = std::fs::read_to_string(&csv).unwrap();
    // The same settings resume (nothing to run).
    let again = json(&String::from_utf8(run(&with(&["--data", "digits", "--positive-class", "3"])).stdout).unwrap());
    assert_eq!(again["trials_run"], 0);
    assert_eq!(again["trials_resumed"], 4);
    // Another positive class, another data spec: refused, the CSV untouched.
    let other_class = run(&with(&["--data", "digits", "--positive-class", "5"]));
    assert!(!other_class.status.success());
    assert!(stderr(&other_class).contains("another experiment") && stderr(&other_class).contains("positive-class 3"), "{}", stderr(&other_class));
    let moons = dir.path().join("m.csv");
    let m = |noise: &str| rote(&["sweep", "construct", "--data", &format!("moons:n=200,noise={noise}"), "--widths", "10", "--max-biases", "0.5", "--restarts", "1", "--out", p(&moons)]);
    assert!(m("0.05").status.success());
    let e = m("0.5");
    assert!(!e.status.success() && stderr(&e).contains("moons:n=200,noise=0.05"), "{}", stderr(&e));
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), rows);
    // A CSV without its settings record (an older rote, or by hand) is not guessed at.
    std::fs::remove_file(rote::construct::sweep::settings_path(&csv)).unwrap();
    let e = run(&with(&["--data", "digits", "--positive-class", "3"]));
    assert!(!e.status.success() && stderr(&e).contains("settings"), "{}", stderr(&e));
}

// 2. Max-norm scaling is exact over float32's whole finite range.
#[test]
fn construct_is_scale_invariant_over_the_finite_range() {
    let (x, y, d) = digits_f32();
    let dir = tempdir();
    let fit = |scale: f64, name: &str| -> serde_json::Value {
        let scaled: Vec<f32> = x.iter().map(|&v| (v as f64 * scale) as f32).collect();
        assert!(scaled.iter().all(|v| v.is_finite()));
        let data = write_f32_dataset(&dir.path().join(name), &scaled, d, &y);
        json(&rote_ok(&["construct", "--data", p(&data), "--positive-class", "3", "--width", "300", "--max-bias", "0.5", "--json"]))
    };
    let normal = fit(1.0, "normal");
    assert!(normal["train_accuracy"].as_f64().unwrap() > 0.7);
    // Powers of two: every scaled value and factor is exact, so the fit is the same.
    for (scale, name) in [(2f64.powi(64), "huge"), (2f64.powi(-100), "tiny"), (2f64.powi(-140), "denormal")] {
        let got = fit(scale, name);
        for key in ["train_accuracy", "second_width", "conflicts", "interpolated"] {
            assert_eq!(got[key], normal[key], "scale {scale:e}: {key}");
        }
    }
    // The issue's factors (not exact): the fit still works as at normal scale.
    for (scale, name) in [(1e19, "e19"), (1e-30, "e-30")] {
        let got = fit(scale, name);
        assert_eq!(got["conflicts"], 0, "scale {scale:e}");
        assert!((got["train_accuracy"].as_f64().unwrap() - normal["train_accuracy"].as_f64().unwrap()).abs() < 0.05, "scale {scale:e}: {got}");
    }
}

/// Exact neighbours by brute force in float64: (index, squared distance), ties by index.
fn brute_knn(train: &[f32], queries: &[f32], d: usize, k: usize) -> Vec<Vec<(u32, f64)>> {
    queries
        .chunks(d)
        .map(|q| {
            let mut all: Vec<(u32, f64)> = train
                .chunks(d)
                .enumerate()
                .map(|(i, y)| (i as u32, q.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>()))
                .collect();
            all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            all
        })
        .collect()
}

// 3. Exact kNN is exact for every finite input.
#[test]
fn knn_is_exact_for_extreme_finite_values() {
    use rote::diffusion::{knn, PixelRange, TrainingSet};
    let (n, q, d, k) = (700, 40, 19, 5);
    let rng = rote::rng::Philox::new(3, 1);
    let mut base = vec![0f32; (n + q) * d];
    rng.fill_uniform(0, &mut base);
    for magnitude in [1e38f64, 3.3e38, 1.0, 1e-20, 1e-41] {
        let values: Vec<f32> = base.iter().map(|&u| ((u as f64 * 2.0 - 1.0) * magnitude) as f32).collect();
        assert!(values.iter().all(|v| v.is_finite()));
        let (train, queries) = values.split_at(n * d);
        let arr = rote::data::Array::from_f32(vec![n, d], train, "test");
        let set = TrainingSet::new(&arr, PixelRange::MODEL).unwrap();
        let got = knn::knn(&set, queries, k, knn::Metric::L2).unwrap();
        let want = brute_knn(train, queries, d, k);
        for (qi, w) in want.iter().enumerate() {
            let idx: Vec<u32> = w.iter().map(|e| e.0).collect();
            let dist: Vec<f64> = w.iter().map(|e| e.1).collect();
            assert_eq!(&got.indices[qi * k..(qi + 1) * k], &idx[..], "magnitude {magnitude:e} query {qi}");
            assert_eq!(&got.values[qi * k..(qi + 1) * k], &dist[..], "magnitude {magnitude:e} query {qi}");
        }
    }
    // From the command line too.
    let dir = tempdir();
    let values: Vec<f32> = base.iter().map(|&u| ((u as f64 * 2.0 - 1.0) * 3.3e38) as f32).collect();
    let (train, queries) = values.split_at(n * d);
    let y: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
    let data = write_f32_dataset(&dir.path().join("d"), train, d, &y);
    write_f32_npy(&dir.path().join("q.npy"), queries, &format!("({q}, {d})"));
    rote_ok(&["knn", "--data", p(&data), "--queries", p(&dir.path().join("q.npy")), "--k", "5", "--out", p(&dir.path().join("nn"))]);
    let idx = rote::data::Array::open_npy(&dir.path().join("nn/indices.npy")).unwrap().to_i64().unwrap();
    let want = brute_knn(train, queries, d, k);
    assert_eq!(idx, want.iter().flatten().map(|e| e.0 as i64).collect::<Vec<_>>());
}

/// D*(x; σ) in float64: softmax of −‖x − yᵢ‖²/2σ² relative to the nearest.
fn optimal_f64(train: &[f32], queries: &[f32], d: usize, sigma: f64) -> Vec<f64> {
    let mut out = vec![];
    for q in queries.chunks(d) {
        let dist: Vec<f64> = train.chunks(d).map(|y| q.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum()).collect();
        let nearest = dist.iter().copied().fold(f64::INFINITY, f64::min);
        let w: Vec<f64> = dist.iter().map(|&di| if di == nearest { 1.0 } else { (-(di - nearest) / (2.0 * sigma * sigma)).exp() }).collect();
        let total: f64 = w.iter().sum();
        for c in 0..d {
            out.push(train.chunks(d).zip(&w).map(|(y, &wi)| wi * y[c] as f64).sum::<f64>() / total);
        }
    }
    out
}

// 4 and 16. The optimal denoiser at σ → 0 and on denormal data; --range.
#[test]
fn denoiser_handles_tiny_sigma_denormal_data_and_an_explicit_range() {
    let (n, q, d) = (300, 12, 7);
    let rng = rote::rng::Philox::new(9, 2);
    let mut u = vec![0f32; (n + q) * d];
    rng.fill_uniform(0, &mut u);
    let dir = tempdir();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let eval = |data: &Path, queries: &[f32], sigma: &str, extra: &[&str]| -> (Vec<f32>, serde_json::Value) {
        let qp = dir.path().join("q.npy");
        write_f32_npy(&qp, queries, &format!("({q}, {d})"));
        let out = dir.path().join("out.npy");
        let mut args = vec!["denoise", "eval", "--data", p(data), "--queries", p(&qp), "--sigma", sigma, "--out", p(&out), "--json"];
        args.extend_from_slice(extra);
        let summary = json(&rote_ok(&args));
        (rote::data::Array::open_npy(&out).unwrap().to_f32(), summary)
    };
    let close = |got: &[f32], want: &[f64], tol: f64, what: &str| {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            // float32 rounding of the result: relative, or one denormal step.
            assert!(g.is_finite() && (g as f64 - w).abs() <= tol * w.abs() + f64::powi(2.0, -150), "{what}: element {i}: {g} vs {w}");
        }
    };
    // Data in [−1, 1]: identity by default (EDM's convention), recorded in the JSON.
    let unit: Vec<f32> = u.iter().map(|&v| v * 2.0 - 1.0).collect();
    let (train, queries) = unit.split_at(n * d);
    let data = write_f32_dataset(&dir.path().join("unit"), train, d, &y);
    let (got, summary) = eval(&data, queries, "0.3", &[]);
    assert_eq!(summary["range"], "auto");
    assert_eq!(summary["pixel_range"]["lo"], -1.0);
    close(&got, &optimal_f64(train, queries, d, 0.3), 2e-5, "identity at σ = 0.3");
    // σ = 1e-300 (2σ² underflows): the limit, the nearest training sample.
    let (got, _) = eval(&data, queries, "1e-300", &[]);
    close(&got, &optimal_f64(train, queries, d, 1e-300), 0.0, "σ = 1e-300");
    // Denormal data, as it is: finite, the weighted mean.
    let tiny: Vec<f32> = unit.iter().map(|&v| (v as f64 * 1e-39) as f32).collect();
    let (train_t, queries_t) = tiny.split_at(n * d);
    let data_t = write_f32_dataset(&dir.path().join("tiny"), train_t, d, &y);
    let (got, _) = eval(&data_t, queries_t, "1e-40", &[]);
    close(&got, &optimal_f64(train_t, queries_t, d, 1e-40), 1e-5, "denormal data, σ = 1e-40");
    let (got, _) = eval(&data_t, queries_t, "1e-300", &[]);
    close(&got, &optimal_f64(train_t, queries_t, d, 1e-300), 0.0, "denormal data, σ = 1e-300");
    // An explicit map: data in [0, 10] → model space by (x − 0)/10·2 − 1.
    let wide: Vec<f32> = u.iter().map(|&v| v * 10.0).collect();
    let data_w = write_f32_dataset(&dir.path().join("wide"), &wide[..n * d], d, &y);
    let mapped: Vec<f32> = wide[..n * d].iter().map(|&v| ((v as f64 / 10.0) * 2.0 - 1.0) as f32).collect();
    let (got, summary) = eval(&data_w, queries, "0.3", &["--range", "0,10"]);
    assert_eq!(summary["range"], "0,10");
    close(&got, &optimal_f64(&mapped, queries, d, 0.3), 2e-5, "--range 0,10");
    let e = rote(&["denoise", "eval", "--data", p(&data_w), "--queries", p(&dir.path().join("q.npy")), "--sigma", "0.3", "--out", p(&dir.path().join("x.npy")), "--range", "5,1"]);
    assert!(!e.status.success() && stderr(&e).contains("LO,HI"), "{}", stderr(&e));
}

fn small_run(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let run = dir.join(name);
    let mut args = vec!["train", "--data", "digits", "--model", "mlp:64-16-10", "--epochs", "2", "--batch", "64", "--out", p(&run)];
    args.extend_from_slice(extra);
    rote_ok(&args);
    run
}

// 5. Checkpoints: non-finite weights, overflowing networks, extra tensors.
#[test]
fn curvature_refuses_damaged_checkpoints_and_never_writes_nan() {
    let dir = tempdir();
    let run = small_run(dir.path(), "run", &[]);
    let ck = run.join("checkpoints/epoch-002.safetensors");
    let tensors = read_f32_tensors(&ck);
    let get = |name: &str| tensors.iter().find(|t| t.0 == name).unwrap().clone();
    let score = |out: &str| rote(&["curvature", "--run", p(&run), "--checkpoints", "epoch-002*", "--estimator", "hutchinson", "--probes", "2", "--out", p(&dir.path().join(out))]);
    let write = |ts: Vec<(String, Vec<usize>, Vec<f32>)>| {
        let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = ts.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
        std::fs::write(&ck, raw_safetensors(&refs)).unwrap();
    };
    // A NaN weight.
    let mut bad = tensors.clone();
    bad.iter_mut().find(|t| t.0 == "0.weight").unwrap().2[17] = f32::NAN;
    write(bad);
    let e = score("nan");
    assert!(!e.status.success() && stderr(&e).contains("'0.weight'") && stderr(&e).contains("non-finite"), "{}", stderr(&e));
    assert!(!dir.path().join("nan").exists());
    // Weights ×1e30: the scores overflow; nothing is written.
    let scaled: Vec<(String, Vec<usize>, Vec<f32>)> = tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.iter().map(|w| w * 1e30).collect())).collect();
    write(scaled);
    let e = score("huge");
    assert!(!e.status.success() && stderr(&e).contains("not finite"), "{}", stderr(&e));
    assert!(!dir.path().join("huge/score.npy").exists());
    // One more layer than the model: named, not truncated.
    let mut extra = tensors.clone();
    extra.push(("4.weight".into(), vec![10, 10], vec![0.1; 100]));
    extra.push(("4.bias".into(), vec![10], vec![0.0; 10]));
    write(extra);
    let e = score("extra");
    assert!(!e.status.success() && stderr(&e).contains("4.bias, 4.weight"), "{}", stderr(&e));
    // The original file scores.
    write(vec![get("0.weight"), get("0.bias"), get("2.weight"), get("2.bias")]);
    let o = score("ok");
    assert!(o.status.success(), "{}", stderr(&o));
}

// 6. The released-code statistic is finite differences: no other estimator with it.
#[test]
fn released_code_statistic_goes_with_finite_differences() {
    let dir = tempdir();
    let run = small_run(dir.path(), "run", &[]);
    let e = rote(&["curvature", "--run", p(&run), "--statistic", "released-code", "--estimator", "exact", "--out", p(&dir.path().join("a"))]);
    assert!(!e.status.success() && stderr(&e).contains("--estimator fd"), "{}", stderr(&e));
    assert!(!dir.path().join("a").exists());
    let o = rote(&["curvature", "--run", p(&run), "--statistic", "released-code", "--probes", "2", "--out", p(&dir.path().join("b")), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&String::from_utf8(o.stdout).unwrap());
    assert!(v["estimator"].as_str().unwrap().starts_with("released-code"), "{v}");
}

// 7. Memory is estimated before it is allocated.
#[test]
fn oversized_work_is_refused_with_its_estimate() {
    let dir = tempdir();
    for args in [
        vec!["construct", "--data", "digits", "--width", "1000000000", "--max-bias", "0.5"],
        vec!["construct", "--data", "moons", "--width", "1000000000", "--max-bias", "0.5"],
        vec!["data", "info", "moons:n=99999999999999"],
    ] {
        let o = rote(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("needs about") && stderr(&o).contains("reduce"), "{args:?}: {}", stderr(&o));
    }
    let run = dir.path().join("r");
    let o = rote(&["train", "--data", "digits", "--model", "mlp:64-99999999999-10", "--out", p(&run)]);
    assert!(!o.status.success() && stderr(&o).contains("--model"), "{}", stderr(&o));
    assert!(!run.exists());
    // The limit is the machine's, or ROTE_MEMORY_LIMIT's when lower.
    let o = rote_env(&["construct", "--data", "digits", "--width", "2000", "--max-bias", "0.5"], &[("ROTE_MEMORY_LIMIT", "100000")]);
    assert!(!o.status.success() && stderr(&o).contains("97.7 KiB is available"), "{}", stderr(&o));
}

// 8. Samples without features are rejected at load.
#[test]
fn zero_width_samples_are_rejected_at_load() {
    let dir = tempdir();
    let data = dir.path().join("empty-rows");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("x.npy"), raw_npy("<f4", false, "(300, 0)", &[])).unwrap();
    std::fs::write(data.join("y.npy"), raw_npy("<i8", false, "(300,)", &i64_bytes(&vec![1; 300]))).unwrap();
    write_f32_npy(&dir.path().join("q.npy"), &[], "(3, 0)");
    let q = dir.path().join("q.npy");
    for args in [
        vec!["construct", "--data", p(&data), "--width", "10", "--max-bias", "0.5"],
        vec!["knn", "--data", p(&data), "--queries", p(&q), "--out", p(&dir.path().join("nn"))],
        vec!["denoise", "eval", "--data", p(&data), "--queries", p(&q), "--sigma", "1", "--out", p(&dir.path().join("o.npy"))],
        vec!["data", "info", p(&data)],
    ] {
        let o = rote(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains("x.npy: samples of shape [0] hold no values"), "{args:?}: {}", stderr(&o));
    }
}

// 9. --out naming a directory: refused, nothing left behind.
#[test]
fn out_naming_a_directory_leaves_nothing_behind() {
    let dir = tempdir();
    let target = dir.path().join("taken");
    std::fs::create_dir_all(&target).unwrap();
    let o = rote(&["construct", "--data", "moons:n=100", "--width", "20", "--max-bias", "0.5", "--out", p(&target)]);
    assert!(!o.status.success() && stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let q = dir.path().join("q.npy");
    write_f32_npy(&q, &[0.1, 0.2], "(1, 2)");
    let o = rote(&["denoise", "eval", "--data", "moons:n=100", "--queries", p(&q), "--sigma", "0.5", "--out", p(&target)]);
    assert!(!o.status.success() && stderr(&o).contains("is a directory"), "{}", stderr(&o));
    assert_eq!(partial_files(dir.path()), Vec::<PathBuf>::new());
    // A write that fails after the temporary file exists removes it too.
    let blocked = dir.path().join("blocked.npy");
    let e = rote::report::write_atomic(&blocked, |_| anyhow::bail!("interrupted"));
    assert!(e.is_err() && !blocked.exists());
    assert_eq!(partial_files(dir.path()), Vec::<PathBuf>::new());
}

// 10. Rejected runs create nothing; a diverged run does not block its rerun.
#[test]
fn rejected_runs_leave_nothing() {
    let dir = tempdir();
    let csv = dir.path().join("s.csv");
    let o = rote(&["sweep", "construct", "--data", "moons", "--sizes", "0", "--widths", "10", "--max-biases", "0.5", "--out", p(&csv)]);
    assert!(!o.status.success() && stderr(&o).contains("--sizes"), "{}", stderr(&o));
    assert!(!csv.exists());
    let o = rote(&["sweep", "construct", "--data", "digits", "--positive-class", "42", "--widths", "10", "--max-biases", "0.5", "--out", p(&csv)]);
    assert!(!o.status.success() && stderr(&o).contains("class 42"), "{}", stderr(&o));
    assert!(!csv.exists());
    let run = small_run(dir.path(), "run", &[]);
    let out = dir.path().join("scores");
    let o = rote(&["curvature", "--run", p(&run), "--estimator", "fd", "--h", "0", "--out", p(&out)]);
    assert!(!o.status.success() && stderr(&o).contains("--h"), "{}", stderr(&o));
    assert!(!out.exists());
    let fresh = dir.path().join("fresh");
    for lr in ["nan", "-1", "inf"] {
        let o = rote(&["train", "--data", "digits", "--model", "mlp:64-16-10", &format!("--lr={lr}"), "--out", p(&fresh)]);
        assert!(!o.status.success() && stderr(&o).contains("--lr must be"), "{lr}: {}", stderr(&o));
        assert!(!fresh.exists());
    }
    let o = rote(&["train", "--data", "digits", "--model", "mlp:64-16-10", "--lr", "1e9", "--schedule", "constant", "--epochs", "2", "--out", p(&fresh)]);
    assert!(!o.status.success() && stderr(&o).contains("diverged"), "{}", stderr(&o));
    assert!(!fresh.exists());
    rote_ok(&["train", "--data", "digits", "--model", "mlp:64-16-10", "--epochs", "1", "--out", p(&fresh)]);
    let den = dir.path().join("denoiser");
    let o = rote(&["denoise", "train", "--data", "digits", "--lr", "1e12", "--steps", "30", "--out", p(&den)]);
    assert!(!o.status.success() && stderr(&o).contains("diverged"), "{}", stderr(&o));
    assert!(!den.exists());
    let o = rote(&["denoise", "train", "--data", "digits", "--lr", "inf", "--steps", "30", "--out", p(&den)]);
    assert!(!o.status.success() && !den.exists(), "{}", stderr(&o));
}

// 11. Interrupted training: marked, refused by curvature, resumable to the same bytes.
#[test]
fn interrupted_training_is_marked_and_resumes_to_the_same_checkpoints() {
    let dir = tempdir();
    let args = |out: &Path| -> Vec<String> {
        ["train", "--data", "digits", "--model", "mlp:64-24-10", "--epochs", "5", "--batch", "32", "--label-noise", "0.1", "--out", p(out)].iter().map(|s| s.to_string()).collect()
    };
    let whole = dir.path().join("whole");
    rote_ok(&args(&whole).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    for failpoint in ["after-epoch:2", "after-checkpoint:3"] {
        let cut = dir.path().join(failpoint.replace(':', "-"));
        let a = args(&cut);
        let o = rote_env(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &[("ROTE_FAILPOINT", failpoint)]);
        assert!(!o.status.success(), "{failpoint}: the run should have stopped");
        let scores = dir.path().join(format!("scores-{}", failpoint.replace(':', "-")));
        let e = rote(&["curvature", "--run", p(&cut), "--out", p(&scores)]);
        assert!(!e.status.success() && stderr(&e).contains("unfinished") && stderr(&e).contains("--resume"), "{}", stderr(&e));
        assert!(!scores.exists());
        let o = rote(&["curvature", "--run", p(&cut), "--allow-incomplete", "--out", p(&scores)]);
        assert!(o.status.success() && stderr(&o).contains("warning"), "{}", stderr(&o));
        let e = rote(&["train", "--resume", "--lr", "0.1", "--out", p(&cut)]);
        assert!(!e.status.success(), "--resume with other settings must be refused");
        rote_ok(&["train", "--resume", "--out", p(&cut)]);
        for epoch in 1..=5 {
            let name = format!("checkpoints/epoch-{epoch:03}.safetensors");
            assert_eq!(std::fs::read(cut.join(&name)).unwrap(), std::fs::read(whole.join(&name)).unwrap(), "{failpoint}: {name}");
        }
        assert_eq!(std::fs::read_to_string(cut.join("metrics.csv")).unwrap().lines().count(), 6);
        rote_ok(&["curvature", "--run", p(&cut), "--out", p(&scores)]);
        let e = rote(&["train", "--resume", "--out", p(&cut)]);
        assert!(!e.status.success() && stderr(&e).contains("finished"), "{}", stderr(&e));
    }
}

// 12. The same network is the same bytes.
#[test]
fn saved_networks_are_byte_identical_across_runs() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    for out in [&a, &b] {
        rote_ok(&["construct", "--data", "digits", "--one-vs-rest", "--width", "64", "--max-bias", "0.5", "--out", p(out)]);
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Metadata keys in order, by the format's own header.
    let bytes = std::fs::read(&a).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let meta_at = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
    assert!(meta_at("activation") < meta_at("classes") && meta_at("classes") < meta_at("seed"));
    let r1 = small_run(dir.path(), "r1", &[]);
    let r2 = small_run(dir.path(), "r2", &[]);
    let ck = "checkpoints/epoch-002.safetensors";
    assert_eq!(std::fs::read(r1.join(ck)).unwrap(), std::fs::read(r2.join(ck)).unwrap());
}

// 13. Outputs get the mode the umask allows, as any new file would.
#[cfg(unix)]
#[test]
fn outputs_honour_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    for (umask, mode) in [("022", 0o644), ("077", 0o600), ("002", 0o664)] {
        let out = dir.path().join(format!("n{umask}.safetensors"));
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" construct --data moons:n=100 --width 20 --max-bias 0.5 --out \"$1\"", ))
            .arg(env!("CARGO_BIN_EXE_rote"))
            .arg(&out)
            .env("ROTE_DISABLE_CUDA", "1")
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", stderr(&status));
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, mode, "umask {umask}");
    }
}

// 14. Messages name the right file and the real problem.
#[test]
fn messages_name_the_file_and_the_problem() {
    let dir = tempdir();
    // Negative labels: y.npy is named.
    let neg = write_dataset(&dir.path().join("neg"), 6, 2);
    std::fs::write(neg.join("y.npy"), raw_npy("<i8", false, "(6,)", &i64_bytes(&[0, 1, -2, 0, 1, 0]))).unwrap();
    let e = rote_err(&["data", "info", p(&neg)]);
    assert!(e.contains("y.npy: labels must be non-negative"), "{e}");
    // x.npy that is a directory, or a symlink loop: not "missing".
    let isdir = write_dataset(&dir.path().join("isdir"), 6, 2);
    std::fs::remove_file(isdir.join("x.npy")).unwrap();
    std::fs::create_dir(isdir.join("x.npy")).unwrap();
    let e = rote_err(&["data", "info", p(&isdir)]);
    assert!(e.contains("x.npy is a directory"), "{e}");
    #[cfg(unix)]
    {
        let lp = write_dataset(&dir.path().join("loop"), 6, 2);
        std::fs::remove_file(lp.join("x.npy")).unwrap();
        std::os::unix::fs::symlink(lp.join("x.npy"), lp.join("x.npy")).unwrap();
        let e = rote_err(&["data", "info", p(&lp)]);
        assert!(!e.contains("missing") && e.contains("x.npy") && e.to_lowercase().contains("symbolic links"), "{e}");
    }
    // A 0-d x.
    let zerod = write_dataset(&dir.path().join("zerod"), 6, 2);
    std::fs::write(zerod.join("x.npy"), raw_npy("<f4", false, "()", &f32_bytes(&[1.0]))).unwrap();
    std::fs::write(zerod.join("y.npy"), raw_npy("<i8", false, "(0,)", &[])).unwrap();
    let e = rote_err(&["data", "info", p(&zerod)]);
    assert!(e.contains("sample axis") && !e.contains("0 samples"), "{e}");
    // curvature --out naming a file.
    let run = small_run(dir.path(), "run", &[]);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = rote_err(&["curvature", "--run", p(&run), "--out", p(&file)]);
    assert!(e.contains(&format!("{} exists and is not a directory", file.display())), "{e}");
    // A dataset directory whose path is not UTF-8.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9-data");
        let data = write_dataset(&dir.path().join(name), 30, 2);
        let o = Command::new(env!("CARGO_BIN_EXE_rote")).arg("data").arg("info").arg(&data).arg("--json").env("ROTE_DISABLE_CUDA", "1").output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(json(&String::from_utf8(o.stdout).unwrap())["n"], 30);
        let mut spec = data.as_os_str().to_owned();
        spec.push(":subset-random=10");
        let o = Command::new(env!("CARGO_BIN_EXE_rote")).arg("data").arg("info").arg(&spec).arg("--json").env("ROTE_DISABLE_CUDA", "1").output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(json(&String::from_utf8(o.stdout).unwrap())["n"], 10);
        let o = Command::new(env!("CARGO_BIN_EXE_rote"))
            .args(["construct", "--width", "10", "--max-bias", "0.5", "--data"])
            .arg(&data)
            .env("ROTE_DISABLE_CUDA", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

// 15. The benchmark script installs the data it reads, as the test script does.
#[test]
fn the_benchmark_script_installs_its_datasets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bench = std::fs::read_to_string(root.join("scripts/bench.sh")).unwrap();
    let tests = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    let installer = std::fs::read_to_string(root.join("scripts/install-datasets.sh")).unwrap();
    assert!(installer.contains("apt-get install -y -q dataset-fashion-mnist"));
    let runs = |script: &str| script.lines().map(str::trim).position(|l| l == "scripts/install-datasets.sh");
    let bench_at = runs(&bench).expect("scripts/bench.sh must run scripts/install-datasets.sh");
    assert!(bench_at < bench.lines().position(|l| l.contains("target/release/rote bench")).unwrap());
    assert!(runs(&tests).is_some());
}
