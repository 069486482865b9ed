//! The settings of a training run, saved as RUN/config.json.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{Layout, Ratios};
use crate::device::DeviceChoice;
use crate::preprocess::Preprocessing;

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every layer is trained (batch norm in training mode).
    Finetune,
    /// The pretrained backbone stays fixed; only the new head is trained.
    Frozen,
}

impl Mode {
    /// The default for a device: frozen on a CPU, where fine-tuning all of
    /// ResNet-18 on 20,000 photos takes hours; fine-tuning on a GPU.
    pub fn default_for(device: DeviceChoice) -> Mode {
        if device.is_cpu() {
            Mode::Frozen
        } else {
            Mode::Finetune
        }
    }
}

/// Every setting of a run. With the seed, the data and the weights, it
/// determines the run's results on CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: PathBuf,
    /// The manifest given with `--manifest`; `None` when the run prepared the data itself.
    pub manifest: Option<PathBuf>,
    pub layout: Option<Layout>,
    pub ratios: Ratios,
    /// `auto`, `none` or a file (see `model::weights::WeightsChoice`).
    pub weights: String,
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub augment: bool,
    pub seed: u64,
    pub device: DeviceChoice,
    pub preprocessing: Preprocessing,
    /// Where frozen mode caches features (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// config.json: the settings plus what the run found out at its start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub catdog_version: String,
    #[serde(flatten)]
    pub settings: TrainConfig,
    /// The weights file actually used, and its SHA-256 (`None` for random initialisation).
    pub weights_file: Option<PathBuf>,
    pub weights_sha256: Option<String>,
    pub classes: Vec<String>,
    /// The device, in words.
    pub device_name: String,
}
