//! `rote reproduce`: runs the three papers' experiments on built-in data with the
//! ordinary rote commands (each run as a child process, so the report shows the exact
//! commands that produced it), then writes a self-contained report: index.html, the
//! figures as PNG files beside it, and every figure's data as CSV.

use super::DeviceArg;
use anyhow::{bail, Context, Result};
use clap::Args;
use rote::report::plot::{self, Series};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct ReproduceArgs {
    /// A few minutes on 2 CPU cores (the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Larger grids, Fashion-MNIST, more samples: sized for a GPU.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// Report directory (index.html, figures, CSV, and the runs behind them).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

struct Step {
    section: &'static str,
    title: String,
    command: String,
    seconds: f64,
}

struct Figure {
    png: String,
    csv: String,
    caption: String,
}

struct Finding {
    claim: &'static str,
    paper: String,
    measured: String,
}

struct Reporter {
    exe: PathBuf,
    out: PathBuf,
    device: String,
    steps: Vec<Step>,
    figures: Vec<(&'static str, Figure)>,
    findings: Vec<(&'static str, Finding)>,
    tables: Vec<(&'static str, String)>,
}

fn quote(a: &str) -> String {
    if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,:/=".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Reporter {
    /// Runs `rote ARGS` in the report directory; returns its JSON output (the last
    /// argument must be --json for that).
    fn run(&mut self, section: &'static str, title: &str, args: &[&str], with_device: bool) -> Result<Value> {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if with_device {
            full.splice(full.len() - 1..full.len() - 1, ["--device".to_string(), self.device.clone()]);
        }
        eprintln!("[{section}] {title}: rote {}", full.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
        let t0 = Instant::now();
        let out = std::process::Command::new(&self.exe).args(&full).current_dir(&self.out).output().with_context(|| format!("cannot run {}", self.exe.display()))?;
        let seconds = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("`rote {}` failed:\n{}", full.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        self.steps.push(Step { section, title: title.to_string(), command: format!("rote {}", full.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")), seconds });
        if full.last().map(|s| s.as_str()) == Some("--json") {
            serde_json::from_slice(&out.stdout).with_context(|| format!("`rote {}` did not print JSON", full.join(" ")))
        } else {
            Ok(Value::Null)
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.out.join(rel)
    }

    fn figure(&mut self, section: &'static str, png: &str, csv: &str, caption: String) {
        self.figures.push((section, Figure { png: png.into(), csv: csv.into(), caption }));
    }

    fn finding(&mut self, section: &'static str, claim: &'static str, paper: String, measured: String) {
        self.findings.push((section, Finding { claim, paper, measured }));
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    rote::report::write_atomic(path, |w| Ok(w.write_all(text.as_bytes())?))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Per (size, width) of a sweep CSV: (P(interpolation), mean second-layer width).
fn sweep_table(csv: &Path) -> Result<std::collections::BTreeMap<(usize, usize, String), (f64, f64, usize)>> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut acc: std::collections::BTreeMap<(usize, usize, String), (f64, f64, usize)> = Default::default();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if c.len() < 7 {
            continue;
        }
        let key = (c[2].parse()?, c[0].parse()?, c[1].to_string());
        let e = acc.entry(key).or_insert((0.0, 0.0, 0));
        e.0 += c[4].parse::<f64>()?;
        e.1 += c[6].parse::<f64>()?;
        e.2 += 1;
    }
    Ok(acc.into_iter().map(|(k, (p, w, n))| (k, (p / n as f64, w / n as f64, n))).collect())
}

pub fn reproduce_cmd(a: ReproduceArgs) -> Result<()> {
    let full = a.full;
    let t_all = Instant::now();
    rote::report::create_out_dir(&a.out)?;
    let out = a.out.canonicalize()?;
    let device = match a.device.device {
        rote::device::DeviceRequest::Auto => "auto".to_string(),
        rote::device::DeviceRequest::Cpu => "cpu".to_string(),
        rote::device::DeviceRequest::Cuda(Some(i)) => format!("cuda:{i}"),
        rote::device::DeviceRequest::Cuda(None) => "cuda".to_string(),
        rote::device::DeviceRequest::AllCuda => "cuda:all".to_string(),
    };
    let mut r = Reporter { exe: std::env::current_exe()?, out: out.clone(), device, steps: vec![], figures: vec![], findings: vec![], tables: vec![] };
    let device_info = r.run("setup", "devices", &["device", "--json"], false)?;

    // ---- 1. Construction ----------------------------------------------------------
    const C: &str = "construction";
    let restarts = if full { "20" } else { "5" };
    let v = r.run(
        C,
        "interpolation over (n, λ) on two moons",
        &["sweep", "construct", "--data", "moons:n=1000,noise=0.05", "--widths", "25,50,100,200,400,800", "--max-biases", "0,0.25,0.5,1,2", "--restarts", restarts, "--out", "construction/sweep-moons.csv", "--plots", "construction", "--json"],
        false,
    )?;
    let table = sweep_table(&r.path("construction/sweep-moons.csv"))?;
    let mut grid_csv = String::from("width,max_bias,p_interpolation,mean_second_width,trials\n");
    for ((_, w, l), (p, k, n)) in &table {
        writeln!(grid_csv, "{w},{l},{p},{k},{n}")?;
    }
    write_text(&r.path("construction/grid-moons.csv"), &grid_csv)?;
    for (png, what) in [("heatmap-interpolation-N1000", "P(interpolation)"), ("heatmap-second-width-N1000", "mean second-layer width k"), ("slices-N1000", "P and k against n for four λ")] {
        r.figure(C, &format!("construction/{png}.png"), "construction/grid-moons.csv", format!("{what} over first-layer width n × max bias λ, two moons (N = 1000, noise 0.05), {restarts} restarts per cell"));
    }
    let needed = |lam: &str| table.iter().filter(|((_, _, l), (p, _, _))| l == lam && *p >= 0.99).map(|((_, w, _), (_, k, _))| (*w, *k)).min_by_key(|x| x.0);
    let at0 = table.iter().filter(|((_, _, l), _)| l == "0").map(|(_, v)| v.0).fold(0.0, f64::max);
    let describe = |x: Option<(usize, f64)>| x.map(|(w, k)| format!("n = {w} (k ≈ {k:.1})")).unwrap_or_else(|| "not reached on this grid".into());
    r.finding(
        C,
        "Interpolation needs a positive bias range and a modest width",
        "moons, N = 1000: λ = 0 never interpolates; λ ≈ 0.5–1 interpolates with probability ≈ 1 once n ≳ 250, with k ≈ 5–6".into(),
        format!("λ = 0: largest P = {at0:.2}; P ≥ 0.99 first at λ = 0.5: {}, λ = 1: {}", describe(needed("0.5")), describe(needed("1"))),
    );
    let _ = v;

    let sizes = if full { "1000,10000,100000,1000000" } else { "1000,10000,100000" };
    r.run(
        C,
        "sample independence: width needed as N grows",
        &["sweep", "construct", "--data", "moons:noise=0.05", "--sizes", sizes, "--widths", "50,100,200,400,800,1600", "--max-biases", "0.5", "--restarts", "5", "--out", "construction/sweep-sizes.csv", "--json"],
        false,
    )?;
    let t = sweep_table(&r.path("construction/sweep-sizes.csv"))?;
    let ns: std::collections::BTreeSet<usize> = t.keys().map(|k| k.0).collect();
    let (mut need, mut kk) = (vec![], vec![]);
    for &n in &ns {
        if let Some(((_, w, _), (_, k, _))) = t.iter().filter(|((s, _, _), (p, _, _))| *s == n && *p >= 0.9).min_by_key(|((_, w, _), _)| *w) {
            need.push((n as f64, *w as f64));
            kk.push((n as f64, *k));
        }
    }
    plot::lines(
        &r.path("construction/sample-independence.png"),
        "first-layer width needed (P ≥ 0.9, λ = 0.5) against N",
        "training-set size N",
        "first-layer width n needed",
        &[Series { name: "n needed".into(), points: need.clone() }],
        plot::Axes::LogX,
        Some((0.0, need.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2 + 1.0)),
        None,
    )?;
    r.figure(C, "construction/sample-independence.png", "construction/sample-independence.csv", "Sample independence: the smallest first-layer width with P(interpolation) ≥ 0.9 (5 restarts, λ = 0.5) as N grows".into());
    plot::lines(
        &r.path("construction/second-width-growth.png"),
        "second-layer width k at that n against N",
        "training-set size N",
        "mean k",
        &[Series { name: "k".into(), points: kk.clone() }],
        plot::Axes::LogX,
        Some((0.0, kk.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2 + 1.0)),
        None,
    )?;
    r.figure(C, "construction/second-width-growth.png", "construction/second-width-growth.csv", "The second-layer width k at the width needed, as N grows".into());
    r.finding(
        C,
        "Sample independence",
        "the required n does not grow with N (moons, N from 10⁵ to 10⁶); k grows only slowly".into(),
        format!(
            "n needed: {}; k there: {}",
            need.iter().map(|(n, w)| format!("N = {n:.0}: {w:.0}")).collect::<Vec<_>>().join(", "),
            kk.iter().map(|(n, k)| format!("N = {n:.0}: {k:.1}")).collect::<Vec<_>>().join(", ")
        ),
    );

    let mut fits = vec![("digits", "300")];
    if full {
        fits.push(("fashion-mnist", "1000"));
    }
    let mut fit_rows = String::new();
    for (data, width) in fits {
        let v = r.run(C, &format!("one-vs-rest fit on {data}"), &["construct", "--data", data, "--width", width, "--max-bias", "0.5", "--out", &format!("construction/{data}.safetensors"), "--json"], true)?;
        writeln!(
            fit_rows,
            "<tr><td>{data}</td><td>{}</td><td>{width}</td><td>{}</td><td>{:.4}</td><td>{:.3}</td><td>{}</td></tr>",
            v["samples"], v["second_width"], f(&v["train_accuracy"]), f(&v["fit_seconds"]), v["device"].as_str().unwrap_or("")
        )?;
        r.finding(
            C,
            "MNIST-like data interpolates at a few hundred first-layer neurons",
            "784-dim, 10 classes one-vs-rest: interpolates at n of a few hundred".into(),
            format!("{data}: n = {width}, training accuracy {:.4}, second-layer width {} in {:.3} s", f(&v["train_accuracy"]), v["second_width"], f(&v["fit_seconds"])),
        );
    }
    r.tables.push((C, format!("<table><tr><th>data</th><th>N</th><th>n</th><th>k (all classes)</th><th>train accuracy</th><th>fit s</th><th>device</th></tr>{fit_rows}</table>")));

    // ---- 2. Curvature -------------------------------------------------------------
    const K: &str = "curvature";
    let (data, model, epochs) = if full { ("fashion-mnist", "mlp:784-512-512-10,act=relu", "20") } else { ("digits", "mlp:64-128-10,act=relu", "30") };
    r.run(K, "train a classifier with 5% label noise and 20 conflicting duplicates", &["train", "--data", data, "--model", model, "--epochs", epochs, "--label-noise", "0.05", "--duplicate-conflicts", "20", "--out", "curvature/run", "--json"], true)?;
    let v = r.run(K, "memorization scores (input curvature over training)", &["curvature", "--run", "curvature/run", "--estimator", "fd", "--h", "0.01", "--out", "curvature/scores", "--gallery", "curvature/gallery.png", "--json"], true)?;
    let scores = rote::data::Array::open_npy(&r.path("curvature/scores/score.npy"))?.to_f32();
    let corrupted = rote::data::Array::open_npy(&r.path("curvature/run/corrupted.npy"))?.to_i64()?;
    let labels = rote::data::Array::open_npy(&r.path("curvature/run/labels.npy"))?.to_i64()?;
    let mut csv = String::from("index,label,corrupted,score\n");
    for i in 0..scores.len() {
        writeln!(csv, "{i},{},{},{}", labels[i], corrupted[i], scores[i])?;
    }
    write_text(&r.path("curvature/scores.csv"), &csv)?;
    let clean: Vec<f64> = (0..scores.len()).filter(|&i| corrupted[i] == 0).map(|i| scores[i] as f64).collect();
    let bad: Vec<f64> = (0..scores.len()).filter(|&i| corrupted[i] != 0).map(|i| scores[i] as f64).collect();
    plot::two_histograms(&r.path("curvature/score-histogram.png"), "memorization score: clean vs corrupted samples", "score (log scale)", ("clean", &clean), ("flipped or conflicting", &bad), 30)?;
    r.figure(K, "curvature/score-histogram.png", "curvature/score-histogram.csv", format!("Distribution of the curvature score for clean and corrupted samples ({data}, {model})"));
    r.figure(K, "curvature/gallery.png", "curvature/scores.csv", "The most and least curved training samples, with their (possibly corrupted) labels".into());
    r.finding(
        K,
        "Mislabeled and conflicting samples have the highest curvature",
        "AUROC ≈ 0.97–0.99 (CIFAR, ResNet18); an MLP on Fashion-MNIST should reach well above 0.9".into(),
        format!("{data}, {model}: AUROC {:.3}, precision at k {:.3} over {} corrupted of {} samples", f(&v["auroc"]), f(&v["precision_at_k"]), v["corrupted"], v["samples"]),
    );

    // ---- 2b. Memorization and membership from a pool of models --------------------
    const M: &str = "membership";
    // A recipe that lets every member fit its half of the data, flipped labels included:
    // without that there is nothing memorized to measure.
    let (pool_data, pool_model, pool_epochs, pool_lr, pool_models) =
        if full { ("fashion-mnist:subset=500", "mlp:784-256-10", "60", "0.05", "64") } else { ("digits", "mlp:64-256-10", "100", "0.1", "32") };
    let recipe = ["--data", pool_data, "--model", pool_model, "--epochs", pool_epochs, "--lr", pool_lr, "--schedule", "constant", "--weight-decay", "0", "--label-noise", "0.05", "--duplicate-conflicts", "20"];
    let with = |head: &[&'static str], tail: &[&'static str]| -> Vec<&'static str> { head.iter().chain(recipe.iter()).chain(tail.iter()).copied().collect() };
    r.run(M, "one run of the pool's recipe on all the data, for the curvature comparison", &with(&["train"], &["--out", "membership/run", "--json"]), true)?;
    r.run(M, "its curvature scores (every 4th checkpoint)", &["curvature", "--run", "membership/run", "--every", "4", "--out", "membership/curvature", "--json"], true)?;
    r.run(M, "the pool: models on random halves", &with(&["pool", "train", "--models", pool_models, "--no-mirror"], &["--out", "membership/pool", "--json"]), false)?;
    let mem = r.run(
        M,
        "Feldman–Zhang memorization and its agreement with curvature",
        &["mem", "--pool", "membership/pool", "--curvature-run", "membership/run", "--curvature-scores", "membership/curvature/score.npy", "--json"],
        false,
    )?;
    r.figure(M, "membership/pool/mem/gallery.png", "membership/pool/mem/top.csv", format!("The most and least memorized training images by Feldman–Zhang ({pool_data}, {pool_models} models)"));
    r.finding(
        M,
        "Mislabeled examples are the memorized ones",
        "Feldman & Zhang: memorization is high for atypical and mislabeled examples".into(),
        format!(
            "{pool_data}, {pool_models} × {pool_model}: mean mem {:.3} for flipped or conflicting labels, {:.3} for clean ones (members' accuracy IN {:.3}, OUT {:.3})",
            f(&mem["mean_mem_corrupted"]),
            f(&mem["mean_mem_clean"]),
            f(&mem["accuracy_in"]),
            f(&mem["accuracy_out"])
        ),
    );
    r.finding(
        M,
        "Input curvature agrees with Feldman–Zhang memorization",
        "cosine similarity ≈ 0.7–0.87 on CIFAR-100 (ResNet-18)".into(),
        format!("{pool_data}: cosine {:.3}, Spearman {:.3} over {} examples", f(&mem["curvature"]["cosine"]), f(&mem["curvature"]["spearman"]), mem["curvature"]["examples"]),
    );
    let mut attack_rows = String::new();
    let mut tpr = std::collections::BTreeMap::new();
    let mut attacks: Vec<(&str, Vec<&str>)> = vec![
        ("LiRA online", vec!["--attack", "lira-online"]),
        ("LiRA online, fixed variance", vec!["--attack", "lira-online", "--fixed-variance"]),
        ("LiRA offline", vec!["--attack", "lira-offline"]),
        ("LiRA offline, fixed variance", vec!["--attack", "lira-offline", "--fixed-variance"]),
        ("global threshold", vec!["--attack", "global"]),
        ("loss", vec!["--attack", "loss"]),
    ];
    if full {
        attacks.push(("RMIA", vec!["--attack", "rmia"]));
    }
    for (i, (name, flags)) in attacks.iter().enumerate() {
        let dir = format!("membership/mia-{i}");
        let args: Vec<&str> = ["mia", "--pool", "membership/pool"].iter().copied().chain(flags.iter().copied()).chain(["--out", &dir, "--json"]).collect();
        let v = r.run(M, &format!("membership inference: {name}"), &args, false)?;
        let m = &v["metrics"];
        tpr.insert(*name, f(&m["tpr_at_0.1%_fpr"]));
        writeln!(
            attack_rows,
            "<tr><td>{name}</td><td>{:.4} [{:.4}, {:.4}]</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.4}</td></tr>",
            f(&m["auc"]),
            f(&v["ci95"]["low"]["auc"]),
            f(&v["ci95"]["high"]["auc"]),
            100.0 * f(&m["tpr_at_0.1%_fpr"]),
            100.0 * f(&m["tpr_at_0.01%_fpr"]),
            100.0 * f(&m["tpr_at_1%_fpr"]),
            f(&m["balanced_accuracy"])
        )?;
        if i == 0 {
            r.figure(M, &format!("{dir}/roc.png"), &format!("{dir}/roc.csv"), format!("ROC of online LiRA, every model of the pool as the target against the others ({pool_data})"));
        }
    }
    r.tables.push((M, format!("<table><tr><th>attack (every model as target)</th><th>AUC [95% bootstrap]</th><th>TPR @ 0.1% FPR</th><th>@ 0.01%</th><th>@ 1%</th><th>balanced accuracy</th></tr>{attack_rows}</table>")));
    r.finding(
        M,
        "Online LiRA beats offline LiRA and the global threshold at low FPR",
        "tf-privacy demo (16 WRN-28-2, CIFAR-10): TPR @ 0.1% FPR online 1.69%, offline 1.30%, global 0.09%".into(),
        format!("{pool_data}: online {:.2}%, offline {:.2}%, global {:.2}%", 100.0 * tpr["LiRA online"], 100.0 * tpr["LiRA offline"], 100.0 * tpr["global threshold"]),
    );
    let choi = r.run(M, "Choi et al.: the 10% most memorized against all examples, by shadow count", &["choi", "--pool", "membership/pool", "--select", "top:10%", "--fixed-variance", "--out", "membership/choi", "--json"], false)?;
    r.figure(M, "membership/choi/choi.png", "membership/choi/choi.csv", format!("TPR at 0.1% FPR of online LiRA (fixed variance) against the number of shadow models: the 10% most memorized examples and all ({pool_data})"));
    let points = choi["points"].as_array().cloned().unwrap_or_default();
    let at = |p: &Value, which: &str| f(&p[which]["tpr_at_0.1%_fpr"]);
    let best_all = points.last().map(|p| at(p, "all")).unwrap_or(f64::NAN);
    let fewest = points.iter().find(|p| at(p, "selected") >= best_all).map(|p| p["shadows"].clone()).unwrap_or(Value::Null);
    r.finding(
        M,
        "Memorized examples need far fewer shadow models",
        "Choi et al.: targeting high-memorization samples reaches the same power with orders of magnitude fewer shadow models".into(),
        format!(
            "{pool_data}, online LiRA with a fixed variance: TPR @ 0.1% FPR on the top 10% by shadow count {}; on all examples {:.2}% with every shadow, which the top 10% reach with {fewest} shadows",
            points.iter().filter(|p| !p["selected"].is_null()).map(|p| format!("{}: {:.1}%", p["shadows"], 100.0 * at(p, "selected"))).collect::<Vec<_>>().join(", "),
            100.0 * best_all
        ),
    );

    // ---- 3. Diffusion -------------------------------------------------------------
    const D: &str = "diffusion";
    let samples = if full { "2000" } else { "500" };
    let mut optimal_rows = String::new();
    let optimal_data: Vec<&str> = if full { vec!["digits", "fashion-mnist:subset-random=10000"] } else { vec!["digits"] };
    for (i, data) in optimal_data.iter().enumerate() {
        let dir = format!("diffusion/optimal-{i}");
        r.run(D, &format!("optimal-denoiser samples of {data}"), &["denoise", "sample", "--data", data, "--samples", samples, "--out", &dir, "--json"], true)?;
        let v = r.run(D, "their memorization ratio", &["memratio", "--generated", &format!("{dir}/samples.npy"), "--data", data, "--gallery", &format!("{dir}/nn.png"), "--json"], true)?;
        let ratios = rote::data::Array::open_npy(&r.path(&format!("{dir}/ratios.npy")))?;
        let rv = {
            let b = ratios.bytes();
            b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>()
        };
        let nn = rote::data::Array::open_npy(&r.path(&format!("{dir}/neighbours.npy")))?.to_i64()?;
        let mut csv = String::from("sample,ratio,nn1,nn2\n");
        for (s, ratio) in rv.iter().enumerate() {
            writeln!(csv, "{s},{ratio},{},{}", nn[2 * s], nn[2 * s + 1])?;
        }
        write_text(&r.path(&format!("{dir}/ratios.csv")), &csv)?;
        r.figure(D, &format!("{dir}/grid.png"), &format!("{dir}/ratios.csv"), format!("Samples of the optimal denoiser of {data} (EDM Heun, 18 steps)"));
        r.figure(D, &format!("{dir}/nn.png"), &format!("{dir}/ratios.csv"), format!("{data}: generated sample | nearest | second-nearest training image"));
        writeln!(optimal_rows, "<tr><td>{data}</td><td>{}</td><td>{:.4}</td></tr>", v["samples"], f(&v["memorization_ratio"]))?;
        r.finding(D, "The optimal denoiser only reproduces training images", "≈ 100% memorization at any |D|".into(), format!("{data}: memorization ratio {:.4} over {} samples", f(&v["memorization_ratio"]), v["samples"]));
    }
    r.tables.push((D, format!("<table><tr><th>data</th><th>samples</th><th>memorization ratio</th></tr>{optimal_rows}</table>")));

    // 14×14 Fashion-MNIST needs a wider network and more steps than 8×8 digits before
    // a small training set is memorized (10 images: 16% at the defaults, 99% with these).
    let (emm_data, emm_sizes, rand_sizes, emm_samples, model, steps) = if full {
        ("fashion-mnist:downsample=2", "20,50,100,200,500,1000,2000", "100,200,500", "1000", "resmlp:width=512,blocks=4", "10000")
    } else {
        ("digits", "20,50,100", "50,100", "200", super::diffusion::DEFAULT_MODEL, "3000")
    };
    let v = r.run(
        D,
        "EMM: trained denoisers against training-set size",
        &["emm", "--data", emm_data, "--sizes", emm_sizes, "--samples", emm_samples, "--model", model, "--steps", steps, "--out", "diffusion/emm", "--json"],
        true,
    )?;
    r.figure(D, "diffusion/emm/emm.png", "diffusion/emm/emm.csv", format!("Memorization ratio of trained denoisers against training-set size ({emm_data}), with the 90% line"));
    let curve: Vec<(f64, f64)> = v["sizes"].as_array().map(|a| a.iter().map(|s| (f(&s["size"]), f(&s["memorization_ratio"]))).collect()).unwrap_or_default();
    r.finding(
        D,
        "Memorization falls as the training set grows",
        "CIFAR-10 32×32 unconditional: ≈ 99% at 500 images, ≈ 92% at 1k, ≈ 61% at 2k, ≈ 17% at 4k".into(),
        format!("{emm_data}: {}; EMM = {}", curve.iter().map(|(s, m)| format!("{s:.0}: {:.0}%", m * 100.0)).collect::<Vec<_>>().join(", "), v["emm"]),
    );
    let vr = r.run(D, "random-label conditioning", &["emm", "--data", emm_data, "--sizes", rand_sizes, "--labels", "random:10", "--samples", emm_samples, "--model", model, "--steps", steps, "--out", "diffusion/emm-random", "--json"], true)?;
    let random: Vec<(f64, f64)> = vr["sizes"].as_array().map(|a| a.iter().map(|s| (f(&s["size"]), f(&s["memorization_ratio"]))).collect()).unwrap_or_default();
    let uncond: Vec<(f64, f64)> = curve.iter().filter(|(s, _)| random.iter().any(|(t, _)| t == s)).cloned().collect();
    plot::lines(
        &r.path("diffusion/random-labels.png"),
        &format!("random-label conditioning ({emm_data})"),
        "training-set size |D|",
        "memorization ratio",
        &[Series { name: "unconditional".into(), points: uncond.clone() }, Series { name: "random labels (10 classes)".into(), points: random.clone() }],
        plot::Axes::LogX,
        Some((0.0, 1.05)),
        Some(0.9),
    )?;
    r.figure(D, "diffusion/random-labels.png", "diffusion/random-labels.csv", "Conditioning on random class labels raises memorization at a fixed training-set size".into());
    r.finding(
        D,
        "Conditioning on random labels raises memorization",
        "random-label conditioning raises the memorization ratio (and EMM)".into(),
        random.iter().map(|(s, m)| format!("|D| = {s:.0}: {:.0}% → {:.0}%", uncond.iter().find(|u| u.0 == *s).map(|u| u.1 * 100.0).unwrap_or(f64::NAN), m * 100.0)).collect::<Vec<_>>().join("; "),
    );

    // U-Net denoisers (EDM's DDPM++ layout, diffusion/unet.rs) on the same data as the
    // MLP's curve: the paper's network family, at CPU size.
    let (unets, unet_sizes, unet_steps, unet_batch, unet_samples): (&[&str], &str, &str, &str, &str) = if full {
        (&["unet:channels=16,mult=1-2", "unet:channels=32,mult=1-2"], "20,100,500,2000", "4000", "32", "500")
    } else {
        (&["unet:channels=8,mult=1-2"], "10,300", "1000", "16", "100")
    };
    let mut unet_series = vec![Series { name: format!("MLP {model}"), points: curve.clone() }];
    for (k, unet) in unets.iter().enumerate() {
        let dir = format!("diffusion/emm-unet-{k}");
        let vu = r.run(
            D,
            &format!("EMM with a U-Net ({unet})"),
            // U-Nets have no CUDA kernels yet: on the CPU whatever --device says.
            &["emm", "--data", emm_data, "--sizes", unet_sizes, "--samples", unet_samples, "--model", unet, "--steps", unet_steps, "--batch", unet_batch, "--lr", "2e-3", "--out", &dir, "--device", "cpu", "--json"],
            false,
        )?;
        let points: Vec<(f64, f64)> = vu["sizes"].as_array().map(|a| a.iter().map(|s| (f(&s["size"]), f(&s["memorization_ratio"]))).collect()).unwrap_or_default();
        r.finding(
            D,
            "U-Nets memorize small training sets too, less as the set grows",
            "CIFAR-10 DDPM++ U-Net: ≈ 99% at 500 images, ≈ 61% at 2k; EMM grows with width and training steps".into(),
            format!("{emm_data}, {unet} ({unet_steps} steps): {}; EMM = {}", points.iter().map(|(s, m)| format!("{s:.0}: {:.0}%", m * 100.0)).collect::<Vec<_>>().join(", "), vu["emm"]),
        );
        unet_series.push(Series { name: format!("U-Net {unet}"), points });
    }
    if full {
        // Random-label conditioning with the first U-Net, beside its unconditional sweep.
        let vr = r.run(
            D,
            &format!("random-label conditioning with a U-Net ({})", unets[0]),
            &["emm", "--data", emm_data, "--sizes", unet_sizes, "--labels", "random:10", "--samples", unet_samples, "--model", unets[0], "--steps", unet_steps, "--batch", unet_batch, "--lr", "2e-3", "--out", "diffusion/emm-unet-random", "--device", "cpu", "--json"],
            false,
        )?;
        let points: Vec<(f64, f64)> = vr["sizes"].as_array().map(|a| a.iter().map(|s| (f(&s["size"]), f(&s["memorization_ratio"]))).collect()).unwrap_or_default();
        r.finding(
            D,
            "Conditioning a U-Net on random labels raises memorization",
            "random-label conditioning raises the memorization ratio (and EMM)".into(),
            format!("{emm_data}, {} with random:10 labels: {}; EMM = {}", unets[0], points.iter().map(|(s, m)| format!("{s:.0}: {:.0}%", m * 100.0)).collect::<Vec<_>>().join(", "), vr["emm"]),
        );
        unet_series.push(Series { name: format!("U-Net {}, random labels", unets[0]), points });
    }
    plot::lines(
        &r.path("diffusion/unet-vs-mlp.png"),
        &format!("U-Net and MLP denoisers ({emm_data})"),
        "training-set size |D|",
        "memorization ratio",
        &unet_series,
        plot::Axes::LogX,
        Some((0.0, 1.05)),
        Some(0.9),
    )?;
    r.figure(D, "diffusion/unet-vs-mlp.png", "diffusion/unet-vs-mlp.csv", format!("Memorization ratio of U-Net and residual-MLP denoisers against training-set size ({emm_data}; the paper's numbers are CIFAR-10 U-Nets)"));

    let total = t_all.elapsed().as_secs_f64();
    write_index(&r, &device_info, full, total)?;
    if a.json {
        super::print_json(&serde_json::json!({
            "report": out.join("index.html"), "figures": r.figures.iter().map(|(_, f)| &f.png).collect::<Vec<_>>(), "seconds": total,
            "findings": r.findings.iter().map(|(s, f)| serde_json::json!({"section": s, "claim": f.claim, "paper": f.paper, "measured": f.measured})).collect::<Vec<_>>(),
        }));
    } else {
        println!("report: {} ({} figures, {total:.0} s)", out.join("index.html").display(), r.figures.len());
    }
    Ok(())
}

fn write_index(r: &Reporter, device: &Value, full: bool, total: f64) -> Result<()> {
    let mut h = String::new();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release").ok().and_then(|t| t.lines().find(|l| l.starts_with("PRETTY_NAME")).map(|l| l.split('=').nth(1).unwrap_or("").trim_matches('"').to_string())).unwrap_or_default();
    let gpus: Vec<String> = device["cuda"]["devices"].as_array().map(|a| a.iter().map(|d| d["name"].as_str().unwrap_or("").to_string()).collect()).unwrap_or_default();
    write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rote reproduction report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.9em; color: #444; }} pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }}
.meta {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>rote reproduction report</h1>
<p class="meta">{} run · rote {} · {} · CPU: {} ({} threads) · GPU: {} · device flag: {} · total {:.0} s</p>
"#,
        if full { "--full" } else { "--quick" },
        env!("CARGO_PKG_VERSION"),
        html_escape(&os),
        html_escape(&cpu_model),
        device["cpu"]["threads"],
        if gpus.is_empty() { "none".to_string() } else { html_escape(&gpus.join(", ")) },
        html_escape(&r.device),
        total
    )?;
    h.push_str("<h2>Findings</h2>\n<table><tr><th>section</th><th>claim</th><th>the papers</th><th>this run</th></tr>\n");
    for (s, fnd) in &r.findings {
        writeln!(h, "<tr><td>{s}</td><td>{}</td><td>{}</td><td>{}</td></tr>", html_escape(fnd.claim), html_escape(&fnd.paper), html_escape(&fnd.measured))?;
    }
    h.push_str("</table>\n");
    for (section, title) in [("construction", "1. Randomized construction of interpolating networks"), ("curvature", "2. Input curvature as a memorization score"), ("membership", "2b. Memorization and membership inference from a pool of models"), ("diffusion", "3. Diffusion models: the optimal denoiser and memorization")] {
        writeln!(h, "<h2>{title}</h2>")?;
        for (_, t) in r.tables.iter().filter(|(s, _)| *s == section) {
            h.push_str(t);
            h.push('\n');
        }
        for (_, fig) in r.figures.iter().filter(|(s, _)| *s == section) {
            writeln!(
                h,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{} — data: <a href=\"{}\">{}</a></figcaption></figure>",
                html_escape(&fig.png),
                html_escape(&fig.caption),
                html_escape(&fig.caption),
                html_escape(&fig.csv),
                html_escape(&fig.csv)
            )?;
        }
        h.push_str("<details><summary>commands</summary><pre>");
        for st in r.steps.iter().filter(|s| s.section == section) {
            writeln!(h, "# {} ({:.1} s)\n{}", html_escape(&st.title), st.seconds, html_escape(&st.command))?;
        }
        h.push_str("</pre></details>\n");
    }
    h.push_str("<h2>Timings</h2>\n<table><tr><th>section</th><th>step</th><th>seconds</th></tr>\n");
    for st in &r.steps {
        writeln!(h, "<tr><td>{}</td><td>{}</td><td>{:.2}</td></tr>", st.section, html_escape(&st.title), st.seconds)?;
    }
    h.push_str("</table>\n<p class=\"meta\">Every number above was read from the outputs of the commands listed, run from this directory. Rerun one with the same command; the runs' directories are beside this page.</p>\n</body></html>\n");
    write_text(&r.out.join("index.html"), &h)
}
