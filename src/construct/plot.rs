//! Figures: decision regions of each layer-2 neuron on 2-D data, and the sweep's
//! heatmaps and slices (PNG, drawn with plotters and the bundled DejaVu Sans).

use super::sweep::Trial;
use super::Network;
use crate::data::Dataset;
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Writes a PNG atomically: plotters draws into a temporary file that is then renamed.
pub(crate) fn draw_png(path: &Path, size: (u32, u32), draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>) -> Result<()> {
    register_font();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::report::create_out_dir(dir)?;
    let tmp = tempfile::Builder::new().prefix(".rote-partial-").suffix(".png").tempfile_in(dir)?;
    {
        let root = BitMapBackend::new(tmp.path(), size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(root.clone())?;
        root.present().map_err(err)?;
    }
    tmp.persist(path)?;
    Ok(())
}

/// Colours for neuron or class index i.
fn palette(i: usize) -> RGBColor {
    const P: [(u8, u8, u8); 10] = [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// For 2-D data: the plane coloured by the first layer-2 neuron that fires (pale), and
/// the training points coloured by class.
pub fn decision_regions(net: &Network, ds: &Dataset, path: &Path) -> Result<()> {
    if ds.train.features() != 2 {
        bail!("--plot draws 2-D data only; '{}' has {} features", ds.meta.name, ds.train.features());
    }
    let x = ds.train.x.to_f32();
    let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for p in x.chunks(2) {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let pad = 0.1 * (x1 - x0).max(y1 - y0);
    let (x0, x1, y0, y1) = (x0 - pad, x1 + pad, y0 - pad, y1 + pad);
    const GRID: usize = 300;
    let mut grid = Vec::with_capacity(GRID * GRID * 2);
    for i in 0..GRID {
        for j in 0..GRID {
            grid.push(x0 + (x1 - x0) * (j as f32 + 0.5) / GRID as f32);
            grid.push(y0 + (y1 - y0) * (i as f32 + 0.5) / GRID as f32);
        }
    }
    super::scale_inputs(&mut grid, net.input_scale);
    let (bits, relu) = net.features(&grid, &crate::device::Backend::Cpu)?;
    let n = net.layer1.units;
    // Which neuron (counted across classes) fires first at each grid point.
    let firing: Vec<Option<usize>> = (0..GRID * GRID)
        .map(|r| {
            let mut idx = 0;
            for c in &net.nets {
                for ne in &c.neurons {
                    let s = match &relu {
                        Some(f) => super::cover::relu_score(&ne.mask, &f[r * n..(r + 1) * n]),
                        None => super::cover::masked_popcount(&ne.mask, bits.row(r)) as f32,
                    };
                    if s < ne.threshold {
                        return Some(idx);
                    }
                    idx += 1;
                }
            }
            None
        })
        .collect();
    let k: usize = net.nets.iter().map(|c| c.neurons.len()).sum();
    let labels: Vec<i64> = ds.train.class_counts().keys().copied().collect();
    draw_png(path, (800, 800), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{}: n = {}, k = {k}, λ = {}", ds.meta.name, n, net.max_bias), ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart.configure_mesh().disable_mesh().draw().map_err(err)?;
        let (dx, dy) = ((x1 - x0) / GRID as f32, (y1 - y0) / GRID as f32);
        chart
            .draw_series(firing.iter().enumerate().filter_map(|(r, f)| {
                f.map(|idx| {
                    let (i, j) = (r / GRID, r % GRID);
                    let (cx, cy) = (x0 + dx * j as f32, y0 + dy * i as f32);
                    Rectangle::new([(cx, cy), (cx + dx, cy + dy)], palette(idx).mix(0.25).filled())
                })
            }))
            .map_err(err)?;
        chart
            .draw_series(x.chunks(2).zip(&ds.train.y).map(|(p, &l)| {
                let c = labels.iter().position(|&v| v == l).unwrap_or(0);
                Circle::new((p[0], p[1]), 2, if c == 0 { BLACK.filled() } else { RED.filled() })
            }))
            .map_err(err)?;
        Ok(())
    })
}

/// Per (λ, n): (probability of interpolation, mean k) over the restarts.
pub fn grid_stats(trials: &[Trial]) -> BTreeMap<(String, usize), (f64, f64, usize)> {
    let mut acc: BTreeMap<(String, usize), (usize, usize, usize)> = BTreeMap::new();
    for t in trials {
        let e = acc.entry((t.max_bias.to_string(), t.width)).or_insert((0, 0, 0));
        e.0 += t.interpolated as usize;
        e.1 += t.second_width;
        e.2 += 1;
    }
    acc.into_iter().map(|(k, (hit, ks, n))| (k, (hit as f64 / n as f64, ks as f64 / n as f64, n))).collect()
}

/// Heatmaps of P(interpolation) and mean k over (λ, n), and slices against n for a few
/// λ with a marker where P ≥ 0.99. One set per dataset size.
pub fn sweep_figures(trials: &[Trial], dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut written = vec![];
    let sizes: std::collections::BTreeSet<usize> = trials.iter().map(|t| t.size).collect();
    for size in sizes {
        let ts: Vec<Trial> = trials.iter().filter(|t| t.size == size).cloned().collect();
        let stats = grid_stats(&ts);
        let mut lambdas: Vec<f32> = ts.iter().map(|t| t.max_bias).collect();
        lambdas.sort_by(|a, b| a.partial_cmp(b).unwrap());
        lambdas.dedup();
        let mut widths: Vec<usize> = ts.iter().map(|t| t.width).collect();
        widths.sort_unstable();
        widths.dedup();
        let max_k = stats.values().map(|v| v.1).fold(1.0, f64::max);
        for (name, pick, vmax) in [("interpolation", 0usize, 1.0), ("second-width", 1, max_k)] {
            let path = dir.join(format!("heatmap-{name}-N{size}.png"));
            draw_png(&path, (900, 700), |root| {
                let (l0, l1) = (0usize, lambdas.len());
                let (w0, w1) = (0usize, widths.len());
                let mut chart = ChartBuilder::on(&root)
                    .caption(
                        if pick == 0 {
                            format!("P(interpolation), N = {size} (dark 0 → yellow 1)")
                        } else {
                            format!("mean k (second-layer width), N = {size} (dark 0 → yellow {vmax:.1})")
                        },
                        ("sans-serif", 22),
                    )
                    .margin(10)
                    .x_label_area_size(40)
                    .y_label_area_size(55)
                    .build_cartesian_2d(l0..l1, w0..w1)
                    .map_err(err)?;
                let lam = lambdas.clone();
                let wid = widths.clone();
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_desc("max bias λ")
                    .y_desc("first-layer width n")
                    .x_label_formatter(&move |i| lam.get(*i).map(|v| format!("{v}")).unwrap_or_default())
                    .y_label_formatter(&move |i| wid.get(*i).map(|v| v.to_string()).unwrap_or_default())
                    .draw()
                    .map_err(err)?;
                chart
                    .draw_series(lambdas.iter().enumerate().flat_map(|(i, l)| {
                        let stats = &stats;
                        widths.iter().enumerate().filter_map(move |(j, w)| {
                            stats.get(&(l.to_string(), *w)).map(|v| {
                                let t = if pick == 0 { v.0 } else { v.1 / vmax };
                                let c = ViridisRGB::get_color(t.clamp(0.0, 1.0));
                                Rectangle::new([(i, j), (i + 1, j + 1)], c.filled())
                            })
                        })
                    }))
                    .map_err(err)?;
                Ok(())
            })?;
            written.push(path);
        }
        // Slices: P and k against n for up to four λ spread over the grid.
        let chosen: Vec<f32> = if lambdas.len() <= 4 {
            lambdas.clone()
        } else {
            (0..4).map(|i| lambdas[(i * (lambdas.len() - 1)) / 3]).collect()
        };
        let path = dir.join(format!("slices-N{size}.png"));
        let wmax = *widths.last().unwrap() as f64;
        draw_png(&path, (1000, 450), |root| {
            let halves = root.split_evenly((1, 2));
            for (h, area) in halves.iter().enumerate() {
                let ymax = if h == 0 { 1.05 } else { max_k * 1.1 };
                let mut chart = ChartBuilder::on(area)
                    .caption(if h == 0 { "P(interpolation) against n" } else { "mean k against n" }, ("sans-serif", 18))
                    .margin(8)
                    .x_label_area_size(35)
                    .y_label_area_size(45)
                    .build_cartesian_2d(0f64..wmax * 1.02, 0f64..ymax)
                    .map_err(err)?;
                chart.configure_mesh().x_desc("n").x_label_formatter(&|v| format!("{v:.0}")).draw().map_err(err)?;
                for (ci, l) in chosen.iter().enumerate() {
                    let pts: Vec<(f64, f64, f64)> = widths
                        .iter()
                        .filter_map(|w| stats.get(&(l.to_string(), *w)).map(|v| (*w as f64, v.0, v.1)))
                        .collect();
                    let color = palette(ci);
                    chart
                        .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, if h == 0 { p.1 } else { p.2 })), color.stroke_width(2)))
                        .map_err(err)?
                        .label(format!("λ = {l}"))
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2)));
                    // Marker where P ≥ 0.99.
                    chart
                        .draw_series(pts.iter().filter(|p| p.1 >= 0.99).map(|p| Circle::new((p.0, if h == 0 { p.1 } else { p.2 }), 3, color.filled())))
                        .map_err(err)?;
                }
                chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
            }
            Ok(())
        })?;
        written.push(path);
    }
    Ok(written)
}
