//! MLP checkpoints as safetensors with the tensor names a PyTorch nn.Sequential of
//! Linear layers and activations produces: `0.weight`, `0.bias`, `2.weight`, … (Linear
//! modules at even indices, activations between them). Metadata (optional, written by
//! rote): `sizes` (JSON list) and `activation`.

use super::mlp::{Activation, Mlp};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub fn save(m: &Mlp, path: &Path) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for l in 0..m.layers() {
        owned.push((format!("{}.weight", 2 * l), vec![m.sizes[l + 1], m.sizes[l]], bytemuck::cast_slice(&m.weights[l]).to_vec()));
        owned.push((format!("{}.bias", 2 * l), vec![m.sizes[l + 1]], bytemuck::cast_slice(&m.biases[l]).to_vec()));
    }
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, s, d)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d)?))).collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [
        ("sizes".to_string(), serde_json::to_string(&m.sizes)?),
        ("activation".to_string(), serde_json::to_value(m.activation)?.as_str().unwrap().to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, &Some(meta))?;
    crate::report::write_atomic(path, |w| Ok(w.write_all(&bytes)?))
}

/// Loads a checkpoint for a model of the given spec; every tensor must be present with
/// the spec's shape (float32, or float16/bfloat16, converted).
pub fn load(path: &Path, sizes: &[usize], activation: Activation) -> Result<Mlp> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    let mut weights = vec![];
    let mut biases = vec![];
    for l in 0..sizes.len() - 1 {
        for (kind, shape) in [("weight", vec![sizes[l + 1], sizes[l]]), ("bias", vec![sizes[l + 1]])] {
            let name = format!("{}.{kind}", 2 * l);
            let t = st.tensor(&name).map_err(|_| {
                let have: Vec<String> = st.names().into_iter().cloned().collect();
                anyhow!("{}: tensor '{name}' is missing (the file has {have:?}); rote expects nn.Sequential(Linear, act, Linear, …) names", path.display())
            })?;
            if t.shape() != shape.as_slice() {
                bail!("{}: tensor '{name}' has shape {:?} but the model spec needs {:?}", path.display(), t.shape(), shape);
            }
            let data: Vec<f32> = match t.dtype() {
                Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                Dtype::F16 => t.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => t.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                other => bail!("{}: tensor '{name}' has dtype {other:?}; rote reads F32, F16 and BF16", path.display()),
            };
            if kind == "weight" { weights.push(data) } else { biases.push(data) }
        }
    }
    Ok(Mlp { sizes: sizes.to_vec(), activation, weights, biases })
}
