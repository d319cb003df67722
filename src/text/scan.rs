//! Scanning generations against an index (ALGORITHMS.md §6): per generation, the
//! fraction of its n-grams in the corpus, the longest verbatim match (tokens,
//! characters, where in the corpus), where MemFree would have intervened, and the same
//! membership and match measured on the normalized text against the corpus's normalized
//! view. MemFree (as CoTaEval implements it) tries candidates in descending logit order
//! and rejects one when the last n tokens with it form a member n-gram.

use super::index::Index;
use super::normalize::{normalize, Encoder};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One generation to scan: text (tokenized with the corpus's tokenizer) or token ids,
/// optionally with the prompt it continued.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Generation {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub prompt_tokens: Option<Vec<u32>>,
}

/// Reads a JSON-lines file of generations ({"text": …} or {"tokens": […]}, optional
/// "prompt"/"prompt_tokens"); a line that is neither is an error naming it.
pub fn read_generations(path: &Path) -> Result<Vec<Generation>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let g: Generation = serde_json::from_str(line).with_context(|| format!("{}:{}: expected a JSON object with \"text\" or \"tokens\"", path.display(), i + 1))?;
        if g.text.is_none() == g.tokens.is_none() {
            bail!("{}:{}: give exactly one of \"text\" and \"tokens\"", path.display(), i + 1);
        }
        out.push(g);
    }
    Ok(out)
}

/// Gives each generation the prompt on the same line of `prompts_path` (JSON lines as
/// `read_generations` reads them); the counts must agree.
pub fn attach_prompts(generations: &mut [Generation], prompts_path: &Path) -> Result<()> {
    let prompts = read_generations(prompts_path)?;
    if prompts.len() != generations.len() {
        bail!("{} has {} prompts for {} generations", prompts_path.display(), prompts.len(), generations.len());
    }
    for (g, p) in generations.iter_mut().zip(prompts) {
        g.prompt = p.text;
        g.prompt_tokens = p.tokens;
    }
    Ok(())
}

/// A longest verbatim match, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct MatchReport {
    pub tokens: usize,
    pub chars: usize,
    /// First token of the match in the generation.
    pub start: usize,
    pub text: String,
    pub corpus_doc: usize,
    pub corpus_offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Membership of one sequence's n-grams.
