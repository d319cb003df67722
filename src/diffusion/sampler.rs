//! EDM's deterministic Heun sampler (ALGORITHMS.md §3): 18 steps from σ_max = 80 to
//! σ_min = 0.002 with ρ = 7, then to 0; 35 denoiser evaluations per sample.

use crate::rng::Philox;
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub steps: usize,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub rho: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { steps: 18, sigma_min: 0.002, sigma_max: 80.0, rho: 7.0 }
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        if self.steps < 2 {
            bail!("--steps must be at least 2 (got {})", self.steps);
        }
        if !(self.sigma_min > 0.0 && self.sigma_max > self.sigma_min && self.sigma_max.is_finite()) {
            bail!("need 0 < --sigma-min < --sigma-max (got {} and {})", self.sigma_min, self.sigma_max);
        }
        if !(self.rho > 0.0 && self.rho.is_finite()) {
            bail!("--rho must be positive (got {})", self.rho);
        }
        Ok(())
    }

    /// t_0 > … > t_{N−1} = σ_min, then t_N = 0.
    pub fn sigmas(&self) -> Vec<f64> {
        let (a, b) = (self.sigma_max.powf(1.0 / self.rho), self.sigma_min.powf(1.0 / self.rho));
        let n = self.steps;
        let mut t: Vec<f64> = (0..n).map(|i| (a + i as f64 / (n - 1) as f64 * (b - a)).powf(self.rho)).collect();
        t.push(0.0);
        t
    }

    /// Denoiser evaluations per sample: two per step except the last.
    pub fn evaluations(&self) -> usize {
        2 * self.steps - 1
    }
}

/// Anything that maps noisy model-space rows at one σ to their denoised estimate.
pub trait Denoiser {
    fn dim(&self) -> usize;
    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>>;
}

/// x_0 = σ_max·z, z ~ N(0, I) from Philox stream (seed, 0): sample k's numbers are
/// entries k·d … (k+1)·d − 1, so a sample does not depend on how many are drawn.
pub fn initial_noise(seed: u64, first: usize, count: usize, d: usize, sigma_max: f64) -> Vec<f32> {
    let mut z = vec![0f32; count * d];
    Philox::new(seed, 0).fill_normal((first * d) as u64, &mut z);
    z.iter_mut().for_each(|v| *v = (*v as f64 * sigma_max) as f32);
    z
}

/// Runs the Heun sampler from `x` (rows at σ = t_0); `step` is told each step's index.
pub fn heun(denoiser: &mut dyn Denoiser, mut x: Vec<f32>, schedule: &Schedule, step: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
    let t = schedule.sigmas();
    for i in 0..schedule.steps {
        let (ti, tn) = (t[i], t[i + 1]);
        let den = denoiser.denoise(&x, ti)?;
        let d_i: Vec<f64> = x.iter().zip(&den).map(|(&xv, &dv)| (xv as f64 - dv as f64) / ti).collect();
        let x_euler: Vec<f32> = x.iter().zip(&d_i).map(|(&xv, &dv)| (xv as f64 + (tn - ti) * dv) as f32).collect();
        if tn > 0.0 {
            let den2 = denoiser.denoise(&x_euler, tn)?;
            x = x
                .iter()
                .zip(&d_i)
                .zip(x_euler.iter().zip(&den2))
                .map(|((&xv, &di), (&xe, &dv))| {
                    let d2 = (xe as f64 - dv as f64) / tn;
                    (xv as f64 + (tn - ti) * 0.5 * (di + d2)) as f32
                })
                .collect();
        } else {
            x = x_euler;
        }
        step(i);
    }
    Ok(x)
}
