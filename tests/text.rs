//! Verbatim memorization of text (ALGORITHMS.md §6): the n-gram hash against its
//! closed form, Bloom filters against exact sets (no false negatives; the false-positive
//! rate against the classic and blocked formulas at the exactly counted number of
//! distinct n-grams), the suffix-array index against brute-force search, scans and
//! MemFree on planted passages, and bad input from the CLI.

mod common;

use common::{json, p, rote_err, rote_ok, tempdir};
use rote::text::bloom::{blocked_rate, classic_rate, Layout};
use rote::text::corpus::{write_corpus, Corpus, Dtype, Tokenizer};
use rote::text::hash::{finish, for_each_ngram, hash_ngram, BASE1, BASE2};
use rote::text::index::{build, Index, IndexSpec};
use rote::text::normalize::normalize;
use rote::text::scan::{memfree_choose, memfree_interventions};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// xorshift64*: the tests' own generator, independent of rote's.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random documents of `lens` tokens over `vocab` ids.
fn random_docs(rng: &mut Rng, lens: &[usize], vocab: u64) -> Vec<Vec<u32>> {
    lens.iter().map(|&l| (0..l).map(|_| rng.below(vocab) as u32).collect()).collect()
}

fn write_docs(dir: &Path, docs: &[Vec<u32>], dtype: Dtype) -> Corpus {
    let mut tokens = Vec::new();
    let mut starts = Vec::new();
    for d in docs {
        starts.push(tokens.len() as u64);
        tokens.extend_from_slice(d);
    }
    write_corpus(dir, &tokens, dtype, &starts, Tokenizer::External, None).unwrap();
    Corpus::open(dir).unwrap()
}

fn build_open(corpus: &Corpus, name: &str, spec: IndexSpec) -> Index {
    let path = corpus.dir.join(name);
    build(corpus, &path, &spec, &|_| {}).unwrap();
    Index::open(&path, None).unwrap()
}

/// Every n-gram inside a document, as a set.
fn ngram_set(docs: &[Vec<u32>], n: usize) -> HashSet<Vec<u32>> {
    docs.iter().flat_map(|d| d.windows(n).map(<[u32]>::to_vec)).collect()
}

#[test]
fn rolling_hash_equals_the_closed_form() {
    // P_b = Σ (t_j + 1) b^{n−1−j} mod 2^64, computed term by term with explicit powers.
    let closed = |gram: &[u32]| {
        let n = gram.len();
        let poly = |b: u64| gram.iter().enumerate().fold(0u64, |acc, (j, &t)| acc.wrapping_add((t as u64 + 1).wrapping_mul(b.wrapping_pow((n - 1 - j) as u32))));
        finish(poly(BASE1), poly(BASE2))
    };
    let mut rng = Rng(7);
    for n in [1usize, 2, 3, 13, 50] {
        let seq: Vec<u32> = (0..300).map(|_| rng.below(70000) as u32).collect();
        let mut seen = 0;
        for_each_ngram(&seq, n, |s, h1, h2| {
            let gram = &seq[s..s + n];
            assert_eq!((h1, h2), closed(gram), "n={n} start={s}");
            assert_eq!((h1, h2), hash_ngram(gram));
            seen += 1;
        });
        assert_eq!(seen, seq.len() - n + 1);
    }
    // A leading zero id is not the shorter n-gram.
    assert_ne!(hash_ngram(&[0, 5]), hash_ngram(&[5]));
}

#[test]
fn bloom_filters_have_no_false_negatives_and_hold_exactly_the_document_ngrams() {
    let dir = tempdir();
    let mut rng = Rng(11);
    let lens: Vec<usize> = (0..40).map(|_| 1 + rng.below(400) as usize).collect();
    let docs = random_docs(&mut rng, &lens, 300);
    let corpus = write_docs(dir.path(), &docs, Dtype::U16);
    for (layout, name) in [(Layout::Blocked, "b.idx"), (Layout::Classic, "c.idx")] {
        for n in [1usize, 4, 9] {
            let index = build_open(&corpus, name, IndexSpec::Bloom { n, fp: 1e-4, layout, capacity: None });
            for d in &docs {
                assert!(index.hits(d, n).iter().all(|&h| h), "{layout:?} n={n}: a document n-gram reported absent");
            }
            // The n-grams that straddle two documents are not members: at 1e-4 nearly
            // all of them must be reported absent.
            let set = ngram_set(&docs, n);
            let mut straddling = 0;
            let mut wrongly_present = 0;
            for w in docs.windows(2) {
                let mut joined = w[0][w[0].len().saturating_sub(n - 1)..].to_vec();
                joined.extend_from_slice(&w[1][..w[1].len().min(n - 1)]);
                for gram in joined.windows(n) {
                    if !set.contains(gram) {
                        straddling += 1;
                        wrongly_present += index.contains(gram) as usize;
                    }
                }
            }
            assert!(wrongly_present <= 1 + straddling / 100, "{layout:?} n={n}: {wrongly_present} of {straddling} straddling n-grams present");
        }
    }
}

