//! The U-Net denoiser network F, in the layout of EDM's DDPM++ network (SongUNet with
//! `embedding_type=positional`, standard encoder and decoder, [1, 1] resampling filters),
//! built as a `Graph` from the shared layers (ALGORITHMS.md §3 for the preconditioning
//! around it). With C = `channels` and levels ℓ = 0 … L−1 at resolution res/2^ℓ:
//!
//!   embedding   e = [sin(c·f_j), cos(c·f_j)] of c_noise, C numbers: positional
//!               f_j = (1/10000)^(j/(C/2 − 1)), or Fourier f_j = 2π·16·N(0, 1) (the
//!               `map_noise.freqs` tensor); plus map_label(onehot·√classes) when
//!               class-conditional; then silu(map_layer1(silu(map_layer0(e)))), 4C wide.
//!   block(in, out)  h = conv0(resample(silu(norm0(x)))) + affine(emb)  (per channel)
//!               h = conv1(dropout(silu(norm1(h))))
//!               x = (h + skip(resample(x)))·√½   (skip: 1×1 conv when in ≠ out or resampling)
//!               with attention: x = (proj(attn(qkv(norm2(x)))) + x)·√½
//!   encoder     level 0: `enc.RxR_conv` (3×3), then `blocks` blocks of C·mult[ℓ];
//!               deeper levels start with a down-sampling block `enc.RxR_down`.
//!   decoder     lowest level: `dec.RxR_in0` (with attention) and `dec.RxR_in1`; other
//!               levels start with an up-sampling block `dec.RxR_up`; then blocks + 1
//!               blocks, each reading its input concatenated with the matching encoder
//!               output; at level 0 `aux_norm`, silu, `aux_conv` (3×3) to the image.
//!
//! GroupNorms have min(32, channels/4) groups and ε = 1e-6; resampling is nearest up-
//! sampling and 2×2 average pooling (what EDM's [1, 1] filters compute), or with
//! `resample=bilinear` bilinear up-sampling (PyTorch's align_corners = False; the
//! down-sampling is then still the 2×2 mean, which is bilinear down-sampling by 2); attention has
//! `heads` heads (1 as in DDPM++) at the resolutions `attn` (the lowest by default).
//! Parameters carry SongUNet's state-dict names. Initialization is EDM's DDPM++ one:
//! Xavier-uniform weights, zero biases, conv1, proj and aux_conv scaled by 1e-5 and qkv
//! by √0.2 — except map_label, Xavier-uniform here where EDM draws it Kaiming-normal.
//!
//! The parameters live in one flat vector (in `Graph::parameters` order, then the
//! Fourier frequencies), as the MLP denoiser's do, so Adam, the EMA and checkpoints
//! treat both networks alike.

use crate::nn::graph::{Graph, Mode, Node, Op};
use crate::nn::layers::attention::Attention;
use crate::nn::layers::conv::Conv2d;
use crate::nn::layers::dense::Linear;
use crate::nn::layers::norm::GroupNorm;
use crate::nn::layers::pool::{AvgPool2d, UpMode, Upsample};
use crate::nn::layers::Tensor;
use crate::nn::mlp::Activation;
use crate::rng::Philox;
use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Embedding {
    Positional,
    Fourier,
}

/// `unet[:channels=C,mult=M1-M2-…,blocks=B,attn=R1-R2,heads=H,dropout=P,embed=positional|fourier,resample=nearest|bilinear]`
/// or the preset `unet:ddpmpp-cifar10` (EDM's CIFAR-10 DDPM++: C = 128, mult 2-2-2,
/// 4 blocks, attention at 16×16, dropout 0.13).
#[derive(Clone, Debug, PartialEq)]
pub struct UNetSpec {
    pub channels: usize,
    pub mult: Vec<usize>,
    pub blocks: usize,
    /// Resolutions (height) with attention in their blocks; None: the lowest level's.
    pub attn: Option<Vec<usize>>,
    pub heads: usize,
    pub dropout: f32,
    pub embedding: Embedding,
    /// How the decoder's up-sampling blocks fill pixels (`resample=nearest|bilinear`).
    pub upsampling: UpMode,
}

pub const USAGE: &str = "unet[:channels=C,mult=1-2-2,blocks=B,attn=R,heads=H,dropout=P,embed=positional|fourier,resample=nearest|bilinear] or unet:ddpmpp-cifar10";

