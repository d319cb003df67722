//! rote's convolutional networks against PyTorch's own numbers: the fixtures in
//! tests/fixtures/torch were written by scripts/fixtures/cnn_torch.py (PyTorch's state
//! dicts, inputs, logits, per-sample losses, input gradients and training-mode logits).

use rote::data::Array;
use rote::nn::graph::Mode;
use rote::nn::layers::dense::{cross_entropy_grad, softmax_cross_entropy};
use rote::nn::layers::Tensor;
use rote::nn::network::Network;
use std::path::Path;

fn load(dir: &Path, name: &str) -> Array {
    Array::open_npy(&dir.join(name)).unwrap_or_else(|e| panic!("{e:#} (run scripts/fixtures/cnn_torch.py export)"))
}

/// max |got − want| ≤ tol · max |want|.
fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: largest difference {:.2e} of the largest value", worst / scale);
    assert!(worst <= tol * scale, "{what}: largest difference {worst:e} against values up to {scale:e}");
}

fn check(name: &str, spec: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name);
    let x = load(&dir, "x.npy");
    let y = load(&dir, "y.npy").to_i64().unwrap();
    let sample_shape = x.shape[1..].to_vec();
    let mut net = Network::build(spec, &sample_shape, 0).unwrap();
    net.load_weights(&dir.join("weights.safetensors")).unwrap();
    let Network::Graph(g) = &net else { panic!("{spec} is a graph model") };
    let input = Tensor::new(x.shape.clone(), x.to_f32());
    let f = g.forward(input.clone(), Mode::Eval).unwrap();
    close(&f.logits().data, &load(&dir, "logits.npy").to_f32(), 1e-5, &format!("{name}: evaluation logits"));
    let (probs, losses) = softmax_cross_entropy(f.logits(), &y);
    close(&losses, &load(&dir, "loss.npy").to_f32(), 1e-5, &format!("{name}: per-sample loss"));
    let grad = Tensor::new(f.logits().shape.clone(), cross_entropy_grad(&probs, &y, g.classes, 1.0));
    let (gx, _) = g.backward(&f, grad, true).unwrap();
    close(&gx.unwrap().data, &load(&dir, "grad_x.npy").to_f32(), 1e-5, &format!("{name}: input gradient"));
    let folded = g.folded().unwrap().forward(input.clone(), Mode::Eval).unwrap();
    close(&folded.logits().data, &load(&dir, "logits.npy").to_f32(), 1e-5, &format!("{name}: logits with BatchNorm folded"));
    let t = g.forward(input, Mode::Train).unwrap();
    close(&t.logits().data, &load(&dir, "train_logits.npy").to_f32(), 1e-5, &format!("{name}: training-mode logits"));
}

#[test]
fn a_small_cnn_matches_pytorch() {
    check("small", "cnn:c4-bn-relu-p2-c6k3s2-tanh-ap2-c5k1-gelu-gap-fc3");
}

#[test]
fn the_cifar_resnet_matches_pytorch() {
    check("resnet", "resnet18-cifar:classes=5,width=4");
}
