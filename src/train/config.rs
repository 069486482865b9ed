//! The settings of a training run, saved as RUN/config.json.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::split::DEFAULT_SEED;
use crate::data::{Layout, Ratios};
use crate::device::DeviceChoice;
use crate::model::Precision;
use crate::model::weights::WeightsChoice;
use crate::preprocess::Preprocessing;
use crate::train::schedule::Schedule;

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every layer is trained (batch norm in training mode).
    Finetune,
    /// The pretrained backbone stays fixed; only the new head is trained.
    Frozen,
}

crate::error::named_choice!(Mode, "--mode", Mode::Finetune => "finetune", Mode::Frozen => "frozen");

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

/// What `best/` keeps and `--patience` watches: the validation split's accuracy (ties: the
/// lower loss) or its loss (ties: the higher accuracy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Monitor {
    #[default]
    ValAcc,
    ValLoss,
}

crate::error::named_choice!(Monitor, "--monitor", Monitor::ValAcc => "val-acc", Monitor::ValLoss => "val-loss");

/// How much each class's photos weigh in the training loss (`--class-weights`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ClassWeights {
    /// Every photo the same.
    #[default]
    Equal,
    /// `n / (classes * n_c)` from the training split's counts (scikit-learn's and Keras's
    /// "balanced"): each class weighs as much in all as the others.
    Auto,
    /// One weight per class, in the order of the run's classes.
    Given(Vec<f64>),
}

impl std::fmt::Display for ClassWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassWeights::Equal => f.write_str("equal"),
            ClassWeights::Auto => f.write_str("auto"),
            ClassWeights::Given(w) => {
                let text: Vec<String> = w.iter().map(f64::to_string).collect();
                f.write_str(&text.join(","))
            }
        }
    }
}

impl std::str::FromStr for ClassWeights {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "equal" => return Ok(ClassWeights::Equal),
            "auto" => return Ok(ClassWeights::Auto),
            _ => {}
        }
        let weights: Option<Vec<f64>> = s
            .split(',')
            .map(|w| {
                w.trim()
                    .parse()
                    .ok()
                    .filter(|w: &f64| w.is_finite() && *w > 0.0)
            })
            .collect();
        weights.map(ClassWeights::Given).ok_or_else(|| {
            crate::error::Error::setting(
                "--class-weights",
                format!("'{s}' is neither equal, auto nor positive numbers separated by commas (e.g. 1,2.5)"),
            )
        })
    }
}

impl From<ClassWeights> for String {
    fn from(w: ClassWeights) -> String {
        w.to_string()
    }
}

impl TryFrom<String> for ClassWeights {
    type Error = crate::error::Error;

    fn try_from(s: String) -> crate::error::Result<Self> {
        s.parse()
    }
}

impl ClassWeights {
    /// The weight of each class given the training split's count of each; empty when equal.
    pub fn resolve(&self, counts: &[usize]) -> crate::error::Result<Vec<f64>> {
        match self {
            ClassWeights::Equal => Ok(Vec::new()),
            ClassWeights::Auto => {
                let n: usize = counts.iter().sum();
                Ok(counts
                    .iter()
                    .map(|&c| n as f64 / (counts.len() * c.max(1)) as f64)
                    .collect())
            }
            ClassWeights::Given(w) if w.len() == counts.len() => Ok(w.clone()),
            ClassWeights::Given(w) => Err(crate::error::Error::setting(
                "--class-weights",
                format!(
                    "gives {} weight(s) for {} classes; give one per class, in the order of the classes",
                    w.len(),
                    counts.len()
                ),
            )),
        }
    }
}

/// Where a run's photos come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "SourceFields", try_from = "SourceFields")]
pub enum DataSource {
    /// A data folder, which the run cleans and splits (`--data`).
    Folder {
        root: PathBuf,
        /// `None`: detected.
        layout: Option<Layout>,
        ratios: Ratios,
    },
    /// A manifest made by `catdog split`, used as it is (`--manifest`).
    Manifest(PathBuf),
}

/// How config.json holds a [`DataSource`]: `data`, `layout` and `ratios` for a folder, as
/// before there was a choice; `manifest` alone for a manifest. Files of version 1 also wrote
/// the unused folder fields beside a manifest, and read the same.
#[derive(Serialize, Deserialize)]
struct SourceFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<PathBuf>,
    #[serde(default)]
    layout: Option<Layout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ratios: Option<Ratios>,
}

impl From<DataSource> for SourceFields {
    fn from(source: DataSource) -> Self {
        match source {
            DataSource::Folder {
                root,
                layout,
                ratios,
            } => SourceFields {
                data: Some(root),
                manifest: None,
                layout,
                ratios: Some(ratios),
            },
            DataSource::Manifest(path) => SourceFields {
                data: None,
                manifest: Some(path),
                layout: None,
                ratios: None,
            },
        }
    }
}

impl TryFrom<SourceFields> for DataSource {
    type Error = &'static str;

    fn try_from(fields: SourceFields) -> Result<Self, Self::Error> {
        match (fields.manifest, fields.data) {
            (Some(path), _) => Ok(DataSource::Manifest(path)),
            (None, Some(root)) => Ok(DataSource::Folder {
                root,
                layout: fields.layout,
                ratios: fields.ratios.unwrap_or_default(),
            }),
            (None, None) => Err("config.json names neither a data folder nor a manifest"),
        }
    }
}

