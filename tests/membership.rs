//! Membership inference and memorization from a pool: every formula against a direct
//! float64 reference written here, closed forms, or constructed pools with known answers.

use rote::membership::roc::Roc;
use rote::membership::*;
use rote::rng::Philox;

#[test]
fn keep_matrix_puts_every_example_in_exactly_keep_k_models() {
    for (models, keep, want) in [(16, 0.5, 8), (10, 0.7, 7), (7, 0.5, 3)] {
        let n = 500;
        let k = keep_matrix(3, models, n, keep).unwrap();
        for i in 0..n {
            assert_eq!((0..models).map(|m| k[m * n + i] as usize).sum::<usize>(), want, "example {i}");
        }
        // Models get balanced subsets on average, and the matrix is a function of the seed.
        for m in 0..models {
            let size: usize = k[m * n..(m + 1) * n].iter().map(|&v| v as usize).sum();
            assert!((size as f64 - n as f64 * want as f64 / models as f64).abs() < 60.0, "model {m}: {size}");
        }
        assert_eq!(k, keep_matrix(3, models, n, keep).unwrap());
        assert_ne!(k, keep_matrix(4, models, n, keep).unwrap());
        // A prefix of the examples is the same matrix's prefix (shards of examples agree).
        let small = keep_matrix(3, models, 100, keep).unwrap();
        for m in 0..models {
            assert_eq!(&small[m * 100..(m + 1) * 100], &k[m * n..m * n + 100]);
        }
    }
    for (models, keep) in [(16, 0.0), (16, 1.0), (1, 0.5), (16, -0.1), (4, 0.1), (16, f64::NAN)] {
        assert!(keep_matrix(0, models, 10, keep).is_err(), "{models} models, keep {keep}");
    }
}

#[test]
fn phi_is_the_log_odds_of_the_label_without_overflow() {
    // φ = l_y − log Σ_{j≠y} e^{l_j} while both probabilities are far above the guard.
    let l = [30f32, 0.0, -5.0];
    let want = 30.0 - (1f64 + (-5f64).exp()).ln();
    assert!((phi(&l, 0) - want).abs() < 1e-12, "{} vs {want}", phi(&l, 0));
    let want = -5.0 - (30f64.exp() + 1.0).ln();
    assert!((phi(&l, 2) - want).abs() < 1e-12);
    // A gap beyond the guard: p_rest = e^-200 ≪ 1e-45.
    let want = -((-200f64).exp() + 1e-45).ln();
    assert!((phi(&[200.0, 0.0], 0) - want).abs() < 1e-9);
    // Extreme logits stay finite, symmetric.
    let big = phi(&[3e38, -3e38], 0);
    assert!((big - (-(1e-45f64).ln())).abs() < 1e-9, "{big}");
    assert!((phi(&[3e38, -3e38], 1) + big).abs() < 1e-9);
    assert!((label_probability(&[0.0, 0.0, 0.0, 0.0], 2) - 0.25).abs() < 1e-15);
    assert_eq!(correct(&[1.0, 3.0, 3.0], 1), 1.0);
    assert_eq!(correct(&[1.0, 3.0, 3.0], 2), 0.0);
}

#[test]
fn feldman_zhang_recovers_a_constructed_correctness_pattern() {
    // Example i is right on every IN model and on the first r_i of its OUT models:
    // mem = 1 − r_i / n_out exactly.
    let (models, n) = (20, 30);
    let keep = keep_matrix(9, models, n, 0.5).unwrap();
    let mut values = vec![0f64; models * n];
    for i in 0..n {
        let r = i % 11;
        let mut seen_out = 0;
        for k in 0..models {
            values[k * n + i] = if keep[k * n + i] == 1 {
                1.0
            } else {
                seen_out += 1;
                (seen_out <= r) as u8 as f64
            };
        }
    }
    let (mem, se) = feldman_zhang(&values, &keep, models, n).unwrap();
    for i in 0..n {
        let r = (i % 11) as f64;
        assert!((mem[i] - (1.0 - r / 10.0)).abs() < 1e-12, "example {i}: {}", mem[i]);
        // IN values are constant; OUT: r ones among 10, sample variance r(10 − r)/(10·9).
        let want = (r * (10.0 - r) / 90.0 / 10.0).sqrt();
        assert!((se[i] - want).abs() < 1e-12, "example {i}: se {} vs {want}", se[i]);
    }
    // An example never OUT cannot be scored.
    let all_in = vec![1u8; 4];
    assert!(feldman_zhang(&[1.0; 4], &all_in, 2, 2).is_err());
}

