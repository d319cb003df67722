//! U-Net denoisers from the CLI: training reproduces a tiny set, sampling, the gap to
//! the optimal denoiser, checkpoints, EMM with a U-Net, and bad specs. (The layers and
//! the whole network's gradient are checked against float64 references and central
//! differences in src/nn/layers and src/diffusion/unet.rs; PyTorch's numbers in
//! tests/torch_fixtures.rs.)

mod common;
use common::*;

const MODEL: &str = "unet:channels=8,mult=1-2";

#[test]
fn a_unet_reproduces_ten_training_points() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let v = json(&rote_ok(&["denoise", "train", "--data", "digits", "--subset", "10", "--model", MODEL, "--steps", "1000", "--batch", "16", "--lr", "2e-3", "--ema", "0.99", "--checkpoint-every", "500", "--out", p(&run), "--json"]));
    assert_eq!(v["model"], MODEL, "{v}");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let losses: Vec<f64> = metrics.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
    assert!(losses.len() == 10 && losses[9] < 0.5 * losses[0], "{losses:?}");
    assert!(run.join("checkpoints/step-0000500.safetensors").exists() && run.join("ema.safetensors").exists());
    let samples = dir.path().join("s");
    rote_ok(&["denoise", "sample", "--run", p(&run), "--samples", "200", "--out", p(&samples)]);
    let v = json(&rote_ok(&["memratio", "--generated", p(&samples.join("samples.npy")), "--data", "digits:subset=1", "--json"]));
    assert!(v["memorization_ratio"].as_f64().unwrap() >= 0.99, "{v}");
    let g = json(&rote_ok(&["denoise", "gap", "--run", p(&run), "--queries", "32", "--json"]));
    let rows = g["gap"].as_array().unwrap();
    assert_eq!(rows.len(), 18);
    assert!(rows.iter().all(|r| r["gap"].as_f64().unwrap().is_finite()));
    // At the smallest σ the trained U-Net is close to the optimum (both ≈ the clean point).
    assert!(rows.last().unwrap()["gap"].as_f64().unwrap() < 1e-2, "{g}");
}

#[test]
fn memorization_by_a_unet_falls_as_the_training_set_grows() {
    let dir = tempdir();
    let out = dir.path().join("emm");
    let s = rote_ok(&["emm", "--data", "digits", "--model", MODEL, "--sizes", "10,300", "--steps", "800", "--batch", "16", "--lr", "2e-3", "--samples", "100", "--out", p(&out), "--json"]);
    let v = json(&s);
    let sizes = v["sizes"].as_array().unwrap();
    let (small, large) = (sizes[0]["memorization_ratio"].as_f64().unwrap(), sizes[1]["memorization_ratio"].as_f64().unwrap());
    assert!(small >= 0.9 && large < small - 0.3, "memorization ratio {small} at 10 samples, {large} at 300");
}

#[test]
fn class_conditional_unets_train_and_sample() {
    let dir = tempdir();
    let run = dir.path().join("run");
    rote_ok(&["denoise", "train", "--data", "digits", "--subset", "20", "--labels", "random:4", "--model", "unet:channels=8,mult=1-2,dropout=0.1,embed=fourier", "--steps", "50", "--batch", "8", "--out", p(&run)]);
    assert!(run.join("labels.npy").exists());
    let samples = dir.path().join("s");
    let v = json(&rote_ok(&["denoise", "sample", "--run", p(&run), "--samples", "12", "--out", p(&samples), "--json"]));
    assert_eq!(v["samples"], 12, "{v}");
}

#[test]
fn bad_unet_specs_are_refused_before_anything_is_written() {
    let dir = tempdir();
    let out = dir.path().join("run");
    let e = rote_err(&["denoise", "train", "--data", "digits", "--model", "unet:mult=1-2-2-2-2", "--steps", "5", "--out", p(&out)]);
    assert!(e.contains("multiples of 16"), "{e}");
    let e = rote_err(&["denoise", "train", "--data", "digits", "--model", "unet:chanels=8", "--steps", "5", "--out", p(&out)]);
    assert!(e.contains("unknown option 'chanels'"), "{e}");
    let e = rote_err(&["emm", "--data", "digits", "--model", "unet:dropout=2", "--sizes", "10", "--out", p(&dir.path().join("e"))]);
    assert!(e.contains("dropout=2"), "{e}");
    assert!(!out.exists() && !dir.path().join("e").exists());
}
