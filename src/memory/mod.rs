//! Classifiers with an explicit memory (ALGORITHMS.md §7): retrieval-augmented
//! prediction over a store of training embeddings (retrieval.rs), and the least-squares
//! SVM the generalization–memorization machines build on (lssvm.rs).

pub mod lssvm;
pub mod retrieval;
