//! Effective model memorization (ALGORITHMS.md §3): train one denoiser per training-set
//! size (class-balanced subsets), sample, measure the memorization ratio; EMM is the
//! largest size whose ratio is still ≥ the threshold (0.9), optionally refined by
//! bisection between the bracketing sizes. Each size lives in OUT/size-N/ (the run, the
//! samples, result.json), so an interrupted sweep resumes from the finished sizes.

use super::train::{self, DenoiserConfig, Labels, Recipe};
use super::{knn::Metric, PixelRange, TrainingSet};
use crate::data::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EmmSettings {
    pub data: String,
    pub labels: Labels,
    #[serde(flatten)]
    pub recipe: Recipe,
    pub samples: usize,
    pub ratio_threshold: f64,
}

impl EmmSettings {
    /// Rejects settings a sweep at `threshold` cannot use, before any data is read.
    pub fn validate(&self, threshold: f64) -> Result<()> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            bail!("--threshold must be in (0, 1] (got {threshold})");
        }
        if self.samples < 1 {
            bail!("--samples must be at least 1");
        }
        if super::unet::is_unet(&self.recipe.model) {
            super::unet::UNetSpec::parse(&self.recipe.model)?;
        } else {
            super::net::NetSpec::parse(&self.recipe.model)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SizeResult {
    pub size: usize,
    pub memorization_ratio: f64,
    pub memorized: usize,
    pub samples: usize,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub settings: EmmSettings,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EmmResult {
    /// Largest size with ratio ≥ threshold (None when even the smallest falls short).
    pub emm: Option<usize>,
    pub threshold: f64,
    /// Whether every measured size reached the threshold (EMM is then at least the largest).
    pub all_above: bool,
    pub sizes: Vec<SizeResult>,
}

pub fn check_sizes(sizes: &[usize], available: usize) -> Result<()> {
    if sizes.is_empty() {
        bail!("--sizes needs at least one size");
    }
    if let Some(w) = sizes.windows(2).find(|w| w[1] <= w[0]) {
        bail!("--sizes must increase (… {}, {} …)", w[0], w[1]);
    }
    if sizes[0] == 0 {
        bail!("--sizes must be at least 1");
    }
    if let Some(&s) = sizes.iter().find(|&&s| s > available) {
        bail!("--sizes: {s} is larger than the {available} training samples of the data");
    }
    Ok(())
}

fn size_dir(out: &Path, size: usize) -> PathBuf {
    out.join(format!("size-{size}"))
}

/// Trains, samples and measures one size (or reads its finished result).
pub fn measure(ds: &Dataset, settings: &EmmSettings, size: usize, out: &Path, backend: &crate::device::Backend, log: &dyn Fn(&str)) -> Result<SizeResult> {
    let dir = size_dir(out, size);
    let result_path = dir.join("result.json");
    if result_path.exists() {
        let text = std::fs::read_to_string(&result_path)?;
        let r: SizeResult = serde_json::from_str(&text).with_context(|| format!("{} is not an EMM result", result_path.display()))?;
        if serde_json::to_value(&r.settings)? != serde_json::to_value(settings)? {
            bail!("{} was made with other settings ({}); use another --out or the same settings", result_path.display(), serde_json::to_string(&r.settings)?);
        }
        log(&format!("size {size}: memorization ratio {:.3} (finished earlier)", r.memorization_ratio));
        return Ok(r);
    }
    let subset = crate::data::transform::balanced_subset(&ds.train, size)?;
    let range = PixelRange::resolve(&ds.train.x, super::RangeRule::Auto)?;
    let cfg = DenoiserConfig::new(&settings.data, Some(size), settings.labels, settings.recipe.clone(), &subset, ds.sample_shape(), range, 0)?;
    let run = dir.join("run");
    // A size without a result was interrupted (this command's own partial output): its
    // training goes on from the last saved state when the settings are the same, and
    // starts over otherwise.
    let resume = train::resumable(&run, &cfg);
    if resume {
        log(&format!("size {size}: resuming the interrupted training at step {}", train::saved_steps(&run)));
    } else if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear the unfinished {}", dir.display()))?;
    }
    let t0 = Instant::now();
    let weights = train::train(backend, &subset, &cfg, &run, resume, &|_| {})?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let final_loss = train::final_loss(&run)?;
    let schedule = super::sampler::Schedule::default();
    let x = train::sample_trained(&cfg, cfg.layout()?, weights, settings.samples, &schedule, settings.recipe.seed, backend)?;
    // Memorization in the data's units against the training subset.
    let generated: Vec<f32> = x.iter().map(|&v| range.pixel_to_data(super::quantize(v))).collect();
    let set = TrainingSet::new(&subset.x, PixelRange::MODEL)?;
    let nn = super::knn_on(backend, &set, &generated, 2, Metric::L2)?;
    let m = super::knn::memorization_ratio(nn, settings.ratio_threshold)?;
    super::write_samples(&dir, &x, ds.sample_shape(), None)?;
    let r = SizeResult {
        size,
        memorization_ratio: m.memorization_ratio,
        memorized: m.memorized,
        samples: m.samples,
        final_loss,
        train_seconds,
        settings: settings.clone(),
    };
    crate::report::write_json(&result_path, &r)?;
    log(&format!("size {size}: memorization ratio {:.3} (trained in {train_seconds:.1} s, loss {final_loss:.4})", r.memorization_ratio));
    Ok(r)
}

pub fn summarize(mut sizes: Vec<SizeResult>, threshold: f64) -> EmmResult {
    sizes.sort_by_key(|r| r.size);
    let emm = sizes.iter().filter(|r| r.memorization_ratio >= threshold).map(|r| r.size).max();
    let all_above = sizes.iter().all(|r| r.memorization_ratio >= threshold);
    EmmResult { emm, threshold, all_above, sizes }
}

/// The sweep, then `refine` bisection steps (geometric midpoints) between the largest
/// size at or above the threshold and the next size below it.
pub fn sweep(ds: &Dataset, settings: &EmmSettings, sizes: &[usize], threshold: f64, refine: usize, out: &Path, backend: &crate::device::Backend, log: &dyn Fn(&str)) -> Result<EmmResult> {
    check_sizes(sizes, ds.train.len())?;
    crate::report::create_out_dir(out)?;
    let mut results = Vec::new();
    for &s in sizes {
        results.push(measure(ds, settings, s, out, backend, log)?);
    }
    for _ in 0..refine {
        let summary = summarize(results.clone(), threshold);
        let Some(lo) = summary.emm else { break };
        let Some(hi) = summary.sizes.iter().find(|r| r.size > lo && r.memorization_ratio < threshold).map(|r| r.size) else { break };
        let mid = ((lo as f64) * (hi as f64)).sqrt().round() as usize;
        if mid <= lo || mid >= hi {
            break;
        }
        results.push(measure(ds, settings, mid, out, backend, log)?);
    }
    let summary = summarize(results, threshold);
    let mut csv = String::from("size,memorization_ratio,memorized,samples,final_loss,train_seconds\n");
    for r in &summary.sizes {
        csv.push_str(&format!("{},{},{},{},{},{:.2}\n", r.size, r.memorization_ratio, r.memorized, r.samples, r.final_loss, r.train_seconds));
    }
    crate::report::write_atomic(&out.join("emm.csv"), |w| Ok(w.write_all(csv.as_bytes())?))?;
    crate::report::write_json(&out.join("emm.json"), &summary)?;
    plot(&summary, &settings.data, &out.join("emm.png"))?;
    Ok(summary)
}

/// Memorization ratio against training-set size (log scale) with the threshold line.
pub fn plot(r: &EmmResult, data: &str, path: &Path) -> Result<()> {
    use crate::construct::plot::{draw_png, err};
    use plotters::prelude::*;
    let (lo, hi) = (r.sizes.first().map(|s| s.size).unwrap_or(1) as f64, r.sizes.last().map(|s| s.size).unwrap_or(2) as f64);
    let (x0, x1) = ((lo / 1.5).max(0.5), hi * 1.5);
    draw_png(path, (800, 500), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("memorization ratio of trained denoisers, {data}{}", r.emm.map(|e| format!(" — EMM {}{e}", if r.all_above { "≥ " } else { "" })).unwrap_or_default()),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((x0..x1).log_scale(), 0f64..1.05)
            .map_err(err)?;
        chart.configure_mesh().x_desc("training-set size |D|").y_desc("memorization ratio").x_label_formatter(&|v| format!("{v:.0}")).draw().map_err(err)?;
        let pts: Vec<(f64, f64)> = r.sizes.iter().map(|s| (s.size as f64, s.memorization_ratio)).collect();
        chart.draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2))).map_err(err)?.label("trained denoiser").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, BLUE.filled()))).map_err(err)?;
        let t = r.threshold;
        chart
            .draw_series(LineSeries::new(vec![(x0, t), (x1, t)], RED.stroke_width(1)))
            .map_err(err)?
            .label(format!("{:.0}% line", t * 100.0))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        if let Some(e) = r.emm {
            chart.draw_series(LineSeries::new(vec![(e as f64, 0.0), (e as f64, 1.05)], BLACK.mix(0.5))).map_err(err)?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        Ok(())
    })
}
