//! The randomized construction of an interpolating three-layer threshold network
//! (ALGORITHMS.md §1): fit on two moons, save, load, predict.
//!
//!     cargo run --release --example construct

use rote::construct::{self, Activation, FitConfig, Target};
use rote::device::Backend;

fn main() -> anyhow::Result<()> {
    let ds = rote::data::open("moons:n=500,noise=0.1,seed=0")?;
    let cfg = FitConfig { width: 400, max_bias: 1.5, activation: Activation::Threshold, seed: 0, target: Target::Binary { positive: None }, scale_to_unit_norm: true };
    let backend = Backend::Cpu;
    let (net, report) = construct::fit(&ds, &cfg, &backend)?;
    println!("interpolated: {} (train accuracy {}), first width {}, second widths {:?}, {} parameters", report.interpolated, report.train_accuracy, report.first_width, report.second_widths, report.parameters);

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("moons.safetensors");
    construct::io::save(&net, &path)?;
    let loaded = construct::io::load(&path)?;
    let predicted = loaded.predict(&ds.train, &backend)?;
    println!("the loaded network predicts the training labels {} times of {}", predicted.iter().zip(&ds.train.y).filter(|(p, y)| p == y).count(), ds.train.len());
    Ok(())
}
