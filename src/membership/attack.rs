//! Scores computed from a stored pool (pool.rs): Feldman–Zhang memorization and
//! influence, the membership attacks with each member in turn as the target, and Choi
//! et al.'s curve of attack power against the number of shadow models.

use super::pool::Pool;
use super::roc::{Metrics, Roc};
use super::{feldman_zhang, label_probability, lira_scores, phi, rmia_scores, Attack, Centre, Confidences, LiraSettings};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Feldman–Zhang memorization of every training example, from 0/1 correctness and from
/// the label's probability (the original query), with standard errors.
pub struct Memorization {
    pub mem: Vec<f64>,
    pub se: Vec<f64>,
    pub mem_probability: Vec<f64>,
    pub se_probability: Vec<f64>,
    /// Mean accuracy of the members on the examples they trained on and on those they did not.
    pub accuracy_in: f64,
    pub accuracy_out: f64,
}

/// Mean memorization of all examples, of the corrupted and of the clean ones (None for
/// an empty group).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct GroupMeans {
    pub all: Option<f64>,
    pub corrupted: Option<f64>,
    pub clean: Option<f64>,
}

impl Memorization {
    pub fn group_means(&self, corrupted: &[u8]) -> GroupMeans {
        let mean = |keep: &dyn Fn(u8) -> bool| {
            let (s, c) = self.mem.iter().zip(corrupted).filter(|(_, &f)| keep(f)).fold((0f64, 0usize), |(s, c), (m, _)| (s + m, c + 1));
            (c > 0).then(|| s / c as f64)
        };
        GroupMeans { all: mean(&|_| true), corrupted: mean(&|f| f == 1), clean: mean(&|f| f == 0) }
    }
}

/// What `write_memorization` wrote besides the memorization arrays.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemorizationFiles {
    pub influence: Vec<&'static str>,
    pub gallery: Option<std::path::PathBuf>,
}

/// `rote mem`'s outputs in `out`: mem.npy, mem_se.npy, mem_probability.npy,
/// mem_probability_se.npy (float32, n), the influence arrays, top.csv (the `top` most
/// memorized examples) and, for image data, gallery.png.
pub fn write_memorization(pool: &Pool, ds: &crate::data::Dataset, m: &Memorization, infl: Option<&Influence>, out: &std::path::Path, top: usize) -> Result<MemorizationFiles> {
    use crate::report;
    report::create_out_dir(out)?;
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (n, t) = (pool.info.examples, pool.info.test_examples);
    for (name, v) in [("mem.npy", &m.mem), ("mem_se.npy", &m.se), ("mem_probability.npy", &m.mem_probability), ("mem_probability_se.npy", &m.se_probability)] {
        report::write_npy(&out.join(name), &[n], &f32s(v))?;
    }
    let influence = match infl {
        Some(Influence::Dense(v)) => {
            report::write_npy(&out.join("influence.npy"), &[n, t], v)?;
            vec!["influence.npy"]
        }
        Some(Influence::Top { k, index, value }) => {
            report::write_npy(&out.join("influence_top_index.npy"), &[t, *k], index)?;
            report::write_npy(&out.join("influence_top_value.npy"), &[t, *k], value)?;
            vec!["influence_top_index.npy", "influence_top_value.npy"]
        }
        None => vec![],
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| m.mem[y].total_cmp(&m.mem[x]).then(x.cmp(&y)));
    let mut csv = String::from("rank,example,dataset_row,label,corrupted,mem,mem_se,mem_probability\n");
    for (r, &i) in order.iter().take(top).enumerate() {
        csv.push_str(&format!("{},{i},{},{},{},{:.6},{:.6},{:.6}\n", r + 1, pool.sources[i], pool.labels[i], pool.corrupted[i], m.mem[i], m.se[i], m.mem_probability[i]));
    }
    report::write_atomic(&out.join("top.csv"), |w| Ok(w.write_all(csv.as_bytes())?))?;
    let gallery = report::image::image_dims(ds.sample_shape()).is_ok().then(|| out.join("gallery.png"));
    if let Some(g) = &gallery {
        crate::curvature::gallery::draw(&ds.train.x, &pool.sources, &pool.labels[..n], &f32s(&m.mem), ds.sample_shape(), "memorization", g)?;
    }
    Ok(MemorizationFiles { influence, gallery })
}

