//! catdog: a folder of photos in, a trained and explained cat-vs-dog classifier out.
//!
//! The modules follow the pipeline, and data flows one way through them:
//!
//! | stage          | module          | owns                                                     |
//! |----------------|-----------------|----------------------------------------------------------|
//! | loading        | [`data::scan`]  | finding photos in a folder, the two layouts, labels       |
//! | cleaning       | [`data::clean`] | decoding every file, usable / rejected / ignored, quarantine |
//! | splitting      | [`data::split`] | stratified, seeded train/val/test split (near-duplicates together), the [`data::Manifest`] |
//! | auditing       | [`audit`]       | near-duplicates, quality flags, suspected label errors (k-fold heads, confident learning) |
//! | preprocessing  | [`preprocess`]  | decode + torchvision's eval transform, augmentation       |
//! | batching       | [`loader`]      | parallel, prefetched, shuffled batches from a manifest    |
//! | training       | [`train`]       | the epoch loop, Adam, frozen-feature cache, checkpoints, resume |
//! | evaluation     | [`evaluate`]    | a checkpoint over a split or files; accuracy, loss, confusion matrix, per-class scores, ROC AUC |
//! | calibration    | [`model::calibration`], [`evaluate::calibration`] | cat, dog, `unsure` or `neither`: temperature, conformal sets, out-of-distribution score; fitting them, ECE |
//! | reporting      | [`report`]      | curves, confusion, photo grids, Grad-CAM overlays, `index.html`; a run's whole report |
//! | serving        | [`serve`]       | HTTP API and web page, batched inference, Grad-CAM        |
//! | exporting      | [`model::onnx`] | an ONNX file for other runtimes, built by the modules themselves |
//!
//! The network, its weight files and checkpoints live in [`model`]; what a
//! training run leaves behind, and where, in [`run`].
//!
//! Shared plumbing: [`error`] (the library's error type), [`fsio`] (atomic writes, hashing),
//! [`device`] (`--device`) and [`progress`] (counts of long work, which the command line draws).
//! [`bench`] holds the in-process measurements `catdog bench` runs, [`data::synthetic`] the
//! generated photos of `catdog demo`, the bench and the tests.

pub mod audit;
pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod fsio;
pub mod loader;
pub mod model;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod run;
pub mod serve;
pub mod train;

pub use error::{Error, Result};
