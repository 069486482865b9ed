//! The `last/` checkpoint's training state: where the run stands, so that
//! `--resume` continues exactly where it stopped (after the last complete
//! batch: a Ctrl-C saves mid-epoch; a crash loses at most the current epoch).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsio;
use crate::run::EpochRecord;
use crate::train::Monitor;

pub const STATE_FILE: &str = "train-state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Loss and accuracy accumulated over the batches of an epoch so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
}

impl Running {
    pub fn add(&mut self, mean_loss: f64, correct: usize, n: usize) {
        self.loss_sum += mean_loss * n as f64;
        self.correct += correct;
        self.seen += n;
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

/// The best epoch so far, by the run's [`Monitor`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub val_acc: f64,
    pub val_loss: f64,
}

impl Best {
    pub fn beaten_by(&self, r: &EpochRecord, monitor: Monitor) -> bool {
        match monitor {
            Monitor::ValAcc => {
                r.val_acc > self.val_acc
                    || (r.val_acc == self.val_acc && r.val_loss < self.val_loss)
            }
            Monitor::ValLoss => {
                r.val_loss < self.val_loss
                    || (r.val_loss == self.val_loss && r.val_acc > self.val_acc)
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Complete epochs.
    pub epochs_done: usize,
    /// Batches of the next epoch already trained (non-zero after a Ctrl-C).
    pub batches_done: usize,
    pub partial: Running,
    pub best: Option<Best>,
    pub history: Vec<EpochRecord>,
}

impl TrainState {
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsio::write_json(&dir.join(STATE_FILE), self)
    }

    pub fn load(dir: &Path) -> Result<TrainState> {
        fsio::read_json(&dir.join(STATE_FILE), "training state")
    }
}