/// The influence of training example i on test example j:
///   infl(i, j) = mean_{k: i∈S_k} correct_k(t_j) − mean_{k: i∉S_k} correct_k(t_j).
pub enum Influence {
    /// (n, t)
    Dense(Vec<f32>),
    /// Per test example, the `k` most influential training examples, largest first:
    /// indices and values (t, k).
    Top { k: usize, index: Vec<u32>, value: Vec<f32> },
}

/// The pool's values at query 0 (the original inputs) for members `models`: (|models|, n + t).
fn first_query(pool: &Pool, models: &[usize], value: &(dyn Fn(&[f32], usize) -> f64 + Sync)) -> Result<Vec<f64>> {
    pool.values(models, 0..1, 0..pool.info.total_examples(), value)
}

fn training_part(values: &[f64], total: usize, n: usize) -> Vec<f64> {
    values.chunks(total).flat_map(|m| m[..n].iter().copied()).collect()
}

pub fn memorization(pool: &Pool) -> Result<(Memorization, Vec<f64>)> {
    pool.require_complete()?;
    let models: Vec<usize> = (0..pool.models()).collect();
    let (k, n, total) = (pool.models(), pool.info.examples, pool.info.total_examples());
    let correct = first_query(pool, &models, &|l, y| super::correct(l, y))?;
    let probability = first_query(pool, &models, &|l, y| label_probability(l, y))?;
    let (mem, se) = feldman_zhang(&training_part(&correct, total, n), &pool.keep, k, n)?;
    let (mem_probability, se_probability) = feldman_zhang(&training_part(&probability, total, n), &pool.keep, k, n)?;
    let (mut hits, mut count) = ([0f64; 2], [0f64; 2]);
    for m in 0..k {
        for i in 0..n {
            let g = pool.keep[m * n + i] as usize;
            hits[g] += correct[m * total + i];
            count[g] += 1.0;
        }
    }
    Ok((Memorization { mem, se, mem_probability, se_probability, accuracy_in: hits[1] / count[1], accuracy_out: hits[0] / count[0] }, correct))
}

/// Influence from the members' correctness (K, n + t) at query 0: one product
/// A·C of the weights a_ik = keep_ki/m_i − (1 − keep_ki)/(K − m_i) (n × K) with the test
/// correctness (K × t), dense when it takes at most `dense_bytes`, else the top `top_k`
/// per test example, computed a block of training examples at a time.
pub fn influence(pool: &Pool, correct: &[f64], dense_bytes: u64, top_k: usize) -> Result<Influence> {
    let (k, n, t, total) = (pool.models(), pool.info.examples, pool.info.test_examples, pool.info.total_examples());
    if t == 0 {
        bail!("{}: the data has no test split, so there is no influence on test examples", pool.dir.display());
    }
    let weights = |rows: std::ops::Range<usize>| -> Vec<f32> {
        let mut a = vec![0f32; rows.len() * k];
        for (r, i) in rows.enumerate() {
            let m = (0..k).filter(|&j| pool.keep[j * n + i] == 1).count() as f32;
            for j in 0..k {
                a[r * k + j] = if pool.keep[j * n + i] == 1 { 1.0 / m } else { -1.0 / (k as f32 - m) };
            }
        }
        a
    };
    let c: Vec<f32> = (0..k).flat_map(|j| correct[j * total + n..(j + 1) * total].iter().map(|&v| v as f32)).collect();
    if (n as u64) * (t as u64) * 4 <= dense_bytes {
        let mut out = vec![0f32; n * t];
        crate::nn::linalg::gemm(&weights(0..n), n, k, &c, t, false, false, &mut out);
        return Ok(Influence::Dense(out));
    }
    let top_k = top_k.clamp(1, n);
    let block = crate::sched::chunk_rows(t * 4, 64 << 20).min(n);
    // Per test example, the running top-k as (value, index), merged block by block:
    // largest value first, ties to the lower index.
    let by_value = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(2 * top_k); t];
    let mut out = vec![0f32; block * t];
    for rows in crate::sched::chunks(0..n, block) {
        let len = rows.len();
        crate::nn::linalg::gemm(&weights(rows.clone()), len, k, &c, t, false, false, &mut out[..len * t]);
        best.par_iter_mut().enumerate().for_each(|(j, list)| {
            list.extend((0..len).map(|r| (out[r * t + j], (rows.start + r) as u32)));
            if list.len() > top_k {
                list.select_nth_unstable_by(top_k - 1, by_value);
                list.truncate(top_k);
            }
        });
    }
    best.par_iter_mut().for_each(|list| list.sort_unstable_by(by_value));
    let index = best.iter().flat_map(|l| l.iter().map(|p| p.1)).collect();
    let value = best.iter().flat_map(|l| l.iter().map(|p| p.0)).collect();
    Ok(Influence::Top { k: top_k, index, value })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// LiRA with Gaussians fitted to the IN and the OUT shadows.
    LiraOnline,
    /// LiRA against the OUT shadows only, one-sided.
    LiraOffline,
    /// RMIA's pairwise likelihood ratio against population samples (the test split).
    Rmia,
    /// The target's log-probability of the label (Yeom et al.'s loss threshold).
    Loss,
    /// The target's φ with one threshold for all examples.
    Global,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AttackSpec {
    pub kind: AttackKind,
    pub centre: Centre,
    pub fixed_variance: bool,
    /// RMIA's γ.
    pub gamma: f64,
    /// RMIA offline with this a (None: online).
    pub offline_a: Option<f64>,
    /// RMIA population: the first this many test examples (0: all).
    pub population: usize,
}