#[derive(Clone, Debug, Serialize)]
pub struct Membership {
    pub n: usize,
    pub ngrams: usize,
    pub hits: usize,
    pub hit_fraction: f64,
    /// The longest run of tokens whose every n-gram is a member (what a Bloom filter can
    /// say about verbatim length).
    pub longest_covered: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_match: Option<MatchReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerationReport {
    pub id: usize,
    pub tokens: usize,
    pub verbatim: Membership,
    /// Tokens of the generation MemFree would have replaced (each completes a member
    /// n-gram, counting n-grams that start in the prompt).
    pub memfree_interventions: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized: Option<Membership>,
    /// Token byte ranges in the generation's text and the hit flags, for the view.
    #[serde(skip)]
    pub covered: Vec<bool>,
    #[serde(skip)]
    pub text: String,
    #[serde(skip)]
    pub spans: Vec<(usize, usize)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub generations: usize,
    pub index: String,
    pub n: usize,
    pub mean_hit_fraction: f64,
    pub with_any_hit: usize,
    pub mean_longest_covered: f64,
    pub mean_longest_match: Option<f64>,
    pub max_longest_match: Option<usize>,
    pub memfree_interventions: usize,
    pub generations_memfree_changes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_mean_hit_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_mean_longest_match: Option<f64>,
}

/// Which tokens are covered by a member n-gram, and the longest run of tokens whose
/// n-grams are all members.
pub fn coverage(hits: &[bool], len: usize, n: usize) -> (Vec<bool>, usize) {
    let mut covered = vec![false; len];
    let mut longest = 0;
    let mut run = 0;
    for (i, &h) in hits.iter().enumerate() {
        if h {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
            run += 1;
            longest = longest.max(run + n - 1);
        } else {
            run = 0;
        }
    }
    (covered, longest)
}

/// The membership of `seq` (the n-grams starting at or after `from` only: a prompt's own
/// n-grams are not the generation's).
pub fn membership(index: &Index, seq: &[u32], from: usize, n: usize, encoder: Option<&Encoder>) -> Result<(Membership, Vec<bool>)> {
    let hits = index.hits(seq, n);
    let own = &hits[from.min(hits.len())..];
    let gen = &seq[from..];
    let (covered, longest_covered) = coverage(own, gen.len(), n);
    let h = own.iter().filter(|&&x| x).count();
    let longest_match = match index {
        Index::Exact(e) => match e.longest_match(gen) {
            Some(m) => {
                let text = match encoder {
                    Some(enc) => enc.decode(&gen[m.start..m.start + m.len])?,
                    None => String::new(),
                };
                let source = e.corpus.sources()?.and_then(|s| s.get(m.doc).cloned());
                Some(MatchReport { tokens: m.len, chars: text.chars().count(), start: m.start, text, corpus_doc: m.doc, corpus_offset: m.offset, source })
            }
            None => None,
        },
        Index::Bloom(_) => None,
    };
    Ok((Membership { n, ngrams: own.len(), hits: h, hit_fraction: if own.is_empty() { 0.0 } else { h as f64 / own.len() as f64 }, longest_covered, longest_match }, covered))
}

/// The positions of `seq[from..]` where MemFree would intervene: token j is rejected
/// when seq[j + 1 − n ..= j] is a member n-gram.
pub fn memfree_interventions(index: &Index, seq: &[u32], from: usize, n: usize) -> Vec<usize> {
    let hits = index.hits(seq, n);
    hits.iter().enumerate().filter(|&(s, &h)| h && s + n - 1 >= from).map(|(s, _)| s + n - 1 - from).collect()
}

/// MemFree's choice: the first of `candidates` (in descending logit order) that does not
/// complete a member n-gram after `context`, or None when every one does.
pub fn memfree_choose(index: &Index, n: usize, context: &[u32], candidates: &[u32]) -> Option<usize> {
    if context.len() + 1 < n {
        return (!candidates.is_empty()).then_some(0);
    }
    let mut gram = context[context.len() + 1 - n..].to_vec();
    gram.push(0);
    candidates.iter().position(|&c| {
        *gram.last_mut().unwrap() = c;
        !index.contains(&gram)
    })
}

/// Options of a scan.
pub struct ScanOptions<'a> {
    pub n: usize,
    pub normalized: Option<(&'a Index, usize)>,
}

/// Scans every generation (in parallel) against `index` and, when given, its
/// normalized counterpart.
pub fn scan(index: &Index, generations: &[Generation], opts: &ScanOptions) -> Result<(Vec<GenerationReport>, Summary)> {
    let corpus = index.corpus();
    let encoder = match &corpus.meta.tokenizer {
        super::corpus::Tokenizer::External => None,
        t => Some(Encoder::new(t)?),
    };
    let vocab_max = corpus.meta.dtype.max_id();
    let n = opts.n;
    let reports: Vec<GenerationReport> = generations
        .par_iter()
        .enumerate()
        .map(|(id, g)| -> Result<GenerationReport> {
            let tokenize = |text: &Option<String>, ids: &Option<Vec<u32>>| -> Result<(Vec<u32>, Vec<(usize, usize)>, String)> {
                match (text, ids) {
                    (_, Some(ids)) => {
                        if let Some(&bad) = ids.iter().find(|&&t| t as u64 > vocab_max) {
                            bail!("generation {id}: token id {bad} is beyond the corpus's {:?} ids", corpus.meta.dtype);
                        }
                        let text = match &encoder {
                            Some(e) => e.decode(ids)?,
                            None => String::new(),
                        };
                        Ok((ids.clone(), Vec::new(), text))
                    }
                    (Some(t), None) => {
                        let enc = encoder.as_ref().ok_or_else(|| anyhow::anyhow!("generation {id}: this corpus was tokenized elsewhere; give token ids"))?;
                        let (ids, spans) = enc.encode(t)?;
                        Ok((ids, spans, t.clone()))
                    }
                    (None, None) => Ok((Vec::new(), Vec::new(), String::new())),
                }
            };
            let (gen, spans, text) = tokenize(&g.text, &g.tokens)?;
            let (prompt, _, _) = tokenize(&g.prompt, &g.prompt_tokens)?;
            let mut seq = prompt.clone();
            seq.extend_from_slice(&gen);
            let (verbatim, covered) = membership(index, &seq, prompt.len(), n, encoder.as_ref())?;
            let interventions = memfree_interventions(index, &seq, prompt.len(), n);
            let normalized = match opts.normalized {
                Some((nidx, nn)) if !text.is_empty() || gen.is_empty() => {
                    let norm: Vec<u32> = normalize(&text).bytes().map(u32::from).collect();
                    Some(membership(nidx, &norm, 0, nn, Some(&Encoder::Bytes))?.0)
                }
                _ => None,
            };
            Ok(GenerationReport { id, tokens: gen.len(), verbatim, memfree_interventions: interventions, normalized, covered, text, spans })
        })
        .collect::<Result<_>>()?;
    let count = reports.len().max(1) as f64;
    let exact = matches!(index, Index::Exact(_));
    let longest: Vec<usize> = reports.iter().map(|r| r.verbatim.longest_match.as_ref().map_or(0, |m| m.tokens)).collect();
    let summary = Summary {
        generations: reports.len(),
        index: index.kind().into(),
        n,
        mean_hit_fraction: reports.iter().map(|r| r.verbatim.hit_fraction).sum::<f64>() / count,
        with_any_hit: reports.iter().filter(|r| r.verbatim.hits > 0).count(),
        mean_longest_covered: reports.iter().map(|r| r.verbatim.longest_covered as f64).sum::<f64>() / count,
        mean_longest_match: exact.then(|| longest.iter().sum::<usize>() as f64 / count),
        max_longest_match: exact.then(|| longest.iter().copied().max().unwrap_or(0)),
        memfree_interventions: reports.iter().map(|r| r.memfree_interventions.len()).sum(),
        generations_memfree_changes: reports.iter().filter(|r| !r.memfree_interventions.is_empty()).count(),
        normalized_n: opts.normalized.map(|(_, nn)| nn),
        normalized_mean_hit_fraction: opts.normalized.map(|_| reports.iter().filter_map(|r| r.normalized.as_ref()).map(|m| m.hit_fraction).sum::<f64>() / count),
        normalized_mean_longest_match: match opts.normalized {
            Some((Index::Exact(_), _)) => Some(reports.iter().filter_map(|r| r.normalized.as_ref()).map(|m| m.longest_match.as_ref().map_or(0, |x| x.chars) as f64).sum::<f64>() / count),
            _ => None,
        },
    };
    Ok((reports, summary))
}

/// Writes scan.jsonl (one report per generation), summary.json and view.html (the
/// `top` generations with the longest matches, member spans highlighted) into `out`.
pub fn write_scan(out: &Path, reports: &[GenerationReport], summary: &Summary, top: usize) -> Result<()> {
    crate::report::create_out_dir(out)?;
    crate::report::write_atomic(&out.join("scan.jsonl"), |w| {
        for r in reports {
            serde_json::to_writer(&mut *w, r)?;
            writeln!(w)?;
        }
        Ok(())
    })?;
    crate::report::write_json(&out.join("summary.json"), summary)?;
    let mut order: Vec<&GenerationReport> = reports.iter().collect();
    order.sort_by_key(|r| std::cmp::Reverse((r.verbatim.longest_match.as_ref().map_or(r.verbatim.longest_covered, |m| m.tokens), r.verbatim.hits)));
    crate::report::write_atomic(&out.join("view.html"), |w| {
        writeln!(w, "<!doctype html><meta charset=utf-8><title>rote text scan</title><style>body{{font-family:sans-serif;max-width:60em;margin:auto}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5em}}mark{{background:#fc8}}</style>")?;
        writeln!(w, "<h1>Verbatim matches</h1><p>{} generations against the {} index, n = {}: mean hit fraction {:.3}; MemFree would change {} of them. Highlighted: tokens inside an n-gram found in the corpus.</p>", summary.generations, summary.index, summary.n, summary.mean_hit_fraction, summary.generations_memfree_changes)?;
        for r in order.into_iter().take(top) {
            let longest = r.verbatim.longest_match.as_ref().map_or(String::new(), |m| format!(", longest match {} tokens (document {}{})", m.tokens, m.corpus_doc, m.source.as_ref().map_or(String::new(), |s| format!(", {}", html_escape(s)))));
            writeln!(w, "<h3>generation {}: hit fraction {:.3}{longest}</h3><pre>{}</pre>", r.id, r.verbatim.hit_fraction, highlight(&r.text, &r.spans, &r.covered))?;
        }
        Ok(())
    })
}

/// `text` with the tokens flagged in `covered` (byte ranges `spans`; bytes when empty)
/// wrapped in <mark>.
fn highlight(text: &str, spans: &[(usize, usize)], covered: &[bool]) -> String {
    let mut marked = vec![false; text.len()];
    for (i, &c) in covered.iter().enumerate() {
        let (a, b) = spans.get(i).copied().unwrap_or((i, i + 1));
        if c {
            marked[a.min(text.len())..b.min(text.len())].iter_mut().for_each(|m| *m = true);
        }
    }
    let mut out = String::new();
    let mut on = false;
    for (i, ch) in text.char_indices() {
        let m = marked[i];
        if m != on {
            out.push_str(if m { "<mark>" } else { "</mark>" });
            on = m;
        }
        out.push_str(&html_escape(&ch.to_string()));
    }
    if on {
        out.push_str("</mark>");
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

