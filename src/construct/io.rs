//! Saving and loading constructed networks as safetensors.
//!
//! Tensors: `layer1.weight` f32 (n, d), `layer1.bias` f32 (n); for each class label L
//! with a covering layer, `class.L.masks` u8 (k, n) of 0/1 (unit j is in neuron i's
//! mask: it was OFF at the neuron's candidate) and `class.L.thresholds` f32 (k).
//! Metadata (strings): format = "rote-construct/1", activation, max_bias, seed,
//! input_scale, sample_shape (JSON), classes (JSON list of labels, in order),
//! otherwise (label predicted when a single covering layer does not fire, or "none").

use super::{cover::Neuron, layer1::Layer1, Activation, ClassNet, Network};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT: &str = "rote-construct/1";

pub fn save(net: &Network, path: &Path) -> Result<()> {
    let n = net.layer1.units;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("layer1.weight".into(), Dtype::F32, vec![n, net.layer1.dim], bytemuck::cast_slice(&net.layer1.weight).to_vec()),
        ("layer1.bias".into(), Dtype::F32, vec![n], bytemuck::cast_slice(&net.layer1.bias).to_vec()),
    ];
    for c in &net.nets {
        let k = c.neurons.len();
        let mut masks = vec![0u8; k * n];
        for (i, ne) in c.neurons.iter().enumerate() {
            for j in 0..n {
                masks[i * n + j] = ((ne.mask[j / 64] >> (j % 64)) & 1) as u8;
            }
        }
        let th: Vec<f32> = c.neurons.iter().map(|ne| ne.threshold).collect();
        owned.push((format!("class.{}.masks", c.label), Dtype::U8, vec![k, n], masks));
        owned.push((format!("class.{}.thresholds", c.label), Dtype::F32, vec![k], bytemuck::cast_slice(&th).to_vec()));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(name, dt, shape, data)| Ok((name.clone(), TensorView::new(*dt, shape.clone(), data)?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("activation", serde_json::to_value(net.activation)?.as_str().unwrap().to_string()),
        ("max_bias", net.max_bias.to_string()),
        ("seed", net.seed.to_string()),
        ("input_scale", format!("{:e}", net.input_scale)),
        ("sample_shape", serde_json::to_string(&net.sample_shape)?),
        ("classes", serde_json::to_string(&net.nets.iter().map(|c| c.label).collect::<Vec<_>>())?),
        ("otherwise", net.otherwise.map(|o| o.to_string()).unwrap_or_else(|| "none".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors::serialize(views, &Some(meta))?;
    crate::report::write_atomic(path, |w| Ok(w.write_all(&bytes)?))
}

pub fn load(path: &Path) -> Result<Network> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ctx = |what: String| format!("{}: {what}", path.display());
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!(ctx(format!("not a safetensors file ({e})"))))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!(ctx(format!("not a safetensors file ({e})"))))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).cloned().ok_or_else(|| anyhow!(ctx(format!("metadata '{k}' is missing; was this written by `rote construct`?"))));
    if get("format")? != FORMAT {
        bail!(ctx(format!("format {} is not {FORMAT}", get("format")?)));
    }
    let f32s = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let t = st.tensor(name).map_err(|_| anyhow!(ctx(format!("tensor '{name}' is missing"))))?;
        if t.dtype() != Dtype::F32 {
            bail!(ctx(format!("tensor '{name}' should be F32")));
        }
        Ok((t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
    };
    let (wshape, weight) = f32s("layer1.weight")?;
    let (_, bias) = f32s("layer1.bias")?;
    let (n, dim) = (wshape[0], wshape[1]);
    let activation: Activation = serde_json::from_value(serde_json::Value::String(get("activation")?))?;
    let labels: Vec<i64> = serde_json::from_str(&get("classes")?)?;
    let mut nets = Vec::new();
    for label in labels {
        let mt = st.tensor(&format!("class.{label}.masks")).map_err(|_| anyhow!(ctx(format!("masks of class {label} are missing"))))?;
        let (_, th) = f32s(&format!("class.{label}.thresholds"))?;
        let k = mt.shape()[0];
        let data = mt.data();
        let neurons = (0..k)
            .map(|i| {
                let mut mask = vec![0u64; n.div_ceil(64)];
                for j in 0..n {
                    if data[i * n + j] != 0 {
                        mask[j / 64] |= 1 << (j % 64);
                    }
                }
                Neuron { mask, threshold: th[i] }
            })
            .collect();
        nets.push(ClassNet { label, neurons });
    }
    let otherwise = match get("otherwise")?.as_str() {
        "none" => None,
        s => Some(s.parse().map_err(|_| anyhow!(ctx(format!("bad 'otherwise' label {s}"))))?),
    };
    Ok(Network {
        activation,
        max_bias: get("max_bias")?.parse()?,
        seed: get("seed")?.parse()?,
        input_scale: get("input_scale")?.parse()?,
        sample_shape: serde_json::from_str(&get("sample_shape")?)?,
        layer1: Layer1 { units: n, dim, weight, bias },
        nets,
        otherwise,
    })
}
