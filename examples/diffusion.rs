//! The diffusion study (ALGORITHMS.md §3): sample with EDM's Heun sampler from the
//! optimal denoiser of 50 digits, and measure how many samples copy a training image.
//!
//!     cargo run --release --example diffusion

use rote::device::Backend;
use rote::diffusion::knn::{memorization_ratio, Metric};
use rote::diffusion::sampler::Schedule;
use rote::diffusion::{knn_on, PixelRange, RangeRule, SampleSource, TrainingSet};

fn main() -> anyhow::Result<()> {
    let backend = Backend::Cpu;
    let source = SampleSource::Optimal { data: "digits", subset: Some(50), range: RangeRule::Auto };
    let samples = rote::diffusion::sample(&source, 32, Default::default(), &Schedule::default(), 0, std::slice::from_ref(&backend), &mut |_| {})?;
    let ds = rote::diffusion::training_data("digits", Some(50))?;
    let train = TrainingSet::new(&ds.train.x, PixelRange::resolve(&ds.train.x, RangeRule::Auto)?)?;
    let neighbours = knn_on(&backend, &train, &samples.x, 2, Metric::L2)?;
    let m = memorization_ratio(neighbours, 1.0 / 3.0)?;
    println!("{} of {} samples from the {} denoiser of {} images are copies (ratio {:.3})", m.memorized, m.samples, samples.denoiser, samples.training_samples, m.memorization_ratio);
    Ok(())
}
