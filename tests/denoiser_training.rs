//! Training score-matching denoisers and EMM: preconditioning against closed forms, a
//! gradient check of the network, training behaviour, memorization and bad input.

mod common;
use common::*;

use rote::diffusion::net::{self, Layout, NetSpec};
use rote::rng::Philox;

#[test]
fn preconditioning_and_loss_weight_match_the_edm_formulas() {
    let sd = 0.5f64;
    for sigma in [0.002f64, 0.1, 0.5, 1.0, 80.0] {
        let (c_skip, c_out, c_in, c_noise) = net::precondition(sigma);
        assert!((c_skip - sd * sd / (sigma * sigma + sd * sd)).abs() < 1e-15);
        assert!((c_out - sigma * sd / (sigma * sigma + sd * sd).sqrt()).abs() < 1e-15);
        assert!((c_in - 1.0 / (sigma * sigma + sd * sd).sqrt()).abs() < 1e-12);
        assert!((c_noise - sigma.ln() / 4.0).abs() < 1e-15);
        let lambda = net::loss_weight(sigma);
        assert!((lambda - (sigma * sigma + sd * sd) / (sigma * sd).powi(2)).abs() <= 1e-12 * lambda);
        // λ·c_out² = 1: the weighted loss equals ‖F − (y − c_skip·x)/c_out‖².
        assert!((lambda * c_out * c_out - 1.0).abs() < 1e-12);
    }
    // Known values at σ = σ_data: c_skip = 1/2, c_out = 1/(2√2), c_in = √2, λ = 8.
    let (c_skip, c_out, c_in, _) = net::precondition(0.5);
    assert!((c_skip - 0.5).abs() < 1e-15 && (c_out - 0.5 / 2f64.sqrt()).abs() < 1e-15 && (c_in - 2f64.sqrt()).abs() < 1e-15);
    assert!((net::loss_weight(0.5) - 8.0).abs() < 1e-12);
}

#[test]
fn network_gradient_matches_central_differences() {
    for classes in [0, 3] {
        let l = Layout::new(5, NetSpec { width: 8, blocks: 2 }, classes);
        let mut p = l.init(3);
        // The output layer starts at zero; perturb it so every path carries gradient.
        let r = l.range("output.weight");
        let mut u = vec![0f32; r.len()];
        Philox::new(1, 1).fill_normal(0, &mut u);
        p[r.clone()].iter_mut().zip(&u).for_each(|(w, v)| *w = 0.3 * v);
        let rows = 4;
        let mut x = vec![0f32; rows * 5];
        Philox::new(2, 2).fill_normal(0, &mut x);
        let c_noise = vec![-0.9f32, 0.1, 0.4, 1.0];
        let labels: Vec<i64> = vec![0, 2, 1, 2];
        let labels = (classes > 0).then_some(&labels[..]);
        let mut dout = vec![0f32; rows * 5];
        Philox::new(3, 3).fill_normal(0, &mut dout);
        let objective = |p: &[f32]| -> f64 {
            let a = net::forward(&l, p, &x, &c_noise, labels);
            a.out.iter().zip(&dout).map(|(&f, &g)| f as f64 * g as f64).sum()
        };
        let act = net::forward(&l, &p, &x, &c_noise, labels);
        // NaN everywhere: backward must write every entry.
        let mut grad = vec![f32::NAN; p.len()];
        net::backward(&l, &p, &x, labels, &act, &dout, &mut grad);
        let h = 1e-2f32;
        let mut worst = 0f64;
        for i in (0..p.len()).step_by(3) {
            let mut q = p.clone();
            q[i] = p[i] + h;
            let up = objective(&q);
            q[i] = p[i] - h;
            let down = objective(&q);
            let fd = (up - down) / (2.0 * h as f64);
            let err = (fd - grad[i] as f64).abs() / (fd.abs().max(grad[i].abs() as f64).max(1e-1));
            worst = worst.max(err);
        }
        assert!(worst < 2e-3, "classes {classes}: worst relative gradient error {worst:.2e}");
    }
}