#[test]
fn bloom_false_positive_rate_matches_the_formulas_at_the_exact_distinct_count() {
    let dir = tempdir();
    let mut rng = Rng(23);
    let n = 6;
    // A small vocabulary with repeated passages, so that positions overcount the
    // distinct n-grams and the filter is sized by the exact distinct count.
    let mut docs = random_docs(&mut rng, &vec![2000; 60], 40);
    for i in 0..20 {
        let copy = docs[i][100..900].to_vec();
        docs.push(copy);
    }
    let set = ngram_set(&docs, n);
    let distinct = set.len() as u64;
    let corpus = write_docs(dir.path(), &docs, Dtype::U8);
    assert!(corpus.ngram_positions(n) > distinct + 10_000);
    let trials = 400_000u64;
    let mut queries = Vec::with_capacity(trials as usize);
    while (queries.len() as u64) < trials {
        let gram: Vec<u32> = (0..n).map(|_| rng.below(256) as u32).collect();
        if !set.contains(&gram) {
            queries.push(gram);
        }
    }
    for (layout, fp) in [(Layout::Classic, 0.01), (Layout::Blocked, 0.01), (Layout::Blocked, 0.002)] {
        let index = build_open(&corpus, "f.idx", IndexSpec::Bloom { n, fp, layout, capacity: Some(distinct) });
        let Index::Bloom(b) = &index else { unreachable!() };
        let params = b.bloom.params;
        let predicted = match layout {
            Layout::Classic => classic_rate(params.m, params.k, distinct),
            Layout::Blocked => blocked_rate(params.m, params.k, distinct),
        };
        assert!(predicted <= fp * 1.0001, "{layout:?}: sized at {predicted} for target {fp}");
        let observed = queries.iter().filter(|q| index.contains(q)).count() as f64 / trials as f64;
        let sigma = (predicted * (1.0 - predicted) / trials as f64).sqrt();
        eprintln!("{layout:?} fp={fp}: observed {observed}, predicted {predicted} (σ {sigma})");
        assert!((observed - predicted).abs() < 5.0 * sigma + 0.02 * predicted, "{layout:?} fp={fp}: observed {observed}, predicted {predicted} (σ {sigma})");
        // The filter's own estimate of its distinct items, from its fill.
        let est = b.bloom.estimated_items();
        assert!((est / distinct as f64 - 1.0).abs() < 0.03, "{layout:?}: estimated {est} distinct, counted {distinct}");
    }
    // The classic formula alone against a direct simulation of independent bits:
    // blocked filters fill unevenly, so at the same m and k they do worse.
    let (m, k) = (1 << 20, 7);
    assert!(blocked_rate(m, k, 100_000) > classic_rate(m, k, 100_000));
}

/// Brute force: occurrences of `pattern` inside documents.
fn brute_count(docs: &[Vec<u32>], pattern: &[u32]) -> usize {
    docs.iter().map(|d| d.windows(pattern.len()).filter(|w| *w == pattern).count()).sum()
}

/// Brute force: the longest prefix of `gen[i..]` inside some document.
fn brute_ms(docs: &[Vec<u32>], gen: &[u32], i: usize) -> usize {
    let mut best = 0;
    for d in docs {
        for s in 0..d.len() {
            let l = d[s..].iter().zip(&gen[i..]).take_while(|(a, b)| a == b).count();
            best = best.max(l);
        }
    }
    best
}

