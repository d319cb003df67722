//! `rote reproduce --quick`: the report exists, links only files that exist, every
//! figure has its CSV, and its numbers are the run's (recomputed here from the data
//! files it wrote).

mod common;
use common::*;

fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let pat = format!("{attr}=\"");
    html.match_indices(&pat).map(|(i, _)| html[i + pat.len()..].split('"').next().unwrap().to_string()).collect()
}

/// AUROC of scores with positives marked, by the rank-sum formula (ties count half).
fn auroc(scores: &[f64], positive: &[bool]) -> f64 {
    let (mut wins, mut pairs) = (0f64, 0f64);
    for (i, &a) in scores.iter().enumerate().filter(|(i, _)| positive[*i]) {
        let _ = i;
        for (_, &b) in scores.iter().enumerate().filter(|(j, _)| !positive[*j]) {
            pairs += 1.0;
            wins += if a > b { 1.0 } else if a == b { 0.5 } else { 0.0 };
        }
    }
    wins / pairs
}

#[test]
fn quick_reproduction_writes_a_consistent_report() {
    let dir = tempdir();
    let out = dir.path().join("report");
    let v = json(&rote_ok(&["reproduce", "--quick", "--out", p(&out), "--json"]));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Every linked file exists.
    let links: Vec<String> = attribute_values(&html, "src").into_iter().chain(attribute_values(&html, "href")).collect();
    assert!(links.len() >= 20, "{links:?}");
    for l in &links {
        assert!(!l.starts_with('/') && !l.contains("://"), "{l} is not a relative link");
        assert!(out.join(l).is_file(), "the report links {l}, which does not exist");
    }
    // Every figure: a PNG and a CSV with a header and data.
    let figures: Vec<&str> = html.split("<figure>").skip(1).collect();
    assert!(figures.len() >= 8);
    assert_eq!(figures.len(), v["figures"].as_array().unwrap().len());
    for fig in figures {
        let img = attribute_values(fig, "src");
        let csv = attribute_values(fig, "href");
        assert!(img.len() == 1 && img[0].ends_with(".png"), "{fig}");
        assert!(csv.len() == 1 && csv[0].ends_with(".csv"), "{fig}");
        let bytes = std::fs::read(out.join(&img[0])).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let text = std::fs::read_to_string(out.join(&csv[0])).unwrap();
        assert!(text.lines().count() >= 2, "{} has no data", csv[0]);
    }
    // The AUROC shown is the one the written scores give.
    let rows: Vec<(bool, f64)> = std::fs::read_to_string(out.join("curvature/scores.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[2] != "0", c[3].parse().unwrap())
        })
        .collect();
    let a = auroc(&rows.iter().map(|r| r.1).collect::<Vec<_>>(), &rows.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(html.contains(&format!("AUROC {a:.3}")), "AUROC {a:.3} not in the report");
    assert!(a > 0.8, "AUROC {a}");
    // The memorization shown is the one the written scores give; the attack's TPR is its JSON's.
    let mem = rote::data::Array::open_npy(&out.join("membership/pool/mem/mem.npy")).unwrap().to_f32();
    let flags = rote::data::Array::open_npy(&out.join("membership/pool/corrupted.npy")).unwrap();
    let mean = |bad: u8| {
        let v: Vec<f64> = (0..mem.len()).filter(|&i| flags.bytes()[i] == bad).map(|i| mem[i] as f64).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (bad, clean) = (mean(1), mean(0));
    assert!(html.contains(&format!("mean mem {bad:.3} for flipped or conflicting labels, {clean:.3} for clean ones")), "mem {bad:.3} / {clean:.3} not in the report");
    assert!(bad > clean + 0.3, "flipped {bad}, clean {clean}");
    let online: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("membership/mia-0/mia.json")).unwrap()).unwrap();
    let tpr = online["metrics"]["tpr_at_0.1%_fpr"].as_f64().unwrap();
    assert!(html.contains(&format!("online {:.2}%", 100.0 * tpr)), "online LiRA's TPR {tpr} not in the report");
    // The EMM shown is the sweep's.
    let emm: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("diffusion/emm/emm.json")).unwrap()).unwrap();
    assert!(html.contains(&format!("EMM = {}", emm["emm"])), "EMM {} not in the report", emm["emm"]);
    // Memorization falls as the training set grows: the smallest set is reproduced, the
    // largest mostly not.
    let ratios: Vec<f64> = emm["sizes"].as_array().unwrap().iter().map(|s| s["memorization_ratio"].as_f64().unwrap()).collect();
    assert!(ratios[0] >= 0.9 && *ratios.last().unwrap() < 0.5, "the MLP denoisers' memorization ratios by size: {ratios:?}");
    // Conditioning on random labels raises it at the same sizes.
    let random: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("diffusion/emm-random/emm.json")).unwrap()).unwrap();
    for r in random["sizes"].as_array().unwrap() {
        let same = emm["sizes"].as_array().unwrap().iter().find(|s| s["size"] == r["size"]).expect("the random-label sizes are among the unconditional ones");
        assert!(r["memorization_ratio"].as_f64().unwrap() > same["memorization_ratio"].as_f64().unwrap(), "random labels {r} against unconditional {same}");
    }
    // The U-Net's sweep is in the report beside the MLP's, and it memorizes its smallest set.
    assert!(html.contains("diffusion/unet-vs-mlp.png"));
    let unet: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("diffusion/emm-unet-0/emm.json")).unwrap()).unwrap();
    let first = unet["sizes"][0]["memorization_ratio"].as_f64().unwrap();
    assert!(html.contains(&format!("{}: {:.0}%", unet["sizes"][0]["size"], first * 100.0)), "the U-Net's ratio {first} is not in the report");
    let last = unet["sizes"].as_array().unwrap().last().unwrap()["memorization_ratio"].as_f64().unwrap();
    assert!(first >= 0.9 && last < first - 0.3, "the U-Net memorized {first} of its smallest training set and {last} of its largest");
}
