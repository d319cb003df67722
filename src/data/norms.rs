//! Squared L2 norms of samples: the CPU twin of kernels/norms.cu. Used for scaling to
//! max norm 1 and, streamed through the scheduler, by `rote data norms`.

use super::{array::convert_to_f32, Array, DType};
use rayon::prelude::*;

/// Σ_c v\[c\]², with eight independent accumulators so the loop vectorizes.
#[inline]
pub fn sum_of_squares(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    let mut total = acc.iter().sum::<f32>();
    for &t in tail {
        total += t * t;
    }
    total
}

/// Squared norms of the `out.len()` rows held in `bytes` (element type `dtype`, `cols`
/// elements per row).
pub fn row_sq_norms_chunk(dtype: DType, bytes: &[u8], cols: usize, out: &mut [f32]) {
    let row_bytes = cols * dtype.size();
    out.par_iter_mut().enumerate().with_min_len(64).for_each_init(
        || vec![0f32; cols],
        |buf, (r, o)| {
            convert_to_f32(dtype, &bytes[r * row_bytes..(r + 1) * row_bytes], buf);
            *o = sum_of_squares(buf);
        },
    );
}

/// Squared norms of every row of `x`.
pub fn row_sq_norms_cpu(x: &Array) -> Vec<f32> {
    let mut out = vec![0f32; x.rows()];
    row_sq_norms_chunk(x.dtype, x.bytes(), x.row_len(), &mut out);
    out
}
