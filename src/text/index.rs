//! Building, writing and opening either kind of index, and the one question both
//! answer: which n-grams of a token sequence are in the corpus.

use super::bloom::{build_from_corpus, Bloom, BloomParams, BloomWords, Layout};
use super::corpus::Corpus;
use super::exact::{self, Exact};
use super::index_file::{self, CorpusRef, Header, Opened};
use crate::device::cuda::CudaBackend;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const BLOOM_KIND: &str = "bloom";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BloomFields {
    pub params: BloomParams,
    /// n-gram positions inserted (with repeats).
    pub inserted: u64,
    /// The rate the filter was sized for.
    pub target_rate: f64,
    pub fill: f64,
}

/// What `rote text index` reports.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub kind: String,
    pub path: String,
    pub n: Option<usize>,
    pub ngrams_inserted: Option<u64>,
    pub bits: Option<u64>,
    pub hashes: Option<u32>,
    pub bits_per_ngram: Option<f64>,
    pub target_rate: Option<f64>,
    pub predicted_rate: Option<f64>,
    pub fill: Option<f64>,
    pub suffixes: Option<u64>,
    pub bytes: u64,
    pub bytes_per_token: f64,
    pub seconds: f64,
    pub device: String,
}

/// Which index to build.
#[derive(Clone, Debug)]
pub enum IndexSpec {
    /// A Bloom filter of the n-grams, sized for `fp` at `capacity` distinct n-grams
    /// (default: every n-gram position, an upper bound).
    Bloom { n: usize, fp: f64, layout: Layout, capacity: Option<u64> },
    /// The suffix array with LCP, answering any n.
    Exact,
}

impl IndexSpec {
    pub fn parse(kind: &str, n: usize, fp: f64, layout: &str, capacity: Option<u64>) -> Result<IndexSpec> {
        Ok(match kind {
            "bloom" => {
                if !(fp > 0.0 && fp < 1.0) {
                    bail!("--fp {fp}: a false-positive rate is between 0 and 1");
                }
                IndexSpec::Bloom { n, fp, layout: Layout::parse(layout)?, capacity }
            }
            "exact" => IndexSpec::Exact,
            k => bail!("--kind {k}: expected bloom or exact"),
        })
    }

    /// The file name `rote text index` writes inside the corpus directory.
    pub fn file_name(&self) -> String {
        match self {
            IndexSpec::Bloom { n, .. } => format!("bloom-n{n}.idx"),
            IndexSpec::Exact => "exact.idx".into(),
        }
    }
}

/// The GPU that builds `spec` for `device`: blocked Bloom filters go to a usable GPU;
/// anything else stays on the CPU, and asking explicitly for the GPU with a classic
/// filter is an error.
pub fn gpu_for(spec: &IndexSpec, device: crate::device::DeviceRequest) -> Result<Option<CudaBackend>> {
    use crate::device::{Device, DeviceRequest};
    Ok(match (spec, device.resolve()?) {
        (IndexSpec::Bloom { layout: Layout::Blocked, .. }, Device::Cuda(i)) => Some(CudaBackend::new(i)?),
        (IndexSpec::Bloom { .. }, Device::Cuda(_)) if device != DeviceRequest::Auto => bail!("--device: the GPU builds blocked filters only (--layout blocked)"),
        _ => None,
    })
}

/// The index of the same name in the normalized view of `index`'s corpus, when there
/// is one (what scans and the demonstration pair with a verbatim index by default).
pub fn normalized_twin(index_path: &Path, corpus: &Corpus) -> Option<PathBuf> {
    let p = corpus.normalized_dir()?.join(index_path.file_name()?);
    p.is_file().then_some(p)
}

/// Where to write the index of `corpus_dir` and, with `normalized`, of its normalized
/// view: `out` (or the default name inside the corpus) first, then the same file name
/// inside CORPUS/normalized/.
pub fn index_targets(corpus_dir: &Path, spec: &IndexSpec, out: Option<&Path>, normalized: bool) -> Result<Vec<(PathBuf, PathBuf)>> {
    let name = spec.file_name();
    let first = out.map(Path::to_path_buf).unwrap_or_else(|| corpus_dir.join(&name));
    let mut targets = vec![(corpus_dir.to_path_buf(), first.clone())];
    if normalized {
        let c = Corpus::open(corpus_dir)?;
        let Some(dir) = c.normalized_dir() else {
            bail!("{} has no normalized view (import it from text without --no-normalized)", corpus_dir.display());
        };
        let file = first.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(&name));
        targets.push((dir.clone(), dir.join(file)));
    }
    Ok(targets)
}

