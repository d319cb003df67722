//! A classifier rote trains, evaluates and scores: an MLP (nn/mlp.rs, with its fast
//! paths) or a graph of layers (nn/graph.rs: CNNs, ResNets). This is what `rote train`
//! and `rote eval` hold; both kinds save PyTorch state dicts as safetensors.

use super::graph::{Graph, Mode};
use super::layers::dense::{argmax, cross_entropy_grad, softmax_cross_entropy};
use super::layers::Tensor;
use super::mlp::Mlp;
use crate::report::safetensors::{Loaded, Tensor as Saved};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug)]
pub enum Network {
    Mlp(Mlp),
    Graph(Graph),
}

/// (C, H, W) of samples of `sample_shape`: (H, W) images have one channel.
pub fn image_shape(sample_shape: &[usize]) -> Result<[usize; 3]> {
    match sample_shape {
        [h, w] => Ok([1, *h, *w]),
        [c, h, w] => Ok([*c, *h, *w]),
        other => bail!("a convolutional network needs image samples (H, W) or (C, H, W), but the data's samples have shape {other:?}"),
    }
}

impl Network {
    /// A freshly initialized network of `spec` for samples of `sample_shape`.
    pub fn build(spec: &str, sample_shape: &[usize], seed: u64) -> Result<Self> {
        if super::models::is_graph_spec(spec) {
            return Ok(Self::Graph(super::models::build(spec, image_shape(sample_shape)?, seed)?));
        }
        let (sizes, activation) = super::mlp::parse_spec(spec)?;
        let features: usize = sample_shape.iter().product();
        if sizes[0] != features {
            bail!("model '{spec}' takes {} inputs but the data has {features} features per sample", sizes[0]);
        }
        let parameters = sizes.windows(2).map(|w| crate::resources::product(&[w[0] + 1, w[1]])).fold(0u64, u64::saturating_add);
        crate::resources::check_memory(&[("the network's parameters", parameters.saturating_mul(4))], &format!("the layer sizes of --model {spec}"))?;
        Ok(Self::Mlp(Mlp::init(&sizes, activation, seed)))
    }

    pub fn classes(&self) -> usize {
        match self {
            Self::Mlp(m) => m.classes(),
            Self::Graph(g) => g.classes,
        }
    }

