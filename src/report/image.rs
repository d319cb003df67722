//! Images in figures: galleries of samples and neighbours, grids of generated samples.

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// (height, width, channels) of image samples of `shape` (H×W or H×W×3).
pub fn image_dims(shape: &[usize]) -> Result<(usize, usize, usize)> {
    match *shape {
        [h, w] => Ok((h, w, 1)),
        [h, w, 3] => Ok((h, w, 3)),
        _ => bail!("images need samples of shape H×W or H×W×3; these have shape {shape:?}"),
    }
}

/// Draws one image with its top-left corner at `at`, each pixel `scale`×`scale`,
/// mapping [lo, hi] to black…white (pass the image's own min and max to stretch it).
pub fn draw_image<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, px: &[f32], dims: (usize, usize, usize), range: (f32, f32), at: (i32, i32), scale: i32) -> Result<()> {
    let (h, w, c) = dims;
    let span = if range.1 > range.0 { range.1 - range.0 } else { 1.0 };
    for yy in 0..h {
        for xx in 0..w {
            let i = (yy * w + xx) * c;
            let v = |ch: usize| (255.0 * ((px[i + ch] - range.0) / span).clamp(0.0, 1.0)) as u8;
            let color = if c == 3 { RGBColor(v(0), v(1), v(2)) } else { RGBColor(v(0), v(0), v(0)) };
            for dy in 0..scale {
                for dx in 0..scale {
                    root.draw_pixel((at.0 + xx as i32 * scale + dx, at.1 + yy as i32 * scale + dy), &color)
                        .map_err(crate::construct::plot::err)?;
                }
            }
        }
    }
    Ok(())
}

/// The smallest and largest value of an image.
pub fn min_max(px: &[f32]) -> (f32, f32) {
    px.iter().fold((f32::MAX, f32::MIN), |(l, u), &v| (l.min(v), u.max(v)))
}

/// Pixel scale that makes an image of `h`×`w` about `target` pixels on its longer side.
pub fn scale_for(h: usize, w: usize, target: usize) -> i32 {
    (target / h.max(w)).max(1) as i32
}

/// A grid of images (rows of `images`, each h·w·c values in [lo, hi]) as a PNG.
pub fn grid_png(images: &[f32], dims: (usize, usize, usize), range: (f32, f32), cols: usize, path: &std::path::Path) -> Result<()> {
    let per = dims.0 * dims.1 * dims.2;
    let count = images.len() / per.max(1);
    let cols = cols.clamp(1, count.max(1));
    let rows = count.div_ceil(cols).max(1);
    let s = scale_for(dims.0, dims.1, 56);
    let (cw, ch) = (dims.1 as i32 * s + 2, dims.0 as i32 * s + 2);
    crate::construct::plot::draw_png(path, ((cols as i32 * cw) as u32, (rows as i32 * ch) as u32), |root| {
        for (k, img) in images.chunks_exact(per).enumerate() {
            let (r, c) = ((k / cols) as i32, (k % cols) as i32);
            draw_image(&root, img, dims, range, (c * cw + 1, r * ch + 1), s)?;
        }
        Ok(())
    })
}
