//! Neural networks: layers (CPU passes of conv, BN, pooling, linear, activations), graphs
//! of them, model specs (MLP, CNN, ResNet-18), checkpoints and the trainer.

pub mod checkpoint;
pub mod graph;
pub mod models;
pub mod network;
pub mod runs;
pub mod layers;
pub mod linalg;
pub mod mlp;
pub mod train;