/// Whether a `--model` names a U-Net.
pub fn is_unet(spec: &str) -> bool {
    spec == "unet" || spec.starts_with("unet:")
}

impl UNetSpec {
    /// The CPU-sized default: C = 16, mult 1-2-2, one block per level.
    pub fn small() -> Self {
        Self { channels: 16, mult: vec![1, 2, 2], blocks: 1, attn: None, heads: 1, dropout: 0.0, embedding: Embedding::Positional, upsampling: UpMode::Nearest }
    }

    pub fn parse(spec: &str) -> Result<Self> {
        let opts = match spec.split_once(':') {
            Some(("unet", opts)) => opts,
            None if spec == "unet" => "",
            _ => bail!("model '{spec}' is not a U-Net: {USAGE}"),
        };
        if opts == "ddpmpp-cifar10" {
            return Ok(Self { channels: 128, mult: vec![2, 2, 2], blocks: 4, attn: Some(vec![16]), heads: 1, dropout: 0.13, embedding: Embedding::Positional, upsampling: UpMode::Nearest });
        }
        let mut s = Self::small();
        let list = |k: &str, v: &str| -> Result<Vec<usize>> {
            v.split('-').map(|t| t.parse::<usize>().ok().filter(|&n| n > 0).with_context(|| format!("model '{spec}': {k}={v} is not a list of positive whole numbers like 1-2-2"))).collect()
        };
        for kv in opts.split(',').filter(|t| !t.is_empty()) {
            let (k, v) = kv.split_once('=').with_context(|| format!("model '{spec}': '{kv}' is not key=value ({USAGE})"))?;
            let whole = || v.parse::<usize>().with_context(|| format!("model '{spec}': {k}={v} is not a whole number"));
            match k {
                "channels" => s.channels = whole()?,
                "blocks" => s.blocks = whole()?,
                "heads" => s.heads = whole()?,
                "mult" => s.mult = list(k, v)?,
                "attn" => s.attn = Some(list(k, v)?),
                "dropout" => {
                    s.dropout = v.parse().ok().filter(|p: &f32| (0.0..1.0).contains(p)).with_context(|| format!("model '{spec}': dropout={v} is not a probability in [0, 1)"))?;
                }
                "embed" => {
                    s.embedding = match v {
                        "positional" => Embedding::Positional,
                        "fourier" => Embedding::Fourier,
                        _ => bail!("model '{spec}': embed={v} is not positional or fourier"),
                    }
                }
                "resample" => {
                    s.upsampling = match v {
                        "nearest" => UpMode::Nearest,
                        "bilinear" => UpMode::Bilinear,
                        _ => bail!("model '{spec}': resample={v} is not nearest or bilinear"),
                    }
                }
                _ => bail!("model '{spec}': unknown option '{k}' ({USAGE})"),
            }
        }
        if s.channels < 4 || s.channels % 2 != 0 || s.heads == 0 || s.mult.is_empty() || s.blocks == 0 {
            bail!("model '{spec}': channels must be even and at least 4, and mult, blocks and heads non-empty or at least 1");
        }
        Ok(s)
    }
}

/// A U-Net for samples of one shape: its graph (holding the initial parameters) and
/// where each parameter sits in the flat vector.
#[derive(Clone, Debug)]
pub struct UNet {
    pub spec: UNetSpec,
    pub graph: Graph,
    /// Label classes (0: unconditional).
    pub classes: usize,
    /// (state-dict name, shape, offset) in the flat vector.
    pub tensors: Vec<(String, Vec<usize>, usize)>,
    pub total: usize,
    /// Offset of the Fourier frequencies (Fourier embeddings only).
    freqs: Option<usize>,
    /// The initial Fourier frequencies.
    init_freqs: Vec<f32>,
}

struct Builder {
    nodes: Vec<Node>,
    seed: u64,
}

impl Builder {
    fn push(&mut self, op: Op, inputs: Vec<usize>, name: impl Into<String>) -> usize {
        self.nodes.push(Node { op, inputs, name: name.into() });
        self.nodes.len()
    }

    /// `len` Xavier-uniform values for (fan_in, fan_out), times `gain`.
    fn xavier(&self, len: usize, fan_in: usize, fan_out: usize, gain: f32) -> Vec<f32> {
        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32 * gain;
        let mut w = vec![0f32; len];
        Philox::new(self.seed, 0x0E70_0000 + self.nodes.len() as u64).fill_uniform(0, &mut w);
        w.iter_mut().for_each(|v| *v = (*v * 2.0 - 1.0) * bound);
        w
    }

