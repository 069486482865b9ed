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
//!   eval-SPLIT.json  evaluation of best/ on a split (evaluate::Metrics)
//!   eval-last-SPLIT.json  the same for last/ (`catdog evaluate --checkpoint last`)
//!   report/          pictures and index.html (catdog report)
//!   train.lock       the PID of the process training in the folder ([`RunLock`])
//! ```
//!
//! A checkpoint folder (`model.safetensors` + `model.json`) is a complete model
//! on its own; commands that take a MODEL accept a run folder or a checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::error::{Error, Result};
use crate::model::checkpoint;
use crate::train::Monitor;
use crate::train::state::Best;

/// What a finished run folder holds, as a person reads it.
pub const CONTENTS: &str = "config.json, manifest.json, metrics.jsonl, metrics.csv, best/ (with its calibration), last/, eval-test.json, report/";

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
    /// The learning rate of the epoch's last batch (`None` in runs from before schedules,
    /// which kept `--lr` throughout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

/// The epoch `best/` holds by `monitor` (the rule training applies, [`Best::beaten_by`]).
pub fn best_epoch(history: &[EpochRecord], monitor: Monitor) -> Option<&EpochRecord> {
    let mut best: Option<(&EpochRecord, Best)> = None;
    for r in history {
        if best.as_ref().is_none_or(|(_, b)| b.beaten_by(r, monitor)) {
            let b = Best {
                epoch: r.epoch,
                val_acc: r.val_acc,
                val_loss: r.val_loss,
            };
            best = Some((r, b));
        }
    }
    best.map(|(r, _)| r)
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

    /// The evaluation of checkpoint `which` on `split`: `eval-SPLIT.json` for
    /// best/ (the run's result), `eval-last-SPLIT.json` for last/, so that
    /// evaluating last/ never overwrites the figures of best/.
    pub fn eval(&self, which: Which, split: Split) -> PathBuf {
        self.root.join(match which {
            Which::Best => format!("eval-{split}.json"),
            Which::Last => format!("eval-last-{split}.json"),
        })
    }

    pub fn report_dir(&self) -> PathBuf {
        self.root.join("report")
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join("train.lock")
    }
}

/// One training process's hold on a run folder: two at once would overwrite
/// each other's checkpoints. An advisory lock on `RUN/train.lock`, which the
/// OS releases when the process ends, however it ends, so a killed run leaves
/// nothing to clean up before `--resume`. The file holds the holder's PID; it
/// stays after the run (removing it would let a third process lock a new file
/// while a second still holds the old one).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of an existing run folder, or says which process holds it.
    pub fn acquire(run: &RunDir) -> Result<RunLock> {
        use std::io::{Read, Seek, Write};
        let path = run.lock();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("cannot open", &path, e))?;
        // flock on Unix: released by the kernel when the process ends.
        if let Err(e) = file.try_lock() {
            if let std::fs::TryLockError::Error(e) = e {
                return Err(Error::io("cannot lock", &path, e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("another process (PID {pid})"),
            };
            return Err(Error::data(
                &run.root,
                format!("is in use: {holder} is training in it"),
                "wait for it to finish (or stop it with Ctrl-C), or train into another --out",
            ));
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// The checkpoint folder a MODEL argument names: the folder itself when it
/// holds a model, else a run folder's `best/`.
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::data(
            path,
            "does not exist",
            "check the path: the folder `catdog train --out` wrote, or its best/ or last/",
        ));
    }
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
        let missing = dir.path().join("no-such-run");
        let err = resolve_model(&missing).unwrap_err().to_string();
        assert!(
            err.contains("no-such-run: does not exist") && !err.contains("neither"),
            "{err}"
        );
        let best = dir.path().join("best");
        std::fs::create_dir_all(&best).unwrap();
        std::fs::write(best.join(checkpoint::META_FILE), "{}").unwrap();
        assert_eq!(resolve_model(dir.path()).unwrap(), best);
        assert_eq!(resolve_model(&best).unwrap(), best);
    }
}