#[test]
fn the_suffix_array_answers_like_brute_force_search() {
    let dir = tempdir();
    let mut rng = Rng(5);
    let lens: Vec<usize> = (0..25).map(|_| rng.below(120) as usize).collect();
    let docs = random_docs(&mut rng, &lens, 4);
    let corpus = write_docs(dir.path(), &docs, Dtype::U32);
    let index = build_open(&corpus, "exact.idx", IndexSpec::Exact);
    let Index::Exact(e) = &index else { unreachable!() };
    assert_eq!(e.sa().len() as u64, corpus.meta.n_tokens);
    for _ in 0..400 {
        let len = 1 + rng.below(9) as usize;
        let pattern: Vec<u32> = (0..len).map(|_| rng.below(4) as u32).collect();
        assert_eq!(e.count(&pattern), brute_count(&docs, &pattern), "{pattern:?}");
    }
    for _ in 0..30 {
        // Generations that mix corpus passages with noise.
        let mut gen: Vec<u32> = (0..20).map(|_| rng.below(5) as u32).collect();
        let d = &docs[rng.below(docs.len() as u64) as usize];
        if d.len() > 30 {
            let s = rng.below(d.len() as u64 - 30) as usize;
            gen.extend_from_slice(&d[s..s + 30]);
        }
        gen.extend((0..10).map(|_| rng.below(4) as u32));
        let ms = e.matching_statistics(&gen);
        for i in 0..gen.len() {
            assert_eq!(ms[i].0, brute_ms(&docs, &gen, i), "matching statistic {i} of {gen:?}");
        }
        let best = (0..gen.len()).map(|i| brute_ms(&docs, &gen, i)).max().unwrap();
        let m = e.longest_match(&gen).map_or(0, |m| {
            // The reported corpus position really holds the match.
            let doc = &docs[m.doc];
            assert_eq!(&doc[m.offset as usize..m.offset as usize + m.len], &gen[m.start..m.start + m.len]);
            m.len
        });
        assert_eq!(m, best);
        for n in [1usize, 3, 8] {
            let set = ngram_set(&docs, n);
            let want: Vec<bool> = gen.windows(n).map(|w| set.contains(w)).collect();
            assert_eq!(e.hits(&gen, n), want, "n={n}");
        }
    }
    for n in [1usize, 2, 5, 12] {
        let positions: u64 = docs.iter().map(|d| d.len().saturating_sub(n - 1) as u64).sum();
        assert_eq!(e.ngram_counts(n), (ngram_set(&docs, n).len() as u64, positions), "n={n}");
    }
}

#[test]
fn a_bloom_filter_reports_every_ngram_the_exact_index_finds() {
    let dir = tempdir();
    let mut rng = Rng(99);
    let docs = random_docs(&mut rng, &vec![500; 30], 4);
    let corpus = write_docs(dir.path(), &docs, Dtype::U8);
    let exact = build_open(&corpus, "exact.idx", IndexSpec::Exact);
    let n = 7;
    let bloom = build_open(&corpus, "b.idx", IndexSpec::Bloom { n, fp: 1e-3, layout: Layout::Blocked, capacity: None });
    for _ in 0..50 {
        let gen: Vec<u32> = (0..200).map(|_| rng.below(5) as u32).collect();
        let (he, hb) = (exact.hits(&gen, n), bloom.hits(&gen, n));
        assert!(he.iter().any(|&h| h));
        assert!(he.iter().zip(&hb).all(|(&e, &b)| !e || b));
    }
}

#[test]
fn memfree_rejects_exactly_the_candidates_that_complete_a_member_ngram() {
    let dir = tempdir();
    let docs = vec![vec![1, 2, 3, 4, 5], vec![1, 2, 3, 9], vec![7, 7, 7]];
    let corpus = write_docs(dir.path(), &docs, Dtype::U8);
    let index = build_open(&corpus, "exact.idx", IndexSpec::Exact);
    // After [.., 2, 3], with n = 3: 4 and 9 complete member trigrams; 5 does not.
    assert_eq!(memfree_choose(&index, 3, &[0, 1, 2, 3], &[4, 9, 5, 6]), Some(2));
    assert_eq!(memfree_choose(&index, 3, &[2, 3], &[4, 9]), None);
    // "3 4 5" would cross into the next document? No: [4, 5, 1] is not inside any.
    assert_eq!(memfree_choose(&index, 3, &[4, 5], &[1]), Some(0));
    // Replay: the prompt's own trigram is not an intervention; the generated token that
    // completes one is, even when the trigram starts in the prompt.
    let seq = [1, 2, 3, 4, 8, 7, 7, 7];
    assert_eq!(memfree_interventions(&index, &seq, 3, 3), vec![0, 4]);
    let bloom = build_open(&corpus, "b.idx", IndexSpec::Bloom { n: 3, fp: 1e-6, layout: Layout::Blocked, capacity: None });
    assert_eq!(memfree_interventions(&bloom, &seq, 3, 3), vec![0, 4]);
}

