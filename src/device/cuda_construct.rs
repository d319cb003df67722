//! The CUDA side of the construction: layer 1 (tiled product, threshold, ballot
//! packing, exact fix-up) and the layer-2 scans. Twins: construct::layer1 and
//! construct::cover::CpuScanner.

use super::cuda::CudaBackend;
use crate::construct::cover::CoverScanner;
use crate::construct::layer1::{self, Bits, Layer1};
use anyhow::Result;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

impl CudaBackend {
    /// φ(X) as bits, on the host and left on the device for the covering scans.
    pub fn construct_layer1(&self, x: &[f32], layer: &Layer1) -> Result<(Bits, CudaSlice<u64>)> {
        let (d, n) = (layer.dim, layer.units);
        let rows = x.len() / d.max(1);
        let words = n.div_ceil(64);
        let s = self.stream();
        let xnorm: Vec<f32> = x.chunks(d).map(|r| crate::data::norms::sum_of_squares(r).sqrt()).collect();
        let x_dev = s.clone_htod(x)?;
        let w_dev = s.clone_htod(&layer.weight)?;
        let b_dev = s.clone_htod(&layer.bias)?;
        let wn_dev = s.clone_htod(&layer.weight_norms())?;
        let xn_dev = s.clone_htod(&xnorm)?;
        let mut bits_dev = s.alloc_zeros::<u64>((rows * words).max(1))?;
        let max_flags = (rows * n / 16).clamp(1 << 16, 1 << 26).min((rows * n).max(1));
        let mut flags = s.alloc_zeros::<u32>(2 * max_flags)?;
        let mut count = s.alloc_zeros::<u32>(1)?;
        let f = self.function("construct", "layer1_threshold_pack")?;
        let (n32, d32, words32, coef, maxf) =
            (n as u32, d as u32, words as u32, layer1::margin_coef(d), max_flags as u32);
        for y0 in (0..rows).step_by(64 * 65535) {
            // The grid's y extent is limited; offset the row pointers per slab.
            let slab = (rows - y0).min(64 * 65535);
            let cfg = LaunchConfig { grid_dim: (words as u32, slab.div_ceil(64) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let xv = x_dev.slice(y0 * d..);
            let xnv = xn_dev.slice(y0..);
            let mut bv = bits_dev.slice_mut(y0 * words..);
            let slab32 = slab as u32;
            let mut b = s.launch_builder(&f);
            b.arg(&xv).arg(&w_dev).arg(&b_dev).arg(&xnv).arg(&wn_dev);
            b.arg(&slab32).arg(&n32).arg(&d32).arg(&words32).arg(&coef);
            b.arg(&mut bv).arg(&mut flags).arg(&mut count).arg(&maxf);
            // SAFETY: buffers hold the shapes the kernel indexes (rows × d, n × d, …).
            unsafe { b.launch(cfg) }?;
            // Flagged rows are relative to the slab: fix this slab before the next.
            let flagged = s.clone_dtoh(&count)?[0] as usize;
            if flagged > max_flags {
                // Degenerate data (e.g. many zero inputs at λ = 0): do this slab on the CPU.
                let cpu = layer1::threshold_bits(&x[y0 * d..(y0 + slab) * d], layer);
                s.memcpy_htod(&cpu.data, &mut bits_dev.slice_mut(y0 * words..(y0 + slab) * words))?;
            } else if flagged > 0 {
                let fix = self.function("construct", "layer1_fix")?;
                let cnt = flagged as u32;
                let mut b = s.launch_builder(&fix);
                let mut bv = bits_dev.slice_mut(y0 * words..);
                b.arg(&xv).arg(&w_dev).arg(&b_dev).arg(&d32).arg(&words32).arg(&flags).arg(&cnt).arg(&mut bv);
                // SAFETY: `flagged` (row, unit) pairs inside the slab were written.
                unsafe { b.launch(LaunchConfig::for_num_elems(cnt)) }?;
            }
            s.memset_zeros(&mut count)?;
        }
        let data = s.clone_dtoh(&bits_dev)?;
        let bits = Bits { rows, words, data: data[..rows * words].to_vec() };
        Ok((bits, bits_dev))
    }

    pub fn cover_scanner<'a>(&'a self, bits: &'a CudaSlice<u64>, words: usize, units: usize, pos: &[u32], neg: &[u32]) -> Result<GpuScanner<'a>> {
        let s = self.stream();
        Ok(GpuScanner {
            gpu: self,
            bits,
            words: words as u32,
            used: units.div_ceil(64) as u32,
            npos: pos.len() as u32,
            nneg: neg.len() as u32,
            pos: s.clone_htod(pos)?,
            neg: s.clone_htod(neg)?,
        })
    }
}

/// Layer-2 scans over device-resident features.
pub struct GpuScanner<'a> {
    gpu: &'a CudaBackend,
    bits: &'a CudaSlice<u64>,
    words: u32,
    used: u32,
    npos: u32,
    nneg: u32,
    pos: CudaSlice<u32>,
    neg: CudaSlice<u32>,
}

impl CoverScanner for GpuScanner<'_> {
    fn min_over_positives(&mut self, masks: &[u64], count: usize) -> Result<Vec<u32>> {
        let s = self.gpu.stream();
        let f = self.gpu.function("construct", "cover_min")?;
        let masks_dev = s.clone_htod(masks)?;
        let mut out = s.clone_htod(&vec![u32::MAX; count])?;
        let blocks_y = (self.npos as usize).div_ceil(256 * 16).clamp(1, 1024) as u32;
        let cfg = LaunchConfig { grid_dim: (count as u32, blocks_y, 1), block_dim: (256, 1, 1), shared_mem_bytes: self.used * 8 };
        let mut b = s.launch_builder(&f);
        b.arg(self.bits).arg(&self.words).arg(&self.used).arg(&masks_dev).arg(&self.pos).arg(&self.npos).arg(&mut out);
        // SAFETY: masks hold count·used words; out holds count entries.
        unsafe { b.launch(cfg) }?;
        Ok(s.clone_dtoh(&out)?)
    }

    fn mark_covered(&mut self, masks: &[u64], thresholds: &[u32], covered: &mut [u8]) -> Result<()> {
        let s = self.gpu.stream();
        let f = self.gpu.function("construct", "cover_mark")?;
        let masks_dev = s.clone_htod(masks)?;
        let th_dev = s.clone_htod(thresholds)?;
        let mut cov = s.clone_htod(covered)?;
        let k = thresholds.len() as u32;
        let mut b = s.launch_builder(&f);
        b.arg(self.bits).arg(&self.words).arg(&self.used).arg(&masks_dev).arg(&th_dev).arg(&k).arg(&self.neg).arg(&self.nneg).arg(&mut cov);
        // SAFETY: one thread per X⁻ row, covered has nneg entries.
        unsafe { b.launch(LaunchConfig::for_num_elems(self.nneg)) }?;
        s.memcpy_dtoh(&cov, covered)?;
        s.synchronize()?;
        Ok(())
    }
}
