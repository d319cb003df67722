//! MLP checkpoints as safetensors with the tensor names a PyTorch nn.Sequential of
//! Linear layers and activations produces: `0.weight`, `0.bias`, `2.weight`, … (Linear
//! modules at even indices, activations between them). Metadata (optional, written by
//! rote): `sizes` (JSON list) and `activation`.

use super::mlp::{Activation, Mlp};
use crate::report::safetensors::{Loaded, Tensor};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

pub fn save(m: &Mlp, path: &Path) -> Result<()> {
    let mut tensors = vec![];
    for l in 0..m.layers() {
        tensors.push(Tensor::f32(format!("{}.weight", 2 * l), vec![m.sizes[l + 1], m.sizes[l]], &m.weights[l]));
        tensors.push(Tensor::f32(format!("{}.bias", 2 * l), vec![m.sizes[l + 1]], &m.biases[l]));
    }
    let meta = BTreeMap::from([
        ("sizes".to_string(), serde_json::to_string(&m.sizes)?),
        ("activation".to_string(), serde_json::to_value(m.activation)?.as_str().unwrap().to_string()),
    ]);
    crate::report::safetensors::save(path, &tensors, &meta)
}

/// Loads a checkpoint for a model of the given spec: every tensor must be present with
/// the spec's shape (float32, or float16/bfloat16, converted) and finite, and the file
/// must hold no other tensors.
pub fn load(path: &Path, sizes: &[usize], activation: Activation) -> Result<Mlp> {
    load_from(&Loaded::read(path)?, sizes, activation)
}

/// `load` from a file already read (or a state dict in memory).
pub fn load_from(file: &Loaded, sizes: &[usize], activation: Activation) -> Result<Mlp> {
    let st = file.view()?;
    let mut weights = vec![];
    let mut biases = vec![];
    let missing = || format!("the file has {:?}; rote expects nn.Sequential(Linear, act, Linear, …) names", st.names());
    for l in 0..sizes.len() - 1 {
        let (_, w) = st.floats(&format!("{}.weight", 2 * l), Some(&[sizes[l + 1], sizes[l]]), &missing)?;
        let (_, b) = st.floats(&format!("{}.bias", 2 * l), Some(&[sizes[l + 1]]), &missing)?;
        weights.push(w);
        biases.push(b);
    }
    st.reject_unread(&format!("the model {sizes:?}"))?;
    Ok(Mlp { sizes: sizes.to_vec(), activation, weights, biases })
}
