//! Transforms any `--data` source accepts, applied in this order:
//! `subset=K` (the first K samples of each class, class-balanced) or
//! `subset-random=K` (K samples drawn at random, `subset-seed=S`), then
//! `downsample=F` (F×F block averages of image samples), then
//! `scale=maxnorm` (divide by the largest training-sample L2 norm, so max‖x‖ = 1) or
//! `scale=pm1` (uint8 pixels to p/127.5 − 1; float data mapped affinely from the
//! training split's [min, max] to [−1, 1]). The test split gets the same downsampling
//! and the same scale factor as the training split; subsets apply to training only.

use super::{spec::Options, Array, DType, Dataset, Split};
use crate::rng::Philox;
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    MaxNorm,
    PlusMinusOne,
}

#[derive(Debug, Default)]
pub struct Transforms {
    subset_per_class: Option<usize>,
    subset_random: Option<(usize, u64)>,
    downsample: Option<usize>,
    scale: Option<Scale>,
}

impl Transforms {
    pub const KEYS: &'static str = "subset, subset-random, subset-seed, downsample, scale";

    pub fn take_from(opts: &mut Options) -> Result<Self> {
        let subset_per_class = opts.take_opt("subset")?;
        let subset_random = opts.take_opt::<usize>("subset-random")?;
        let subset_seed: u64 = opts.take("subset-seed", 0)?;
        if subset_per_class.is_some() && subset_random.is_some() {
            bail!("choose one of subset=K (per class) and subset-random=K");
        }
        let scale = match opts.take_str("scale").as_deref() {
            None => None,
            Some("maxnorm") => Some(Scale::MaxNorm),
            Some("pm1") => Some(Scale::PlusMinusOne),
            Some(other) => bail!("scale={other}: use scale=maxnorm or scale=pm1"),
        };
        let downsample = opts.take_opt("downsample")?;
        if downsample == Some(0) {
            bail!("downsample=0: the factor must be at least 1");
        }
        Ok(Self { subset_per_class, subset_random: subset_random.map(|k| (k, subset_seed)), downsample, scale })
    }

    pub fn apply(&self, mut ds: Dataset) -> Result<Dataset> {
        if let Some(k) = self.subset_per_class {
            ds.train = subset_per_class(&ds.train, k)?;
        }
        if let Some((k, seed)) = self.subset_random {
            ds.train = subset_random(&ds.train, k, seed)?;
        }
        if let Some(f) = self.downsample {
            ds.train = downsample(&ds.train, f)?;
            ds.test = ds.test.map(|t| downsample(&t, f)).transpose()?;
        }
        if let Some(scale) = self.scale {
            let map = ScaleMap::fit(&ds.train.x, scale);
            ds.train.x = map.apply(&ds.train.x);
            ds.test = ds.test.map(|t| Split { x: map.apply(&t.x), y: t.y });
        }
        ds.meta.sample_shape = ds.train.x.shape[1..].to_vec();
        Ok(ds)
    }
}

/// The first `k` samples of each class, in dataset order.
pub fn subset_per_class(s: &Split, k: usize) -> Result<Split> {
    let mut taken = std::collections::BTreeMap::<i64, usize>::new();
    let rows: Vec<usize> = (0..s.len())
        .filter(|&i| {
            let c = taken.entry(s.y[i]).or_insert(0);
            *c += 1;
            *c <= k
        })
        .collect();
    if let Some((class, n)) = s.class_counts().iter().find(|(_, &n)| n < k) {
        bail!("subset={k}: class {class} has only {n} samples in {}", s.x.origin);
    }
    Ok(Split { x: s.x.gather_rows(&rows), y: rows.iter().map(|&i| s.y[i]).collect() })
}

/// `k` samples drawn uniformly without replacement, kept in dataset order.
pub fn subset_random(s: &Split, k: usize, seed: u64) -> Result<Split> {
    if k > s.len() {
        bail!("subset-random={k}: {} has only {} samples", s.x.origin, s.len());
    }
    let mut rows: Vec<usize> = Philox::new(seed, 0).permutation(s.len())[..k].iter().map(|&i| i as usize).collect();
    rows.sort_unstable();
    Ok(Split { x: s.x.gather_rows(&rows), y: rows.iter().map(|&i| s.y[i]).collect() })
}

