//! Model specs that build a `Graph` (the MLP spec `mlp:…` stays in nn/mlp.rs):
//!
//! `cnn:TOKEN-TOKEN-…` — a PyTorch nn.Sequential, one module per token, state-dict
//!   names by module index (`0.weight`, `1.running_mean`, …):
//!     cN\[kK\]\[sS\]\[pP\]  nn.Conv2d(·, N, K, stride S, padding P); K = 3, S = 1, P = K/2 by
//!                     default; with bias unless a `bn` follows
//!     bn              nn.BatchNorm2d
//!     relu | gelu | tanh | softplus | silu
//!     pK | apK        nn.MaxPool2d(K) | nn.AvgPool2d(K)
//!     gap             nn.AdaptiveAvgPool2d(1) and nn.Flatten() (two modules)
//!     fcN             nn.Linear(·, N); an nn.Flatten() module is implied before it when
//!                     the input is still an image
//!   e.g. `cnn:c32-bn-relu-p2-c64-bn-relu-p2-gap-fc10`. The last fc's N is the classes.
//! `resnet18-cifar[:classes=C,width=W,act=A]` — the "kuangliu" CIFAR ResNet-18 the curvature
//!   authors train (ALGORITHMS.md §4): 3×3 stem, no max-pool, BasicBlocks [2, 2, 2, 2]
//!   of W, 2W, 4W, 8W channels (W = 64), 1×1 + BN shortcuts, then the average pool and
//!   `linear`. Its avg_pool2d(4) is a global average pool here: the same on the 4×4 maps
//!   of 32×32 and 28×28 inputs, and it adapts to any other size (8×8 digits: 1×1).
//!   `act` (relu by default; gelu, tanh, softplus, silu) replaces every relu.
//! `resnet18[:classes=C]` — torchvision's layout (7×7/2 stem, 3×3/2 max-pool,
//!   `downsample`, adaptive average pool, `fc`) for ImageNet-style checkpoints.
//!
//! Input channels come from the data (1 for grayscale); initialization is PyTorch's
//! (Kaiming-uniform convolutions and linears, BN γ = 1, β = 0), drawn from Philox.

use super::graph::{Graph, Node, Op};
use super::layers::conv::Conv2d;
use super::layers::dense::Linear;
use super::layers::norm::BatchNorm2d;
use super::layers::pool::{AvgPool2d, MaxPool2d};
use super::mlp::Activation;
use anyhow::{bail, Context, Result};

/// Whether `spec` names a graph model (anything but `mlp:`).
pub fn is_graph_spec(spec: &str) -> bool {
    spec.starts_with("cnn:") || spec.starts_with("resnet18")
}

struct Builder {
    nodes: Vec<Node>,
    seed: u64,
    /// Shapes only: layers get no parameter storage, `parameters` counts what they
    /// would hold (so a spec's memory is known before anything is allocated).
    dry: bool,
    parameters: u64,
}

impl Builder {
    /// Adds a node reading `inputs`; returns its value index.
    fn push(&mut self, op: Op, inputs: Vec<usize>, name: impl Into<String>) -> usize {
        self.nodes.push(Node { op, inputs, name: name.into() });
        self.nodes.len()
    }

    fn stream(&self) -> u64 {
        0x600D_0000 + self.nodes.len() as u64
    }

    fn conv(&mut self, input: usize, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool, name: &str) -> usize {
        let count = crate::resources::product(&[c_out, c_in, k, k]).saturating_add(if bias { c_out as u64 } else { 0 });
        self.parameters = self.parameters.saturating_add(count);
        let conv = if self.dry {
            Conv2d { c_in, c_out, k, stride, pad, weight: vec![], bias: None }
        } else {
            Conv2d::init(c_in, c_out, k, stride, pad, bias, self.seed, self.stream())
        };
        self.push(Op::Conv(conv), vec![input], name)
    }

    fn linear(&mut self, input: usize, fan_in: usize, out: usize, name: &str) -> usize {
        self.parameters = self.parameters.saturating_add(crate::resources::product(&[fan_in + 1, out]));
        let linear = if self.dry { Linear { fan_in, out, weight: vec![], bias: vec![] } } else { Linear::init(fan_in, out, self.seed, self.stream()) };
        self.push(Op::Linear(linear), vec![input], name)
    }

