//! Convolutional networks from the command line: training, PyTorch state-dict names,
//! resuming, evaluation of saved weights, and the errors for inputs that do not fit.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const SMALL: &str = "cnn:c8-bn-relu-p2-c16-bn-relu-gap-fc10";

fn header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

fn train(dir: &Path, name: &str, model: &str, epochs: &str, extra: &[&str]) -> std::path::PathBuf {
    let run = dir.join(name);
    let mut args = vec!["train", "--data", "digits", "--model", model, "--epochs", epochs, "--batch", "64", "--lr", "0.05", "--out", p(&run)];
    args.extend_from_slice(extra);
    rote_ok(&args);
    run
}

#[test]
fn a_small_cnn_learns_digits_and_saves_pytorch_names() {
    let dir = tempdir();
    let run = train(dir.path(), "run", SMALL, "6", &["--json"]);
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let acc: f64 = metrics.lines().last().unwrap().split(',').nth(2).unwrap().parse().unwrap();
    assert!(acc > 0.9, "train accuracy {acc} after 6 epochs:\n{metrics}");
    let h = header(&run.join("checkpoints/epoch-006.safetensors"));
    // nn.Sequential(Conv2d(1, 8, 3, padding=1, bias=False), BatchNorm2d(8), ReLU(),
    // MaxPool2d(2), Conv2d(8, 16, 3, padding=1, bias=False), BatchNorm2d(16), ReLU(),
    // AdaptiveAvgPool2d(1), Flatten(), Linear(16, 10)).
    let mut names: Vec<&str> = h.as_object().unwrap().keys().map(|k| k.as_str()).filter(|k| *k != "__metadata__").collect();
    names.sort();
    assert_eq!(
        names,
        [
            "0.weight", "1.bias", "1.num_batches_tracked", "1.running_mean", "1.running_var", "1.weight", "4.weight", "5.bias", "5.num_batches_tracked",
            "5.running_mean", "5.running_var", "5.weight", "9.bias", "9.weight"
        ]
    );
    assert_eq!(h["0.weight"]["shape"], serde_json::json!([8, 1, 3, 3]));
    assert_eq!(h["9.weight"]["shape"], serde_json::json!([10, 16]));
    assert_eq!(h["1.num_batches_tracked"]["dtype"], "I64");
    assert_eq!(h["1.num_batches_tracked"]["shape"], serde_json::json!([]));
    // 1797 samples in batches of 64: 29 steps per epoch.
    let bytes = std::fs::read(run.join("checkpoints/epoch-006.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let at = h["1.num_batches_tracked"]["data_offsets"][0].as_u64().unwrap() as usize;
    assert_eq!(i64::from_le_bytes(bytes[8 + n + at..8 + n + at + 8].try_into().unwrap()), 6 * 29);
    // The run records the per-channel normalization it trained with.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(cfg["normalization"]["mean"].as_array().unwrap().len(), 1);
    // rote eval with the same normalization reproduces the run's own accuracies.
    let v = json(&rote_ok(&["eval", "--model", SMALL, "--weights", &format!("{}/checkpoints/*.safetensors", run.display()), "--data", "digits", "--normalize", "data", "--json"]));
    let rows = v["checkpoints"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for (r, line) in rows.iter().zip(metrics.lines().skip(1)) {
        let want: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
        assert!((r["train_accuracy"].as_f64().unwrap() - want).abs() < 1e-6, "{r} vs {line}");
    }
}

#[test]
fn cnn_curvature_scores_find_the_flipped_labels() {
    let dir = tempdir();
    let run = train(dir.path(), "noisy", "cnn:c16-bn-relu-p2-c32-bn-relu-gap-fc10", "20", &["--label-noise", "0.1"]);
    let fd = json(&rote_ok(&["curvature", "--run", p(&run), "--every", "4", "--estimator", "fd", "--h", "0.01", "--out", p(&dir.path().join("fd")), "--json"]));
    assert!(fd["auroc"].as_f64().unwrap() > 0.9, "{fd}");
    assert_eq!(fd["checkpoints"], 5);
    let exact = json(&rote_ok(&["curvature", "--run", p(&run), "--checkpoints", "epoch-020*", "--out", p(&dir.path().join("exact")), "--json"]));
    assert!(exact["estimator"].as_str().unwrap().starts_with("exact"), "{exact}");
    let scores = rote::data::Array::open_npy(&dir.path().join("exact/score.npy")).unwrap().to_f32();
    assert_eq!(scores.len(), 1797);
    assert!(scores.iter().all(|v| v.is_finite() && *v >= 0.0));
    let smooth = train(dir.path(), "smooth", "cnn:c8-tanh-p2-fc10", "1", &[]);
    let e = rote_err(&["curvature", "--run", p(&smooth), "--estimator", "hutchinson", "--out", p(&dir.path().join("s"))]);
    assert!(e.contains("--estimator fd"), "{e}");
    rote_ok(&["curvature", "--run", p(&smooth), "--estimator", "fd", "--probes", "2", "--out", p(&dir.path().join("s"))]);
}

#[test]
fn the_cifar_resnet_has_the_kuangliu_state_dict() {
    let dir = tempdir();
    let run = train(dir.path(), "res", "resnet18-cifar:classes=10,width=4", "1", &[]);
    let h = header(&run.join("checkpoints/epoch-001.safetensors"));
    let mut want = vec!["conv1.weight".to_string(), "linear.weight".into(), "linear.bias".into()];
    let bn = |p: &str| ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map(|k| format!("{p}.{k}"));
    want.extend(bn("bn1"));
    for stage in 1..=4 {
        for block in 0..2 {
            let p = format!("layer{stage}.{block}");
            want.push(format!("{p}.conv1.weight"));
            want.push(format!("{p}.conv2.weight"));
            want.extend(bn(&format!("{p}.bn1")));
            want.extend(bn(&format!("{p}.bn2")));
            if stage > 1 && block == 0 {
                want.push(format!("{p}.shortcut.0.weight"));
                want.extend(bn(&format!("{p}.shortcut.1")));
            }
        }
    }
    let mut got: Vec<String> = h.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Channels 4, 8, 16, 32; grayscale input; 3×3 convolutions, 1×1 shortcuts.
    assert_eq!(h["conv1.weight"]["shape"], serde_json::json!([4, 1, 3, 3]));
    assert_eq!(h["layer3.0.conv1.weight"]["shape"], serde_json::json!([16, 8, 3, 3]));
    assert_eq!(h["layer4.0.shortcut.0.weight"]["shape"], serde_json::json!([32, 16, 1, 1]));
    assert_eq!(h["linear.weight"]["shape"], serde_json::json!([10, 32]));
}

#[test]
fn an_interrupted_cnn_run_resumes_to_the_same_checkpoints() {
    let dir = tempdir();
    let whole = train(dir.path(), "whole", SMALL, "3", &["--augment", "crop:2,flip", "--label-noise", "0.1"]);
    let cut = dir.path().join("cut");
    let o = Command::new(env!("CARGO_BIN_EXE_rote"))
        .args(["train", "--data", "digits", "--model", SMALL, "--epochs", "3", "--batch", "64", "--lr", "0.05", "--augment", "crop:2,flip", "--label-noise", "0.1", "--out", p(&cut)])
        .env("ROTE_DISABLE_CUDA", "1")
        .env("ROTE_FAILPOINT", "after-epoch:1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    rote_ok(&["train", "--resume", "--out", p(&cut)]);
    for e in 1..=3 {
        let name = format!("checkpoints/epoch-{e:03}.safetensors");
        assert_eq!(std::fs::read(cut.join(&name)).unwrap(), std::fs::read(whole.join(&name)).unwrap(), "{name}");
    }
}

#[test]
fn imported_weights_load_by_name_and_mismatches_are_named() {
    let dir = tempdir();
    let run = train(dir.path(), "run", SMALL, "1", &[]);
    let ck = run.join("checkpoints/epoch-001.safetensors");
    let tensors = read_f32_tensors(&ck);
    let eval = |path: &Path, model: &str| rote(&["eval", "--model", model, "--weights", p(path), "--data", "digits", "--json"]);
    // DataParallel's module. prefix, without num_batches_tracked: loads, same numbers.
    let prefixed: Vec<(String, Vec<usize>, Vec<f32>)> = tensors.iter().map(|(n, s, v)| (format!("module.{n}"), s.clone(), v.clone())).collect();
    let file = dir.path().join("prefixed.safetensors");
    write_f32_tensors(&file, &prefixed);
    let a = json(&String::from_utf8(eval(&ck, SMALL).stdout).unwrap());
    let b = json(&String::from_utf8(eval(&file, SMALL).stdout).unwrap());
    assert_eq!(a["checkpoints"][0]["train_accuracy"], b["checkpoints"][0]["train_accuracy"]);
    // A wrongly shaped tensor: named, with both shapes.
    let mut bad = tensors.clone();
    let w = bad.iter_mut().find(|t| t.0 == "4.weight").unwrap();
    w.1 = vec![16, 8, 1, 9];
    let file = dir.path().join("shape.safetensors");
    write_f32_tensors(&file, &bad);
    let e = String::from_utf8(eval(&file, SMALL).stderr).unwrap();
    assert!(e.contains("'4.weight' has shape [16, 8, 1, 9] but [16, 8, 3, 3] was expected"), "{e}");
    // A missing one, and an extra one.
    let file = dir.path().join("missing.safetensors");
    write_f32_tensors(&file, &tensors.iter().filter(|t| t.0 != "5.running_var").cloned().collect::<Vec<_>>());
    let e = String::from_utf8(eval(&file, SMALL).stderr).unwrap();
    assert!(e.contains("'5.running_var' is missing"), "{e}");
    let mut extra = tensors.clone();
    extra.push(("10.weight".into(), vec![2], vec![0.0, 1.0]));
    let file = dir.path().join("extra.safetensors");
    write_f32_tensors(&file, &extra);
    let e = String::from_utf8(eval(&file, SMALL).stderr).unwrap();
    assert!(e.contains("10.weight"), "{e}");
    // Another architecture's weights.
    let e = String::from_utf8(eval(&ck, "cnn:c8-bn-relu-p2-c32-bn-relu-gap-fc10").stderr).unwrap();
    assert!(e.contains("'4.weight' has shape [16, 8, 3, 3] but [32, 8, 3, 3] was expected"), "{e}");
    // A corrupted file.
    let file = dir.path().join("cut.safetensors");
    std::fs::write(&file, &std::fs::read(&ck).unwrap()[..100]).unwrap();
    let e = String::from_utf8(eval(&file, SMALL).stderr).unwrap();
    assert!(e.contains("not a safetensors file"), "{e}");
}

#[test]
fn models_that_do_not_fit_the_data_are_refused_before_training() {
    let dir = tempdir();
    let out = dir.path().join("r");
    let cases: [(&str, &str, &str); 6] = [
        ("digits", "cnn:c8-p2-p2-p2-p2-fc10", "does not fit"),
        ("digits", "resnet18-cifar:classes=10,width=100000000", "needs about"),
        ("digits", "cnn:c99999999999-fc10", "needs about"),
        ("digits", "cnn:c8-relu-fc3", "label"),
        ("moons", "cnn:c8-relu-fc2", "image samples"),
        ("digits", "resnet18-cifar:classes=10,depth=3", "unknown option 'depth'"),
    ];
    for (data, model, why) in cases {
        let e = rote_err(&["train", "--data", data, "--model", model, "--out", p(&out)]);
        assert!(e.contains(why), "{model} on {data}: {e}");
        assert!(!out.exists());
    }
    let e = rote_err(&["train", "--data", "digits", "--model", SMALL, "--lr", "1e6", "--schedule", "constant", "--epochs", "2", "--out", p(&out)]);
    assert!(e.contains("diverged") && e.contains("--lr"), "{e}");
    assert!(!out.exists());
    let e = rote_err(&["train", "--data", "digits", "--model", SMALL, "--normalize", "0.5,0.5/0.2,0.2", "--out", p(&out)]);
    assert!(e.contains("2 channels' statistics") && e.contains("1 channels"), "{e}");
}

#[test]
fn cnn_training_is_byte_identical_across_thread_counts() {
    let dir = tempdir();
    let run = |threads: &str, name: &str| {
        let out = dir.path().join(name);
        let o = Command::new(env!("CARGO_BIN_EXE_rote"))
            .args(["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--batch", "100", "--augment", "crop:1", "--out", p(&out)])
            .env("ROTE_DISABLE_CUDA", "1")
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out.join("checkpoints/epoch-001.safetensors")).unwrap()
    };
    let one = run("1", "a");
    assert_eq!(one, run("2", "b"));
    assert_eq!(one, run("3", "c"));
}

#[test]
fn a_checkpoint_series_from_elsewhere_scores_like_its_run() {
    let dir = tempdir();
    let run = train(dir.path(), "run", SMALL, "2", &[]);
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let norm = format!("{}/{}", cfg["normalization"]["mean"][0], cfg["normalization"]["std"][0]);
    let common = ["--estimator", "fd", "--h", "0.01", "--probes", "3", "--json"];
    let from_run = dir.path().join("a");
    let mut args = vec!["curvature", "--run", p(&run), "--out", p(&from_run)];
    args.extend_from_slice(&common);
    rote_ok(&args);
    let from_files = dir.path().join("b");
    let weights = format!("{}/checkpoints/*.safetensors", run.display());
    let mut args = vec!["curvature", "--model", SMALL, "--weights", &weights, "--data", "digits", "--normalize", &norm, "--out", p(&from_files)];
    args.extend_from_slice(&common);
    let v = json(&rote_ok(&args));
    assert_eq!(v["checkpoints"], 2);
    let a = rote::data::Array::open_npy(&from_run.join("score.npy")).unwrap().to_f32();
    let b = rote::data::Array::open_npy(&from_files.join("score.npy")).unwrap().to_f32();
    assert_eq!(a, b);
    let e = rote_err(&["curvature", "--weights", &weights, "--data", "digits", "--out", p(&dir.path().join("c"))]);
    assert!(e.contains("--model"), "{e}");
}