#[test]
fn normalization_folds_case_spacing_and_punctuation() {
    assert_eq!(normalize("  Hello,   WORLD!\n\tIt's  fine.  "), "hello world its fine");
    assert_eq!(normalize("ÉTÉ — Straße"), "été straße");
    assert_eq!(normalize("a\u{00a0}b"), "a b");
    assert_eq!(normalize("!!!"), "");
}

/// A directory of text files, one document each, from a word list.
fn text_files(dir: &Path, docs: usize, words: usize, seed: u64) -> Vec<String> {
    let vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"];
    let mut rng = Rng(seed);
    std::fs::create_dir_all(dir).unwrap();
    (0..docs)
        .map(|i| {
            let text: Vec<&str> = (0..words).map(|_| vocab[rng.below(vocab.len() as u64) as usize]).collect();
            let text = text.join(" ") + ".\n";
            std::fs::write(dir.join(format!("doc{i:03}.txt")), &text).unwrap();
            text
        })
        .collect()
}

#[test]
fn scans_find_planted_passages_and_their_sources_and_nothing_across_documents() {
    let dir = tempdir();
    let src = dir.path().join("src");
    let texts = text_files(&src, 12, 400, 3);
    // A binary file is skipped, not imported.
    std::fs::write(src.join("blob.bin"), [0u8, 1, 2, 3]).unwrap();
    let c = dir.path().join("corpus");
    let out = json(&rote_ok(&["text", "import", p(&src), "--out", p(&c), "--json"]));
    assert_eq!(out["documents"], 12);
    assert_eq!(out["skipped_binary"], 1);
    rote_ok(&["text", "index", p(&c), "--kind", "exact", "--normalized"]);
    rote_ok(&["text", "index", p(&c), "-n", "20", "--normalized"]);

    let planted = &texts[4][200..700];
    // The end of document 6 run into the start of document 7: each half is in the
    // corpus, the whole is not.
    let t6 = &texts[6];
    let straddle = format!("{}{}", &t6[t6.len() - 60..], &texts[7][..60]);
    let novel = "zulu yankee xray whiskey victor uniform tango sierra romeo quebec zulu yankee xray";
    let shouting = planted.to_uppercase();
    let gens = dir.path().join("gens.jsonl");
    let lines: Vec<String> = [planted, straddle.as_str(), novel, shouting.as_str()].iter().map(|t| serde_json::json!({"text": t}).to_string()).collect();
    std::fs::write(&gens, lines.join("\n") + "\n").unwrap();

    let scan_dir = dir.path().join("scan");
    let summary = json(&rote_ok(&["text", "scan", p(&c.join("exact.idx")), "-n", "20", "--generations", p(&gens), "--out", p(&scan_dir), "--json"]));
    assert_eq!(summary["generations"], 4);
    assert_eq!(json(&std::fs::read_to_string(scan_dir.join("summary.json")).unwrap())["generations"], 4);
    let reports: Vec<serde_json::Value> = std::fs::read_to_string(scan_dir.join("scan.jsonl")).unwrap().lines().map(json).collect();
    let v = |i: usize| &reports[i]["verbatim"];
    assert_eq!(v(0)["hit_fraction"], 1.0);
    assert_eq!(v(0)["longest_match"]["tokens"], 500);
    assert_eq!(v(0)["longest_match"]["corpus_doc"], 4);
    assert_eq!(v(0)["longest_match"]["corpus_offset"], 200);
    assert!(v(0)["longest_match"]["source"].as_str().unwrap().ends_with("doc004.txt"));
    assert_eq!(reports[0]["memfree_interventions"].as_array().unwrap().len(), 500 - 19);
    // The straddling text: its longest match is at most one side (60 bytes, or a little
    // more where the other document happens to continue it).
    let straddle_longest = v(1)["longest_match"]["tokens"].as_u64().unwrap();
    assert!((60..100).contains(&straddle_longest), "{straddle_longest}");
    assert!(v(1)["hit_fraction"].as_f64().unwrap() < 1.0);
    assert_eq!(v(2)["hits"], 0);
    assert!(v(2)["longest_match"]["tokens"].as_u64().unwrap() < 20);
    // Shouting hides the passage from the verbatim index, not from the normalized one.
    assert!(v(3)["hit_fraction"].as_f64().unwrap() < 0.05);
    assert_eq!(reports[3]["normalized"]["hit_fraction"], 1.0);
    assert_eq!(reports[0]["normalized"]["hit_fraction"], 1.0);
    let html = std::fs::read_to_string(scan_dir.join("view.html")).unwrap();
    assert!(html.contains("<mark>"));

    // The Bloom filter agrees on the planted passage and the novel text.
    let bloom = json(&rote_ok(&["text", "scan", p(&c.join("bloom-n20.idx")), "--generations", p(&gens), "--json"]));
    assert_eq!(bloom["n"], 20);
    assert!(bloom["mean_hit_fraction"].as_f64().unwrap() >= summary["mean_hit_fraction"].as_f64().unwrap());

    // The demonstration on the same corpus: verbatim passages are caught, upper-cased
    // ones escape the verbatim filter but not the normalized one.
    let rows = json(&rote_ok(&["text", "demo", p(&c.join("bloom-n20.idx")), "--passages", "30", "--length", "200", "--json"]));
    let row = |s: &str| rows.as_array().unwrap().iter().find(|r| r["style"] == s).unwrap().clone();
    assert_eq!(row("verbatim")["verbatim_hit_fraction"], 1.0);
    assert!(row("upper")["verbatim_hit_fraction"].as_f64().unwrap() < 0.05);
    assert!(row("upper")["normalized_hit_fraction"].as_f64().unwrap() > 0.99);
    assert!(row("spacing")["normalized_hit_fraction"].as_f64().unwrap() > 0.99);
}