/// Mann–Whitney AUC with ties as half, and TPR at FPR ≤ α by sweeping every threshold.
fn direct_metrics(scores: &[f64], members: &[bool], alpha: f64) -> (f64, f64, f64) {
    let pos: Vec<f64> = scores.iter().zip(members).filter(|p| *p.1).map(|p| *p.0).collect();
    let neg: Vec<f64> = scores.iter().zip(members).filter(|p| !*p.1).map(|p| *p.0).collect();
    let mut wins = 0f64;
    for &p in &pos {
        for &q in &neg {
            wins += if p > q { 1.0 } else if p == q { 0.5 } else { 0.0 };
        }
    }
    let auc = wins / (pos.len() * neg.len()) as f64;
    let (mut best_tpr, mut best_bal) = (0f64, 0.5f64);
    for &t in scores {
        let tpr = pos.iter().filter(|&&p| p >= t).count() as f64 / pos.len() as f64;
        let fpr = neg.iter().filter(|&&q| q >= t).count() as f64 / neg.len() as f64;
        if fpr <= alpha {
            best_tpr = best_tpr.max(tpr);
        }
        best_bal = best_bal.max(1.0 - (fpr + 1.0 - tpr) / 2.0);
    }
    (auc, best_tpr, best_bal)
}

#[test]
fn roc_metrics_equal_a_direct_computation_with_ties() {
    let rng = Philox::new(5, 1);
    for (n, levels) in [(400, 7u32), (1000, 1000), (300, 2)] {
        let members: Vec<bool> = (0..n).map(|i| rng.word(i as u64) % 3 == 0).collect();
        // Coarse scores (many ties), shifted up for members.
        let scores: Vec<f64> = (0..n).map(|i| (rng.word(10_000 + i as u64) % levels) as f64 + members[i] as u8 as f64 * levels as f64 * 0.3).collect();
        let m = Roc::new(&scores, &members).unwrap().metrics(None).unwrap();
        for (j, alpha) in roc::FPRS.iter().enumerate() {
            let (auc, tpr, bal) = direct_metrics(&scores, &members, *alpha);
            assert!((m.auc - auc).abs() < 1e-12, "n {n}: auc {} vs {auc}", m.auc);
            assert!((m.tpr_at_fpr[j] - tpr).abs() < 1e-12, "n {n}, α {alpha}: {} vs {tpr}", m.tpr_at_fpr[j]);
            assert!((m.balanced_accuracy - bal).abs() < 1e-12);
        }
    }
    // All scores tied: the diagonal.
    let m = Roc::new(&[1.0; 10], &[true, false, true, false, true, false, true, false, true, false]).unwrap().metrics(None).unwrap();
    assert!((m.auc - 0.5).abs() < 1e-15 && m.tpr_at_fpr[0] == 0.0);
    assert!(Roc::new(&[1.0, 2.0], &[true, true]).unwrap().metrics(None).is_err());
    assert!(Roc::new(&[f64::NAN, 2.0], &[true, false]).is_err());
}

