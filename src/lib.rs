//! rote: measuring and constructing memorization in neural networks, on the CPU and on
//! NVIDIA GPUs. See README.md for the commands and ALGORITHMS.md for the math.

pub mod amx;
pub mod bench;
pub mod construct;
pub mod curvature;
pub mod data;
pub mod diffusion;
pub mod membership;
pub mod memory;
pub mod nn;
pub mod quick_pool;
pub mod device;
pub mod report;
pub mod resources;
pub mod rng;
pub mod sched;
pub mod text;
pub mod simd;