/// What the attacks read from the pool, loaded once: φ (K, Q, n) of the training
/// examples for the LiRA family, and the label probabilities (K, n + t) averaged over
/// queries, with their logarithms, for RMIA and the loss attack — each only when the
/// attack needs it (a pass over every logit is most of an attack's time).
pub struct Evidence {
    pub phi: Confidences,
    pub log_probability: Vec<f64>,
    pub probability: Vec<f64>,
    total: usize,
}

impl Evidence {
    pub fn load(pool: &Pool, kind: AttackKind) -> Result<Self> {
        pool.require_complete()?;
        let models: Vec<usize> = (0..pool.models()).collect();
        let (q, n, total) = (pool.queries(), pool.info.examples, pool.info.total_examples());
        let lira = matches!(kind, AttackKind::LiraOnline | AttackKind::LiraOffline | AttackKind::Global);
        let phi_train = if lira { pool.values(&models, 0..q, 0..n, &|l, y| phi(l, y))? } else { vec![] };
        let (probability, log_probability) = if lira {
            (vec![], vec![])
        } else {
            let p = pool.values(&models, 0..q, 0..total, &|l, y| label_probability(l, y))?;
            let mean_over_queries = |f: &dyn Fn(f64) -> f64| -> Vec<f64> {
                p.chunks(q * total).flat_map(|m| (0..total).map(move |i| (0..q).map(|j| f(m[j * total + i])).sum::<f64>() / q as f64)).collect()
            };
            (mean_over_queries(&|v| v), mean_over_queries(&|v| (v + 1e-45).ln()))
        };
        Ok(Self { phi: Confidences::model_major(pool.models(), q, n, phi_train), log_probability, probability, total })
    }
}

/// The scores (n) of member `target`'s membership for every training example, against
/// `shadows`; NaN for examples too few shadows cover when `skip_short`.
pub fn target_scores(pool: &Pool, ev: &Evidence, spec: &AttackSpec, target: usize, shadows: &[usize], skip_short: bool) -> Result<Vec<f64>> {
    let (k, n, total) = (pool.models(), pool.info.examples, ev.total);
    let lira = |attack| lira_scores(&ev.phi, &pool.keep, target, shadows, LiraSettings { attack, centre: spec.centre, fixed_variance: spec.fixed_variance, skip_short });
    match spec.kind {
        AttackKind::LiraOnline => lira(Attack::LiraOnline),
        AttackKind::LiraOffline => lira(Attack::LiraOffline),
        AttackKind::Global => lira(Attack::Global),
        AttackKind::Loss => Ok(ev.log_probability[target * total..target * total + n].to_vec()),
        AttackKind::Rmia => {
            let t = total - n;
            if t == 0 {
                bail!("RMIA compares against population samples, the test split, and {} has none", pool.info.config.recipe.data);
            }
            let m = if spec.population == 0 { t } else { spec.population.min(t) };
            let p_x = training_part(&ev.probability, total, n);
            let p_z: Vec<f64> = (0..k).flat_map(|j| ev.probability[j * total + n..j * total + n + m].iter().copied()).collect();
            rmia_scores(&p_x, &pool.keep, &p_z, k, target, shadows, spec.gamma, spec.offline_a)
        }
    }
}