#[test]
fn bootstrap_interval_covers_the_estimate_and_narrows_with_more_pairs() {
    let rng = Philox::new(8, 2);
    let width = |n: usize| {
        let members: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let scores: Vec<f64> = (0..n).map(|i| rng.normal(i as u64) as f64 + members[i] as u8 as f64).collect();
        let roc = Roc::new(&scores, &members).unwrap();
        let auc = roc.metrics(None).unwrap().auc;
        let (lo, hi) = roc.bootstrap(200, 1).unwrap();
        assert!(lo.auc <= auc && auc <= hi.auc, "{} ≤ {auc} ≤ {}", lo.auc, hi.auc);
        hi.auc - lo.auc
    };
    let (small, large) = (width(400), width(6400));
    // The interval shrinks as 1/√n: ×16 pairs → about a quarter.
    assert!(large < 0.4 * small && large > 0.15 * small, "{small} → {large}");
}

#[test]
fn log_normal_cdf_matches_erfc_into_the_asymptotic_tail() {
    assert!((log_normal_cdf(0.0) - 0.5f64.ln()).abs() < 1e-15);
    assert!((log_normal_cdf(1.959963984540054) - 0.975f64.ln()).abs() < 1e-12);
    // Where f64 still holds Φ(z) (down to about −37), the direct formula is the reference.
    for z in [-20.5, -21.0, -25.0, -30.0, -35.0] {
        let direct = (0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)).ln();
        let got = log_normal_cdf(z);
        assert!(((got - direct) / direct).abs() < 1e-9, "z {z}: {got} vs {direct}");
    }
    assert!(log_normal_cdf(-1e3).is_finite() && log_normal_cdf(-1e3) < -4.9e5);
}

/// Φ by its erfc.
fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// A synthetic pool: φ_k(i) ~ N(Δ, σ) when example i is IN for model k, N(0, σ) OUT.
fn gaussian_pool(models: usize, n: usize, delta: f64, sigma: f64, seed: u64) -> (Confidences, Vec<u8>) {
    let keep = keep_matrix(seed, models, n, 0.5).unwrap();
    let rng = Philox::new(seed, 77);
    let phi = (0..models * n).map(|r| keep[r] as f64 * delta + sigma * rng.normal(r as u64) as f64).collect();
    (Confidences::model_major(models, 1, n, phi), keep)
}

#[test]
fn lira_on_gaussian_pools_has_the_closed_form_auc() {
    let (models, n, delta, sigma) = (33, 3000, 1.0, 1.0);
    let (conf, keep) = gaussian_pool(models, n, delta, sigma, 11);
    let want = normal_cdf(delta / (2.0 * sigma * sigma).sqrt());
    let shadows: Vec<usize> = (1..models).collect();
    let members: Vec<bool> = (0..n).map(|i| keep[i] == 1).collect();
    for attack in [Attack::LiraOnline, Attack::Global, Attack::LiraOffline] {
        for centre in [Centre::Median, Centre::Mean] {
            for fixed_variance in [false, true] {
                let s = LiraSettings { attack, centre, fixed_variance, skip_short: false };
                let scores = lira_scores(&conf, &keep, 0, &shadows, s).unwrap();
                let auc = Roc::new(&scores, &members).unwrap().metrics(None).unwrap().auc;
                // 3000 pairs: the AUC's standard error is about 0.01.
                assert!((auc - want).abs() < 0.035, "{s:?}: AUC {auc}, closed form {want}");
            }
        }
    }
}