    fn conv(&mut self, x: usize, c_in: usize, c_out: usize, k: usize, gain: f32, name: String) -> usize {
        let weight = self.xavier(c_out * c_in * k * k, c_in * k * k, c_out * k * k, gain);
        let conv = Conv2d { c_in, c_out, k, stride: 1, pad: k / 2, weight, bias: Some(vec![0.0; c_out]) };
        self.push(Op::Conv(conv), vec![x], name)
    }

    fn linear(&mut self, x: usize, fan_in: usize, out: usize, name: &str) -> usize {
        let weight = self.xavier(out * fan_in, fan_in, out, 1.0);
        self.push(Op::Linear(Linear { fan_in, out, weight, bias: vec![0.0; out] }), vec![x], name)
    }

    fn norm(&mut self, x: usize, c: usize, name: String) -> usize {
        self.push(Op::GroupNorm(GroupNorm::new(GroupNorm::edm_groups(c), c, 1e-6)), vec![x], name)
    }

    fn silu(&mut self, x: usize) -> usize {
        self.push(Op::Act(Activation::Silu), vec![x], "")
    }

    fn resample(&mut self, x: usize, up: bool, down: bool, mode: UpMode) -> usize {
        match (up, down) {
            (true, _) => self.push(Op::Upsample(Upsample { factor: 2, mode }), vec![x], ""),
            (_, true) => self.push(Op::AvgPool(AvgPool2d { k: 2, stride: 2 }), vec![x], ""),
            _ => x,
        }
    }

    /// One UNetBlock reading `x` (c_in channels) and the embedding `emb`.
    #[allow(clippy::too_many_arguments)]
    fn block(&mut self, x: usize, emb: (usize, usize), c_in: usize, c_out: usize, up: bool, down: bool, attention: bool, spec: &UNetSpec, name: &str) -> usize {
        let at = |leaf: &str| format!("{name}.{leaf}");
        let mut h = self.norm(x, c_in, at("norm0"));
        h = self.silu(h);
        h = self.resample(h, up, down, spec.upsampling);
        h = self.conv(h, c_in, c_out, 3, 1.0, at("conv0"));
        let shift = self.linear(emb.0, emb.1, c_out, &at("affine"));
        h = self.push(Op::Add, vec![h, shift], "");
        h = self.norm(h, c_out, at("norm1"));
        h = self.silu(h);
        if spec.dropout > 0.0 {
            h = self.push(Op::Dropout(spec.dropout), vec![h], "");
        }
        h = self.conv(h, c_out, c_out, 3, 1e-5, at("conv1"));
        let skip = if c_in != c_out || up || down {
            let s = self.resample(x, up, down, spec.upsampling);
            self.conv(s, c_in, c_out, 1, 1.0, at("skip"))
        } else {
            x
        };
        h = self.push(Op::Add, vec![h, skip], "");
        h = self.push(Op::Scale(std::f32::consts::FRAC_1_SQRT_2), vec![h], "");
        if attention {
            let mut a = self.norm(h, c_out, at("norm2"));
            a = self.conv(a, c_out, 3 * c_out, 1, 0.2f32.sqrt(), at("qkv"));
            a = self.push(Op::Attention(Attention { heads: spec.heads }), vec![a], "");
            a = self.conv(a, c_out, c_out, 1, 1e-5, at("proj"));
            h = self.push(Op::Add, vec![a, h], "");
            h = self.push(Op::Scale(std::f32::consts::FRAC_1_SQRT_2), vec![h], "");
        }
        h
    }
}