/// Which members are attacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    First(usize),
    LeaveOneOut,
}

impl std::str::FromStr for Targets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "leave-one-out" || s == "all" {
            return Ok(Self::LeaveOneOut);
        }
        match s.parse::<usize>() {
            Ok(k) if k >= 1 => Ok(Self::First(k)),
            _ => Err(format!("'{s}': give a number of target models ≥ 1 or leave-one-out")),
        }
    }
}

impl Targets {
    pub fn models(&self, k: usize) -> Vec<usize> {
        match *self {
            Self::First(t) => (0..t.min(k)).collect(),
            Self::LeaveOneOut => (0..k).collect(),
        }
    }
}

/// An attack over every (target, training example) pair.
pub struct AttackResult {
    pub targets: Vec<usize>,
    /// (|targets|, n)
    pub scores: Vec<f64>,
    pub members: Vec<bool>,
}

impl AttackResult {
    pub fn roc(&self, selected: Option<&[bool]>) -> Result<Roc> {
        let n = self.scores.len() / self.targets.len().max(1);
        let keep = |p: usize| !self.scores[p].is_nan() && selected.is_none_or(|s| s[p % n]);
        let (scores, members): (Vec<f64>, Vec<bool>) = (0..self.scores.len()).filter(|&p| keep(p)).map(|p| (self.scores[p], self.members[p])).unzip();
        Roc::new(&scores, &members)
    }
}

/// Each target against the `shadows_of(target)` members (by default all others).
pub fn attack(pool: &Pool, ev: &Evidence, spec: &AttackSpec, targets: &[usize], shadows_of: &(dyn Fn(usize) -> Vec<usize> + Sync), skip_short: bool) -> Result<AttackResult> {
    let n = pool.info.examples;
    let rows: Vec<Vec<f64>> = targets.par_iter().map(|&t| target_scores(pool, ev, spec, t, &shadows_of(t), skip_short)).collect::<Result<_>>()?;
    let members = targets.iter().flat_map(|&t| pool.keep[t * n..(t + 1) * n].iter().map(|&v| v == 1)).collect();
    Ok(AttackResult { targets: targets.to_vec(), scores: rows.concat(), members })
}

/// `rote mia`'s attack: every model of `targets` against the first `shadows` of the
/// others (default all of them). Examples no shadow set covers IN and OUT are left out
/// (NaN) when fewer shadows than the pool has are used. Returns the result, the shadows
/// per target and the fraction of (target, example) pairs scored.
pub fn attack_pool(pool: &Pool, spec: &AttackSpec, targets: Targets, shadows: Option<usize>) -> Result<(AttackResult, usize, f64)> {
    let ev = Evidence::load(pool, spec.kind)?;
    let k = pool.models();
    let shadows = shadows.unwrap_or(k.saturating_sub(1));
    if shadows == 0 || shadows >= k {
        bail!("--shadows {shadows}: each target of a pool of {k} models has 1 to {} shadow models", k.saturating_sub(1));
    }
    let result = attack(pool, &ev, spec, &targets.models(k), &first_others(k, shadows), shadows < k - 1)?;
    let scored = result.scores.iter().filter(|v| !v.is_nan()).count() as f64 / result.scores.len() as f64;
    Ok((result, shadows, scored))
}

/// The first `count` members other than the target, as its shadows.
pub fn first_others(k: usize, count: usize) -> impl Fn(usize) -> Vec<usize> + Sync {
    move |t| (0..k).filter(|&j| j != t).take(count).collect()
}

/// Which training examples Choi et al.'s experiment targets: `top:Q%` (the Q% most
/// memorized) or `mem>T`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Selection {
    TopPercent(f64),
    Above(f64),
}

impl std::str::FromStr for Selection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(q) = s.strip_prefix("top:").map(|q| q.trim_end_matches('%')) {
            return match q.parse::<f64>() {
                Ok(q) if q > 0.0 && q <= 100.0 => Ok(Self::TopPercent(q)),
                _ => Err(format!("'{s}': top:Q% needs 0 < Q ≤ 100")),
            };
        }
        if let Some(t) = s.strip_prefix("mem>") {
            return t.parse::<f64>().map(Self::Above).map_err(|_| format!("'{s}': mem>T needs a number T"));
        }
        Err(format!("'{s}': give top:Q% (e.g. top:10%) or mem>T (e.g. mem>0.8)"))
    }
}