/// Block-averages image samples by `f` along height and width. Shapes (H, W),
/// (H, W, C) with C ≤ 4 (channels last) and (C, H, W) are recognised.
pub fn downsample(s: &Split, f: usize) -> Result<Split> {
    let shape = &s.x.shape[1..];
    let (h, w, c, channels_last) = match *shape {
        [h, w] => (h, w, 1, true),
        [h, w, c] if c <= 4 => (h, w, c, true),
        [c, h, w] => (h, w, c, false),
        _ => bail!("downsample: samples of shape {shape:?} are not images"),
    };
    if h % f != 0 || w % f != 0 {
        bail!("downsample={f}: image size {h}×{w} is not divisible by {f}");
    }
    let (oh, ow) = (h / f, w / f);
    let n = s.len();
    let per = h * w * c;
    let out_per = oh * ow * c;
    let index = |y: usize, x: usize, ch: usize, hh: usize, ww: usize| {
        if channels_last { (y * ww + x) * c + ch } else { (ch * hh + y) * ww + x }
    };
    let mut out = vec![0f32; n * out_per];
    let mut sample = vec![0f32; per];
    for i in 0..n {
        s.x.rows_f32_into(i, i + 1, &mut sample);
        let o = &mut out[i * out_per..(i + 1) * out_per];
        for ch in 0..c {
            for y in 0..oh {
                for x in 0..ow {
                    let mut acc = 0f32;
                    for dy in 0..f {
                        for dx in 0..f {
                            acc += sample[index(y * f + dy, x * f + dx, ch, h, w)];
                        }
                    }
                    o[index(y, x, ch, oh, ow)] = acc / (f * f) as f32;
                }
            }
        }
    }
    let mut new_shape = vec![n];
    new_shape.extend(if channels_last && shape.len() == 3 { vec![oh, ow, c] } else if shape.len() == 2 { vec![oh, ow] } else { vec![c, oh, ow] });
    Ok(Split { x: Array::from_f32(new_shape, &out, format!("{} (downsampled ×{f})", s.x.origin)), y: s.y.clone() })
}

/// x ↦ a·x + b, fitted on the training split.
struct ScaleMap {
    a: f32,
    b: f32,
}

impl ScaleMap {
    fn fit(x: &Array, scale: Scale) -> Self {
        match scale {
            Scale::MaxNorm => {
                let max_sq = crate::data::norms::row_sq_norms_cpu(x).into_iter().fold(0f32, f32::max);
                let norm = max_sq.sqrt();
                Self { a: if norm > 0.0 { 1.0 / norm } else { 1.0 }, b: 0.0 }
            }
            Scale::PlusMinusOne if x.dtype == DType::U8 => Self { a: 1.0 / 127.5, b: -1.0 },
            Scale::PlusMinusOne => {
                let v = x.to_f32();
                let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &t| (l.min(t), h.max(t)));
                if hi > lo {
                    Self { a: 2.0 / (hi - lo), b: -1.0 - 2.0 * lo / (hi - lo) }
                } else {
                    Self { a: 1.0, b: -lo }
                }
            }
        }
    }

    fn apply(&self, x: &Array) -> Array {
        let mut v = x.to_f32();
        v.iter_mut().for_each(|t| *t = self.a * *t + self.b);
        Array::from_f32(x.shape.clone(), &v, format!("{} (scaled)", x.origin))
    }
}

/// `n` samples in all, as evenly split across classes as `n` allows (the first n mod C
/// classes, by label, get one more), each class's first samples in dataset order.
pub fn balanced_subset(s: &Split, n: usize) -> Result<Split> {
    if n == 0 || n > s.len() {
        bail!("a subset of {n} samples: {} has {} (need 1 ≤ subset ≤ {})", s.x.origin, s.len(), s.len());
    }
    let counts = s.class_counts();
    let classes = counts.len();
    let mut quota: std::collections::BTreeMap<i64, usize> =
        counts.keys().enumerate().map(|(i, &c)| (c, n / classes + usize::from(i < n % classes))).collect();
    if let Some((class, have)) = counts.iter().find(|(c, &have)| have < quota[c]) {
        bail!("a balanced subset of {n}: class {class} of {} has only {have} samples (needs {})", s.x.origin, quota[class]);
    }
    let rows: Vec<usize> = (0..s.len())
        .filter(|&i| {
            let q = quota.get_mut(&s.y[i]).unwrap();
            let take = *q > 0;
            *q = q.saturating_sub(1);
            take
        })
        .collect();
    Ok(Split { x: s.x.gather_rows(&rows), y: rows.iter().map(|&i| s.y[i]).collect() })
}
