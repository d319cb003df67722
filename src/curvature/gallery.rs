//! A picture of the highest-scoring training images (and, for contrast, the lowest),
//! each with its label and score.

use crate::data::Array;
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use std::path::Path;

pub fn draw(x: &Array, rows: &[u32], labels: &[i64], score: &[f32], shape: &[usize], path: &Path) -> Result<()> {
    let (h, w, c) = match *shape {
        [h, w] => (h, w, 1),
        [h, w, c] if c == 3 => (h, w, 3),
        _ => bail!("--gallery draws images (shape H×W or H×W×3); samples here have shape {shape:?}"),
    };
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].partial_cmp(&score[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let top: Vec<usize> = order.iter().take(16).copied().collect();
    let bottom: Vec<usize> = order.iter().rev().take(8).copied().collect();
    let cells: Vec<(usize, bool)> = top.iter().map(|&i| (i, true)).chain(bottom.iter().map(|&i| (i, false))).collect();
    let cols = 8;
    let cell = 110u32;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new().prefix(".rote-partial-").suffix(".png").tempfile_in(dir)?;
    {
        crate::construct::plot::register_font();
        let root = BitMapBackend::new(tmp.path(), (cols as u32 * cell, 3 * (cell + 20) + 30)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing the gallery failed: {e:?}");
        root.fill(&WHITE).map_err(e)?;
        root.draw(&Text::new("highest curvature (rows 1–2) · lowest (row 3)", (8, 6), ("sans-serif", 16))).map_err(e)?;
        let mut px = vec![0f32; h * w * c];
        for (k, &(i, _)) in cells.iter().enumerate() {
            let (r, col) = (k / cols, k % cols);
            let (x0, y0) = (col as i32 * cell as i32 + 10, r as i32 * (cell as i32 + 20) + 30);
            x.rows_f32_into(rows[i] as usize, rows[i] as usize + 1, &mut px);
            let (lo, hi) = px.iter().fold((f32::MAX, f32::MIN), |(l, u), &v| (l.min(v), u.max(v)));
            let span = if hi > lo { hi - lo } else { 1.0 };
            let s = ((cell - 20) as usize / h.max(w)).max(1) as i32;
            for yy in 0..h {
                for xx in 0..w {
                    let at = (yy * w + xx) * c;
                    let v = |ch: usize| (255.0 * (px[at + ch] - lo) / span) as u8;
                    let color = if c == 3 { RGBColor(v(0), v(1), v(2)) } else { RGBColor(v(0), v(0), v(0)) };
                    let (px0, py0) = (x0 + xx as i32 * s, y0 + yy as i32 * s);
                    root.draw(&Rectangle::new([(px0, py0), (px0 + s, py0 + s)], color.filled())).map_err(e)?;
                }
            }
            let caption = format!("y={} s={:.2e}", labels[i], score[i]);
            root.draw(&Text::new(caption, (x0, y0 + (h as i32) * s + 2), ("sans-serif", 12))).map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    tmp.persist(path)?;
    Ok(())
}
