//! Walking a dataset: shards (`--shard I/N`, the part of a run one process does),
//! chunks sized to the device's memory, and progress reporting.

use anyhow::{bail, Result};
use std::ops::Range;

/// Part `index` of `count` equal, contiguous parts of the samples (0-based, so a Slurm
/// job array `--array=0-7` passes `--shard $SLURM_ARRAY_TASK_ID/8`, or `--shard auto`,
/// which reads the job array's variables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Shard::from_slurm(&|k| std::env::var(k).ok());
        }
        let (i, n) = s.split_once('/').ok_or_else(|| format!("'{s}': expected I/N, e.g. 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("'{s}': shard index '{i}' is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("'{s}': shard count '{n}' is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("'{s}': need 0 ≤ I < N (shards are numbered from 0)"));
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard of this task of a Slurm job array: index SLURM_ARRAY_TASK_ID −
    /// SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT (an array `--array=0-7` or `1-8`
    /// makes shards 0/8 … 7/8); with a step (`0-15:2`, SLURM_ARRAY_TASK_STEP) the index
    /// is (ID − MIN) / STEP.
    pub fn from_slurm(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |k: &str| -> Result<usize, String> {
            let v = var(k).ok_or_else(|| format!("--shard auto: {k} is not set (not a task of a Slurm job array); give --shard I/N"))?;
            v.trim().parse().map_err(|_| format!("--shard auto: {k}={v:?} is not a number"))
        };
        let (id, count, min) = (get("SLURM_ARRAY_TASK_ID")?, get("SLURM_ARRAY_TASK_COUNT")?, get("SLURM_ARRAY_TASK_MIN")?);
        let step = match var("SLURM_ARRAY_TASK_STEP") {
            Some(_) => get("SLURM_ARRAY_TASK_STEP")?.max(1),
            None => 1,
        };
        if id < min || (id - min) % step != 0 || (id - min) / step >= count {
            return Err(format!("--shard auto: task {id} is not one of the array's {count} tasks from {min} in steps of {step}"));
        }
        Ok(Self { index: (id - min) / step, count })
    }

    /// The samples of `0..n` this shard owns: ⌊n·i/N⌋ .. ⌊n·(i+1)/N⌋.
    pub fn range(&self, n: usize) -> Range<usize> {
        let at = |i: usize| ((n as u128 * i as u128) / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

/// Rows per chunk so one chunk of `row_bytes`-byte rows stays within `budget_bytes`.
pub fn chunk_rows(row_bytes: usize, budget_bytes: usize) -> usize {
    (budget_bytes / row_bytes.max(1)).max(1)
}

/// Consecutive chunks of at most `size` covering `range`.
pub fn chunks(range: Range<usize>, size: usize) -> impl Iterator<Item = Range<usize>> {
    let size = size.max(1);
    let end = range.end;
    (range.start..end).step_by(size).map(move |s| s..(s + size).min(end))
}

/// Joins per-shard results given as (shard, rows) into the whole, checking that the
/// shards are exactly 0..N of one split of `n` samples.
pub fn merge_shards<T: Clone>(n: usize, mut parts: Vec<(Shard, Vec<T>)>, row_len: usize) -> Result<Vec<T>> {
    if parts.is_empty() {
        bail!("no shard outputs to merge");
    }
    let count = parts[0].0.count;
    parts.sort_by_key(|(s, _)| s.index);
    for (k, (s, data)) in parts.iter().enumerate() {
        if s.count != count {
            bail!("shard {s} belongs to a split into {} parts, others to {count}", s.count);
        }
        if s.index != k {
            bail!("shard {k}/{count} is missing (or shard {s} is given twice)");
        }
        if data.len() != s.range(n).len() * row_len {
            bail!("shard {s} holds {} rows but should hold {}", data.len() / row_len.max(1), s.range(n).len());
        }
    }
    if parts.len() != count {
        bail!("only {} of {count} shards given", parts.len());
    }
    Ok(parts.into_iter().flat_map(|(_, d)| d).collect())
}

/// A progress bar on stderr for `total` units, drawn only when stderr is a terminal
/// and `enabled` (commands pass false under --json).
pub fn progress(total: u64, message: &str, enabled: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// A spinner with elapsed time for work without a known length, drawn only when
/// stderr is a terminal and `enabled`.
pub fn spinner(message: &str, enabled: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap());
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_samples() {
        for n in [0, 1, 7, 100, 1001] {
            for count in 1..9 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(n);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn shard_parsing_rejects_bad_input() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard { index: 2, count: 4 });
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x/3".parse::<Shard>().is_err());
    }

    #[test]
    fn chunks_cover_the_range() {
        let c: Vec<_> = chunks(3..11, 3).collect();
        assert_eq!(c, vec![3..6, 6..9, 9..11]);
    }

    #[test]
    fn merge_checks_completeness() {
        let n = 10;
        let parts: Vec<(Shard, Vec<usize>)> =
            (0..3).rev().map(|i| { let s = Shard { index: i, count: 3 }; (s, s.range(n).collect()) }).collect();
        assert_eq!(merge_shards(n, parts.clone(), 1).unwrap(), (0..10).collect::<Vec<_>>());
        assert!(merge_shards(n, parts[1..].to_vec(), 1).is_err());
    }
}

/// What a shard output carries beside it (`NAME.npy.shard.json`) so [`merge_shard_files`]
/// can check and join it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ShardRecord {
    pub shard: String,
    pub total_rows: usize,
    pub row_len: usize,
    /// The source of the values, so parts of different runs are not joined.
    pub data: String,
}

/// The record beside a shard's .npy output.
pub fn shard_record_path(npy: &std::path::Path) -> std::path::PathBuf {
    let mut s = npy.as_os_str().to_owned();
    s.push(".shard.json");
    std::path::PathBuf::from(s)
}

/// Writes one value per row of `shard` as .npy, with the record [`merge_shard_files`]
/// needs beside it when the shard is not the whole (`data` names the source).
pub fn write_shard_npy(path: &std::path::Path, values: &[f32], shard: Shard, total_rows: usize, data: &str) -> Result<()> {
    crate::report::write_npy(path, &[values.len()], values)?;
    if !shard.is_whole() {
        let record = ShardRecord { shard: shard.to_string(), total_rows, row_len: 1, data: data.to_string() };
        crate::report::write_json(&shard_record_path(path), &record)?;
    }
    Ok(())
}

/// Joins the .npy outputs of `--shard I/N` runs (each with its record beside it) into
/// the values of a single run, written to `out`; returns the number of rows. Parts of
/// different runs, missing parts and overlapping parts are refused, naming the file.
pub fn merge_shard_files(parts: &[std::path::PathBuf], out: &std::path::Path) -> Result<usize> {
    use anyhow::Context;
    let mut pieces = Vec::new();
    let mut total: Option<(usize, String)> = None;
    for p in parts {
        let rec_path = shard_record_path(p);
        let text = std::fs::read_to_string(&rec_path)
            .with_context(|| format!("{} has no shard record ({}); was it written with --shard?", p.display(), rec_path.display()))?;
        let rec: ShardRecord = serde_json::from_str(&text).with_context(|| format!("{} is not a shard record", rec_path.display()))?;
        if let Some((t, data)) = &total {
            if *t != rec.total_rows || *data != rec.data {
                bail!("{} comes from a different run ({} rows of '{}') than the first part ({t} rows of '{data}')", p.display(), rec.total_rows, rec.data);
            }
        }
        total = Some((rec.total_rows, rec.data.clone()));
        let shard: Shard = rec.shard.parse().map_err(|e: String| anyhow::anyhow!("{}: {e}", rec_path.display()))?;
        let arr = crate::data::Array::open_npy(p)?;
        pieces.push((shard, arr.to_f32()));
    }
    let Some((n, _)) = total else { bail!("nothing to merge: give the shard outputs") };
    let merged = merge_shards(n, pieces, 1)?;
    crate::report::write_npy(out, &[merged.len()], &merged)?;
    Ok(merged.len())
}

/// Runs `work` on contiguous parts of `range`, one part per backend (as `Shard` splits
/// rows), each on its own thread, and returns the parts' results in row order. One
/// backend: a plain call on this thread. The computations rote splits this way key
/// their randomness by global row, so the joined parts equal a single run's result.
pub fn split_over<R: Send>(backends: &[crate::device::Backend], range: Range<usize>, work: &(dyn Fn(&crate::device::Backend, Range<usize>) -> Result<R> + Sync)) -> Result<Vec<R>> {
    if backends.is_empty() {
        bail!("no device to run on");
    }
    let part = |i: usize| {
        let sub = Shard { index: i, count: backends.len() }.range(range.len());
        range.start + sub.start..range.start + sub.end
    };
    if backends.len() == 1 {
        return Ok(vec![work(&backends[0], range)?]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = backends.iter().enumerate().map(|(i, b)| scope.spawn(move || work(b, part(i)))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a device's worker thread panicked")))).collect()
    })
}
