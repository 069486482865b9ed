//! The run folder: everything one training run leaves behind, in open formats.
//!
//! ```text
//! RUN/
//!   config.json      every setting, catdog version, weights' SHA-256, classes, preprocessing, device
//!   manifest.json    the data split the run used
//!   metrics.jsonl    one JSON object per epoch ([`EpochRecord`])
//!   metrics.csv      the same, as CSV
//!   last/            checkpoint after the latest complete epoch (+ training state, for --resume)
//!   best/            checkpoint with the best validation accuracy
//!   eval-SPLIT.json  evaluation of a checkpoint on a split (evaluate::Metrics)
//!   report/          pictures and index.html (catdog report)
//! ```
//!
//! A checkpoint folder (`model.safetensors` + `model.json`) is a complete model
//! on its own; commands that take a MODEL accept a run folder or a checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::error::{Error, Result};
use crate::model::checkpoint;

/// What a finished run folder holds, as a person reads it.
pub const CONTENTS: &str =
    "config.json, manifest.json, metrics.jsonl, metrics.csv, best/, last/, eval-test.json, report/";

/// One epoch of training: a line of `metrics.jsonl` and a row of
/// `metrics.csv`, written by training and plotted by the report.
/// Accuracies are shares in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    /// Wall-clock time the epoch took, training and validation.
    pub seconds: f64,
}

/// Which checkpoint of a run to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
}

crate::error::named_choice!(Which, "--checkpoint", Which::Best => "best", Which::Last => "last");

/// Paths inside a run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    pub fn metrics_jsonl(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn metrics_csv(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    pub fn checkpoint(&self, which: Which) -> PathBuf {
        self.root.join(which.to_string())
    }

    pub fn eval(&self, split: Split) -> PathBuf {
        self.root.join(format!("eval-{split}.json"))
    }

    pub fn report_dir(&self) -> PathBuf {
        self.root.join("report")
    }
}

/// The checkpoint folder a MODEL argument names: the folder itself when it
/// holds a model, else a run folder's `best/`.
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    if path.join(checkpoint::META_FILE).is_file() {
        return Ok(path.to_owned());
    }
    let best = RunDir::new(path).checkpoint(Which::Best);
    if best.join(checkpoint::META_FILE).is_file() {
        return Ok(best);
    }
    Err(Error::data(
        path,
        "is neither a model folder (with model.json) nor a training run (with best/model.json)",
        "pass the folder `catdog train --out` wrote, or one of its best/ or last/ folders",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_argument_resolves_to_a_checkpoint_folder() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_model(dir.path()).unwrap_err().to_string();
        assert!(err.contains("neither a model folder"), "{err}");
        let best = dir.path().join("best");
        std::fs::create_dir_all(&best).unwrap();
        std::fs::write(best.join(checkpoint::META_FILE), "{}").unwrap();
        assert_eq!(resolve_model(dir.path()).unwrap(), best);
        assert_eq!(resolve_model(&best).unwrap(), best);
    }
}
