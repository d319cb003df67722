//! Neural networks for the curvature scores: MLPs, their checkpoints, the trainer.

pub mod checkpoint;
pub mod graph;
pub mod models;
pub mod layers;
pub mod linalg;
pub mod mlp;
pub mod train;