impl UNet {
    /// The U-Net `spec` for samples of shape (C, H, W), conditioned on `classes` labels
    /// (0: unconditional), initialized from `seed`.
    pub fn new(spec: &UNetSpec, shape: [usize; 3], classes: usize, seed: u64) -> Result<Self> {
        let [c, h, w] = shape;
        let levels = spec.mult.len();
        let step = 1usize << (levels - 1);
        if h % step != 0 || w % step != 0 {
            bail!("a U-Net of {levels} levels halves {h}×{w} images {} times: height and width must be multiples of {step} (use fewer mult= entries)", levels - 1);
        }
        let lowest = h >> (levels - 1);
        let attn = spec.attn.clone().unwrap_or_else(|| vec![lowest]);
        let ch = spec.channels;
        let emb_ch = 4 * ch;
        let mut b = Builder { nodes: vec![], seed };
        // Mapping network: aux input 0 is the noise embedding, 1 the scaled one-hot labels.
        let mut e = b.push(Op::Input(0), vec![0], "");
        if classes > 0 {
            let label = b.push(Op::Input(1), vec![0], "");
            let l = b.linear(label, classes, ch, "map_label");
            e = b.push(Op::Add, vec![e, l], "");
        }
        e = b.linear(e, ch, emb_ch, "map_layer0");
        e = b.silu(e);
        e = b.linear(e, emb_ch, emb_ch, "map_layer1");
        e = b.silu(e);
        let emb = (e, emb_ch);
        let name = |side: &str, level: usize, what: &str| format!("{side}.{}x{}_{what}", h >> level, w >> level);
        let mut skips: Vec<(usize, usize)> = vec![];
        let (mut x, mut cout) = (0usize, c);
        for (level, &mult) in spec.mult.iter().enumerate() {
            if level == 0 {
                x = b.conv(0, c, ch, 3, 1.0, name("enc", 0, "conv"));
                cout = ch;
            } else {
                x = b.block(x, emb, cout, cout, false, true, false, spec, &name("enc", level, "down"));
            }
            skips.push((x, cout));
            for idx in 0..spec.blocks {
                let cin = cout;
                cout = ch * mult;
                x = b.block(x, emb, cin, cout, false, false, attn.contains(&(h >> level)), spec, &name("enc", level, &format!("block{idx}")));
                skips.push((x, cout));
            }
        }
        for (level, &mult) in spec.mult.iter().enumerate().rev() {
            if level == levels - 1 {
                x = b.block(x, emb, cout, cout, false, false, true, spec, &name("dec", level, "in0"));
                x = b.block(x, emb, cout, cout, false, false, false, spec, &name("dec", level, "in1"));
            } else {
                x = b.block(x, emb, cout, cout, true, false, false, spec, &name("dec", level, "up"));
            }
            for idx in 0..=spec.blocks {
                let (skip, skip_ch) = skips.pop().expect("one skip per encoder output");
                let joined = b.push(Op::Concat, vec![x, skip], "");
                let cin = cout + skip_ch;
                cout = ch * mult;
                let attention = idx == spec.blocks && attn.contains(&(h >> level));
                x = b.block(joined, emb, cin, cout, false, false, attention, spec, &name("dec", level, &format!("block{idx}")));
            }
        }
        let mut out = b.norm(x, cout, name("dec", 0, "aux_norm"));
        out = b.silu(out);
        b.conv(out, cout, c, 3, 1e-5, name("dec", 0, "aux_conv"));
        let aux_inputs = if classes > 0 { vec![ch, classes] } else { vec![ch] };
        let graph = Graph { nodes: b.nodes, input: shape, classes: 0, aux_inputs };
        graph.shapes(1).with_context(|| format!("the U-Net does not fit samples of shape {shape:?}"))?;
        let mut tensors = vec![];
        let mut total = 0;
        for (_, entry) in graph.parameters() {
            tensors.push((entry.name.clone(), entry.shape.clone(), total));
            total += entry.values.len();
        }
        let (freqs, init_freqs) = match spec.embedding {
            Embedding::Positional => (None, vec![]),
            Embedding::Fourier => {
                let mut f = vec![0f32; ch / 2];
                Philox::new(seed, 0x0F0E_1E12).fill_normal(0, &mut f);
                f.iter_mut().for_each(|v| *v *= 16.0);
                tensors.push(("map_noise.freqs".into(), vec![ch / 2], total));
                total += ch / 2;
                (Some(total - ch / 2), f)
            }
        };
        Ok(Self { spec: spec.clone(), graph, classes, tensors, total, freqs, init_freqs })
    }

    /// The initial flat parameter vector.
    pub fn init(&self) -> Vec<f32> {
        let mut p = Vec::with_capacity(self.total);
        for (_, entry) in self.graph.parameters() {
            p.extend_from_slice(entry.values);
        }
        p.extend_from_slice(&self.init_freqs);
        p
    }

    /// The graph holding the parameters `p`.
    pub fn with_parameters(&self, p: &[f32]) -> Graph {
        let mut g = self.graph.clone();
        let mut at = 0;
        for dst in g.parameters_mut() {
            let n = dst.len();
            dst.copy_from_slice(&p[at..at + n]);
            at += n;
        }
        g
    }

