//! The CUDA side of the Bloom filters: building a blocked filter of a corpus and
//! querying one, with kernels/text.cu. The kernels compute the CPU's hashes and bits
//! (src/text/hash.rs, src/text/bloom.rs), so a filter built here equals the CPU's bit
//! for bit (tests/gpu.rs checks it). The corpus goes up in chunks of CHUNK_TOKENS
//! tokens, each the same task segments the CPU build uses; the filter stays on the
//! device until it is done.

use super::bloom::{corpus_tasks, Bloom, BloomParams, Layout, BLOCK_BITS};
use super::corpus::{Corpus, Dtype};
use super::hash::{BASE1, BASE2};
use crate::device::cuda::CudaBackend;
use anyhow::{bail, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Tokens uploaded per launch (at most 512 MB of u32 ids).
const CHUNK_TOKENS: usize = 1 << 27;
/// n-grams per thread (TEXT_STRIP in kernels/text.cu).
const STRIP: u64 = 64;
const THREADS: u32 = 256;

fn launch_for(grams: u64) -> LaunchConfig {
    let threads = grams.div_ceil(STRIP);
    LaunchConfig { grid_dim: (threads.div_ceil(THREADS as u64) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Segment starts (relative to `lo`) and the running n-gram counts of `segments`.
fn segment_arrays(segments: &[(usize, usize)], lo: usize, n: usize) -> (Vec<u64>, Vec<u64>) {
    let starts = segments.iter().map(|&(a, _)| (a - lo) as u64).collect();
    let mut first = Vec::with_capacity(segments.len() + 1);
    first.push(0u64);
    for &(a, b) in segments {
        first.push(first.last().unwrap() + (b + 1 - a - n) as u64);
    }
    (starts, first)
}

fn tops(n: usize) -> (u64, u64) {
    (BASE1.wrapping_pow(n as u32 - 1), BASE2.wrapping_pow(n as u32 - 1))
}

/// Builds the blocked filter of every n-gram inside a document of `corpus` on the GPU.
pub fn build_bloom(gpu: &CudaBackend, params: BloomParams, corpus: &Corpus, progress: &(dyn Fn(u64) + Sync)) -> Result<Bloom> {
    build_bloom_chunked(gpu, params, corpus, CHUNK_TOKENS, progress)
}

/// `build_bloom` uploading about `chunk_tokens` tokens per launch (tests use small
/// chunks to cross chunk boundaries).
pub fn build_bloom_chunked(gpu: &CudaBackend, params: BloomParams, corpus: &Corpus, chunk_tokens: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<Bloom> {
    if params.layout != Layout::Blocked {
        bail!("the GPU builds blocked filters only: use --layout blocked, or --device cpu for a classic one");
    }
    let n = params.n;
    let s = gpu.stream();
    let mut words: CudaSlice<u64> = s.alloc_zeros(params.words())?;
    let name = match corpus.meta.dtype {
        Dtype::U8 => "bloom_insert_u8",
        Dtype::U16 => "bloom_insert_u16",
        Dtype::U32 => "bloom_insert_u32",
    };
    let f = gpu.function("text", name)?;
    let width = corpus.meta.dtype.bytes();
    let bytes = corpus.bytes();
    let segments: Vec<(usize, usize)> = corpus_tasks(corpus, n).into_iter().flatten().collect();
    let (top1, top2) = tops(n);
    let blocks = params.m / BLOCK_BITS;
    let (n32, k32) = (n as u32, params.k);
    let mut i = 0;
    while i < segments.len() {
        let lo = segments[i].0;
        let mut j = i + 1;
        while j < segments.len() && segments[j].1 - lo <= chunk_tokens {
            j += 1;
        }
        let hi = segments[j - 1].1;
        let (starts, first) = segment_arrays(&segments[i..j], lo, n);
        let grams = *first.last().unwrap();
        let tokens_dev = s.clone_htod(&bytes[lo * width..hi * width])?;
        let starts_dev = s.clone_htod(&starts)?;
        let first_dev = s.clone_htod(&first)?;
        let segs = (j - i) as u32;
        let mut b = s.launch_builder(&f);
        b.arg(&tokens_dev).arg(&starts_dev).arg(&first_dev).arg(&segs).arg(&grams).arg(&n32);
        b.arg(&top1).arg(&top2).arg(&mut words).arg(&blocks).arg(&k32);
        // SAFETY: every segment's n-grams lie inside the uploaded tokens (a segment ends
        // at or before `hi`), and each block index is below `blocks` (⌊h1·B / 2^64⌋).
        unsafe { b.launch(launch_for(grams)) }?;
        s.synchronize()?;
        progress((hi - lo) as u64);
        i = j;
    }
    let host = s.clone_dtoh(&words)?;
    s.synchronize()?;
    Ok(Bloom::from_words(params, &host))
}

/// A blocked filter held on the GPU, for bulk queries.
pub struct GpuBloom<'a> {
    gpu: &'a CudaBackend,
    params: BloomParams,
    words: CudaSlice<u64>,
}

impl<'a> GpuBloom<'a> {
    pub fn upload(gpu: &'a CudaBackend, bloom: &Bloom) -> Result<GpuBloom<'a>> {
        if bloom.params.layout != Layout::Blocked {
            bail!("the GPU queries blocked filters only");
        }
        let words = gpu.stream().clone_htod(bloom.words())?;
        Ok(GpuBloom { gpu, params: bloom.params, words })
    }

    /// For every n-gram of every sequence, whether the filter holds it (each sequence's
    /// answers as `Bloom::hits` gives them).
    pub fn hits_many(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<bool>>> {
        let n = self.params.n;
        let mut concat = Vec::new();
        let mut segments = Vec::new();
        for q in seqs {
            if q.len() >= n {
                segments.push((concat.len(), concat.len() + q.len()));
            }
            concat.extend_from_slice(q);
        }
        let mut out: Vec<Vec<bool>> = seqs.iter().map(|q| vec![false; (q.len() + 1).saturating_sub(n)]).collect();
        if segments.is_empty() {
            return Ok(out);
        }
        let (starts, first) = segment_arrays(&segments, 0, n);
        let grams = *first.last().unwrap();
        let s = self.gpu.stream();
        let f = self.gpu.function("text", "bloom_query_u32")?;
        let tokens_dev = s.clone_htod(&concat)?;
        let starts_dev = s.clone_htod(&starts)?;
        let first_dev = s.clone_htod(&first)?;
        let mut hits_dev: CudaSlice<u8> = s.alloc_zeros(grams as usize)?;
        let (top1, top2) = tops(n);
        let blocks = self.params.m / BLOCK_BITS;
        let (segs, n32, k32) = (segments.len() as u32, n as u32, self.params.k);
        let mut b = s.launch_builder(&f);
        b.arg(&tokens_dev).arg(&starts_dev).arg(&first_dev).arg(&segs).arg(&grams).arg(&n32);
        b.arg(&top1).arg(&top2).arg(&self.words).arg(&blocks).arg(&k32).arg(&mut hits_dev);
        // SAFETY: as in build_bloom; hits_dev holds one byte per n-gram.
        unsafe { b.launch(launch_for(grams)) }?;
        let hits = s.clone_dtoh(&hits_dev)?;
        s.synchronize()?;
        let mut g = 0usize;
        for (q, o) in seqs.iter().zip(out.iter_mut()) {
            if q.len() >= n {
                for h in o.iter_mut() {
                    *h = hits[g] != 0;
                    g += 1;
                }
            }
        }
        Ok(out)
    }
}
