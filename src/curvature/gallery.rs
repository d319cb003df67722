//! A picture of the highest-scoring training images (and, for contrast, the lowest),
//! each with its label and score: curvature scores, or memorization from a pool.

use crate::construct::plot::{draw_png, err};
use crate::data::Array;
use crate::report::image::{draw_image, image_dims, min_max, scale_for};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// `what` names the score in the title ("curvature", "memorization").
pub fn draw(x: &Array, rows: &[u32], labels: &[i64], score: &[f32], shape: &[usize], what: &str, path: &Path) -> Result<()> {
    let dims = image_dims(shape)?;
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].partial_cmp(&score[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let top = order.iter().take(16).copied();
    let bottom = order.iter().rev().take(8).copied();
    let cells: Vec<usize> = top.chain(bottom).collect();
    let cols = 8;
    let cell = 110i32;
    draw_png(path, (cols as u32 * cell as u32, 3 * (cell as u32 + 20) + 30), |root| {
        root.draw(&Text::new(format!("highest {what} (rows 1–2) · lowest (row 3)"), (8, 6), ("sans-serif", 16))).map_err(err)?;
        let s = scale_for(dims.0, dims.1, (cell - 20) as usize);
        for (k, &i) in cells.iter().enumerate() {
            let (r, col) = ((k / cols) as i32, (k % cols) as i32);
            let (x0, y0) = (col * cell + 10, r * (cell + 20) + 30);
            let px = x.rows_f32(rows[i] as usize, rows[i] as usize + 1);
            draw_image(&root, &px, dims, min_max(&px), (x0, y0), s)?;
            let caption = format!("y={} s={:.2e}", labels[i], score[i]);
            root.draw(&Text::new(caption, (x0, y0 + dims.0 as i32 * s + 2), ("sans-serif", 12))).map_err(err)?;
        }
        Ok(())
    })
}