/// Every setting of a run. With the seed, the data and the weights, it
/// determines the run's results on CPU. [`TrainConfig::default`] is the seed's recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub source: DataSource,
    pub weights: WeightsChoice,
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub augment: bool,
    pub seed: u64,
    pub device: DeviceChoice,
    /// The CPU kernels' products; runs written before it existed were fp32.
    #[serde(default)]
    pub precision: Precision,
    pub preprocessing: Preprocessing,
    /// Where frozen mode caches features (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    // The options below came later: a config.json without them reads as the seed's recipe.
    /// How the rate moves, stepped per batch.
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs of warmup at the start of each phase (`None`: the schedule's own).
    #[serde(default)]
    pub warmup: Option<f64>,
    /// AdamW's decoupled weight decay (0: Adam).
    #[serde(default)]
    pub weight_decay: f64,
    /// The training target's share spread over all classes (0: one-hot).
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub class_weights: ClassWeights,
    /// Stop after this many epochs without a better `monitor` (`None`: never early).
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default)]
    pub monitor: Monitor,
    /// Fine-tuning's first epochs that train only the head, on the frozen backbone's features.
    #[serde(default)]
    pub freeze_epochs: usize,
    /// The backbone's rate once it trains (`None`: `lr`).
    #[serde(default)]
    pub lr_backbone: Option<f64>,
}

impl Default for TrainConfig {
    /// The seed's recipe: ImageNet weights, cross-entropy and Adam (lr 1e-3, constant, no
    /// weight decay), 5 epochs of batches of 32, 224 px, seed 42, no augmentation, no label
    /// smoothing or class weights, no early stopping, on the CPU (so frozen), no feature
    /// cache. The data folder is empty: every caller names its own data.
    fn default() -> Self {
        let device = DeviceChoice::default();
        TrainConfig {
            source: DataSource::Folder {
                root: PathBuf::new(),
                layout: None,
                ratios: Ratios::default(),
            },
            weights: WeightsChoice::default(),
            mode: Mode::default_for(device),
            epochs: 5,
            batch_size: 32,
            lr: 1e-3,
            augment: false,
            seed: DEFAULT_SEED,
            device,
            precision: Precision::default(),
            preprocessing: Preprocessing::default(),
            cache_dir: None,
            schedule: Schedule::Constant,
            warmup: None,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            class_weights: ClassWeights::Equal,
            patience: None,
            monitor: Monitor::ValAcc,
            freeze_epochs: 0,
            lr_backbone: None,
        }
    }
}

/// The shape of config.json this catdog writes. 2: a run from a manifest records only the
/// manifest (version 1 also wrote the unused `data`, `layout` and `ratios`); both are read.
pub const CONFIG_VERSION: u32 = 2;

/// config.json: the settings plus what the run found out at its start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// [`CONFIG_VERSION`] when written; 1 for files from before the field.
    #[serde(default = "version_1")]
    pub config_version: u32,
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

fn version_1() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Auto weights by hand: 30 cats and 10 dogs weigh 40/(2*30) = 2/3 and 40/(2*10) = 2, so
    /// that each class weighs 20 photos in all.
    #[test]
    fn class_weights_parse_and_resolve() {
        assert_eq!(
            ClassWeights::Auto.resolve(&[30, 10]).unwrap(),
            [2.0 / 3.0, 2.0]
        );
        let given: ClassWeights = "1,2.5".parse().unwrap();
        assert_eq!(given.resolve(&[3, 4]).unwrap(), [1.0, 2.5]);
        assert!(
            given
                .resolve(&[1, 2, 3])
                .unwrap_err()
                .to_string()
                .contains("2 weight(s) for 3 classes")
        );
        for bad in ["", "1,-1", "1,x", "1,nan"] {
            assert!(bad.parse::<ClassWeights>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&given).unwrap();
        assert_eq!(
            (
                json.as_str(),
                serde_json::from_str::<ClassWeights>(&json).unwrap()
            ),
            ("\"1,2.5\"", given)
        );
    }

    #[test]
    fn writes_version_2_and_reads_version_1() {
        let config = RunConfig {
            config_version: CONFIG_VERSION,
            catdog_version: "0.1.0".into(),
            settings: TrainConfig {
                source: DataSource::Manifest("m.json".into()),
                ..TrainConfig::default()
            },
            weights_file: None,
            weights_sha256: None,
            classes: vec!["cat".into(), "dog".into()],
            device_name: "Cpu".into(),
        };
        let mut json = serde_json::to_value(&config).unwrap();
        assert_eq!(
            (&json["manifest"], &json["weights"]),
            (&json!("m.json"), &json!("auto"))
        );
        assert!(
            json.get("data").is_none() && json.get("ratios").is_none(),
            "{json}"
        );
        let back: RunConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.settings, config.settings);

        // Version 1: no config_version, and every source field, `data` empty beside a manifest.
        let v1 = json.as_object_mut().unwrap();
        v1.remove("config_version");
        v1.insert("data".into(), json!(""));
        v1.insert("layout".into(), Value::Null);
        v1.insert(
            "ratios".into(),
            serde_json::to_value(Ratios::default()).unwrap(),
        );
        // Written before the training options: none of their fields.
        for key in [
            "schedule",
            "warmup",
            "weight_decay",
            "label_smoothing",
            "class_weights",
            "patience",
            "monitor",
            "freeze_epochs",
            "lr_backbone",
        ] {
            assert!(v1.remove(key).is_some(), "{key} is written");
        }
        let old: RunConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old.config_version, 1);
        assert_eq!(old.settings, config.settings);
        json["manifest"] = Value::Null;
        json["data"] = json!("photos");
        let old: RunConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            old.settings.source,
            DataSource::Folder {
                root: "photos".into(),
                layout: None,
                ratios: Ratios::default()
            }
        );
    }
}
