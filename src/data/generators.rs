//! Synthetic two-dimensional (or d-dimensional) datasets, deterministic from their seed.
//! Every random number comes from Philox streams keyed by (seed, purpose), so a
//! generator gives the same points on any machine. `test=M` adds a test split drawn
//! from independent streams.

use super::{spec::Options, Array, Dataset, Meta, Split};
use crate::rng::Philox;
use anyhow::{bail, Result};

pub const NAMES: [&str; 3] = ["moons", "lines", "blobs"];

pub fn options_of(name: &str) -> &'static str {
    match name {
        "moons" => "n, noise, seed, test",
        "lines" => "n, gap, length, noise, seed, test",
        "blobs" => "n, centers, dim, std, box, seed, test",
        _ => "",
    }
}

// Philox stream numbers by purpose; the test split uses the same purposes + TEST_OFFSET.
const STREAM_SHUFFLE: u64 = 1;
const STREAM_NOISE: u64 = 2;
const STREAM_POSITION: u64 = 3;
const STREAM_CENTERS: u64 = 4;
const TEST_OFFSET: u64 = 100;

/// Builds the generator named `name` from `opts`, or None when `name` is no generator.
pub fn generate(name: &str, opts: &mut Options) -> Result<Option<Dataset>> {
    if !NAMES.contains(&name) {
        return Ok(None);
    }
    let n: usize = opts.take("n", 1000)?;
    let test: usize = opts.take("test", 0)?;
    let seed: u64 = opts.take("seed", 0)?;
    if n == 0 {
        bail!("{name}: n must be at least 1");
    }
    let mut features = 2;
    let make: Box<dyn Fn(usize, u64) -> (Vec<f32>, Vec<i64>, usize)> = match name {
        "moons" => {
            let noise: f32 = opts.take("noise", 0.05)?;
            Box::new(move |n, offset| {
                let (x, y) = moons(n, noise, seed, offset);
                (x, y, 2)
            })
        }
        "lines" => {
            let gap: f32 = opts.take("gap", 0.1)?;
            let length: f32 = opts.take("length", 2.0)?;
            let noise: f32 = opts.take("noise", 0.0)?;
            Box::new(move |n, offset| {
                let (x, y) = lines(n, gap, length, noise, seed, offset);
                (x, y, 2)
            })
        }
        "blobs" => {
            let centers: usize = opts.take("centers", 3)?;
            let dim: usize = opts.take("dim", 2)?;
            let std: f32 = opts.take("std", 1.0)?;
            let bound: f32 = opts.take("box", 10.0)?;
            if centers == 0 || dim == 0 {
                bail!("blobs: centers and dim must be at least 1");
            }
            features = dim;
            Box::new(move |n, offset| {
                let (x, y) = blobs(n, centers, dim, std, bound, seed, offset);
                (x, y, dim)
            })
        }
        _ => unreachable!(),
    };
    // The samples are generated, then copied into the dataset's array.
    let rows = n.saturating_add(test);
    let bytes = crate::resources::product(&[rows, features, 8]).saturating_add(crate::resources::product(&[rows, 16]));
    crate::resources::check_memory(&[("the generated samples", bytes)], &format!("n= (or test=) of '{name}'"))?;
    let split = |count: usize, offset: u64| -> Result<Split> {
        let (x, y, d) = make(count, offset);
        Split::new(Array::from_f32(vec![count, d], &x, format!("{name} generator")), y)
    };
    let train = split(n, 0)?;
    let test = if test > 0 { Some(split(test, TEST_OFFSET)?) } else { None };
    let meta = Meta {
        name: name.to_string(),
        source: format!("rote generator '{name}' (seed {seed})"),
        license: "generated".into(),
        sample_shape: vec![train.features()],
        class_names: vec![],
    };
    Ok(Some(Dataset { meta, train, test }))
}

/// Two interleaving half circles, as scikit-learn's make_moons: the outer moon
/// (label 0) is (cos t, sin t), the inner (label 1) is (1 − cos t, 0.5 − sin t), t
/// evenly spaced on [0, π]; points shuffled, then Gaussian noise of std `noise`.
pub fn moons(n: usize, noise: f32, seed: u64, offset: u64) -> (Vec<f32>, Vec<i64>) {
    let n_out = n / 2;
    let n_in = n - n_out;
    let spaced = |i: usize, count: usize| {
        if count <= 1 { 0.0 } else { std::f64::consts::PI * i as f64 / (count - 1) as f64 }
    };
    let mut points: Vec<([f64; 2], i64)> = Vec::with_capacity(n);
    for i in 0..n_out {
        let t = spaced(i, n_out);
        points.push(([t.cos(), t.sin()], 0));
    }
    for i in 0..n_in {
        let t = spaced(i, n_in);
        points.push(([1.0 - t.cos(), 1.0 - t.sin() - 0.5], 1));
    }
    shuffled_with_noise(points, noise, seed, offset)
}