#[test]
fn training_lowers_the_loss_and_ten_points_are_reproduced() {
    let dir = tempdir();
    let run = dir.path().join("run");
    rote_ok(&["denoise", "train", "--data", "digits", "--subset", "10", "--steps", "3000", "--lr", "1e-3", "--ema", "0.99", "--out", p(&run)]);
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let losses: Vec<f64> = metrics.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
    assert!(losses.len() == 30 && losses[29] < 0.6 * losses[0], "{losses:?}");
    let samples = dir.path().join("s");
    rote_ok(&["denoise", "sample", "--run", p(&run), "--samples", "200", "--out", p(&samples)]);
    let v = json(&rote_ok(&["memratio", "--generated", p(&samples.join("samples.npy")), "--data", "digits:subset=1", "--json"]));
    assert!(v["memorization_ratio"].as_f64().unwrap() >= 0.99, "{v}");
    // The gap to the optimal denoiser, per σ of the schedule.
    let g = json(&rote_ok(&["denoise", "gap", "--run", p(&run), "--queries", "64", "--json"]));
    let rows = g["gap"].as_array().unwrap();
    assert_eq!(rows.len(), 18);
    assert!(rows.iter().all(|r| r["gap"].as_f64().unwrap().is_finite()));
    assert!(run.join("gap.csv").exists());
}

/// A sweep interrupted inside a size's training resumes that training (to the same
/// samples as an uninterrupted sweep), then skips finished sizes, and refuses other
/// settings. (That memorization falls as the set grows is checked on the quick
/// report's sweep, tests/reproduce.rs.)
#[test]
fn an_emm_sweep_resumes_where_it_stopped() {
    let dir = tempdir();
    let args = |out: &std::path::Path, steps: &str| -> Vec<String> {
        ["emm", "--data", "digits", "--sizes", "10,30", "--model", "resmlp:width=32,blocks=1", "--steps", steps, "--batch", "16", "--samples", "40", "--out", p(out), "--json"].map(String::from).to_vec()
    };
    let run = |a: Vec<String>, env: &[(&str, &str)]| rote_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), env);
    let whole = dir.path().join("whole");
    let w = run(args(&whole, "1100"), &[]);
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let cut = dir.path().join("cut");
    let o = run(args(&cut, "1100"), &[("ROTE_FAILPOINT", "denoise-after-state:1000")]);
    assert!(!o.status.success() && cut.join("size-10/run/state.safetensors").exists());
    let o = run(args(&cut, "1100"), &[]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("size 10: resuming the interrupted training at step 1000"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&String::from_utf8(o.stdout).unwrap())["sizes"], json(&String::from_utf8(w.stdout).unwrap())["sizes"]);
    for size in [10, 30] {
        let file = format!("size-{size}/samples.npy");
        assert!(std::fs::read(cut.join(&file)).unwrap() == std::fs::read(whole.join(&file)).unwrap(), "{file} differs from the uninterrupted sweep's");
    }
    // A second run reads the finished sizes.
    let t0 = std::time::Instant::now();
    assert!(run(args(&cut, "1100"), &[]).status.success());
    assert!(t0.elapsed().as_secs_f64() < 5.0);
    // Other settings into the same directory are refused.
    let o = run(args(&cut, "100"), &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("other settings"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_training_input_is_rejected() {
    let dir = tempdir();
    let d = dir.path();
    let e = rote_err(&["denoise", "train", "--data", "digits", "--subset", "5000", "--out", p(&d.join("r"))]);
    assert!(e.contains("5000") && e.contains("1797"), "{e}");
    let e = rote_err(&["emm", "--data", "digits", "--sizes", "200,100", "--out", p(&d.join("e"))]);
    assert!(e.contains("must increase"), "{e}");
    let e = rote_err(&["emm", "--data", "digits", "--sizes", "100,5000", "--out", p(&d.join("e"))]);
    assert!(e.contains("5000"), "{e}");
    let e = rote_err(&["denoise", "train", "--data", "digits", "--labels", "random:0", "--out", p(&d.join("r"))]);
    assert!(e.contains("random:C"), "{e}");
    // A classifier run from `rote train` is not a denoiser run.
    let cls = d.join("cls");
    rote_ok(&["train", "--data", "digits", "--model", "mlp:64-16-10", "--epochs", "1", "--out", p(&cls)]);
    let e = rote_err(&["denoise", "sample", "--run", p(&cls), "--samples", "2", "--out", p(&d.join("s"))]);
    assert!(e.contains("another command"), "{e}");
    // A diverging run stops with the step and a hint.
    let e = rote_err(&["denoise", "train", "--data", "digits", "--subset", "10", "--steps", "500", "--lr", "1e30", "--out", p(&d.join("nan"))]);
    assert!(e.contains("step") && e.contains("--lr"), "{e}");
}