    /// Every label must be one of the network's outputs (`spec` names it in the error).
    pub fn check_labels<'a>(&self, spec: &str, mut labels: impl Iterator<Item = &'a i64>) -> Result<()> {
        let classes = self.classes();
        if let Some(&bad) = labels.find(|&&y| y < 0 || y as usize >= classes) {
            bail!("model '{spec}' has {classes} outputs but the data has label {bad}");
        }
        Ok(())
    }

    /// Names of the trainable parameters, in the order `train_step` updates them.
    pub fn parameter_names(&self) -> Vec<String> {
        match self {
            Self::Mlp(m) => (0..m.layers()).flat_map(|l| [format!("{}.weight", 2 * l), format!("{}.bias", 2 * l)]).collect(),
            Self::Graph(g) => g.parameters().into_iter().map(|(_, e)| e.name).collect(),
        }
    }

    pub fn parameters_mut(&mut self) -> Vec<&mut Vec<f32>> {
        match self {
            Self::Mlp(m) => m.weights.iter_mut().zip(m.biases.iter_mut()).flat_map(|(w, b)| [w, b]).collect(),
            Self::Graph(g) => g.parameters_mut(),
        }
    }

    /// Zero momentum buffers, one per parameter.
    pub fn zero_momentum(&mut self) -> Vec<Vec<f32>> {
        self.parameters_mut().into_iter().map(|p| vec![0.0; p.len()]).collect()
    }

    /// Logits (rows, C) in evaluation mode.
    pub fn logits(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        match self {
            Self::Mlp(m) => Ok(m.forward(x, rows).z.pop().unwrap()),
            Self::Graph(g) => {
                let [c, h, w] = g.input;
                Ok(g.infer(Tensor::new(vec![rows, c, h, w], x.to_vec()))?.data)
            }
        }
    }

    /// One SGD step (PyTorch's: v ← μv + (g + λw), w ← w − ηv) on the mean
    /// cross-entropy of a batch; BatchNorm layers use and update batch statistics.
    pub fn train_step(&mut self, x: &[f32], y: &[i64], lr: f32, momentum: f32, wd: f32, velocity: &mut [Vec<f32>]) -> Result<()> {
        let rows = y.len();
        let grads: Vec<Vec<f32>> = match self {
            Self::Mlp(m) => {
                let f = m.forward(x, rows);
                let (gz, _) = m.backward(&f, y, 1.0 / rows as f32);
                let (dw, db) = m.param_grads(&f, x, &gz);
                dw.into_iter().zip(db).flat_map(|(w, b)| [w, b]).collect()
            }
            Self::Graph(g) => {
                let [c, h, w] = g.input;
                let f = g.forward(Tensor::new(vec![rows, c, h, w], x.to_vec()), Mode::Train)?;
                let (probs, _) = softmax_cross_entropy(f.logits(), y);
                let grad = Tensor::new(f.logits().shape.clone(), cross_entropy_grad(&probs, y, g.classes, 1.0 / rows as f32));
                let (_, per_node) = g.backward(&f, grad, false)?;
                g.update_running_stats(&f);
                per_node.into_iter().flatten().collect()
            }
        };
        let params = self.parameters_mut();
        if grads.len() != params.len() || velocity.len() != params.len() {
            bail!("internal error: {} gradients and {} momentum buffers for {} parameters", grads.len(), velocity.len(), params.len());
        }
        for ((p, g), v) in params.into_iter().zip(&grads).zip(velocity.iter_mut()) {
            sgd_step(p, g, v, lr, momentum, wd);
        }
        Ok(())
    }

    /// Mean cross-entropy and accuracy over `rows` samples given by `fill(range, out)`.
    pub fn evaluate(&self, rows: usize, features: usize, labels: &[i64], fill: &dyn Fn(std::ops::Range<usize>, &mut Vec<f32>)) -> Result<(f64, f64)> {
        let c = self.classes();
        let (mut loss, mut correct) = (0f64, 0usize);
        let mut x = Vec::new();
        let chunk = match self {
            Self::Mlp(_) => 2048,
            Self::Graph(_) => 256,
        };
        for r in crate::sched::chunks(0..rows, chunk) {
            x.resize(r.len() * features, 0.0);
            fill(r.clone(), &mut x);
            let logits = self.logits(&x, r.len())?;
            let ys = &labels[r.clone()];
            let (probs, losses) = softmax_cross_entropy(&Tensor::new(vec![r.len(), c], logits), ys);
            loss += losses.iter().map(|&v| v as f64).sum::<f64>();
            for (k, &y) in ys.iter().enumerate() {
                correct += (argmax(&probs[k * c..(k + 1) * c]) as i64 == y) as usize;
            }
        }
        Ok((loss / rows.max(1) as f64, correct as f64 / rows.max(1) as f64))
    }

    /// Saves the state dict (PyTorch names; BatchNorm's `num_batches_tracked` is
    /// `batches`, the training steps so far).
    pub fn save(&self, path: &Path, batches: u64) -> Result<()> {
        match self {
            Self::Mlp(m) => super::checkpoint::save(m, path),
            Self::Graph(g) => {
                let state = g.state();
                let counts: Vec<(String, [u8; 8])> = g
                    .nodes
                    .iter()
                    .filter(|n| matches!(n.op, super::graph::Op::BatchNorm(_)))
                    .map(|n| (format!("{}.num_batches_tracked", n.name), (batches as i64).to_le_bytes()))
                    .collect();
                let mut tensors: Vec<Saved> = state.iter().map(|(_, e)| Saved::f32(e.name.clone(), e.shape.clone(), e.values)).collect();
                for (name, bytes) in &counts {
                    tensors.push(Saved { name: name.clone(), dtype: safetensors::Dtype::I64, shape: vec![], data: bytes });
                }
                crate::report::safetensors::save(path, &tensors, &BTreeMap::from([("format".to_string(), "pt".to_string())]))
            }
        }
    }

    /// Loads a checkpoint into this network's architecture: every parameter and buffer
    /// must be present with its shape (F32, F16 or BF16; finite). A `module.` prefix
    /// (DataParallel) is stripped and `num_batches_tracked` ignored; any other tensor
    /// is an error naming it.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        self.load_state(&Loaded::read(path)?)
    }

    /// `load_weights` from a state dict already in memory (safetensors bytes).
    pub fn load_state(&mut self, file: &Loaded) -> Result<()> {
        match self {
            Self::Mlp(m) => {
                *m = super::checkpoint::load_from(file, &m.sizes.clone(), m.activation)?;
                Ok(())
            }
            Self::Graph(g) => {
                let view = file.view()?;
                let names = view.names();
                let prefixed = !names.is_empty() && names.iter().all(|n| n.starts_with("module."));
                let stored = |name: &str| if prefixed { format!("module.{name}") } else { name.to_string() };
                let entries: Vec<(String, Vec<usize>)> = g.state().into_iter().map(|(_, e)| (e.name, e.shape)).collect();
                let missing = || "the model's state dict has it; was the checkpoint saved from another architecture or --model?".to_string();
                let mut loaded = Vec::with_capacity(entries.len());
                for (name, shape) in &entries {
                    let (_, values) = view.floats(&stored(name), Some(shape), &missing)?;
                    loaded.push(values);
                }
                for n in &names {
                    if n.ends_with(".num_batches_tracked") {
                        view.tensor(n, &|| String::new())?;
                    }
                }
                view.reject_unread("the model")?;
                for (slot, values) in g.state_mut().into_iter().zip(loaded) {
                    *slot = values;
                }
                Ok(())
            }
        }
    }
}

