//! Scoring a classifier: running it over photos, and the framework-independent
//! arithmetic on labels and class probabilities.
//!
//! - [`metrics`]: accuracy, loss, confusion matrix, per-class scores, ROC AUC.
//! - [`calibration`]: fitting the temperature, the conformal threshold and the
//!   out-of-distribution model; ECE, NLL and Brier score before and after.
//! - [`predict_samples`] and [`predict_files`]: a model's probabilities for a
//!   manifest's photos, or for any files a user names.
//! - [`RunModel`]: a training run's checkpoint on one of its
//!   splits, written to `RUN/eval-SPLIT.json`.

pub mod calibration;
pub mod metrics;
mod predictions;
mod run;

pub use metrics::{Metrics, Verdict, image_loss, instructive, predicted, top_losses};
pub use predictions::{Predictions, image_files, judge_batch, predict_files, predict_samples};
pub use run::{BATCH_SIZE, Conformal, Evaluation, OutOfDistribution, RunModel, Tta};
