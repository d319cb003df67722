//! Saving and loading constructed networks as safetensors.
//!
//! Tensors: `layer1.weight` f32 (n, d), `layer1.bias` f32 (n); for each class label L
//! with a covering layer, `class.L.masks` u8 (k, n) of 0/1 (unit j is in neuron i's
//! mask: it was OFF at the neuron's candidate) and `class.L.thresholds` f32 (k).
//! Metadata (strings): format = "rote-construct/1", activation, max_bias, seed,
//! input_scale, sample_shape (JSON), classes (JSON list of labels, in order),
//! otherwise (label predicted when a single covering layer does not fire, or "none").

use super::{cover::Neuron, layer1::Layer1, Activation, ClassNet, Network};
use crate::report::safetensors::{Loaded, Tensor};
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "rote-construct/1";

pub fn save(net: &Network, path: &Path) -> Result<()> {
    let n = net.layer1.units;
    let mut class_data: Vec<(i64, usize, Vec<u8>, Vec<f32>)> = vec![];
    for c in &net.nets {
        let k = c.neurons.len();
        let mut masks = vec![0u8; k * n];
        for (i, ne) in c.neurons.iter().enumerate() {
            for j in 0..n {
                masks[i * n + j] = ((ne.mask[j / 64] >> (j % 64)) & 1) as u8;
            }
        }
        let th: Vec<f32> = c.neurons.iter().map(|ne| ne.threshold).collect();
        class_data.push((c.label, k, masks, th));
    }
    let mut tensors = vec![
        Tensor::f32("layer1.weight", vec![n, net.layer1.dim], &net.layer1.weight),
        Tensor::f32("layer1.bias", vec![n], &net.layer1.bias),
    ];
    for (label, k, masks, th) in &class_data {
        tensors.push(Tensor::u8(format!("class.{label}.masks"), vec![*k, n], masks));
        tensors.push(Tensor::f32(format!("class.{label}.thresholds"), vec![*k], th));
    }
    let meta: BTreeMap<String, String> = [
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
    crate::report::safetensors::save(path, &tensors, &meta)
}

pub fn load(path: &Path) -> Result<Network> {
    let file = Loaded::read(path)?;
    let st = file.view()?;
    let ctx = |what: String| format!("{}: {what}", path.display());
    let meta = st.metadata.clone();
    let get = |k: &str| meta.get(k).cloned().ok_or_else(|| anyhow!(ctx(format!("metadata '{k}' is missing; was this written by `rote construct`?"))));
    if get("format")? != FORMAT {
        bail!(ctx(format!("format {} is not {FORMAT}", get("format")?)));
    }
    let written_by = || "was this written by `rote construct`?".to_string();
    let (wshape, weight) = st.floats("layer1.weight", None, &written_by)?;
    if wshape.len() != 2 {
        bail!(ctx(format!("tensor 'layer1.weight' has shape {wshape:?}; it should be (units, inputs)")));
    }
    let (n, dim) = (wshape[0], wshape[1]);
    let (_, bias) = st.floats("layer1.bias", Some(&[n]), &written_by)?;
    let activation: Activation = serde_json::from_value(serde_json::Value::String(get("activation")?))?;
    let labels: Vec<i64> = serde_json::from_str(&get("classes")?)?;
    let mut nets = Vec::new();
    for label in labels {
        let mt = st.tensor(&format!("class.{label}.masks"), &|| format!("the masks of class {label}"))?;
        if mt.shape().len() != 2 || mt.shape()[1] != n || mt.dtype() != safetensors::Dtype::U8 {
            bail!(ctx(format!("tensor 'class.{label}.masks' is {:?} {:?}; it should be U8 (neurons, {n})", mt.dtype(), mt.shape())));
        }
        let k = mt.shape()[0];
        let (_, th) = st.floats(&format!("class.{label}.thresholds"), Some(&[k]), &written_by)?;
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
    st.reject_unread("a rote-construct network of these classes")?;
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