/// PyTorch's SGD: v ← μv + (g + λw); w ← w − ηv.
pub fn sgd_step(w: &mut [f32], g: &[f32], v: &mut [f32], lr: f32, momentum: f32, wd: f32) {
    for ((wi, gi), vi) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *vi = momentum * *vi + gi + wd * *wi;
        *wi -= lr * *vi;
    }
}

/// Per-channel input normalization (x − mean)/std, as torchvision's Normalize.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn is_identity(&self) -> bool {
        self.mean.is_empty()
    }

    /// Named presets, `data` (from the training split), `none`, or `M,M,M/S,S,S`.
    pub fn parse(text: &str) -> Result<Option<Self>> {
        let preset = |mean: [f32; 3], std: [f32; 3]| Ok(Some(Self { mean: mean.to_vec(), std: std.to_vec() }));
        match text {
            "data" => Ok(None),
            "none" => Ok(Some(Self::default())),
            "cifar10" => preset([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            "cifar100" => preset([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]),
            "imagenet" => preset([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            _ => {
                let (m, s) = text.split_once('/').with_context(|| format!("--normalize {text}: use data, none, cifar10, cifar100, imagenet or MEAN,…/STD,…"))?;
                let nums = |t: &str| -> Result<Vec<f32>> { t.split(',').map(|v| v.trim().parse::<f32>().ok().filter(|x| x.is_finite()).with_context(|| format!("--normalize {text}: '{v}' is not a number"))).collect() };
                let (mean, std) = (nums(m)?, nums(s)?);
                if mean.len() != std.len() || std.iter().any(|&v| v <= 0.0) {
                    bail!("--normalize {text}: as many means as standard deviations, every deviation positive");
                }
                Ok(Some(Self { mean, std }))
            }
        }
    }

    /// Per-channel mean and (population) standard deviation of samples (N, C, plane).
    pub fn of_samples(x: &[f32], channels: usize, plane: usize) -> Self {
        let mut sum = vec![0f64; channels];
        let mut sq = vec![0f64; channels];
        for (i, &v) in x.iter().enumerate() {
            let c = (i / plane) % channels;
            sum[c] += v as f64;
            sq[c] += v as f64 * v as f64;
        }
        let count = (x.len() / channels.max(1)) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count.max(1.0)).collect();
        let std = sq.iter().zip(&mean).map(|(s, m)| ((s / count.max(1.0) - m * m).max(0.0).sqrt().max(1e-6)) as f32).collect();
        Self { mean: mean.iter().map(|&m| m as f32).collect(), std }
    }

    /// Applies it in place to samples (N, C, plane).
    pub fn apply(&self, x: &mut [f32], plane: usize) {
        if self.is_identity() {
            return;
        }
        let c = self.mean.len();
        for (p, chunk) in x.chunks_mut(plane).enumerate() {
            let ch = p % c;
            let (m, inv) = (self.mean[ch], 1.0 / self.std[ch]);
            chunk.iter_mut().for_each(|v| *v = (*v - m) * inv);
        }
    }
}
