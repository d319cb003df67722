//! A network as a list of layer nodes in evaluation order, each reading earlier values
//! (value 0 is the input, value i + 1 the output of node i), so residual joins (and
//! later U-Net skips) are nodes with two inputs. The graph runs the three passes of its
//! layers (nn/layers): forward (training or evaluation mode), backward to the input and
//! the parameters, and the tangent (JVP) for Hessian-vector products.
//!
//! Besides the image, a network may read auxiliary per-sample inputs (`Op::Input`: a
//! U-Net's noise-level embedding and one-hot labels) that nothing differentiates
//! through, and it may end in an image of the input's shape instead of logits
//! (`classes` = 0: a denoiser).
//!
//! Parameters and buffers carry PyTorch's state-dict names (the node's module path:
//! `conv1.weight`, `layer2.0.shortcut.1.running_var`, `3.bias`, …), so checkpoints load
//! into the matching PyTorch module with `load_state_dict`.

use super::layers::attention::{Attention, AttentionWeights};
use super::layers::conv::Conv2d;
use super::layers::dense::{self, Linear};
use super::layers::norm::{BatchNorm2d, BatchStats, GroupNorm, GroupStats};
use super::layers::pool::{self, AvgPool2d, MaxPool2d, Upsample};
use super::layers::Tensor;
use super::mlp::Activation;
use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(Conv2d),
    BatchNorm(BatchNorm2d),
    Act(Activation),
    MaxPool(MaxPool2d),
    AvgPool(AvgPool2d),
    GlobalAvgPool,
    Flatten,
    Linear(Linear),
    /// The sum of its two inputs (a residual join); an (N, C) second input is added to
    /// every pixel of its channel.
    Add,
    GroupNorm(GroupNorm),
    /// Self-attention of a (N, 3C, H, W) qkv map (nn/layers/attention.rs).
    Attention(Attention),
    Upsample(Upsample),
    /// Its two inputs' channels, the first's first.
    Concat,
    Scale(f32),
    /// Dropout with this probability in training passes that are given a seed.
    Dropout(f32),
    /// The network's auxiliary input k (it reads no value; `inputs` is [0] by
    /// convention).
    Input(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    /// Values read: 0 the network's input, i + 1 node i's output.
    pub inputs: Vec<usize>,
    /// The module path in PyTorch's state dict ("" for modules without state).
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics in BatchNorm (and running averages to update).
    Train,
    /// Running statistics: samples are independent.
    Eval,
}

#[derive(Clone, Debug)]
enum Record {
    None,
    MaxArg(Vec<u32>),
    Stats(BatchStats),
    Group(GroupStats),
    Weights(AttentionWeights),
    Mask(Vec<f32>),
}

/// The auxiliary input k of a batch.
fn aux_input(aux: &[Tensor], k: usize) -> Result<Tensor> {
    aux.get(k).cloned().with_context(|| format!("the network reads auxiliary input {k} but was given {}", aux.len()))
}

/// One node's evaluation-mode output from its input `a` (and `b`, the second input of
/// an add or concat): the pass `forward` and `infer` share for every node that keeps no
/// record (max-pool's argmax, normalization statistics, attention weights and dropout
/// masks are `forward`'s).
fn eval_op(op: &Op, a: &Tensor, b: Option<&Tensor>, aux: &[Tensor]) -> Result<Tensor> {
    let second = || b.context("internal error: a two-input node without its second input");
    Ok(match op {
        Op::Conv(conv) => conv.forward(a)?,
        Op::BatchNorm(bn) => bn.forward_eval(a)?,
        Op::Act(act) => dense::activation_forward(*act, a),
        Op::MaxPool(p) => p.forward(a)?.0,
        Op::AvgPool(p) => p.forward(a)?,
        Op::GlobalAvgPool => pool::global_avg_forward(a)?,
        Op::Flatten => Tensor::new(vec![a.batch(), a.per_sample()], a.data.clone()),
        Op::Linear(l) => l.forward(a),
        Op::Add => add(a, second()?),
        Op::GroupNorm(gn) => gn.forward(a)?.0,
        Op::Attention(att) => att.forward(a)?.0,
        Op::Upsample(u) => u.forward(a)?,
        Op::Concat => dense::concat_channels(a, second()?),
        Op::Scale(s) => dense::scale(a, *s),
        Op::Dropout(_) => a.clone(),
        Op::Input(k) => aux_input(aux, *k)?,
    })
}