/// Two parallel segments of `length` along the first axis at heights ±gap/2
/// (label 0 below, 1 above), positions uniform along the segment.
pub fn lines(n: usize, gap: f32, length: f32, noise: f32, seed: u64, offset: u64) -> (Vec<f32>, Vec<i64>) {
    let pos = Philox::new(seed, STREAM_POSITION + offset);
    let points = (0..n)
        .map(|i| {
            let label = (i % 2) as i64;
            let along = (pos.uniform(i as u64) as f64 - 0.5) * length as f64;
            let height = if label == 0 { -(gap as f64) / 2.0 } else { gap as f64 / 2.0 };
            ([along, height], label)
        })
        .collect();
    shuffled_with_noise(points, noise, seed, offset)
}

/// Gaussian clusters of std `std` around `centers` centres drawn uniformly from
/// [−box, box]^dim; sample i belongs to cluster i mod centers before shuffling.
pub fn blobs(n: usize, centers: usize, dim: usize, std: f32, bound: f32, seed: u64, offset: u64) -> (Vec<f32>, Vec<i64>) {
    // Centres do not depend on the split: the test split shares them.
    let c_rng = Philox::new(seed, STREAM_CENTERS);
    let mids: Vec<f32> = (0..centers * dim).map(|i| (c_rng.uniform(i as u64) * 2.0 - 1.0) * bound).collect();
    let order = Philox::new(seed, STREAM_SHUFFLE + offset).permutation(n);
    let noise = Philox::new(seed, STREAM_NOISE + offset);
    let mut x = vec![0f32; n * dim];
    let mut y = vec![0i64; n];
    for (row, &src) in order.iter().enumerate() {
        let c = src as usize % centers;
        y[row] = c as i64;
        for j in 0..dim {
            x[row * dim + j] = mids[c * dim + j] + std * noise.normal((row * dim + j) as u64);
        }
    }
    (x, y)
}

fn shuffled_with_noise(points: Vec<([f64; 2], i64)>, noise: f32, seed: u64, offset: u64) -> (Vec<f32>, Vec<i64>) {
    let n = points.len();
    let order = Philox::new(seed, STREAM_SHUFFLE + offset).permutation(n);
    let rng = Philox::new(seed, STREAM_NOISE + offset);
    let mut x = vec![0f32; 2 * n];
    let mut y = vec![0i64; n];
    for (row, &src) in order.iter().enumerate() {
        let (p, label) = points[src as usize];
        y[row] = label;
        for j in 0..2 {
            x[2 * row + j] = (p[j] + noise as f64 * rng.normal((2 * row + j) as u64) as f64) as f32;
        }
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moons_without_noise_lie_on_their_circles() {
        let (x, y) = moons(101, 0.0, 3, 0);
        assert_eq!(y.iter().filter(|&&c| c == 0).count(), 50);
        for (p, &c) in x.chunks(2).zip(&y) {
            let (cx, cy) = if c == 0 { (0.0, 0.0) } else { (1.0, 0.5) };
            let r = ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt();
            assert!((r - 1.0).abs() < 1e-5, "radius {r}");
            if c == 0 { assert!(p[1] >= -1e-6) } else { assert!(p[1] <= 0.5 + 1e-6) }
        }
    }

    #[test]
    fn generators_are_deterministic_and_seeded() {
        assert_eq!(moons(500, 0.05, 7, 0), moons(500, 0.05, 7, 0));
        assert_ne!(moons(500, 0.05, 7, 0).0, moons(500, 0.05, 8, 0).0);
        assert_eq!(blobs(300, 4, 5, 1.0, 10.0, 1, 0), blobs(300, 4, 5, 1.0, 10.0, 1, 0));
    }

    #[test]
    fn lines_are_separated_by_the_gap() {
        let (x, y) = lines(400, 0.2, 2.0, 0.0, 0, 0);
        for (p, &c) in x.chunks(2).zip(&y) {
            assert!((p[1] - if c == 0 { -0.1 } else { 0.1 }).abs() < 1e-6);
            assert!(p[0].abs() <= 1.0);
        }
    }
}
