//! Classifiers with an explicit memory (ALGORITHMS.md §7): retrieval-augmented
//! prediction over a store of training embeddings (retrieval.rs).

pub mod retrieval;
