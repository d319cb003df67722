//! The layers networks are built from, each with its three passes side by side:
//!
//!   forward(x) → y, keeping in a record what the other passes need (masks, argmax,
//!     batch statistics);
//!   backward(gy, record) → gx, and the gradients of the layer's parameters;
//!   tangent(ẋ, record) → ẏ, the forward-mode derivative (JVP) that Hessian-vector
//!     products push through the network.
//!
//! Tensors are NCHW float32 (or (N, features) after flatten/linear), one sample after
//! another. Every pass is parallel over samples; the products run on the tuned GEMM of
//! `linalg`. The float64 references the passes are checked against are in each file's
//! tests (direct loops, central differences).
//!
//! conv.rs     conv2d (any k, stride, padding, optional bias) by im2col + GEMM
//! norm.rs     BatchNorm2d, training (batch statistics) and evaluation (running ones);
//!             GroupNorm
//! pool.rs     max-pool (ties to the first), average pool, global average pool, nearest
//!             up-sampling
//! attention.rs  self-attention over pixels (EDM's U-Net attention, qkv layout)
//! dense.rs    linear, activations, residual and broadcast add, channel concatenation,
//!             scale, dropout, flatten, softmax cross-entropy

pub mod attention;
pub mod conv;
pub mod dense;
pub mod norm;
pub mod pool;

/// A batch of activations: `shape[0]` samples, the rest per sample (C, H, W) or (F).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor of shape {shape:?} with {} values", data.len());
        Self { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self { shape, data: vec![0.0; n] }
    }

    /// Samples in the batch.
    pub fn batch(&self) -> usize {
        self.shape[0]
    }

    /// Values per sample.
    pub fn per_sample(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// (C, H, W) of an image batch.
    pub fn chw(&self) -> (usize, usize, usize) {
        assert_eq!(self.shape.len(), 4, "expected an NCHW tensor, got shape {:?}", self.shape);
        (self.shape[1], self.shape[2], self.shape[3])
    }
}

/// `len` values uniform in [lo, hi) from Philox stream (seed, stream): test inputs.
#[cfg(test)]
pub(crate) fn uniform_values(seed: u64, stream: u64, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut v = vec![0f32; len];
    crate::rng::Philox::new(seed, stream).fill_uniform(0, &mut v);
    v.iter_mut().for_each(|x| *x = lo + *x * (hi - lo));
    v
}