    fn batch_norm(&mut self, input: usize, channels: usize, name: impl Into<String>) -> usize {
        self.parameters = self.parameters.saturating_add(crate::resources::product(&[channels, 4]));
        let bn = if self.dry { BatchNorm2d { channels, weight: vec![], bias: vec![], running_mean: vec![], running_var: vec![] } } else { BatchNorm2d::new(channels) };
        self.push(Op::BatchNorm(bn), vec![input], name)
    }
}

/// Builds the network `spec` for samples of shape (C, H, W), checking that every layer
/// fits the input.
pub fn build(spec: &str, input: [usize; 3], seed: u64) -> Result<Graph> {
    // Shapes and the parameter count first, without storage: a spec that does not fit
    // the input or the memory is refused before anything is allocated.
    let (dry, parameters) = construct(spec, input, seed, true)?;
    dry.shapes(1).with_context(|| format!("model '{spec}' does not fit samples of shape {input:?}"))?;
    crate::resources::check_memory(&[("the network's parameters", parameters.saturating_mul(4))], &format!("the sizes in --model {spec}"))?;
    Ok(construct(spec, input, seed, false)?.0)
}

/// Trainable parameters and BatchNorm buffers of `spec`, counted without allocating.
pub fn parameter_count(spec: &str, input: [usize; 3]) -> Result<u64> {
    Ok(construct(spec, input, 0, true)?.1)
}

fn construct(spec: &str, input: [usize; 3], seed: u64, dry: bool) -> Result<(Graph, u64)> {
    let mut b = Builder { nodes: vec![], seed, dry, parameters: 0 };
    let classes = if let Some(body) = spec.strip_prefix("cnn:") {
        cnn(&mut b, spec, body, input)?
    } else if let Some(rest) = spec.strip_prefix("resnet18-cifar") {
        let (classes, width, act) = resnet_options(spec, rest, true)?;
        resnet18(&mut b, input, classes, width, act, Layout::Cifar);
        classes
    } else if let Some(rest) = spec.strip_prefix("resnet18") {
        let (classes, width, act) = resnet_options(spec, rest, false)?;
        resnet18(&mut b, input, classes, width, act, Layout::Torchvision);
        classes
    } else {
        bail!("model spec '{spec}': use mlp:…, cnn:…, resnet18-cifar[:classes=C,width=W] or resnet18[:classes=C]");
    };
    Ok((Graph { nodes: b.nodes, input, classes, aux_inputs: vec![] }, b.parameters))
}

fn resnet_options(spec: &str, rest: &str, width_allowed: bool) -> Result<(usize, usize, Activation)> {
    let (mut classes, mut width, mut act) = (10usize, 64usize, Activation::Relu);
    let opts = match rest {
        "" => "",
        r => r.strip_prefix(':').with_context(|| format!("model spec '{spec}': options follow a ':'"))?,
    };
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').with_context(|| format!("model spec '{spec}': '{opt}' is not key=value"))?;
        if k == "act" {
            act = activation(v).with_context(|| format!("model spec '{spec}': act={v} is not relu, gelu, tanh, softplus or silu"))?;
            continue;
        }
        let n: usize = v.parse().ok().filter(|&n| n > 0).with_context(|| format!("model spec '{spec}': {k}={v} is not a positive integer"))?;
        match k {
            "classes" => classes = n,
            "width" if width_allowed => width = n,
            _ => bail!("model spec '{spec}': unknown option '{k}' (classes, act{})", if width_allowed { ", width" } else { "" }),
        }
    }
    Ok((classes, width, act))
}

fn activation(token: &str) -> Option<Activation> {
    match token {
        "relu" => Some(Activation::Relu),
        "gelu" => Some(Activation::Gelu),
        "tanh" => Some(Activation::Tanh),
        "softplus" => Some(Activation::Softplus),
        "silu" => Some(Activation::Silu),
        _ => None,
    }
}

/// `c32k3s2p1` → (32, 3, 2, 1).
fn conv_token(token: &str) -> Option<(usize, usize, usize, Option<usize>)> {
    let body = token.strip_prefix('c')?;
    let mut fields = [None; 4];
    let mut key = 0;
    let mut digits = String::new();
    let keys = ['c', 'k', 's', 'p'];
    let mut chars = body.chars().peekable();
    loop {
        match chars.next() {
            Some(ch) if ch.is_ascii_digit() => digits.push(ch),
            other => {
                if digits.is_empty() {
                    return None;
                }
                fields[key] = Some(digits.parse::<usize>().ok()?);
                digits.clear();
                match other {
                    None => break,
                    Some(ch) => key = keys.iter().position(|&k| k == ch).filter(|&p| p > key)?,
                }
            }
        }
    }
    let k = fields[1].unwrap_or(3);
    Some((fields[0]?, k, fields[2].unwrap_or(1), fields[3]))
}