#[test]
fn lira_online_fits_equal_a_direct_float64_reference() {
    let (models, n) = (9, 40);
    let (conf, keep) = gaussian_pool(models, n, 2.0, 0.5, 3);
    let shadows: Vec<usize> = (0..models).filter(|&k| k != 4).collect();
    let got = lira_scores(&conf, &keep, 4, &shadows, LiraSettings { attack: Attack::LiraOnline, centre: Centre::Median, fixed_variance: false, skip_short: false }).unwrap();
    for i in 0..n {
        let mut ins: Vec<f64> = shadows.iter().filter(|&&k| keep[k * n + i] == 1).map(|&k| conf.at(k, 0, i)).collect();
        let mut outs: Vec<f64> = shadows.iter().filter(|&&k| keep[k * n + i] == 0).map(|&k| conf.at(k, 0, i)).collect();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let m = v.len();
            if m % 2 == 1 { v[m / 2] } else { (v[m / 2 - 1] + v[m / 2]) / 2.0 }
        };
        let sd = |v: &Vec<f64>| {
            let mu = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let (si, so) = (sd(&ins), sd(&outs));
        let (mi, mo) = (median(&mut ins), median(&mut outs));
        let x = conf.at(4, 0, i);
        // The Gaussian log-density; the ratio of the densities themselves underflows.
        let log_pdf = |x: f64, m: f64, s: f64| -(x - m).powi(2) / (2.0 * s * s) - (s * (2.0 * std::f64::consts::PI).sqrt()).ln();
        let want = log_pdf(x, mi, si) - log_pdf(x, mo, so);
        assert!((got[i] - want).abs() < 1e-9 * want.abs().max(1.0), "example {i}: {} vs {want}", got[i]);
    }
    // Two shadows cannot fit per-example variances; the error says how many each has.
    let err = lira_scores(&conf, &keep, 0, &[1, 2], LiraSettings { attack: Attack::LiraOnline, centre: Centre::Mean, fixed_variance: false, skip_short: false }).unwrap_err().to_string();
    assert!(err.contains("IN and") && err.contains("OUT shadow models"), "{err}");
}

#[test]
fn rmia_equals_its_pairwise_likelihood_ratio_count() {
    let (models, n, m) = (6, 50, 37);
    let keep = keep_matrix(2, models, n, 0.5).unwrap();
    let rng = Philox::new(6, 3);
    // Members get higher label probabilities; ties in p_z included.
    let p_x: Vec<f64> = (0..models * n).map(|r| (0.05 + 0.5 * rng.uniform(r as u64) as f64 + 0.4 * keep[r] as f64).min(1.0)).collect();
    let p_z: Vec<f64> = (0..models * m).map(|r| 0.05 + 0.1 * (rng.word(9000 + r as u64) % 5) as f64).collect();
    let (target, shadows): (usize, Vec<usize>) = (2, vec![0, 1, 3, 4, 5]);
    for (gamma, a) in [(2.0, None), (1.0, None), (2.0, Some(0.3)), (1.5, Some(0.0))] {
        let got = rmia_scores(&p_x, &keep, &p_z, models, target, &shadows, gamma, a).unwrap();
        let marginal = |p: &[f64], cols: usize, j: usize, is_in: &dyn Fn(usize) -> bool| match a {
            None => shadows.iter().map(|&k| p[k * cols + j]).sum::<f64>() / shadows.len() as f64,
            Some(a) => {
                let outs: Vec<f64> = shadows.iter().filter(|&&k| !is_in(k)).map(|&k| p[k * cols + j]).collect();
                0.5 * ((1.0 + a) * outs.iter().sum::<f64>() / outs.len() as f64 + 1.0 - a)
            }
        };
        for i in 0..n {
            let px = p_x[target * n + i] / marginal(&p_x, n, i, &|k| keep[k * n + i] == 1);
            let count = (0..m).filter(|&j| px / (p_z[target * m + j] / marginal(&p_z, m, j, &|_| false)) > gamma).count();
            assert!((got[i] - count as f64 / m as f64).abs() < 1e-15, "γ {gamma}, a {a:?}, example {i}: {} vs {count}/{m}", got[i]);
        }
    }
    assert!(rmia_scores(&p_x, &keep, &p_z, models, 0, &[0, 1], 2.0, None).is_err());
    assert!(rmia_scores(&p_x, &keep, &p_z, models, 0, &[1], 0.0, None).is_err());
}
