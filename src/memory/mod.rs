//! Classifiers with an explicit memory (ALGORITHMS.md §7): retrieval-augmented
//! prediction over a store of training embeddings (retrieval.rs), and the least-squares
//! SVM the generalization–memorization machines build on (lssvm.rs), solved directly or by
//! conjugate gradients on kernel products computed on the fly (cg.rs).

mod cg;
pub mod lssvm;
pub mod retrieval;