    /// The auxiliary inputs for rows at `c_noise` with `labels`.
    fn aux(&self, p: &[f32], c_noise: &[f32], labels: Option<&[i64]>) -> Result<Vec<Tensor>> {
        let ch = self.spec.channels;
        let half = ch / 2;
        let freqs: Vec<f64> = match self.freqs {
            None => (0..half).map(|j| (1.0f64 / 10000.0).powf(j as f64 / (half as f64 - 1.0).max(1.0))).collect(),
            Some(at) => p[at..at + half].iter().map(|&f| 2.0 * std::f64::consts::PI * f as f64).collect(),
        };
        let e = super::net::sinusoids(c_noise, &freqs, true);
        let mut aux = vec![Tensor::new(vec![c_noise.len(), ch], e)];
        if self.classes > 0 {
            let labels = labels.context("a class-conditional U-Net needs labels")?;
            let scale = (self.classes as f32).sqrt();
            let mut onehot = vec![0f32; labels.len() * self.classes];
            for (r, &y) in labels.iter().enumerate() {
                if y < 0 || y as usize >= self.classes {
                    bail!("label {y} is outside the U-Net's {} classes", self.classes);
                }
                onehot[r * self.classes + y as usize] = scale;
            }
            aux.push(Tensor::new(vec![labels.len(), self.classes], onehot));
        }
        Ok(aux)
    }

    fn image(&self, x: &[f32]) -> Tensor {
        let [c, h, w] = self.graph.input;
        Tensor::new(vec![x.len() / (c * h * w), c, h, w], x.to_vec())
    }

    /// F(x_in, c_noise, labels), evaluation mode (no dropout).
    pub fn forward(&self, p: &[f32], x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>) -> Result<Vec<f32>> {
        let g = self.with_parameters(p);
        Ok(g.infer_with(self.image(x_in), &self.aux(p, c_noise, labels)?)?.data)
    }

    /// ∂⟨dout, F⟩/∂x_in: the gradient with respect to the network's image input
    /// (evaluation mode).
    pub fn input_gradient(&self, p: &[f32], x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>, dout: &[f32]) -> Result<Vec<f32>> {
        let g = self.with_parameters(p);
        let f = g.forward_with(self.image(x_in), &self.aux(p, c_noise, labels)?, Mode::Eval, None)?;
        let (gx, _) = g.backward(&f, self.image(dout), true)?;
        Ok(gx.context("internal error: no input gradient")?.data)
    }

