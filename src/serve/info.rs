//! What `GET /v1/model` says about the served model, gathered once at start-up.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::data::Split;
use crate::error::{Error, Result};
use crate::evaluate::Metrics;
use crate::fsio;
use crate::model::calibration::Calibration;
use crate::model::checkpoint::{CheckpointMeta, META_FILE, WEIGHTS_FILE};
use crate::preprocess::Preprocessing;
use crate::run::{RunDir, Which};

/// The served model: its description, the identity of its weights, and what its training run
/// recorded about it where the model is a run's checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The checkpoint folder.
    pub path: PathBuf,
    pub arch: String,
    /// Class names, in the model's output order.
    pub classes: Vec<String>,
    pub preprocessing: Preprocessing,
    /// SHA-256 of `model.safetensors`: which weights answer.
    pub weights_sha256: String,
    /// When the checkpoint was written (`model.json`'s modification time), RFC 3339, UTC.
    pub trained_at: Option<String>,
    /// catdog version that wrote the checkpoint.
    pub catdog_version: String,
    /// How answers are decided (temperature, unsure and neither thresholds), where the model
    /// was calibrated.
    pub calibration: Option<Calibration>,
    /// The training run's settings (`RUN/config.json`), for a run's `best/` or `last/`.
    pub run_config: Option<serde_json::Value>,
    /// Accuracy on the test split (`RUN/eval-test.json`), for a run's `best/`: the checkpoint
    /// that evaluation scores.
    pub test_accuracy: Option<f64>,
}

impl ModelInfo {
    /// Gathers the information on the checkpoint in `dir`, described by `meta`. Optional run
    /// files that are absent are left out; present but unreadable ones are an error, so that a
    /// damaged run is noticed at start-up rather than served quietly.
    pub fn read(dir: &Path, meta: CheckpointMeta) -> Result<ModelInfo> {
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io("cannot find", dir, e))?;
        let weights_sha256 = fsio::sha256_file(&dir.join(WEIGHTS_FILE))?;
        let trained_at = std::fs::metadata(dir.join(META_FILE))
            .and_then(|m| m.modified())
            .ok()
            .map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true));
        let run = dir.parent().map(RunDir::new);
        let checkpoint_of_run = |which| run.as_ref().filter(|r| r.checkpoint(which) == dir);
        let run_config = match checkpoint_of_run(Which::Best).or(checkpoint_of_run(Which::Last)) {
            Some(run) => read_optional(&run.config(), "training run configuration")?,
            None => None,
        };
        let test_accuracy = match [Which::Best, Which::Last]
            .into_iter()
            .find_map(|which| checkpoint_of_run(which).map(|run| run.eval(which, Split::Test)))
        {
            Some(path) => read_optional::<Metrics>(&path, "evaluation")?.map(|m| m.accuracy),
            None => None,
        };
        Ok(ModelInfo {
            path: dir,
            arch: meta.arch,
            classes: meta.class_names,
            preprocessing: meta.preprocessing,
            weights_sha256,
            trained_at,
            catdog_version: meta.catdog_version,
            calibration: meta.calibration,
            run_config,
            test_accuracy,
        })
    }
}

/// The JSON file at `path`, or `None` where there is none.
fn read_optional<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<Option<T>> {
    if path.is_file() {
        fsio::read_json(path, what).map(Some)
    } else {
        Ok(None)
    }
}