#[test]
fn memfree_from_the_cli_names_the_first_safe_candidate() {
    let dir = tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "abcdef").unwrap();
    let c = dir.path().join("c");
    rote_ok(&["text", "import", p(&src), "--out", p(&c)]);
    rote_ok(&["text", "index", p(&c), "--kind", "exact"]);
    // After "abc" with n = 4, 'd' (100) completes "abcd"; 'x' (120) does not.
    let out = json(&rote_ok(&["text", "memfree", p(&c.join("exact.idx")), "-n", "4", "--context", "abc", "--candidates", "100,120", "--json"]));
    assert_eq!(out["choice"], 1);
    assert_eq!(out["token"], 120);
}

#[test]
fn a_tokenizer_json_tokenizes_the_corpus_and_the_generations() {
    let dir = tempdir();
    let words = ["[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog"];
    let vocab: serde_json::Map<String, serde_json::Value> = words.iter().enumerate().map(|(i, w)| (w.to_string(), i.into())).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let tok_path = dir.path().join("tokenizer.json");
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "the cat sat on the mat").unwrap();
    std::fs::write(src.join("b.txt"), "a dog sat on a cat").unwrap();
    let c = dir.path().join("c");
    rote_ok(&["text", "import", p(&src), "--tokenizer", p(&tok_path), "--out", p(&c)]);
    let corpus = Corpus::open(&c).unwrap();
    assert_eq!(corpus.meta.dtype, Dtype::U8);
    assert_eq!(corpus.tokens().to_vec(0, corpus.n_tokens()), vec![1, 2, 3, 4, 1, 5, 6, 7, 3, 4, 6, 2]);
    rote_ok(&["text", "index", p(&c), "--kind", "exact"]);
    let gens = dir.path().join("g.jsonl");
    std::fs::write(&gens, "{\"text\": \"dog sat on the mat\"}\n").unwrap();
    let s = json(&rote_ok(&["text", "scan", p(&c.join("exact.idx")), "-n", "3", "--generations", p(&gens), "--json"]));
    // "sat on the", "on the mat" are in a.txt; "dog sat on" is in b.txt.
    assert_eq!(s["mean_hit_fraction"], 1.0);
    assert_eq!(s["max_longest_match"], 4);
}

