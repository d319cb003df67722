//! U-Net denoisers from the CLI: training reproduces a tiny set, sampling, the gap to
//! the optimal denoiser, checkpoints, resuming, and bad specs (EMM with a U-Net is
//! checked on the quick report's sweep, tests/reproduce.rs). (The layers and
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

/// A run stopped right after a saved state and resumed ends with the uninterrupted
/// run's bytes: checkpoints, final EMA weights and the loss column of metrics.csv (a
/// class-conditional U-Net with dropout, whose every draw comes from the step number;
/// and the residual MLP, whose batch is split over threads).
#[test]
fn an_interrupted_training_resumes_to_the_same_weights() {
    let dir = tempdir();
    for (name, model, labels) in [("unet", "unet:channels=8,mult=1-2,dropout=0.1", "random:3"), ("mlp", "resmlp:width=32,blocks=1", "none")] {
        let args = |out: &std::path::Path| -> Vec<String> {
            ["denoise", "train", "--data", "digits", "--subset", "12", "--labels", labels, "--model", model, "--steps", "300", "--batch", "8", "--lr", "1e-3", "--checkpoint-every", "100", "--out", p(out)].map(String::from).to_vec()
        };
        let whole = dir.path().join(format!("{name}-whole"));
        rote_ok(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
        let cut = dir.path().join(format!("{name}-cut"));
        let cut_args = args(&cut);
        let a: Vec<&str> = cut_args.iter().map(String::as_str).collect();
        let o = rote_env(&a, &[("ROTE_FAILPOINT", "denoise-after-state:200")]);
        assert!(!o.status.success() && cut.join("state.safetensors").exists() && !cut.join("ema.safetensors").exists(), "{name}: the run should have stopped at step 200");
        // Starting it again without --resume is refused with the way on; other settings
        // with --resume are refused by the parser.
        let e = rote_err(&a);
        assert!(e.contains("200 of 300 steps") && e.contains("--resume"), "{e}");
        let e = rote_err(&["denoise", "train", "--resume", "--lr", "0.1", "--out", p(&cut)]);
        assert!(e.contains("--lr"), "{e}");
        let v = json(&rote_ok(&["denoise", "train", "--resume", "--out", p(&cut), "--json"]));
        assert_eq!(v["resumed_at_step"], 200, "{v}");
        for file in ["checkpoints/step-0000100.safetensors", "checkpoints/step-0000200.safetensors", "checkpoints/step-0000300.safetensors", "ema.safetensors"] {
            assert!(std::fs::read(cut.join(file)).unwrap() == std::fs::read(whole.join(file)).unwrap(), "{name}: {file} differs from the uninterrupted run's");
        }
        let losses = |run: &std::path::Path| -> Vec<String> { std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect() };
        assert_eq!(losses(&cut), losses(&whole), "{name}");
        assert_eq!(losses(&cut).len(), 4);
        assert!(!cut.join("state.safetensors").exists(), "a finished run keeps no optimizer state");
        let e = rote_err(&["denoise", "train", "--resume", "--out", p(&cut)]);
        assert!(e.contains("finished"), "{e}");
    }
}

#[test]
fn class_conditional_unets_train_and_sample() {
    let dir = tempdir();
    let run = dir.path().join("run");
    rote_ok(&["denoise", "train", "--data", "digits", "--subset", "20", "--labels", "random:4", "--model", "unet:channels=8,mult=1-2,dropout=0.1,embed=fourier,resample=bilinear", "--steps", "50", "--batch", "8", "--out", p(&run)]);
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
