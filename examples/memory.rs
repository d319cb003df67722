//! A classifier with an explicit memory (ALGORITHMS.md §7): a least-squares SVM on
//! digits, its training and test accuracy.
//!
//!     cargo run --release --example memory

use rote::memory::lssvm::{self, Kernel, Lssvm};

fn main() -> anyhow::Result<()> {
    let ds = rote::data::open("digits")?;
    let dim = ds.train.features();
    let scale = ds.train.x.to_f32().iter().fold(0f32, |m, &v| m.max(v)) as f64;
    let rows = |x: &rote::data::Array| x.to_f32().iter().map(|&v| v as f64 / scale).collect::<Vec<f64>>();
    let (x, y) = (rows(&ds.train.x), &ds.train.y);
    let (fit, held) = (1200 * dim, 1200);
    let kernel: Kernel = "rbf:sigma=2".parse().map_err(anyhow::Error::msg)?;
    let model = Lssvm::fit(&x[..fit], dim, &y[..held], kernel, 10.0, None)?;
    println!(
        "LSSVM on {held} digits: train accuracy {:.4}, accuracy on the other {} {:.4}",
        lssvm::accuracy(&model.predict(&x[..fit]), &y[..held]),
        y.len() - held,
        lssvm::accuracy(&model.predict(&x[fit..]), &y[held..])
    );
    Ok(())
}