/// Builds the index `spec` of `corpus` into `path` (written whole or not at all; a
/// corpus file is never overwritten), with `progress` called with tokens done.
pub fn build(corpus: &Corpus, path: &Path, spec: &IndexSpec, progress: &(dyn Fn(u64) + Sync)) -> Result<BuildReport> {
    build_on(corpus, path, spec, None, progress)
}

/// `build`, with a Bloom filter built on `gpu` when given (bit-identical to the CPU's).
pub fn build_on(corpus: &Corpus, path: &Path, spec: &IndexSpec, gpu: Option<&CudaBackend>, progress: &(dyn Fn(u64) + Sync)) -> Result<BuildReport> {
    if corpus.owns(path) {
        bail!("{}: that is one of the corpus's own files; write the index elsewhere", path.display());
    }
    let t0 = Instant::now();
    let mut report = BuildReport {
        kind: String::new(),
        path: path.display().to_string(),
        n: None,
        ngrams_inserted: None,
        bits: None,
        hashes: None,
        bits_per_ngram: None,
        target_rate: None,
        predicted_rate: None,
        fill: None,
        suffixes: None,
        bytes: 0,
        bytes_per_token: 0.0,
        seconds: 0.0,
        device: "cpu".into(),
    };
    match *spec {
        IndexSpec::Bloom { n, fp, layout, capacity } => {
            let (bloom, inserted) = build_bloom_on(corpus, n, fp, layout, capacity, gpu, progress)?;
            if let Some(g) = gpu {
                report.device = format!("cuda:{}", g.ordinal());
            }
            let fields = write_bloom(path, corpus, &bloom, inserted, fp)?;
            report.kind = BLOOM_KIND.into();
            report.n = Some(n);
            report.ngrams_inserted = Some(inserted);
            report.bits = Some(bloom.params.m);
            report.hashes = Some(bloom.params.k);
            report.bits_per_ngram = Some(bloom.params.m as f64 / inserted.max(1) as f64);
            report.target_rate = Some(fp);
            report.predicted_rate = Some(bloom.params.predicted_rate(capacity.unwrap_or(inserted)));
            report.fill = Some(fields.fill);
        }
        IndexSpec::Exact => {
            let fields = exact::write_index(corpus, path)?;
            progress(corpus.meta.n_tokens);
            report.kind = exact::KIND.into();
            report.suffixes = Some(fields.suffixes);
        }
    }
    report.bytes = std::fs::metadata(path)?.len();
    report.bytes_per_token = report.bytes as f64 / corpus.meta.n_tokens.max(1) as f64;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// What `rote text info` says about an index; with `n`, an exact index also counts
/// its distinct n-grams.
pub fn describe(index: &Index, n: Option<usize>) -> serde_json::Value {
    let mut v = serde_json::json!({"kind": index.kind(), "corpus": index.corpus().dir, "corpus_tokens": index.corpus().meta.n_tokens, "corpus_documents": index.corpus().docs.len()});
    match index {
        Index::Bloom(b) => {
            v["bloom"] = serde_json::to_value(&b.fields).unwrap_or_default();
            v["estimated_distinct_ngrams"] = b.bloom.estimated_items().into();
        }
        Index::Exact(e) => {
            v["suffixes"] = e.sa().len().into();
            if let Some(n) = n {
                let (distinct, positions) = e.ngram_counts(n);
                v["n"] = n.into();
                v["distinct_ngrams"] = distinct.into();
                v["ngram_positions"] = positions.into();
            }
        }
    }
    v
}

/// Fills a Bloom filter with every n-gram of `corpus` on the CPU threads. `capacity`
/// (distinct n-grams to size for) defaults to the n-gram positions, an upper bound.
pub fn build_bloom(corpus: &Corpus, n: usize, fp: f64, layout: Layout, capacity: Option<u64>, progress: &(dyn Fn(u64) + Sync)) -> Result<(Bloom, u64)> {
    build_bloom_on(corpus, n, fp, layout, capacity, None, progress)
}

/// `build_bloom` on `gpu` when given.
pub fn build_bloom_on(corpus: &Corpus, n: usize, fp: f64, layout: Layout, capacity: Option<u64>, gpu: Option<&CudaBackend>, progress: &(dyn Fn(u64) + Sync)) -> Result<(Bloom, u64)> {
    check_n(corpus, n)?;
    let inserted = corpus.ngram_positions(n);
    let params = BloomParams::for_rate(layout, n, capacity.unwrap_or(inserted), fp)?;
    let bloom = match gpu {
        Some(g) => super::cuda::build_bloom(g, params, corpus, progress)?,
        None => build_from_corpus(params, corpus, progress),
    };
    Ok((bloom, inserted))
}

/// Refuses an n no document is long enough for.
pub fn check_n(corpus: &Corpus, n: usize) -> Result<()> {
    if n == 0 {
        bail!("-n 0: an n-gram has at least one token");
    }
    let longest = corpus.longest_doc();
    if n as u64 > longest {
        bail!("-n {n} is longer than every document of {} (the longest has {longest} tokens): no n-gram to index", corpus.dir.display());
    }
    Ok(())
}

pub fn write_bloom(path: &Path, corpus: &Corpus, bloom: &Bloom, inserted: u64, target_rate: f64) -> Result<BloomFields> {
    let fields = BloomFields { params: bloom.params, inserted, target_rate, fill: bloom.fill() };
    let header = Header { kind: BLOOM_KIND.into(), corpus: CorpusRef::of(corpus), payload_bytes: bloom.params.words() as u64 * 8, fields: fields.clone() };
    index_file::write(path, &header, |w| Ok(w.write_all(bytemuck::cast_slice(bloom.words()))?))?;
    Ok(fields)
}

/// A Bloom filter opened from its index file, with the corpus it was built from.
pub struct BloomIndex {
    pub bloom: Bloom,
    pub fields: BloomFields,
    pub corpus: Corpus,
}

pub fn open_bloom(path: &Path, corpus_dir: Option<&Path>) -> Result<BloomIndex> {
    let opened: Opened<BloomFields> = index_file::open(path, Some(BLOOM_KIND))?;
    let fields = opened.header.fields.clone();
    if opened.header.payload_bytes != fields.params.words() as u64 * 8 || fields.params.m % 512 != 0 || fields.params.k == 0 || fields.params.n == 0 {
        bail!("{}: the header's filter parameters do not match its payload: damaged; rebuild the index", path.display());
    }
    let dir = corpus_dir.map(Path::to_path_buf).unwrap_or_else(|| opened.header.corpus.dir.clone());
    let corpus = Corpus::open(&dir).with_context(|| format!("the corpus of {}", path.display()))?;
    opened.header.corpus.check(&corpus, path)?;
    let bloom = Bloom { params: fields.params, words: BloomWords::Mapped { map: opened.map, offset: opened.payload_offset } };
    Ok(BloomIndex { bloom, fields, corpus })
}

/// Either index, opened.
pub enum Index {
    Bloom(BloomIndex),
    Exact(Exact),
}

impl Index {
    pub fn open(path: &Path, corpus_dir: Option<&Path>) -> Result<Index> {
        Ok(match index_file::kind_of(path)?.as_str() {
            BLOOM_KIND => Index::Bloom(open_bloom(path, corpus_dir)?),
            exact::KIND => Index::Exact(Exact::open(path, corpus_dir)?),
            other => bail!("{}: unknown index kind {other:?}", path.display()),
        })
    }

    pub fn corpus(&self) -> &Corpus {
        match self {
            Index::Bloom(b) => &b.corpus,
            Index::Exact(e) => &e.corpus,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Index::Bloom(_) => BLOOM_KIND,
            Index::Exact(_) => exact::KIND,
        }
    }

    /// The n a Bloom filter was built for (an exact index answers any n).
    pub fn fixed_n(&self) -> Option<usize> {
        match self {
            Index::Bloom(b) => Some(b.bloom.params.n),
            Index::Exact(_) => None,
        }
    }

    /// Resolves the n to query with: a Bloom filter's own (a different one is refused),
    /// else the one asked for.
    pub fn query_n(&self, asked: Option<usize>, default: usize) -> Result<usize> {
        match (self.fixed_n(), asked) {
            (Some(b), Some(a)) if a != b => bail!("-n {a}: this Bloom filter holds {b}-grams; query it with -n {b} or build another"),
            (Some(b), _) => Ok(b),
            (None, Some(a)) if a == 0 => bail!("-n 0: an n-gram has at least one token"),
            (None, Some(a)) => Ok(a),
            (None, None) => Ok(default),
        }
    }

    /// For every n-gram of `seq`, whether the corpus holds it (a Bloom filter may say yes
    /// wrongly, never no wrongly).
    pub fn hits(&self, seq: &[u32], n: usize) -> Vec<bool> {
        match self {
            Index::Bloom(b) => b.bloom.hits(seq),
            Index::Exact(e) => e.hits(seq, n),
        }
    }

    pub fn contains(&self, gram: &[u32]) -> bool {
        match self {
            Index::Bloom(b) => b.bloom.contains(gram),
            Index::Exact(e) => e.contains(gram),
        }
    }
}

