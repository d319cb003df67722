//! Small charts for reports: line charts of a few series and two-group histograms,
//! each written as a PNG with its data beside it as CSV.

use crate::construct::plot::{draw_png, err};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// How a chart's axes are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axes {
    Linear,
    /// Sizes spanning decades.
    LogX,
    /// Both axes logarithmic (ROC curves at low false-positive rates); values ≤ 0 are
    /// left out.
    LogLog,
}

/// Lines with markers; `hline` draws a reference level.
pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series], axes: Axes, y_range: Option<(f64, f64)>, hline: Option<f64>) -> Result<()> {
    let positive: Vec<Series>;
    let series = if axes == Axes::LogLog {
        positive = series.iter().map(|s| Series { name: s.name.clone(), points: s.points.iter().copied().filter(|p| p.0 > 0.0 && p.1 > 0.0).collect() }).collect();
        &positive[..]
    } else {
        series
    };
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let (a, b) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        (a.min(0.0), if b > 0.0 { b * 1.1 } else { 1.0 })
    });
    if !(x1 > x0) {
        x0 -= 1.0;
        x1 += 1.0;
    }
    draw_png(path, (800, 480), |root| {
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(60);
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                let tick = |v: &f64| if axes == Axes::LogLog { format!("{v:.0e}") } else { format!("{v:.0}") };
                chart.configure_mesh().x_desc(x_label).y_desc(y_label).x_label_formatter(&tick).draw().map_err(err)?;
                for (i, s) in series.iter().enumerate() {
                    let c = COLORS[i % COLORS.len()];
                    chart
                        .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
                        .map_err(err)?
                        .label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2)));
                    chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
                }
                if let Some(h) = hline {
                    chart.draw_series(LineSeries::new(vec![(x0, h), (x1, h)], BLACK.mix(0.4))).map_err(err)?;
                }
                chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
            }};
        }
        if axes == Axes::LogLog {
            body!(b.build_cartesian_2d((x0.max(1e-9)..x1.max(1e-8)).log_scale(), (y0.max(1e-9)..y1.max(1e-8)).log_scale()).map_err(err)?);
        } else if axes == Axes::LogX {
            body!(b.build_cartesian_2d(((x0 / 1.3).max(1e-9)..x1 * 1.3).log_scale(), y0..y1).map_err(err)?);
        } else {
            let pad = (x1 - x0) * 0.03;
            body!(b.build_cartesian_2d(x0 - pad..x1 + pad, y0..y1).map_err(err)?);
        }
        Ok(())
    })?;
    let mut csv = String::from("series,x,y\n");
    for s in series {
        for (x, y) in &s.points {
            csv.push_str(&format!("{},{x},{y}\n", s.name));
        }
    }
    crate::report::write_atomic(&path.with_extension("csv"), |w| Ok(w.write_all(csv.as_bytes())?))
}

/// Histograms of two groups of values (as fractions of each group) over shared bins of
/// log10(value); the CSV holds the bin edges and both fractions.
pub fn two_histograms(path: &Path, title: &str, x_label: &str, a: (&str, &[f64]), b: (&str, &[f64]), bins: usize) -> Result<()> {
    let logs = |v: &[f64]| -> Vec<f64> { v.iter().filter(|x| **x > 0.0).map(|x| x.log10()).collect() };
    let (la, lb) = (logs(a.1), logs(b.1));
    let (lo, hi) = la.iter().chain(&lb).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 1.0, lo + 1.0) };
    let width = (hi - lo) / bins as f64;
    let hist = |v: &[f64]| -> Vec<f64> {
        let mut h = vec![0f64; bins];
        for &x in v {
            h[(((x - lo) / width) as usize).min(bins - 1)] += 1.0;
        }
        let n = v.len().max(1) as f64;
        h.iter().map(|c| c / n).collect()
    };
    let (ha, hb) = (hist(&la), hist(&lb));
    let top = ha.iter().chain(&hb).cloned().fold(0.0, f64::max) * 1.15;
    draw_png(path, (800, 450), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0f64..top.max(1e-9))
            .map_err(err)?;
        chart.configure_mesh().x_desc(x_label).y_desc("fraction of the group").x_label_formatter(&|v| format!("1e{v:.1}")).draw().map_err(err)?;
        for (i, (name, h)) in [(a.0, &ha), (b.0, &hb)].into_iter().enumerate() {
            let c = COLORS[i];
            chart
                .draw_series(h.iter().enumerate().map(|(k, &f)| {
                    let x = lo + k as f64 * width;
                    Rectangle::new([(x, 0.0), (x + width, f)], c.mix(0.45).filled())
                }))
                .map_err(err)?
                .label(format!("{name} ({})", if i == 0 { la.len() } else { lb.len() }))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.mix(0.45).filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
        Ok(())
    })?;
    let mut csv = format!("bin_low_log10,bin_high_log10,{},{}\n", a.0, b.0);
    for k in 0..bins {
        csv.push_str(&format!("{},{},{},{}\n", lo + k as f64 * width, lo + (k + 1) as f64 * width, ha[k], hb[k]));
    }
    crate::report::write_atomic(&path.with_extension("csv"), |w| Ok(w.write_all(csv.as_bytes())?))
}
