//! `rote text`: corpora, n-gram indexes, scans, MemFree and the style demonstration.
//! Parsing and printing only; the work is in rote::text.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rote::text::corpus::{describe_raw, Boundaries, Corpus, Dtype};
use rote::text::index::{build_on, describe, gpu_for, index_targets, normalized_twin, Index, IndexSpec};
use rote::text::normalize::Encoder;
use rote::text::scan::{attach_prompts, memfree_choose, read_generations, scan, write_scan, ScanOptions};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TextCommand {
    /// Make a corpus from text files (one document per file; directories walked), or
    /// describe a token file tokenized elsewhere (--raw) without copying it.
    Import(ImportArgs),
    /// Build an n-gram index of a corpus: a Bloom filter (--kind bloom) or a suffix array
    /// with LCP (--kind exact).
    Index(IndexArgs),
    /// Per generation: the fraction of its n-grams in the corpus, the longest verbatim
    /// match, where MemFree would intervene, and the same on normalized text.
    Scan(ScanArgs),
    /// MemFree's choice among candidate next tokens (in descending logit order).
    Memfree(MemfreeArgs),
    /// The paper's point: passages from the corpus in changed styles pass the verbatim
    /// filter while the normalized metrics flag them.
    Demo(DemoArgs),
    /// Describe a corpus or an index.
    Info {
        path: PathBuf,
        /// Also count the distinct n-grams (needs an exact index).
        #[arg(short)]
        n: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ImportArgs {
    /// Text files or directories.
    files: Vec<PathBuf>,
    /// `bytes` (one token per UTF-8 byte) or the path of a Hugging Face tokenizer.json.
    #[arg(long, default_value = "bytes")]
    tokenizer: String,
    /// A token file (little-endian ids) to describe instead of importing text.
    #[arg(long, conflicts_with_all = ["files", "tokenizer"])]
    raw: Option<PathBuf>,
    /// Width of the ids in --raw: u8, u16 or u32.
    #[arg(long, default_value = "u16")]
    dtype: String,
    /// The id that separates documents in --raw (infini-gram: 65535).
    #[arg(long, conflicts_with = "offsets")]
    separator: Option<u32>,
    /// A file of little-endian u64 token indices where --raw's documents start.
    #[arg(long)]
    offsets: Option<PathBuf>,
    /// Skip the normalized view (then no normalized metrics).
    #[arg(long)]
    no_normalized: bool,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct IndexArgs {
    corpus: PathBuf,
    /// n-gram length in tokens (Bloom filters hold one n; the exact index answers any).
    #[arg(short, default_value_t = 50)]
    n: usize,
    /// bloom or exact.
    #[arg(long, default_value = "bloom")]
    kind: String,
    /// The false-positive rate the Bloom filter is sized for.
    #[arg(long, default_value_t = 1e-3)]
    fp: f64,
    /// Bloom layout: blocked (one cache line per n-gram) or classic.
    #[arg(long, default_value = "blocked")]
    layout: String,
    /// Distinct n-grams to size the filter for (default: every n-gram position).
    #[arg(long)]
    capacity: Option<u64>,
    /// Also index the corpus's normalized view (into CORPUS/normalized/).
    #[arg(long)]
    normalized: bool,
    /// Where Bloom filters are built: auto (the GPU when one is usable), cpu, cuda[:N].
    #[arg(long, default_value = "auto")]
    device: rote::device::DeviceRequest,
    /// Index file (default: CORPUS/bloom-n{N}.idx or CORPUS/exact.idx).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ScanArgs {
    index: PathBuf,
    /// JSON lines: {"text": …} or {"tokens": […]}, optionally "prompt"/"prompt_tokens".
    #[arg(long)]
    generations: PathBuf,
    /// JSON lines of prompts, one per generation (instead of "prompt" fields).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// n-gram length (a Bloom filter's own by default; 50 for an exact index).
    #[arg(short)]
    n: Option<usize>,
    /// Index of the normalized view (default: the same file name in CORPUS/normalized/,
    /// when there is one).
    #[arg(long)]
    normalized_index: Option<PathBuf>,
    /// n-gram length in characters on normalized text (default: n).
    #[arg(long)]
    normalized_n: Option<usize>,
    /// The corpus, when it moved since the index was built.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Output directory: scan.jsonl, summary.json, view.html.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Generations shown in view.html.
    #[arg(long, default_value_t = 20)]
    top: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MemfreeArgs {
    index: PathBuf,
    /// The text generated so far (tokenized with the corpus's tokenizer).
    #[arg(long)]
    context: Option<String>,
    /// The tokens generated so far, comma-separated ids.
    #[arg(long, conflicts_with = "context")]
    context_tokens: Option<String>,
    /// Candidate next tokens in descending logit order, comma-separated ids.
    #[arg(long)]
    candidates: String,
    #[arg(short)]
    n: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// The verbatim index (bloom or exact) of the corpus.
    index: PathBuf,
    #[arg(long)]
    normalized_index: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    passages: usize,
    /// Passage length in tokens.
    #[arg(long, default_value_t = 300)]
    length: usize,
    #[arg(short)]
    n: Option<usize>,
    #[arg(long)]
    normalized_n: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

fn ids(list: &str) -> Result<Vec<u32>> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse::<u32>().map_err(|_| anyhow::anyhow!("{s:?} is not a token id"))).collect()
}

pub fn text_cmd(cmd: TextCommand) -> Result<()> {
    match cmd {
        TextCommand::Import(a) => {
            if let Some(raw) = &a.raw {
                let boundaries = match (a.separator, &a.offsets) {
                    (Some(s), None) => Boundaries::Separator(s),
                    (None, Some(o)) => Boundaries::Offsets(o.clone()),
                    _ => bail!("--raw needs --separator ID or --offsets FILE to know where documents end"),
                };
                let meta = describe_raw(&a.out, raw, Dtype::parse(&a.dtype)?, boundaries)?;
                if a.json {
                    println!("{}", serde_json::to_string(&meta)?);
                } else {
                    println!("described {} ({} {:?} tokens, {} documents) as the corpus {}", raw.display(), meta.n_tokens, meta.dtype, meta.n_docs, a.out.display());
                }
                return Ok(());
            }
            if a.files.is_empty() {
                bail!("name the text files or directories to import (or --raw FILE)");
            }
            let report = rote::text::import_files(&a.files, &a.tokenizer, &a.out, !a.no_normalized)?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "imported {} documents, {} {:?} tokens{} into {}{}",
                    report.documents,
                    report.tokens,
                    report.dtype,
                    report.normalized_bytes.map_or(String::new(), |b| format!(" ({b} normalized bytes)")),
                    report.out.display(),
                    if report.skipped_binary > 0 { format!("; skipped {} binary files", report.skipped_binary) } else { String::new() }
                );
            }
            Ok(())
        }
        TextCommand::Index(a) => {
            let spec = IndexSpec::parse(&a.kind, a.n, a.fp, &a.layout, a.capacity)?;
            let gpu = gpu_for(&spec, a.device)?;
            let mut reports = Vec::new();
            for (dir, path) in index_targets(&a.corpus, &spec, a.out.as_deref(), a.normalized)? {
                let corpus = Corpus::open(&dir)?;
                let bar = rote::sched::progress(corpus.meta.n_tokens, &format!("indexing {}", dir.display()), !a.json);
                let report = build_on(&corpus, &path, &spec, gpu.as_ref(), &|k| bar.inc(k));
                bar.finish_and_clear();
                reports.push(report?);
            }
            for r in &reports {
                if a.json {
                    println!("{}", serde_json::to_string(r)?);
                } else if r.kind == "bloom" {
                    println!(
                        "{}: Bloom filter of {} {}-gram positions, {} bits ({:.1} per n-gram), {} hashes, fill {:.3}, predicted false-positive rate {:.2e} (target {:.0e}); {:.2} s on {}",
                        r.path,
                        r.ngrams_inserted.unwrap_or(0),
                        r.n.unwrap_or(0),
                        r.bits.unwrap_or(0),
                        r.bits_per_ngram.unwrap_or(0.0),
                        r.hashes.unwrap_or(0),
                        r.fill.unwrap_or(0.0),
                        r.predicted_rate.unwrap_or(0.0),
                        r.target_rate.unwrap_or(0.0),
                        r.seconds,
                        r.device
                    );
                } else {
                    println!("{}: suffix array + LCP of {} suffixes, {} bytes ({:.1} per token); {:.2} s", r.path, r.suffixes.unwrap_or(0), r.bytes, r.bytes_per_token, r.seconds);
                }
            }
            Ok(())
        }
        TextCommand::Scan(a) => {
            let index = Index::open(&a.index, a.corpus.as_deref())?;
            let n = index.query_n(a.n, 50)?;
            let mut gens = read_generations(&a.generations)?;
            if let Some(p) = &a.prompts {
                attach_prompts(&mut gens, p).with_context(|| format!("the prompts of {}", a.generations.display()))?;
            }
            let nidx_path = a.normalized_index.clone().or_else(|| normalized_twin(&a.index, index.corpus()));
            let nidx = nidx_path.as_deref().map(|p| Index::open(p, None)).transpose()?;
            let nn = match &nidx {
                Some(i) => Some(i.query_n(a.normalized_n, n)?),
                None => None,
            };
            let (reports, summary) = scan(&index, &gens, &ScanOptions { n, normalized: nidx.as_ref().zip(nn) })?;
            if let Some(out) = &a.out {
                write_scan(out, &reports, &summary, a.top)?;
            }
            if a.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "{} generations, {}-grams against the {} index: mean hit fraction {:.3}, {} with a hit, mean longest covered span {:.1} tokens{}; MemFree would change {} generations ({} tokens)",
                    summary.generations,
                    n,
                    summary.index,
                    summary.mean_hit_fraction,
                    summary.with_any_hit,
                    summary.mean_longest_covered,
                    summary.mean_longest_match.map_or(String::new(), |m| format!(", mean longest match {m:.1} tokens (max {})", summary.max_longest_match.unwrap_or(0))),
                    summary.generations_memfree_changes,
                    summary.memfree_interventions
                );
                if let Some(f) = summary.normalized_mean_hit_fraction {
                    println!(
                        "normalized ({}-character n-grams): mean hit fraction {f:.3}{}",
                        summary.normalized_n.unwrap_or(0),
                        summary.normalized_mean_longest_match.map_or(String::new(), |m| format!(", mean longest match {m:.1} characters"))
                    );
                }
                if let Some(out) = &a.out {
                    println!("wrote {}/scan.jsonl, summary.json, view.html", out.display());
                }
            }
            Ok(())
        }
        TextCommand::Memfree(a) => {
            let index = Index::open(&a.index, None)?;
            let n = index.query_n(a.n, 50)?;
            let context = match (&a.context, &a.context_tokens) {
                (Some(t), None) => Encoder::new(&index.corpus().meta.tokenizer)?.encode(t)?.0,
                (None, Some(l)) => ids(l)?,
                _ => bail!("give the text so far (--context) or its token ids (--context-tokens)"),
            };
            let candidates = ids(&a.candidates)?;
            if candidates.is_empty() {
                bail!("--candidates: no token ids");
            }
            let choice = memfree_choose(&index, n, &context, &candidates);
            if a.json {
                println!("{}", serde_json::json!({"choice": choice, "token": choice.map(|c| candidates[c]), "rejected": choice.unwrap_or(candidates.len())}));
            } else {
                match choice {
                    Some(c) => println!("candidate {c} (token {}); {c} rejected before it", candidates[c]),
                    None => println!("every candidate completes a member {n}-gram"),
                }
            }
            Ok(())
        }
        TextCommand::Demo(a) => {
            let index = Index::open(&a.index, None)?;
            let n = index.query_n(a.n, 50)?;
            let nidx_path = a.normalized_index.clone().or_else(|| normalized_twin(&a.index, index.corpus()));
            if nidx_path.is_none() && !a.json {
                eprintln!("no normalized index (build one with `rote text index {} --normalized`, same kind and n): verbatim columns only", index.corpus().dir.display());
            }
            let nidx = nidx_path.as_deref().map(|p| Index::open(p, None)).transpose()?;
            let nn = match &nidx {
                Some(i) => i.query_n(a.normalized_n, n)?,
                None => n,
            };
            let (taken, rows) = rote::text::style::demo(&index, nidx.as_ref().map(|i| (i, nn)), n, a.passages, a.length, a.seed)?;
            if a.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!("{taken} passages of {} tokens, {n}-grams verbatim, {nn}-character n-grams normalized:", a.length);
                println!("{:<11} {:>10} {:>10} {:>9} {:>10} {:>10}", "style", "verb.hits", "verb.long", "MemFree", "norm.hits", "norm.long");
                for r in &rows {
                    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
                    println!(
                        "{:<11} {:>10.3} {:>10} {:>8.0}% {:>10} {:>10}",
                        format!("{:?}", r.style).to_lowercase(),
                        r.verbatim_hit_fraction,
                        f(r.verbatim_longest_match),
                        100.0 * r.memfree_changes,
                        r.normalized_hit_fraction.map_or("-".to_string(), |v| format!("{v:.3}")),
                        f(r.normalized_longest_match)
                    );
                }
            }
            Ok(())
        }
        TextCommand::Info { path, n, json } => {
            let v = if path.is_dir() {
                Corpus::open(&path)?.describe()
            } else {
                describe(&Index::open(&path, None)?, n)
            };
            if json {
                println!("{v}");
            } else {
                print_info("", &v);
            }
            Ok(())
        }

    }
}

/// `rote text info`'s human form: one `key: value` line per field, nested fields indented.
fn print_info(indent: &str, v: &serde_json::Value) {
    if let Some(map) = v.as_object() {
        for (k, x) in map {
            match x {
                serde_json::Value::Object(_) => {
                    println!("{indent}{k}:");
                    print_info(&format!("{indent}  "), x);
                }
                serde_json::Value::String(s) => println!("{indent}{k}: {s}"),
                serde_json::Value::Null => println!("{indent}{k}: -"),
                _ => println!("{indent}{k}: {x}"),
            }
        }
    }
}