impl Selection {
    pub fn select(&self, mem: &[f64]) -> Vec<bool> {
        match *self {
            Self::Above(t) => mem.iter().map(|&m| m > t).collect(),
            Self::TopPercent(q) => {
                let count = ((q / 100.0 * mem.len() as f64).round() as usize).clamp(1, mem.len());
                let mut order: Vec<usize> = (0..mem.len()).collect();
                order.sort_by(|&a, &b| mem[b].total_cmp(&mem[a]).then(a.cmp(&b)));
                let mut out = vec![false; mem.len()];
                order[..count].iter().for_each(|&i| out[i] = true);
                out
            }
        }
    }
}

/// One point of Choi et al.'s curve: the attack with `shadows` shadow models per target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChoiPoint {
    pub shadows: usize,
    /// None when `shadows` cover no (target, example) pair well enough to score it.
    pub all: Option<Metrics>,
    pub selected: Option<Metrics>,
    /// Fraction of (target, example) pairs the shadows cover well enough to score.
    pub scored: f64,
}

/// The shadow counts of the curve: 2, 4, 8, … and the most a target can have, K − 1.
pub fn shadow_counts(k: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = std::iter::successors(Some(2usize), |c| Some(c * 2)).take_while(|&c| c < k - 1).collect();
    counts.push(k - 1);
    counts
}

/// Choi et al.'s experiment: for each count s, every target is attacked with the first s
/// other members as shadows; metrics over all examples and over the `selected` ones.
/// Examples that s shadows do not cover (no IN or no OUT model) are left out of that
/// point, as `scored` says.
pub fn choi_curve(pool: &Pool, ev: &Evidence, spec: &AttackSpec, targets: &[usize], selected: &[bool], counts: &[usize], progress: &dyn Fn(usize)) -> Result<Vec<ChoiPoint>> {
    let k = pool.models();
    if !selected.iter().any(|&s| s) {
        bail!("the selection picks no example; lower the memorization threshold or raise the top fraction");
    }
    counts
        .iter()
        .enumerate()
        .map(|(step, &s)| {
            let result = attack(pool, ev, spec, targets, &first_others(k, s), true)?;
            let scored = result.scores.iter().filter(|v| !v.is_nan()).count() as f64 / result.scores.len() as f64;
            // A point without scored members or non-members has no ROC.
            let metrics = |sel: Option<&[bool]>| result.roc(sel).and_then(|r| r.metrics(None)).ok();
            let point = ChoiPoint { shadows: s, all: metrics(None), selected: metrics(Some(selected)), scored };
            progress(step + 1);
            Ok(point)
        })
        .collect()
}

/// Choi et al.'s targeting of memorized samples on a pool (`rote choi`): the examples
/// `select` picks by their Feldman–Zhang memorization, then the attack `spec` against
/// `targets` with each of `shadows` shadow-model counts (default `shadow_counts`).
/// Returns the curve and how many examples were selected.
pub fn choi(pool: &Pool, spec: &AttackSpec, select: &Selection, shadows: Option<&[usize]>, targets: Targets, progress: &dyn Fn(usize)) -> Result<(Vec<ChoiPoint>, usize)> {
    let (m, _) = memorization(pool)?;
    let selected = select.select(&m.mem);
    let ev = Evidence::load(pool, spec.kind)?;
    let k = pool.models();
    let counts = shadows.map_or_else(|| shadow_counts(k), |c| c.to_vec());
    if let Some(&c) = counts.iter().find(|&&c| c == 0 || c >= k) {
        bail!("--shadows: {c} shadow models is not possible in a pool of {k} (each target has at most {})", k - 1);
    }
    let points = choi_curve(pool, &ev, spec, &targets.models(k), &selected, &counts, progress)?;
    Ok((points, selected.iter().filter(|&&s| s).count()))
}

