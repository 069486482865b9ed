//! The integration tests, as one test binary of modules (one file each, named for what it
//! covers): linking catdog and burn once rather than once per file. The fuzzer
//! (`fuzz_decode.rs`), with its counting global allocator, is a binary of its own.
//!
//! Tests that need `../shared` (real photos, torchvision's golden outputs) are
//! `#[ignore = "needs ../shared"]`: `cargo test -- --include-ignored` runs them.

mod common;
mod serve_common;

// `catdog bench`'s measurement of a child's wall time and peak memory, borrowed from the
// command without making it library API.
#[allow(dead_code)]
#[path = "../src/cli/bench/process.rs"]
mod process;

mod audit;
mod calibration;
mod cli_model;
mod data_pipeline;
mod eval_cli;
mod interruptions;
mod lr_find;
mod model_parity;
mod odd_trees;
mod onnx_export;
mod ood_sets;
mod preprocess_golden;
mod report_files;
mod serve_api;
mod serve_browser;
mod serve_load;
mod train;
