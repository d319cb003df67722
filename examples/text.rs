//! Verbatim memorization of text (ALGORITHMS.md §6): import a few documents as a token
//! corpus, build the exact (suffix-array) index and find where a passage was copied from.
//!
//!     cargo run --release --example text

use rote::text::index::{build_on, index_targets, Index, IndexSpec};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs)?;
    let texts = ["It was the best of times, it was the worst of times.", "Call me Ishmael. Some years ago, never mind how long precisely.", "Happy families are all alike; every unhappy family is unhappy in its own way."];
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(docs.join(format!("{i}.txt")), t)?;
    }
    let corpus = dir.path().join("corpus");
    rote::text::import_files(&[docs], "bytes", &corpus, false)?;
    let spec = IndexSpec::parse("exact", 20, 1e-3, "blocked", None)?;
    for (d, path) in index_targets(&corpus, &spec, None, false)? {
        let c = rote::text::corpus::Corpus::open(&d)?;
        build_on(&c, &path, &spec, None, &|_| {})?;
    }
    let index = Index::open(&corpus.join("exact.idx"), None)?;
    let generated: Vec<u32> = "a model wrote: Some years ago, never mind how long".bytes().map(u32::from).collect();
    if let Index::Exact(e) = &index {
        println!("longest copied span: {:?}", e.longest_match(&generated));
    }
    Ok(())
}