#[test]
fn bad_input_is_refused_by_name_and_nothing_is_overwritten() {
    let dir = tempdir();
    let src = dir.path().join("src");
    text_files(&src, 3, 50, 1);
    let c = dir.path().join("c");
    rote_ok(&["text", "import", p(&src), "--out", p(&c)]);
    let tokens_before = std::fs::read(c.join("tokens.bin")).unwrap();
    let meta_before = std::fs::read(c.join("corpus.json")).unwrap();

    // Importing over an existing corpus.
    let e = rote_err(&["text", "import", p(&src), "--out", p(&c)]);
    assert!(e.contains("already holds a corpus"), "{e}");
    // An n longer than every document.
    let e = rote_err(&["text", "index", p(&c), "-n", "100000"]);
    assert!(e.contains("longer than every document"), "{e}");
    // An index written over the corpus's own tokens.
    let e = rote_err(&["text", "index", p(&c), "--out", p(&c.join("tokens.bin"))]);
    assert!(e.contains("corpus's own files"), "{e}");
    assert_eq!(std::fs::read(c.join("tokens.bin")).unwrap(), tokens_before);
    assert_eq!(std::fs::read(c.join("corpus.json")).unwrap(), meta_before);
    let e = rote_err(&["text", "index", p(&c), "--fp", "1.5"]);
    assert!(e.contains("--fp"), "{e}");

    rote_ok(&["text", "index", p(&c), "-n", "8"]);
    let idx = c.join("bloom-n8.idx");
    let gens = dir.path().join("g.jsonl");
    std::fs::write(&gens, "{\"text\": \"alpha bravo\"}\n{\"neither\": 1}\n").unwrap();
    let e = rote_err(&["text", "scan", p(&idx), "--generations", p(&gens)]);
    assert!(e.contains("g.jsonl:2"), "{e}");
    std::fs::write(&gens, "{\"tokens\": [1, 2, 300]}\n").unwrap();
    let e = rote_err(&["text", "scan", p(&idx), "--generations", p(&gens)]);
    assert!(e.contains("token id 300"), "{e}");
    std::fs::write(&gens, "{\"text\": \"alpha bravo charlie\"}\n").unwrap();
    let e = rote_err(&["text", "scan", p(&idx), "-n", "9", "--generations", p(&gens)]);
    assert!(e.contains("holds 8-grams"), "{e}");

    // A truncated index, and an index used with another corpus.
    let bytes = std::fs::read(&idx).unwrap();
    let cut = dir.path().join("cut.idx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = rote_err(&["text", "scan", p(&cut), "--generations", p(&gens)]);
    assert!(e.contains("cut.idx") && e.contains("truncated"), "{e}");
    std::fs::write(&cut, b"not an index at all").unwrap();
    let e = rote_err(&["text", "info", p(&cut)]);
    assert!(e.contains("cut.idx"), "{e}");
    let other_src = dir.path().join("other_src");
    text_files(&other_src, 3, 50, 2);
    let other = dir.path().join("other");
    rote_ok(&["text", "import", p(&other_src), "--out", p(&other)]);
    let e = rote_err(&["text", "scan", p(&idx), "--corpus", p(&other), "--generations", p(&gens)]);
    assert!(e.contains("bloom-n8.idx") && e.contains("was built from the corpus"), "{e}");

    // A corpus whose token file was changed behind its back.
    std::fs::write(c.join("tokens.bin"), &tokens_before[..tokens_before.len() - 1]).unwrap();
    let e = rote_err(&["text", "scan", p(&idx), "--generations", p(&gens)]);
    assert!(e.contains("tokens.bin") && e.contains("truncated"), "{e}");

    // Raw token files: a size that is not whole tokens, a separator that does not fit.
    let raw = dir.path().join("raw.bin");
    std::fs::write(&raw, [1u8, 0, 2]).unwrap();
    let e = rote_err(&["text", "import", "--raw", p(&raw), "--dtype", "u16", "--separator", "0", "--out", p(&dir.path().join("r"))]);
    assert!(e.contains("raw.bin") && e.contains("whole number"), "{e}");
    std::fs::write(&raw, [1u8, 0, 2, 0]).unwrap();
    let e = rote_err(&["text", "import", "--raw", p(&raw), "--dtype", "u8", "--separator", "300", "--out", p(&dir.path().join("r"))]);
    assert!(e.contains("separator 300"), "{e}");
}

#[test]
fn a_raw_token_file_with_separators_is_indexed_where_it_lies() {
    let dir = tempdir();
    // Three documents separated by 65535, as infini-gram's token files are.
    let ids: Vec<u16> = vec![65535, 5, 6, 7, 8, 65535, 5, 6, 9, 65535, 7, 8, 5];
    let raw = dir.path().join("tokens.u16");
    std::fs::write(&raw, ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let c = dir.path().join("c");
    let meta = json(&rote_ok(&["text", "import", "--raw", p(&raw), "--dtype", "u16", "--separator", "65535", "--out", p(&c), "--json"]));
    assert_eq!(meta["n_docs"], 3);
    rote_ok(&["text", "index", p(&c), "--kind", "exact"]);
    let gens = dir.path().join("g.jsonl");
    // [9, 7] only straddles a separator; [7, 8, 5] is the last document.
    std::fs::write(&gens, "{\"tokens\": [9, 7, 8]}\n{\"tokens\": [7, 8, 5]}\n").unwrap();
    let scan_dir = dir.path().join("s");
    rote_ok(&["text", "scan", p(&c.join("exact.idx")), "-n", "2", "--generations", p(&gens), "--out", p(&scan_dir)]);
    let reports: Vec<serde_json::Value> = std::fs::read_to_string(scan_dir.join("scan.jsonl")).unwrap().lines().map(json).collect();
    assert_eq!(reports[0]["verbatim"]["hits"], 1);
    assert_eq!(reports[0]["verbatim"]["longest_match"]["tokens"], 2);
    assert_eq!(reports[1]["verbatim"]["longest_match"]["tokens"], 3);
    assert_eq!(reports[1]["verbatim"]["longest_match"]["corpus_doc"], 2);
    let counts: HashMap<String, serde_json::Value> = serde_json::from_value(json(&rote_ok(&["text", "info", p(&c.join("exact.idx")), "-n", "2", "--json"]))).unwrap();
    // 2-grams: [5,6] [6,7] [7,8] | [5,6] [6,9] | [7,8] [8,5] → 7 positions, 5 distinct.
    assert_eq!(counts["ngram_positions"], 7);
    assert_eq!(counts["distinct_ngrams"], 5);
}

#[test]
fn the_partitioned_build_sets_the_same_bits_as_atomic_inserts() {
    use rote::text::bloom::{build_from_corpus, BloomBuilder, BloomParams};
    let dir = tempdir();
    let mut rng = Rng(41);
    // Short documents and one long enough to be cut into overlapping pieces.
    let mut lens: Vec<usize> = (0..300).map(|_| rng.below(50) as usize).collect();
    lens.push(3 << 20);
    let docs = random_docs(&mut rng, &lens, 1000);
    let corpus = write_docs(dir.path(), &docs, Dtype::U16);
    for layout in [Layout::Blocked, Layout::Classic] {
        let params = BloomParams::for_rate(layout, 5, corpus.ngram_positions(5), 1e-2).unwrap();
        let done = std::sync::atomic::AtomicU64::new(0);
        let fast = build_from_corpus(params, &corpus, &|k| {
            done.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
        });
        let slow = BloomBuilder::new(params);
        for d in &docs {
            slow.insert_seq(d);
        }
        let slow = slow.finish();
        assert!(fast.words() == slow.words(), "{layout:?}: the filters differ");
        assert!(done.into_inner() >= corpus.meta.n_tokens - 300 * 50);
        let probe: Vec<u32> = (0..200_000).map(|_| rng.below(1000) as u32).collect();
        assert_eq!(fast.hits_par(&probe), fast.hits(&probe));
        assert_eq!(fast.hits(&probe), slow.hits(&probe));
    }
}

/// The real-text corpus, from scripts/install-text-corpus.sh (the test command sets
/// ROTE_TEXT_CORPUS); None, with a note, when it is not installed.
fn real_corpus() -> Option<std::path::PathBuf> {
    match std::env::var_os("ROTE_TEXT_CORPUS") {
        Some(p) => Some(p.into()),
        None => {
            eprintln!("ROTE_TEXT_CORPUS is not set (scripts/install-text-corpus.sh): skipping the real-text corpus");
            None
        }
    }
}

#[test]
fn on_real_text_planted_passages_are_found_and_the_false_positive_rate_is_as_predicted() {
    let Some(src) = real_corpus() else { return };
    let dir = tempdir();
    let c = dir.path().join("perl");
    let imported = json(&rote_ok(&["text", "import", p(&src), "--out", p(&c), "--json"]));
    assert!(imported["documents"].as_u64().unwrap() > 100);
    let n = 50;
    rote_ok(&["text", "index", p(&c), "-n", "50", "--normalized"]);
    rote_ok(&["text", "index", p(&c), "--kind", "exact"]);
    let info = json(&rote_ok(&["text", "info", p(&c.join("exact.idx")), "-n", "50", "--json"]));
    let distinct = info["distinct_ngrams"].as_u64().unwrap();

    // Passages read straight from the files (not through rote), the file recorded.
    let files = rote::text::list_files(&[src.clone()]).unwrap();
    let mut rng = Rng(3);
    let mut planted = Vec::new();
    while planted.len() < 20 {
        let f = &files[rng.below(files.len() as u64) as usize];
        let bytes = std::fs::read(f).unwrap();
        if bytes.len() < 3000 || bytes[..bytes.len().min(8192)].contains(&0) {
            continue;
        }
        let start = rng.below(bytes.len() as u64 - 1000) as usize;
        let Ok(text) = std::str::from_utf8(&bytes[start..start + 400]) else { continue };
        planted.push((f.clone(), text.to_string()));
    }
    let gens = dir.path().join("g.jsonl");
    let lines: Vec<String> = planted.iter().map(|(_, t)| serde_json::json!({"text": t}).to_string()).collect();
    std::fs::write(&gens, lines.join("\n")).unwrap();
    let out = dir.path().join("scan");
    rote_ok(&["text", "scan", p(&c.join("exact.idx")), "-n", "50", "--generations", p(&gens), "--out", p(&out)]);
    let reports: Vec<serde_json::Value> = std::fs::read_to_string(out.join("scan.jsonl")).unwrap().lines().map(json).collect();
    for (r, (file, text)) in reports.iter().zip(&planted) {
        let v = &r["verbatim"];
        assert_eq!(v["hit_fraction"], 1.0, "{}", file.display());
        assert_eq!(v["longest_match"]["tokens"].as_u64().unwrap() as usize, text.len());
        // The same passage may occur in several files; its text does occur in the one named.
        let named = std::fs::read(v["longest_match"]["source"].as_str().unwrap()).unwrap();
        assert!(named.windows(text.len()).any(|w| w == text.as_bytes()));
    }

    // Random byte 50-grams are not in the corpus: the filter's hits among them are false
    // positives, at the rate the blocked formula predicts for the counted distinct n-grams.
    let index = Index::open(&c.join("bloom-n50.idx"), None).unwrap();
    let Index::Bloom(b) = &index else { unreachable!() };
    let probe: Vec<u32> = (0..2_000_000 + n - 1).map(|_| rng.below(256) as u32).collect();
    let hits = b.bloom.hits_par(&probe).iter().filter(|&&h| h).count() as f64;
    let trials = 2_000_000f64;
    let predicted = blocked_rate(b.bloom.params.m, b.bloom.params.k, distinct);
    let sigma = (predicted * (1.0 - predicted) / trials).sqrt();
    eprintln!("real corpus: {distinct} distinct 50-grams, false-positive rate {} measured, {predicted} predicted (σ {sigma})", hits / trials);
    assert!((hits / trials - predicted).abs() < 5.0 * sigma + 0.02 * predicted);
    assert!(predicted < 1e-3);

    // The paper's point on this corpus.
    let rows = json(&rote_ok(&["text", "demo", p(&c.join("bloom-n50.idx")), "--passages", "100", "--json"]));
    let row = |s: &str| rows.as_array().unwrap().iter().find(|r| r["style"] == s).unwrap().clone();
    assert_eq!(row("verbatim")["verbatim_hit_fraction"], 1.0);
    for style in ["upper", "spacing"] {
        assert!(row(style)["verbatim_hit_fraction"].as_f64().unwrap() < 0.5, "{style}");
        assert!(row(style)["normalized_hit_fraction"].as_f64().unwrap() > 0.99, "{style}");
    }
}

#[test]
fn the_cuda_kernel_run_on_the_host_builds_the_cpu_filter() {
    use rote::text::bloom::{build_from_corpus, BloomParams};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/kernel_on_host.cpp");
    let dir = tempdir();
    let exe = dir.path().join("kernel_on_host");
    let compiled = std::process::Command::new("c++").args(["-O2", "-std=c++17", "-w", "-o"]).arg(&exe).arg(&src).output();
    match compiled {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("kernels/text.cu does not compile as host C++:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("SKIPPED the_cuda_kernel_run_on_the_host_builds_the_cpu_filter: no c++ compiler ({e})");
            return;
        }
    }
    let mut rng = Rng(77);
    let lens: Vec<usize> = (0..200).map(|_| rng.below(3000) as usize).collect();
    let docs = random_docs(&mut rng, &lens, 256);
    let corpus = write_docs(&dir.path().join("c"), &docs, Dtype::U8);
    for n in [1usize, 7, 50] {
        let params = BloomParams::for_rate(Layout::Blocked, n, corpus.ngram_positions(n), 1e-3).unwrap();
        let out = dir.path().join(format!("words-{n}"));
        let run = std::process::Command::new(&exe)
            .arg(corpus.dir.join("tokens.bin"))
            .arg(corpus.dir.join("offsets.bin"))
            .args([n.to_string(), params.m.to_string(), params.k.to_string()])
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let kernel: Vec<u64> = std::fs::read(&out).unwrap().chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let cpu = build_from_corpus(params, &corpus, &|_| {});
        assert!(kernel == cpu.words(), "n={n}: the kernel's filter differs from the CPU's");
    }
}