/// choi.csv and choi.png (TPR at 0.1% FPR of the selected and of all examples against
/// the shadow count) in `out`.
pub fn write_choi(out: &std::path::Path, points: &[ChoiPoint], label: &str) -> Result<()> {
    let mut csv = String::from("shadows,tpr_at_0.1%_all,tpr_at_0.1%_selected,tpr_at_1%_all,tpr_at_1%_selected,auc_all,auc_selected,scored\n");
    let at = |m: &Option<Metrics>, f: &dyn Fn(&Metrics) -> f64| m.as_ref().map(|m| f(m).to_string()).unwrap_or_default();
    for q in points {
        let (a, s) = (&q.all, &q.selected);
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            q.shadows,
            at(a, &|m| m.tpr_at_fpr[0]),
            at(s, &|m| m.tpr_at_fpr[0]),
            at(a, &|m| m.tpr_at_fpr[2]),
            at(s, &|m| m.tpr_at_fpr[2]),
            at(a, &|m| m.auc),
            at(s, &|m| m.auc),
            q.scored
        ));
    }
    crate::report::write_atomic(&out.join("choi.csv"), |w| Ok(w.write_all(csv.as_bytes())?))?;
    let series = |name: &str, f: &dyn Fn(&ChoiPoint) -> Option<f64>| crate::report::plot::Series { name: name.to_string(), points: points.iter().filter_map(|q| Some((q.shadows as f64, f(q)?))).collect() };
    crate::report::plot::lines(
        &out.join("choi.png"),
        &format!("{label}: TPR at 0.1% FPR against shadow models"),
        "shadow models",
        "TPR at 0.1% FPR",
        &[series("selected (most memorized)", &|q| Some(q.selected.as_ref()?.tpr_at_fpr[0])), series("all examples", &|q| Some(q.all.as_ref()?.tpr_at_fpr[0]))],
        crate::report::plot::Axes::LogX,
        None,
        None,
    )
}

/// cos(a, b) in float64.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Ranks from 1, ties given their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0f64; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        let mean = (start + end + 1) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| out[i] = mean);
        start = end;
    }
    out
}

/// Spearman's rank correlation (Pearson's of the tie-averaged ranks).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let centred = |r: &[f64]| r.iter().map(|x| x - mean).collect::<Vec<f64>>();
    let (ca, cb) = (centred(&ra), centred(&rb));
    cosine(&ca, &cb)
}

/// The curvature paper's validation: curvature scores against memorization.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CurvatureComparison {
    pub examples: usize,
    pub cosine: f64,
    pub spearman: f64,
}

/// Compares the curvature scores `scores` (one per training sample of `run`, as `rote
/// curvature` writes score.npy) with `mem`, after checking that the run trained the
/// pool's model on the pool's training examples.
pub fn compare_with_curvature(pool: &Pool, mem: &[f64], run: &std::path::Path, scores: &std::path::Path) -> Result<CurvatureComparison> {
    let cfg = crate::nn::train::open_run(run)?;
    let recipe = &pool.info.config.recipe;
    if cfg.data != recipe.data || cfg.model != recipe.model {
        bail!(
            "{} trained '{}' on '{}' but the pool {} holds '{}' on '{}'; compare a curvature run of the same data and model",
            run.display(),
            cfg.model,
            cfg.data,
            pool.dir.display(),
            recipe.model,
            recipe.data
        );
    }
    let sources = crate::data::Array::open_npy(&run.join("sources.npy"))?;
    let labels = crate::data::Array::open_npy(&run.join("labels.npy"))?.to_i64()?;
    if bytemuck::cast_slice::<u8, u32>(sources.bytes()) != &pool.sources[..] || labels[..] != pool.labels[..pool.info.examples] {
        bail!("{} trained on other examples or labels than the pool {} (its corruption settings or seed differ)", run.display(), pool.dir.display());
    }
    let s = crate::data::Array::open_npy(scores)?;
    if s.shape != [mem.len()] {
        bail!("{} holds {:?} scores; the pool has {} training examples (score a whole run, or merge its shards)", scores.display(), s.shape, mem.len());
    }
    let s: Vec<f64> = s.to_f32().iter().map(|&v| v as f64).collect();
    if let Some(i) = s.iter().position(|v| !v.is_finite()) {
        bail!("{}: score {i} is {}", scores.display(), s[i]);
    }
    Ok(CurvatureComparison { examples: mem.len(), cosine: cosine(&s, mem), spearman: spearman(&s, mem) })
}