/// Whether an add of values shaped `a` and `b` broadcasts an (N, C) b over a's planes.
fn per_channel(a: &[usize], b: &[usize]) -> bool {
    b.len() == 2 && a.len() == 4
}

/// a + b, broadcasting an (N, C) b over a's planes.
fn add(a: &Tensor, b: &Tensor) -> Tensor {
    let mut y = a.clone();
    add_in_place(&mut y, b);
    y
}

fn add_in_place(a: &mut Tensor, b: &Tensor) {
    if per_channel(&a.shape, &b.shape) { dense::add_per_channel_in_place(a, b) } else { dense::add_in_place(a, b) }
}

/// Everything a forward pass leaves for backward and tangent.
pub struct Forward {
    pub mode: Mode,
    /// values\[0\] the input, values\[i + 1\] node i's output.
    pub values: Vec<Tensor>,
    records: Vec<Record>,
}

impl Forward {
    pub fn logits(&self) -> &Tensor {
        self.values.last().unwrap()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// (C, H, W) of one input sample.
    pub input: [usize; 3],
    /// Logits per sample; 0 when the output is an image of the input's shape.
    pub classes: usize,
    /// Features per sample of each auxiliary input (`Op::Input`).
    pub aux_inputs: Vec<usize>,
}

/// A named parameter or buffer of the state dict.
pub struct StateEntry<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: &'a [f32],
    /// A buffer (BatchNorm's running statistics): saved and loaded, not trained.
    pub buffer: bool,
}

fn join(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() { leaf.to_string() } else { format!("{prefix}.{leaf}") }
}

impl Graph {
    /// Shapes of every value for a batch of `n`, checking that each layer fits its input.
    pub fn shapes(&self, n: usize) -> Result<Vec<Vec<usize>>> {
        let [c, h, w] = self.input;
        let mut shapes = vec![vec![n, c, h, w]];
        for (i, node) in self.nodes.iter().enumerate() {
            let s = &shapes[node.inputs[0]];
            let at = || format!("layer {} ({})", i + 1, if node.name.is_empty() { format!("{:?}", std::mem::discriminant(&node.op)) } else { node.name.clone() });
            let four = |s: &Vec<usize>| -> Result<(usize, usize, usize)> {
                if s.len() != 4 {
                    bail!("{} needs an image (N, C, H, W) input but gets shape {:?}", at(), s);
                }
                Ok((s[1], s[2], s[3]))
            };
            let out = match &node.op {
                Op::Conv(conv) => {
                    let (ci, h, w) = four(s)?;
                    if ci != conv.c_in {
                        bail!("{} takes {} channels but gets {ci}", at(), conv.c_in);
                    }
                    let (ho, wo) = conv.out_size(h, w).map_err(|e| e.context(at()))?;
                    vec![n, conv.c_out, ho, wo]
                }
                Op::BatchNorm(bn) => {
                    let (ci, _, _) = four(s)?;
                    if ci != bn.channels {
                        bail!("{} normalizes {} channels but gets {ci}", at(), bn.channels);
                    }
                    s.clone()
                }
                Op::Act(_) => s.clone(),
                Op::MaxPool(p) => {
                    let (ci, h, w) = four(s)?;
                    let (ho, wo) = p.out_size(h, w).map_err(|e| e.context(at()))?;
                    vec![n, ci, ho, wo]
                }
                Op::AvgPool(p) => {
                    let (ci, h, w) = four(s)?;
                    let (ho, wo) = p.out_size(h, w).map_err(|e| e.context(at()))?;
                    vec![n, ci, ho, wo]
                }
                Op::GlobalAvgPool => {
                    let (ci, _, _) = four(s)?;
                    vec![n, ci]
                }
                Op::Flatten => vec![n, s[1..].iter().product()],
                Op::Linear(l) => {
                    if s.len() != 2 || s[1] != l.fan_in {
                        bail!("{} takes {} features but gets shape {:?}", at(), l.fan_in, &s[1..]);
                    }
                    vec![n, l.out]
                }
                Op::Add => {
                    let t = &shapes[node.inputs[1]];
                    if s != t && !(per_channel(s, t) && t[1] == s[1]) {
                        bail!("{}: a residual join of shapes {s:?} and {t:?}", at());
                    }
                    s.clone()
                }
                Op::GroupNorm(gn) => {
                    let (ci, _, _) = four(s)?;
                    if ci != gn.channels || gn.groups == 0 || ci % gn.groups != 0 {
                        bail!("{} normalizes {} channels in {} groups but gets {ci}", at(), gn.channels, gn.groups);
                    }
                    s.clone()
                }
                Op::Attention(att) => {
                    let (ci, _, _) = four(s)?;
                    if ci % 3 != 0 || att.heads == 0 || (ci / 3) % att.heads != 0 {
                        bail!("{}: attention with {} heads cannot read {ci} qkv channels", at(), att.heads);
                    }
                    att.out_shape(s)
                }
                Op::Upsample(u) => {
                    let (ci, h, w) = four(s)?;
                    vec![n, ci, h * u.factor, w * u.factor]
                }
                Op::Concat => {
                    let t = &shapes[node.inputs[1]];
                    let (c1, h, w) = four(s)?;
                    let (c2, h2, w2) = four(t)?;
                    if (h, w) != (h2, w2) {
                        bail!("{}: concatenating maps of {h}×{w} and {h2}×{w2}", at());
                    }
                    vec![n, c1 + c2, h, w]
                }
                Op::Scale(_) | Op::Dropout(_) => s.clone(),
                Op::Input(k) => vec![n, *self.aux_inputs.get(*k).with_context(|| format!("{} reads auxiliary input {k}, which the network does not have", at()))?],
            };
            shapes.push(out);
        }
        let last = shapes.last().unwrap();
        if self.classes == 0 {
            if last[1..] != self.input {
                bail!("the network ends in shape {:?}, not an image of its input's shape {:?}", &last[1..], self.input);
            }
        } else if last.len() != 2 || last[1] != self.classes {
            bail!("the network ends in shape {:?}, not (N, {}) logits", &last[1..], self.classes);
        }
        Ok(shapes)
    }

