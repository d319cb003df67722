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

/// A U-Net denoiser against PyTorch (scripts/fixtures/unet_torch.py): the network's
/// output, its input gradient, the training loss and every parameter's gradient, and
/// the preconditioned denoiser D(x; σ).
fn check_unet(name: &str, spec: &str, classes: usize) {
    use rote::diffusion::net::{self, precondition, Layout};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name);
    let x = load(&dir, "x.npy");
    let shape = x.shape[1..].to_vec();
    let layout = Layout::for_model(spec, &shape, classes, 0).unwrap();
    let p = rote::diffusion::train::load_weights(&layout, &dir.join("weights.safetensors")).unwrap();
    let u = layout.unet.as_ref().expect("a U-Net layout");
    let labels = (classes > 0).then(|| load(&dir, "labels.npy").to_i64().unwrap());
    let labels = labels.as_deref();
    let (x, d) = (x.to_f32(), layout.dim);
    let sigma = load(&dir, "sigma.npy").to_f64();
    let mut x_in = x.clone();
    let mut c_noise = vec![];
    for (r, &s) in sigma.iter().enumerate() {
        let (_, _, c_in, cn) = precondition(s);
        x_in[r * d..(r + 1) * d].iter_mut().for_each(|v| *v = (*v as f64 * c_in) as f32);
        c_noise.push(cn as f32);
    }
    let out = u.forward(&p, &x_in, &c_noise, labels).unwrap();
    close(&out, &load(&dir, "F.npy").to_f32(), 1e-5, &format!("{name}: F"));
    let gx = u.input_gradient(&p, &x_in, &c_noise, labels, &load(&dir, "r.npy").to_f32()).unwrap();
    close(&gx, &load(&dir, "grad_x.npy").to_f32(), 1e-5, &format!("{name}: input gradient"));
    let mut grad = vec![];
    let loss = u.loss_and_gradient(&p, &x_in, &c_noise, labels, &load(&dir, "target.npy").to_f32(), 0, &mut grad).unwrap();
    let want = load(&dir, "loss.npy").to_f64()[0];
    assert!((loss - want).abs() <= 1e-5 * want, "{name}: loss {loss} vs PyTorch's {want}");
    let want_grads = rote::diffusion::train::load_weights(&layout, &dir.join("grads.safetensors")).unwrap();
    for (tensor, shape, at) in &layout.tensors {
        let n: usize = shape.iter().product();
        close(&grad[*at..at + n], &want_grads[*at..at + n], 1e-4, &format!("{name}: ∂loss/∂{tensor}"));
    }
    let den = net::denoise(&layout, &p, &net::transposed_weights(&layout, &p), &x, 0.7, labels).unwrap();
    close(&den, &load(&dir, "denoised.npy").to_f32(), 1e-5, &format!("{name}: D(x; 0.7)"));
}

#[test]
fn a_conditional_unet_matches_pytorch() {
    check_unet("unet_cond", "unet:channels=8,mult=1-2,heads=2", 3);
}

#[test]
fn a_fourier_unet_with_two_blocks_per_level_matches_pytorch() {
    check_unet("unet_fourier", "unet:channels=8,mult=1-2-2,blocks=2,attn=4-2,embed=fourier", 0);
}

#[test]
fn a_unet_with_bilinear_upsampling_matches_pytorch() {
    check_unet("unet_bilinear", "unet:channels=8,mult=1-2-2,resample=bilinear", 2);
}
