//! The memorization gallery: generated sample | nearest training image | second
//! nearest, for the most memorized samples (smallest ratio) and the least.

use crate::construct::plot::{draw_png, err};
use crate::report::image::{draw_image, image_dims, scale_for};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// `generated` and `training_row(i)` are in the same units, spanning `range`.
pub fn draw(
    generated: &[f32],
    shape: &[usize],
    ratios: &[f64],
    neighbours: &[u32],
    training_row: &dyn Fn(usize) -> Vec<f32>,
    range: (f32, f32),
    path: &Path,
) -> Result<()> {
    let dims = image_dims(shape)?;
    let per = dims.0 * dims.1 * dims.2;
    let mut order: Vec<usize> = (0..ratios.len()).collect();
    order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]).then(a.cmp(&b)));
    let shown = 6.min(order.len());
    let most: Vec<usize> = order[..shown].to_vec();
    let least: Vec<usize> = order.iter().rev().take(shown).copied().collect();
    let s = scale_for(dims.0, dims.1, 64);
    let (cw, ch) = (dims.1 as i32 * s + 6, dims.0 as i32 * s + 22);
    let group = 3 * cw + 24;
    let width = (2 * group + 20) as u32;
    let height = (40 + shown as i32 * ch) as u32;
    draw_png(path, (width, height.max(80)), |root| {
        root.draw(&Text::new("most memorized: sample | NN1 | NN2", (8, 6), ("sans-serif", 14))).map_err(err)?;
        root.draw(&Text::new("least memorized", (group + 18, 6), ("sans-serif", 14))).map_err(err)?;
        for (g, list) in [&most, &least].into_iter().enumerate() {
            for (r, &i) in list.iter().enumerate() {
                let y0 = 28 + r as i32 * ch;
                let x0 = 8 + g as i32 * (group + 10);
                let nn = &neighbours[i * 2..i * 2 + 2];
                let images = [generated[i * per..(i + 1) * per].to_vec(), training_row(nn[0] as usize), training_row(nn[1] as usize)];
                for (c, img) in images.iter().enumerate() {
                    draw_image(&root, img, dims, range, (x0 + c as i32 * cw, y0), s)?;
                }
                let caption = format!("#{i} ratio {:.3} · NN {} {}", ratios[i], nn[0], nn[1]);
                root.draw(&Text::new(caption, (x0, y0 + dims.0 as i32 * s + 2), ("sans-serif", 11))).map_err(err)?;
            }
        }
        Ok(())
    })
}