    /// The mean of (F − target)² over the batch, and its gradient with respect to `p`
    /// in `grad`; dropout (when the spec has it) drawn from `dropout_seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_gradient(&self, p: &[f32], x_in: &[f32], c_noise: &[f32], labels: Option<&[i64]>, target: &[f32], dropout_seed: u64, grad: &mut Vec<f32>) -> Result<f64> {
        let g = self.with_parameters(p);
        let f = g.forward_with(self.image(x_in), &self.aux(p, c_noise, labels)?, Mode::Train, Some(dropout_seed))?;
        let out = f.values.last().unwrap();
        let scale = 2.0 / out.data.len() as f32;
        let mut loss = 0f64;
        let dout: Vec<f32> = out
            .data
            .iter()
            .zip(target)
            .map(|(&a, &t)| {
                loss += ((a - t) as f64).powi(2);
                scale * (a - t)
            })
            .collect();
        let (_, pg) = g.backward(&f, Tensor::new(out.shape.clone(), dout), false)?;
        grad.clear();
        grad.resize(self.total, 0.0);
        let mut at = 0;
        let params = g.parameters();
        for (k, (node, entry)) in params.iter().enumerate() {
            let within = params[..k].iter().rev().take_while(|(n, _)| n == node).count();
            let n = entry.values.len();
            if let Some(v) = pg[*node].get(within) {
                grad[at..at + n].copy_from_slice(v);
            }
            at += n;
        }
        Ok(loss / out.data.len() as f64)
    }

    /// Multiply-adds per sample of one forward pass (convolutions, linears, attention).
    pub fn macs_per_sample(&self) -> usize {
        let Ok(shapes) = self.graph.shapes(1) else { return 0 };
        self.graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| match &node.op {
                Op::Conv(c) => shapes[i + 1].iter().product::<usize>() * c.c_in * c.k * c.k,
                Op::Linear(l) => l.fan_in * l.out,
                Op::Attention(_) => {
                    let s = &shapes[i + 1];
                    let l = s[2] * s[3];
                    2 * s[1] * l * l
                }
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(classes: usize, embedding: Embedding, dropout: f32, upsampling: UpMode) -> UNet {
        let spec = UNetSpec { channels: 4, mult: vec![1, 2], blocks: 1, attn: Some(vec![4]), heads: 1, dropout, embedding, upsampling };
        let u = UNet::new(&spec, [1, 4, 4], classes, 3).unwrap();
        // Move every parameter off EDM's near-zero initialization, so each path of the
        // network carries gradient.
        let mut p = u.init();
        let r = crate::nn::layers::uniform_values(8, 1, p.len(), -0.5, 0.5);
        p.iter_mut().zip(r).for_each(|(a, b)| *a += b);
        UNet { graph: u.with_parameters(&p), init_freqs: u.freqs.map(|at| p[at..].to_vec()).unwrap_or_default(), ..u }
    }

    #[test]
    fn the_spec_parses_its_options_and_refuses_bad_ones() {
        let s = UNetSpec::parse("unet:channels=8,mult=1-2,blocks=2,attn=4-2,heads=2,dropout=0.1,embed=fourier,resample=bilinear").unwrap();
        assert_eq!((s.channels, s.mult.clone(), s.blocks, s.attn.clone(), s.heads, s.embedding, s.upsampling), (8, vec![1, 2], 2, Some(vec![4, 2]), 2, Embedding::Fourier, UpMode::Bilinear));
        assert_eq!(UNetSpec::parse("unet").unwrap(), UNetSpec::small());
        assert_eq!(UNetSpec::parse("unet:ddpmpp-cifar10").unwrap().channels, 128);
        for bad in ["unet:channels=3", "unet:mult=1-x", "unet:dropout=1", "unet:depth=2", "unet:embed=sine", "unet:resample=cubic", "resmlp"] {
            assert!(UNetSpec::parse(bad).is_err(), "{bad}");
        }
        let err = UNet::new(&UNetSpec::parse("unet:mult=1-2-2-2").unwrap(), [1, 28, 28], 0, 0).unwrap_err();
        assert!(format!("{err:#}").contains("multiples of 8"), "{err:#}");
    }

    #[test]
    fn the_layout_has_songunets_names_and_edms_block_structure() {
        let u = UNet::new(&UNetSpec::small(), [1, 28, 28], 10, 0).unwrap();
        let names: Vec<&str> = u.tensors.iter().map(|t| t.0.as_str()).collect();
        for want in ["map_label.weight", "map_layer0.weight", "enc.28x28_conv.weight", "enc.14x14_down.conv0.weight", "enc.7x7_block0.qkv.weight", "dec.7x7_in0.proj.bias", "dec.7x7_in1.conv1.weight", "dec.14x14_up.skip.weight", "dec.28x28_block1.skip.weight", "dec.28x28_aux_conv.bias"] {
            assert!(names.contains(&want), "no {want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("enc.28x28_block0.qkv")), "attention only at the lowest resolution by default");
        assert_eq!(u.total, u.init().len());
        assert_eq!(u.tensors.last().map(|t| t.2 + t.1.iter().product::<usize>()), Some(u.total));
    }

    #[test]
    fn the_gradient_matches_central_differences() {
        for (classes, embedding, dropout, upsampling) in [(0, Embedding::Positional, 0.0, UpMode::Nearest), (3, Embedding::Fourier, 0.3, UpMode::Bilinear)] {
            let u = tiny(classes, embedding, dropout, upsampling);
            let p = u.init();
            let rows = 3;
            let x = crate::nn::layers::uniform_values(9, 2, rows * 16, -1.0, 1.0);
            let target = crate::nn::layers::uniform_values(9, 3, rows * 16, -1.0, 1.0);
            let c_noise = [-0.7f32, 0.1, 0.6];
            let labels: Vec<i64> = vec![0, 2, 1];
            let labels = (classes > 0).then_some(&labels[..]);
            let mut grad = vec![];
            let loss0 = u.loss_and_gradient(&p, &x, &c_noise, labels, &target, 5, &mut grad).unwrap();
            assert!(loss0 > 0.0);
            // The loss in float64 from the float32 outputs of the same (dropout) pass.
            let loss = |p: &[f32]| -> f64 {
                let g = u.with_parameters(p);
                let f = g.forward_with(u.image(&x), &u.aux(p, &c_noise, labels).unwrap(), Mode::Train, Some(5)).unwrap();
                f.values.last().unwrap().data.iter().zip(&target).map(|(&a, &t)| (a as f64 - t as f64).powi(2)).sum::<f64>() / target.len() as f64
            };
            assert!((loss(&p) - loss0).abs() < 1e-6 * loss0);
            let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let mut checked = 0;
            for (name, shape, at) in &u.tensors {
                if name == "map_noise.freqs" {
                    assert!(grad[*at..].iter().all(|&g| g == 0.0), "the Fourier frequencies are not trained");
                    continue;
                }
                let n: usize = shape.iter().product();
                for i in [*at, at + n / 2, at + n - 1] {
                    let h = 1e-2f32;
                    let (mut a, mut b) = (p.clone(), p.clone());
                    a[i] += h;
                    b[i] -= h;
                    let fd = (loss(&a) - loss(&b)) / (2.0 * h as f64);
                    assert!((grad[i] as f64 - fd).abs() <= 2e-3 * scale + 2e-2 * fd.abs(), "{name}[{}]: {} vs {fd}", i - at, grad[i]);
                    checked += 1;
                }
            }
            assert!(checked > 100);
        }
    }

    #[test]
    fn inference_equals_the_training_pass_without_dropout() {
        let u = tiny(2, Embedding::Positional, 0.0, UpMode::Nearest);
        let p = u.init();
        let x = crate::nn::layers::uniform_values(10, 2, 2 * 16, -1.0, 1.0);
        let c_noise = [0.3f32, -0.2];
        let labels = [1i64, 0];
        let out = u.forward(&p, &x, &c_noise, Some(&labels)).unwrap();
        let g = u.with_parameters(&p);
        let f = g.forward_with(u.image(&x), &u.aux(&p, &c_noise, Some(&labels)).unwrap(), Mode::Eval, None).unwrap();
        assert_eq!(&out, &f.values.last().unwrap().data);
        assert!(u.forward(&p, &x, &c_noise, Some(&[1, 5])).is_err(), "a label outside the classes is refused");
    }

    #[test]
    fn the_input_tangent_matches_central_differences_and_is_adjoint_to_backward() {
        for upsampling in [UpMode::Nearest, UpMode::Bilinear] {
            let u = tiny(3, Embedding::Positional, 0.0, upsampling);
            let p = u.init();
            let g = u.with_parameters(&p);
            let x = crate::nn::layers::uniform_values(11, 2, 2 * 16, -1.0, 1.0);
            let xd = crate::nn::layers::uniform_values(11, 3, 2 * 16, -1.0, 1.0);
            let aux = u.aux(&p, &[0.2, -0.4], Some(&[2, 0])).unwrap();
            let out = |x: &[f32]| g.forward_with(u.image(x), &aux, Mode::Eval, None).unwrap().values.last().unwrap().data.clone();
            let f = g.forward_with(u.image(&x), &aux, Mode::Eval, None).unwrap();
            let t = g.tangent(&f, u.image(&xd)).unwrap();
            let h = 1e-3f32;
            let plus: Vec<f32> = x.iter().zip(&xd).map(|(a, b)| a + h * b).collect();
            let minus: Vec<f32> = x.iter().zip(&xd).map(|(a, b)| a - h * b).collect();
            let (yp, ym) = (out(&plus), out(&minus));
            let scale = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            for i in 0..t.data.len() {
                let fd = (yp[i] - ym[i]) / (2.0 * h);
                assert!((t.data[i] - fd).abs() <= 1e-2 * scale, "tangent {i}: {} vs {fd}", t.data[i]);
            }
            let r = crate::nn::layers::uniform_values(11, 4, t.data.len(), -1.0, 1.0);
            let (gx, _) = g.backward(&f, Tensor::new(t.shape.clone(), r.clone()), true).unwrap();
            let lhs: f64 = gx.unwrap().data.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = r.iter().zip(&t.data).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((lhs - rhs).abs() <= 1e-4 * (lhs.abs() + rhs.abs()), "⟨Jᵀr, ẋ⟩ = {lhs} but ⟨r, Jẋ⟩ = {rhs}");
        }
    }
}