    fn check_inputs(&self, x: &Tensor, aux: &[Tensor]) -> Result<()> {
        let [c, h, w] = self.input;
        if x.shape[1..] != [c, h, w] {
            bail!("the network takes samples of shape {:?}, got {:?}", [c, h, w], &x.shape[1..]);
        }
        for (k, (a, &f)) in aux.iter().zip(&self.aux_inputs).enumerate() {
            if a.shape != [x.batch(), f] {
                bail!("auxiliary input {k} must be ({}, {f}), got {:?}", x.batch(), a.shape);
            }
        }
        if aux.len() != self.aux_inputs.len() {
            bail!("the network takes {} auxiliary inputs, got {}", self.aux_inputs.len(), aux.len());
        }
        Ok(())
    }

    pub fn forward(&self, x: Tensor, mode: Mode) -> Result<Forward> {
        self.forward_with(x, &[], mode, None)
    }

    /// `forward` with the auxiliary inputs, and dropout (training mode only) drawn from
    /// Philox `dropout_seed`, one stream per node, when it is given.
    pub fn forward_with(&self, x: Tensor, aux: &[Tensor], mode: Mode, dropout_seed: Option<u64>) -> Result<Forward> {
        self.check_inputs(&x, aux)?;
        let mut values = vec![x];
        let mut records = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let a = &values[node.inputs[0]];
            let (y, record) = match (&node.op, mode) {
                (Op::BatchNorm(bn), Mode::Train) => {
                    let (y, stats) = bn.forward_train(a)?;
                    (y, Record::Stats(stats))
                }
                (Op::MaxPool(p), _) => {
                    let (y, arg) = p.forward(a)?;
                    (y, Record::MaxArg(arg))
                }
                (Op::GroupNorm(gn), _) => {
                    let (y, stats) = gn.forward(a)?;
                    (y, Record::Group(stats))
                }
                (Op::Attention(att), _) => {
                    let (y, w) = att.forward(a)?;
                    (y, Record::Weights(w))
                }
                (Op::Dropout(p), Mode::Train) if *p > 0.0 && dropout_seed.is_some() => {
                    let mask = dense::dropout_mask(*p, dropout_seed.unwrap(), records.len() as u64, a.data.len());
                    (dense::times_mask(a, &mask), Record::Mask(mask))
                }
                (op, _) => (eval_op(op, a, node.inputs.get(1).map(|&i| &values[i]), aux)?, Record::None),
            };
            records.push(record);
            values.push(y);
        }
        Ok(Forward { mode, values, records })
    }

    /// The evaluation-mode logits of `x`: `forward(x, Mode::Eval)`'s last value, without
    /// the records and intermediates a forward pass keeps for backward and tangent. Each
    /// activation is dropped after its last use, and BatchNorm, activations and residual
    /// adds overwrite an input nothing reads later, so memory is reused layer to layer.
    pub fn infer(&self, x: Tensor) -> Result<Tensor> {
        self.infer_with(x, &[])
    }

    /// `infer` with the auxiliary inputs.
    pub fn infer_with(&self, x: Tensor, aux: &[Tensor]) -> Result<Tensor> {
        self.check_inputs(&x, aux)?;
        let mut last_use = vec![usize::MAX; self.nodes.len() + 1];
        for (k, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = k;
            }
        }
        let mut values: Vec<Option<Tensor>> = (0..=self.nodes.len()).map(|_| None).collect();
        values[0] = Some(x);
        for (k, node) in self.nodes.iter().enumerate() {
            let first = node.inputs[0];
            let owned = last_use[first] == k && node.inputs[1..].iter().all(|&i| i != first);
            let take = |values: &mut Vec<Option<Tensor>>| values[first].take().expect("a value is read after its last use");
            let y = match &node.op {
                Op::BatchNorm(bn) if owned => {
                    let mut t = take(&mut values);
                    bn.forward_eval_in_place(&mut t)?;
                    t
                }
                Op::Act(act) if owned => {
                    let mut t = take(&mut values);
                    dense::activation_in_place(*act, &mut t);
                    t
                }
                Op::Add if owned => {
                    let mut t = take(&mut values);
                    add_in_place(&mut t, values[node.inputs[1]].as_ref().expect("a value is read after its last use"));
                    t
                }
                op => {
                    let read = |i: usize| values[i].as_ref().expect("a value is read after its last use");
                    eval_op(op, read(first), node.inputs.get(1).map(|&i| read(i)), aux)?
                }
            };
            for &i in &node.inputs {
                if last_use[i] == k {
                    values[i] = None;
                }
            }
            values[k + 1] = Some(y);
        }
        Ok(values.pop().flatten().expect("the network has an output"))
    }

    /// Moves every BatchNorm's running averages toward the batch statistics of a
    /// training-mode forward pass.
    pub fn update_running_stats(&mut self, f: &Forward) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let (Op::BatchNorm(bn), Record::Stats(stats)) = (&mut node.op, &f.records[i]) {
                let s = &f.values[node.inputs[0]].shape;
                bn.update_running(stats, s[0] * s[2] * s[3]);
            }
        }
    }

    /// Backward from ∂L/∂logits: the gradient with respect to the input (when
    /// `want_input`) and, per node, the gradients of its parameters (in `parameters`'
    /// order).
    pub fn backward(&self, f: &Forward, grad_logits: Tensor, want_input: bool) -> Result<(Option<Tensor>, Vec<Vec<Vec<f32>>>)> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len() + 1];
        grads[self.nodes.len()] = Some(grad_logits);
        let mut params: Vec<Vec<Vec<f32>>> = vec![vec![]; self.nodes.len()];
        let add_to = |slot: &mut Option<Tensor>, g: Tensor| match slot {
            Some(t) => t.data.iter_mut().zip(&g.data).for_each(|(a, b)| *a += b),
            None => *slot = Some(g),
        };
        for i in (0..self.nodes.len()).rev() {
            let Some(g) = grads[i + 1].take() else { continue };
            let node = &self.nodes[i];
            let x = &f.values[node.inputs[0]];
            // The input's gradient is needed unless it is the network's input and the
            // caller does not want it.
            let need = node.inputs[0] != 0 || want_input;
            let gx: Option<Tensor> = match &node.op {
                Op::Conv(conv) => {
                    let (gx, pg) = conv.backward(x, &g, need)?;
                    params[i] = std::iter::once(pg.weight).chain(pg.bias).collect();
                    gx
                }
                Op::BatchNorm(bn) => {
                    let (gx, pg) = match (&f.records[i], f.mode) {
                        (Record::Stats(stats), Mode::Train) => bn.backward_train(stats, &g)?,
                        _ => bn.backward_eval(x, &g)?,
                    };
                    params[i] = vec![pg.weight, pg.bias];
                    Some(gx)
                }
                Op::Act(act) => Some(dense::activation_derivative_times(*act, x, &g)),
                Op::MaxPool(p) => match &f.records[i] {
                    Record::MaxArg(arg) => Some(p.backward(&x.shape, &g, arg)),
                    _ => unreachable!(),
                },
                Op::AvgPool(p) => Some(p.backward(&x.shape, &g)),
                Op::GlobalAvgPool => Some(pool::global_avg_backward(&x.shape, &g)),
                Op::Flatten => Some(Tensor::new(x.shape.clone(), g.data)),
                Op::Linear(l) => {
                    let (gx, dw, db) = l.backward(x, &g, need);
                    params[i] = vec![dw, db];
                    gx
                }
                Op::Add => {
                    let second = &f.values[node.inputs[1]];
                    let g2 = if per_channel(&g.shape, &second.shape) { dense::plane_sums(&g) } else { g.clone() };
                    add_to(&mut grads[node.inputs[1]], g2);
                    Some(g)
                }
                Op::GroupNorm(gn) => match &f.records[i] {
                    Record::Group(stats) => {
                        let (gx, pg) = gn.backward(stats, &g)?;
                        params[i] = vec![pg.weight, pg.bias];
                        Some(gx)
                    }
                    _ => unreachable!(),
                },
                Op::Attention(att) => match &f.records[i] {
                    Record::Weights(w) => Some(att.backward(x, w, &g)?),
                    _ => unreachable!(),
                },
                Op::Upsample(u) => Some(u.backward(&x.shape, &g)),
                Op::Concat => {
                    let (ga, gb) = dense::split_channels(&g, x.shape[1]);
                    add_to(&mut grads[node.inputs[1]], gb);
                    Some(ga)
                }
                Op::Scale(s) => Some(dense::scale(&g, *s)),
                Op::Dropout(_) => match &f.records[i] {
                    Record::Mask(m) => Some(dense::times_mask(&g, m)),
                    _ => Some(g),
                },
                // Auxiliary inputs are not differentiated through.
                Op::Input(_) => None,
            };
            if let Some(gx) = gx {
                add_to(&mut grads[node.inputs[0]], gx);
            }
        }
        Ok((if want_input { grads[0].take() } else { None }, params))
    }

    /// The tangent of the logits along `x_dot` (the forward pass's masks, argmaxes and
    /// statistics; no biases).
    pub fn tangent(&self, f: &Forward, x_dot: Tensor) -> Result<Tensor> {
        let mut dots: Vec<Option<Tensor>> = vec![None; self.nodes.len() + 1];
        dots[0] = Some(x_dot);
        for (i, node) in self.nodes.iter().enumerate() {
            if let Op::Input(_) = node.op {
                // The auxiliary inputs do not move with the image.
                dots[i + 1] = Some(Tensor::zeros(f.values[i + 1].shape.clone()));
                continue;
            }
            let a = dots[node.inputs[0]].as_ref().unwrap();
            let second = || dots[node.inputs[1]].as_ref().unwrap();
            let y = match &node.op {
                Op::Conv(conv) => conv.tangent(a)?,
                Op::BatchNorm(bn) => match (&f.records[i], f.mode) {
                    (Record::Stats(stats), Mode::Train) => bn.tangent_train(stats, a)?,
                    _ => bn.tangent_eval(a)?,
                },
                Op::Act(act) => dense::activation_derivative_times(*act, &f.values[node.inputs[0]], a),
                Op::MaxPool(p) => match &f.records[i] {
                    Record::MaxArg(arg) => p.tangent(a, &f.values[i + 1].shape, arg),
                    _ => unreachable!(),
                },
                Op::AvgPool(p) => p.forward(a)?,
                Op::GlobalAvgPool => pool::global_avg_forward(a)?,
                Op::Flatten => Tensor::new(vec![a.batch(), a.per_sample()], a.data.clone()),
                Op::Linear(l) => l.tangent(a),
                Op::Add => add(a, second()),
                Op::GroupNorm(gn) => match &f.records[i] {
                    Record::Group(stats) => gn.tangent(stats, a)?,
                    _ => unreachable!(),
                },
                Op::Attention(att) => match &f.records[i] {
                    Record::Weights(w) => att.tangent(&f.values[node.inputs[0]], w, a)?,
                    _ => unreachable!(),
                },
                Op::Upsample(u) => u.forward(a)?,
                Op::Concat => dense::concat_channels(a, second()),
                Op::Scale(s) => dense::scale(a, *s),
                Op::Dropout(_) => match &f.records[i] {
                    Record::Mask(m) => dense::times_mask(a, m),
                    _ => a.clone(),
                },
                Op::Input(_) => unreachable!(),
            };
            dots[i + 1] = Some(y);
        }
        Ok(dots.pop().unwrap().unwrap())
    }

    /// The trainable parameters of node `i`, in the order `backward` returns their
    /// gradients, with their state-dict names and shapes.
    pub fn parameters(&self) -> Vec<(usize, StateEntry<'_>)> {
        self.state().into_iter().filter(|(_, e)| !e.buffer).collect()
    }

    /// Parameters and buffers, node by node.
    pub fn state(&self) -> Vec<(usize, StateEntry<'_>)> {
        fn entry<'a>(node: &Node, leaf: &str, shape: Vec<usize>, values: &'a [f32], buffer: bool) -> StateEntry<'a> {
            StateEntry { name: join(&node.name, leaf), shape, values, buffer }
        }
        let mut out = vec![];
        for (i, node) in self.nodes.iter().enumerate() {
            let entry = |leaf: &str, shape: Vec<usize>, values, buffer| entry(node, leaf, shape, values, buffer);
            match &node.op {
                Op::Conv(c) => {
                    out.push((i, entry("weight", vec![c.c_out, c.c_in, c.k, c.k], &c.weight, false)));
                    if let Some(b) = &c.bias {
                        out.push((i, entry("bias", vec![c.c_out], b, false)));
                    }
                }
                Op::BatchNorm(bn) => {
                    out.push((i, entry("weight", vec![bn.channels], &bn.weight, false)));
                    out.push((i, entry("bias", vec![bn.channels], &bn.bias, false)));
                    out.push((i, entry("running_mean", vec![bn.channels], &bn.running_mean, true)));
                    out.push((i, entry("running_var", vec![bn.channels], &bn.running_var, true)));
                }
                Op::Linear(l) => {
                    out.push((i, entry("weight", vec![l.out, l.fan_in], &l.weight, false)));
                    out.push((i, entry("bias", vec![l.out], &l.bias, false)));
                }
                Op::GroupNorm(gn) => {
                    out.push((i, entry("weight", vec![gn.channels], &gn.weight, false)));
                    out.push((i, entry("bias", vec![gn.channels], &gn.bias, false)));
                }
                _ => {}
            }
        }
        out
    }

    /// Mutable views of every parameter and buffer, in `state`'s order.
    pub fn state_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut out = vec![];
        for node in &mut self.nodes {
            match &mut node.op {
                Op::Conv(c) => {
                    out.push(&mut c.weight);
                    if let Some(b) = &mut c.bias {
                        out.push(b);
                    }
                }
                Op::BatchNorm(bn) => {
                    out.push(&mut bn.weight);
                    out.push(&mut bn.bias);
                    out.push(&mut bn.running_mean);
                    out.push(&mut bn.running_var);
                }
                Op::Linear(l) => {
                    out.push(&mut l.weight);
                    out.push(&mut l.bias);
                }
                Op::GroupNorm(gn) => {
                    out.push(&mut gn.weight);
                    out.push(&mut gn.bias);
                }
                _ => {}
            }
        }
        out
    }

    /// Mutable views of the trainable parameters, in `parameters`' order.
    pub fn parameters_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let buffer: Vec<bool> = self.state().iter().map(|(_, e)| e.buffer).collect();
        self.state_mut().into_iter().zip(buffer).filter(|(_, b)| !b).map(|(p, _)| p).collect()
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.parameters().iter().map(|(_, e)| e.values.len()).sum()
    }

    /// The evaluation-mode network with every BatchNorm that directly follows a
    /// convolution folded into it (one pass fewer per layer, the same function).
    pub fn folded(&self) -> Result<Graph> {
        let mut nodes: Vec<Node> = vec![];
        // New value index of every old value.
        let mut remap: Vec<usize> = vec![0];
        for node in &self.nodes {
            let old_src = node.inputs[0];
            if let Op::BatchNorm(bn) = &node.op {
                let readers = self.nodes.iter().filter(|n| n.inputs.contains(&old_src)).count();
                if old_src > 0 && readers == 1 && matches!(self.nodes[old_src - 1].op, Op::Conv(_)) {
                    let at = remap[old_src] - 1;
                    if let Op::Conv(conv) = &nodes[at].op {
                        nodes[at].op = Op::Conv(bn.fold_into(conv)?);
                        remap.push(remap[old_src]);
                        continue;
                    }
                }
            }
            let inputs: Vec<usize> = node.inputs.iter().map(|&v| remap[v]).collect();
            nodes.push(Node { op: node.op.clone(), inputs, name: node.name.clone() });
            remap.push(nodes.len());
        }
        Ok(Graph { nodes, input: self.input, classes: self.classes, aux_inputs: self.aux_inputs.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::dense::{cross_entropy_grad, softmax_cross_entropy};
    use crate::nn::models::build;

    fn random(len: usize, stream: u64) -> Vec<f32> {
        crate::nn::layers::uniform_values(31, stream, len, -1.0, 1.0)
    }

    /// Networks with every kind of node: a CNN, and a narrow ResNet (residual joins,
    /// strided 1×1 shortcuts) whose BN statistics are not the initial ones — smooth
    /// activations, so central differences converge (the relu masks are checked by
    /// the adjoint test, on the relu ResNet too).
    fn networks() -> Vec<(Graph, Vec<usize>)> {
        let cnn = build("cnn:c4k3-bn-tanh-p2-c6k3s2-gelu-ap2-c5k1-softplus-fc3", [2, 12, 12], 1).unwrap();
        let mut res = build("resnet18-cifar:classes=4,width=2,act=gelu", [3, 16, 16], 2).unwrap();
        for (k, v) in res.state_mut().into_iter().enumerate() {
            if v.len() < 20 {
                // BN and bias vectors: γ, β, running mean in ±0.5 around their start, var in [0.5, 1.5].
                let r = random(v.len(), 900 + k as u64);
                v.iter_mut().zip(r).for_each(|(a, b)| *a += 0.5 * b);
            }
        }
        vec![(cnn, vec![3, 2, 12, 12]), (res, vec![6, 3, 16, 16])]
    }

    #[test]
    fn inference_equals_the_evaluation_forward_pass_bit_for_bit() {
        let mut nets = networks();
        nets.push((build("resnet18-cifar:classes=4,width=2", [3, 16, 16], 3).unwrap(), vec![3, 3, 16, 16]));
        nets.push((build("cnn:c4k3-bn-relu-p2-c6k3-bn-relu-gap-fc3", [1, 9, 9], 4).unwrap(), vec![5, 1, 9, 9]));
        for (g, shape) in nets {
            let x = Tensor::new(shape.clone(), random(shape.iter().product(), 7));
            let want = g.forward(x.clone(), Mode::Eval).unwrap().logits().clone();
            assert_eq!(g.infer(x).unwrap(), want);
        }
    }

    #[test]
    fn backward_and_tangent_are_adjoint_in_both_modes() {
        let mut nets = networks();
        nets.push((build("resnet18-cifar:classes=4,width=2", [3, 16, 16], 3).unwrap(), vec![3, 3, 16, 16]));
        for (g, shape) in nets {
            let x = Tensor::new(shape.clone(), random(shape.iter().product(), 1));
            for mode in [Mode::Eval, Mode::Train] {
                let f = g.forward(x.clone(), mode).unwrap();
                let out = f.logits().clone();
                let r = Tensor::new(out.shape.clone(), random(out.data.len(), 2));
                let xd = Tensor::new(shape.clone(), random(x.data.len(), 3));
                let (gx, _) = g.backward(&f, r.clone(), true).unwrap();
                let t = g.tangent(&f, xd.clone()).unwrap();
                let lhs: f64 = gx.unwrap().data.iter().zip(&xd.data).map(|(a, b)| *a as f64 * *b as f64).sum();
                let rhs: f64 = r.data.iter().zip(&t.data).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((lhs - rhs).abs() <= 1e-4 * (lhs.abs() + rhs.abs() + 1e-3), "{mode:?}: ⟨Jᵀr, ẋ⟩ = {lhs} but ⟨r, Jẋ⟩ = {rhs}");
            }
        }
    }

    #[test]
    fn tangent_and_gradients_match_central_differences() {
        for (g, shape) in networks() {
            let n = shape[0];
            let x = random(shape.iter().product(), 4);
            let labels: Vec<i64> = (0..n as i64).map(|i| i % g.classes as i64).collect();
            for mode in [Mode::Eval, Mode::Train] {
                let logits = |graph: &Graph, x: &[f32]| graph.forward(Tensor::new(shape.clone(), x.to_vec()), mode).unwrap().logits().clone();
                // Cross-entropy in float64 from the float32 logits (less rounding noise in
                // the differences than float32 losses).
                let loss = |graph: &Graph, x: &[f32]| -> f64 {
                    let z = logits(graph, x);
                    let c = graph.classes;
                    z.data.chunks(c).zip(&labels).map(|(row, &y)| row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln() - row[y as usize] as f64).sum()
                };
                let f = g.forward(Tensor::new(shape.clone(), x.clone()), mode).unwrap();
                let xd = random(x.len(), 5);
                let t = g.tangent(&f, Tensor::new(shape.clone(), xd.clone())).unwrap();
                // Small enough that no max-pool argmax or relu mask changes, large enough
                // for float32 differences; training mode (batch statistics of a few
                // samples) bends faster.
                let h = if mode == Mode::Eval { 1e-3f32 } else { 3e-4 };
                let plus: Vec<f32> = x.iter().zip(&xd).map(|(a, b)| a + h * b).collect();
                let minus: Vec<f32> = x.iter().zip(&xd).map(|(a, b)| a - h * b).collect();
                let (lp, lm) = (logits(&g, &plus), logits(&g, &minus));
                let scale = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                for i in 0..t.data.len() {
                    let fd = (lp.data[i] - lm.data[i]) / (2.0 * h);
                    assert!((t.data[i] - fd).abs() <= 2e-2 * scale, "{mode:?} tangent {i}: {} vs {fd}", t.data[i]);
                }
                // Input and parameter gradients of the summed cross-entropy.
                let (probs, _) = softmax_cross_entropy(f.logits(), &labels);
                let grad = Tensor::new(f.logits().shape.clone(), cross_entropy_grad(&probs, &labels, g.classes, 1.0));
                let (gx, pg) = g.backward(&f, grad, true).unwrap();
                let gx = gx.unwrap();
                let gscale = gx.data.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                for i in (0..x.len()).step_by(37) {
                    let (mut a, mut b) = (x.clone(), x.clone());
                    let h = 3e-3f32;
                    a[i] += h;
                    b[i] -= h;
                    let fd = (loss(&g, &a) - loss(&g, &b)) / (2.0 * h as f64);
                    assert!((gx.data[i] as f64 - fd).abs() <= 2e-2 * gscale, "{mode:?} dx[{i}]: {} vs {fd}", gx.data[i]);
                }
                let params = g.parameters();
                for (k, (node, entry)) in params.iter().enumerate().step_by(3) {
                    let within = params[..k].iter().filter(|(nd, _)| nd == node).count();
                    let analytic = &pg[*node][within];
                    let at = entry.values.len() / 2;
                    let shift = |delta: f32| -> f64 {
                        let mut g2 = g.clone();
                        let p = &mut g2.parameters_mut()[k];
                        p[at] += delta;
                        loss(&g2, &x)
                    };
                    let hp = 3e-3f32;
                    let fd = (shift(hp) - shift(-hp)) / (2.0 * hp as f64);
                    let pscale = analytic.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    assert!((analytic[at] as f64 - fd).abs() <= 5e-2 * pscale.max(1e-3), "{mode:?} {}[{at}]: {} vs {fd}", entry.name, analytic[at]);
                }
            }
        }
    }

    #[test]
    fn folding_batchnorm_keeps_the_evaluation_function() {
        for (g, shape) in networks() {
            let folded = g.folded().unwrap();
            assert!(folded.nodes.len() < g.nodes.len());
            assert!(!folded.nodes.iter().any(|n| matches!(n.op, Op::BatchNorm(_)) && matches!(folded.nodes[n.inputs[0].max(1) - 1].op, Op::Conv(_))));
            let x = Tensor::new(shape.clone(), random(shape.iter().product(), 6));
            let a = g.forward(x.clone(), Mode::Eval).unwrap();
            let b = folded.forward(x, Mode::Eval).unwrap();
            for (p, q) in a.logits().data.iter().zip(&b.logits().data) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "{p} vs {q}");
            }
        }
    }
}