/// `p2` → (false, 2) (max), `ap2` → (true, 2) (average).
fn pool_token(token: &str) -> Option<(bool, usize)> {
    if let Some(k) = token.strip_prefix("ap") {
        return k.parse().ok().map(|k| (true, k));
    }
    token.strip_prefix('p')?.parse().ok().map(|k| (false, k))
}

fn cnn(b: &mut Builder, spec: &str, body: &str, input: [usize; 3]) -> Result<usize> {
    let tokens: Vec<&str> = body.split('-').map(str::trim).collect();
    let (mut c, mut h, mut w) = (input[0], input[1], input[2]);
    // Features when the value is flat (after gap / flatten), else None.
    let mut flat: Option<usize> = None;
    let mut value = 0;
    let mut module = 0usize;
    let mut classes = None;
    for (t, token) in tokens.iter().enumerate() {
        let bad = |why: &str| anyhow::anyhow!("model spec '{spec}': token {} '{token}': {why}", t + 1);
        let image = |flat: Option<usize>| if flat.is_some() { Err(bad("needs an image input, but the features are already flat")) } else { Ok(()) };
        if let Some((out, k, s, p)) = conv_token(token) {
            image(flat)?;
            if out == 0 || k == 0 || s == 0 {
                return Err(bad("sizes must be positive"));
            }
            let pad = p.unwrap_or(k / 2);
            let bias = tokens.get(t + 1) != Some(&"bn");
            value = b.conv(value, c, out, k, s, pad, bias, &module.to_string());
            if let Op::Conv(conv) = &b.nodes.last().unwrap().op {
                (h, w) = conv.out_size(h, w).map_err(|e| bad(&e.to_string()))?;
            }
            c = out;
        } else if *token == "bn" {
            image(flat)?;
            value = b.batch_norm(value, c, module.to_string());
        } else if let Some(act) = activation(token) {
            value = b.push(Op::Act(act), vec![value], "");
        } else if *token == "gap" {
            image(flat)?;
            value = b.push(Op::GlobalAvgPool, vec![value], "");
            module += 1; // AdaptiveAvgPool2d(1), then Flatten()
            flat = Some(c);
        } else if let Some(n) = token.strip_prefix("fc").and_then(|n| n.parse::<usize>().ok()) {
            if n == 0 {
                return Err(bad("sizes must be positive"));
            }
            let fan_in = match flat {
                Some(f) => f,
                None => {
                    value = b.push(Op::Flatten, vec![value], "");
                    module += 1;
                    c * h * w
                }
            };
            value = b.linear(value, fan_in, n, &module.to_string());
            flat = Some(n);
            classes = Some(n);
        } else if let Some((avg, k)) = pool_token(token) {
            image(flat)?;
            if k == 0 {
                return Err(bad("sizes must be positive"));
            }
            let (op, (ho, wo)) = if avg {
                let p = AvgPool2d { k, stride: k };
                (Op::AvgPool(p), p.out_size(h, w).map_err(|e| bad(&e.to_string()))?)
            } else {
                let p = MaxPool2d { k, stride: k, pad: 0 };
                (Op::MaxPool(p), p.out_size(h, w).map_err(|e| bad(&e.to_string()))?)
            };
            value = b.push(op, vec![value], "");
            (h, w) = (ho, wo);
        } else {
            return Err(bad("not cN[kK][sS][pP], bn, relu, gelu, tanh, softplus, pK, apK, gap or fcN"));
        }
        module += 1;
    }
    classes.filter(|_| tokens.last().is_some_and(|t| t.starts_with("fc"))).with_context(|| format!("model spec '{spec}' must end with fcN (N = the classes)"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// kuangliu: 3×3 stem, `shortcut`, `linear`.
    Cifar,
    /// torchvision: 7×7/2 stem + max-pool, `downsample`, `fc`.
    Torchvision,
}

fn resnet18(b: &mut Builder, input: [usize; 3], classes: usize, width: usize, act: Activation, layout: Layout) {
    let relu = Op::Act(act);
    let mut v = match layout {
        Layout::Cifar => b.conv(0, input[0], width, 3, 1, 1, false, "conv1"),
        Layout::Torchvision => b.conv(0, input[0], width, 7, 2, 3, false, "conv1"),
    };
    v = b.batch_norm(v, width, "bn1");
    v = b.push(relu.clone(), vec![v], "");
    if layout == Layout::Torchvision {
        v = b.push(Op::MaxPool(MaxPool2d { k: 3, stride: 2, pad: 1 }), vec![v], "");
    }
    let shortcut = if layout == Layout::Cifar { "shortcut" } else { "downsample" };
    let mut c = width;
    for stage in 0..4 {
        let out = width << stage;
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let p = format!("layer{}.{block}", stage + 1);
            let x = v;
            let mut y = b.conv(x, c, out, 3, stride, 1, false, &format!("{p}.conv1"));
            y = b.batch_norm(y, out, format!("{p}.bn1"));
            y = b.push(relu.clone(), vec![y], "");
            y = b.conv(y, out, out, 3, 1, 1, false, &format!("{p}.conv2"));
            y = b.batch_norm(y, out, format!("{p}.bn2"));
            let skip = if stride != 1 || c != out {
                let s = b.conv(x, c, out, 1, stride, 0, false, &format!("{p}.{shortcut}.0"));
                b.batch_norm(s, out, format!("{p}.{shortcut}.1"))
            } else {
                x
            };
            y = b.push(Op::Add, vec![y, skip], "");
            v = b.push(relu.clone(), vec![y], "");
            c = out;
        }
    }
    v = b.push(Op::GlobalAvgPool, vec![v], "");
    b.linear(v, c, classes, if layout == Layout::Cifar { "linear" } else { "fc" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_tokens_parse_with_defaults() {
        assert_eq!(conv_token("c32"), Some((32, 3, 1, None)));
        assert_eq!(conv_token("c64k5s2p1"), Some((64, 5, 2, Some(1))));
        assert_eq!(conv_token("c8s2"), Some((8, 3, 2, None)));
        assert_eq!(conv_token("c8p2k3"), None);
        assert_eq!(conv_token("c"), None);
        assert_eq!(conv_token("cx"), None);
    }

    #[test]
    fn specs_build_with_pytorch_names_and_refuse_what_does_not_fit() {
        let g = build("cnn:c8-bn-relu-p2-c16k3s2-relu-gap-fc10", [1, 28, 28], 0).unwrap();
        let names: Vec<String> = g.state().iter().map(|(_, e)| e.name.clone()).collect();
        assert_eq!(names, ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "4.weight", "4.bias", "8.weight", "8.bias"]);
        let g = build("cnn:c4-relu-fc3", [2, 5, 5], 0).unwrap();
        let names: Vec<String> = g.state().iter().map(|(_, e)| e.name.clone()).collect();
        assert_eq!(names, ["0.weight", "0.bias", "3.weight", "3.bias"], "an implied Flatten at index 2");
        let r = build("resnet18-cifar:classes=100,width=8", [3, 32, 32], 0).unwrap();
        let names: Vec<String> = r.state().iter().map(|(_, e)| e.name.clone()).collect();
        for want in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight", "layer4.1.bn2.bias", "linear.weight"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("layer1.0.shortcut")));
        // ResNet-18 at width 64 has 11 173 962 parameters with 10 classes (kuangliu).
        assert_eq!(build("resnet18-cifar", [3, 32, 32], 0).unwrap().parameter_count(), 11_173_962);
        // torchvision's resnet18 with 1000 classes: 11 689 512.
        assert_eq!(build("resnet18:classes=1000", [3, 224, 224], 0).unwrap().parameter_count(), 11_689_512);
        assert!(build("resnet18-cifar", [1, 8, 8], 0).is_ok(), "digits: 8 → 1×1 before the pool");
        let e = build("cnn:c8k5-p2-p2-p2-p2-fc10", [1, 8, 8], 0).unwrap_err();
        assert!(format!("{e:#}").contains("does not fit"), "{e:#}");
        let e = build("cnn:c8-relu", [1, 8, 8], 0).unwrap_err();
        assert!(format!("{e:#}").contains("must end with fcN"), "{e:#}");
        let e = build("cnn:c8-zz-fc2", [1, 8, 8], 0).unwrap_err();
        assert!(format!("{e:#}").contains("token 2 'zz'"), "{e:#}");
        let e = build("cnn:c8-gap-bn-fc2", [1, 8, 8], 0).unwrap_err();
        assert!(format!("{e:#}").contains("already flat"), "{e:#}");
    }
}
