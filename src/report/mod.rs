//! The run's report, in `RUN/report/`: pictures of training and evaluation
//! and one offline `index.html` that shows them with the metrics and settings.
//!
//! Every picture function here takes plain numbers and images, so that the
//! training and evaluation code can call it whatever framework computed them,
//! and writes one file atomically. Write the pictures first and
//! [`write_index`] last: the page shows the pictures it finds beside it.
//! [`write_run_report`] does all of that for a training run's folder: it is the
//! one function here that runs the model (evaluation, and Grad-CAM from
//! [`crate::model::gradcam`]) to get those numbers.

mod audit;
mod calibration;
mod confusion;
mod curves;
mod draw;
mod gradcam;
mod grid;
mod html;
mod lr_find;
mod run;
mod text;

pub use audit::{NEAR_DUPLICATES, SUSPECTS, write_audit_page};
pub use calibration::{write_reliability, write_roc};
pub use confusion::write_confusion;
pub use curves::write_curves;
pub use gradcam::overlay;
pub use grid::{Tile, write_grid};
pub use html::write_index;
pub use lr_find::write_lr_find;
pub use run::write_run_report;

/// The report's files, by the names `index.html` refers to them.
pub const CURVES: &str = "curves.png";
pub const CONFUSION: &str = "confusion.png";
pub const PREDICTIONS: &str = "predictions.png";
pub const TOP_LOSSES: &str = "top-losses.png";
pub const GRADCAM: &str = "gradcam.png";
pub const RELIABILITY: &str = "reliability.png";
pub const ROC: &str = "roc.png";
pub const INDEX: &str = "index.html";

/// Test photos in each picture of photos (predictions, top losses, Grad-CAM) by default.
pub const SAMPLES: usize = 16;

// A line of the run folder's metrics.jsonl; defined with the run folder's layout.
pub use crate::run::EpochRecord;
