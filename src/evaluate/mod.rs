//! Scoring a classifier's predictions: the framework-independent arithmetic,
//! fed with labels and class probabilities by whoever ran the model.

pub mod metrics;

pub use metrics::{Metrics, image_loss, predicted, top_losses};
