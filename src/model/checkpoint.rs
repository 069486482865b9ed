//! catdog's own trained models: a folder with `model.safetensors` (the weights, under
//! torchvision's tensor names and layouts, so PyTorch can read them too) and `model.json` (what
//! is needed to use them: class names, preprocessing, architecture, catdog version).

use std::path::Path;

use burn::module::Module;
use burn::prelude::Device;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use super::ResNet18;
use super::calibration::Calibration;
use super::weights;
use crate::error::{Error, Result};
use crate::fsio;
use crate::preprocess::Preprocessing;

/// Weights file inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Description file inside a checkpoint folder.
pub const META_FILE: &str = "model.json";
/// The only architecture catdog trains.
pub const ARCH: &str = "resnet18";

/// The content of `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub arch: String,
    pub num_classes: usize,
    /// Class names in output order.
    pub class_names: Vec<String>,
    /// How input images must be prepared (the training run's settings).
    pub preprocessing: Preprocessing,
    /// catdog version that wrote the checkpoint.
    pub catdog_version: String,
    /// How raw outputs become answers, once fitted (`catdog calibrate`, the end of `catdog
    /// train`); absent in a model that was never calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl CheckpointMeta {
    /// A description for a ResNet-18 with these classes, written by this catdog version.
    pub fn new(class_names: Vec<String>, preprocessing: Preprocessing) -> Self {
        Self {
            arch: ARCH.to_string(),
            num_classes: class_names.len(),
            class_names,
            preprocessing,
            catdog_version: env!("CARGO_PKG_VERSION").to_string(),
            calibration: None,
        }
    }

    /// The first inconsistency, if any, with the given head size.
    fn problem(&self, head_classes: usize) -> Option<String> {
        if self.arch != ARCH {
            Some(format!(
                "architecture is {:?}; catdog only knows {ARCH:?}",
                self.arch
            ))
        } else if self.num_classes != self.class_names.len() {
            Some(format!(
                "num_classes is {} but {} class names are listed",
                self.num_classes,
                self.class_names.len()
            ))
        } else if self.num_classes != head_classes {
            Some(format!(
                "num_classes is {} but the model's head has {head_classes} outputs",
                self.num_classes
            ))
        } else {
            None
        }
    }
}

/// Saves a ResNet-18 with random weights (seeded, on the CPU) as `meta` describes it: what a
/// trained model costs to load and run, for the bench and the tests.
pub fn save_random(dir: &Path, meta: &CheckpointMeta, seed: u64) -> Result<()> {
    let device = Device::flex();
    device.seed(seed);
    let n = meta.class_names.len();
    let model = ResNet18::new(n, &device).with_head(n, seed, &device);
    save(dir, &model, meta)
}

/// Writes `model` and `meta` into `dir` (created if needed). Each file is written atomically;
/// the weights go first, so a `model.json` never describes weights that are not there yet.
pub fn save(dir: &Path, model: &ResNet18, meta: &CheckpointMeta) -> Result<()> {
    if let Some(problem) = meta.problem(model.num_classes()) {
        return Err(Error::weights(
            dir,
            format!("cannot save: {problem}"),
            "this is a bug in the caller of checkpoint::save",
        ));
    }
    // valid(): batch-norm running statistics are synchronised and read without autodiff.
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter);
    let bytes = model
        .valid()
        .save_into(&mut store)
        .and_then(|()| store.get_bytes())
        .map_err(|e| {
            Error::weights(
                dir,
                format!("cannot serialise the weights: {e}"),
                "this is a bug; please report it",
            )
        })?;
    let bytes = sorted_header(&bytes).ok_or_else(|| {
        Error::weights(
            dir,
            "cannot serialise the weights: burn wrote a malformed safetensors header",
            "this is a bug; please report it",
        )
    })?;
    fsio::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    fsio::write_json(&dir.join(META_FILE), meta)
}

/// The same safetensors file with its JSON header's keys in sorted order. burn
/// fills the header's metadata from a `HashMap`, whose order changes from
/// process to process, so identical weights would hash differently; the file's
/// SHA-256 (shown by `serve` as the model's identity) must depend on the
/// weights only. serde_json's map is sorted, and tensors carry their own
/// offsets, so only the header is rewritten.
fn sorted_header(bytes: &[u8]) -> Option<Vec<u8>> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let end = 8usize.checked_add(len)?;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let mut text = serde_json::to_vec(&header).ok()?;
    // The format pads the header with spaces so that the data starts 8-byte aligned.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Some(out)
}

/// Reads a folder written by [`save`]. The model is on `device`, in training mode (batch norm
/// uses batch statistics on an autodiff device); call `valid()` for inference.
pub fn load(dir: &Path, device: &Device) -> Result<(ResNet18, CheckpointMeta)> {
    let meta_path = dir.join(META_FILE);
    if !meta_path.is_file() {
        return Err(Error::weights(
            dir,
            format!("not a catdog model folder (no {META_FILE})"),
            "pass the folder that `catdog train` wrote",
        ));
    }
    let meta: CheckpointMeta = fsio::read_json(&meta_path, "catdog model description")?;
    if let Some(problem) = meta.problem(meta.class_names.len()) {
        return Err(Error::weights(
            &meta_path,
            problem,
            "the file was edited or damaged; train the model again",
        ));
    }
    // Every tensor comes from the file, so there is nothing to draw at random.
    let mut model = ResNet18::zeroed(meta.num_classes, device);
    weights::load_checked(&mut model, &dir.join(WEIGHTS_FILE), false)?;
    Ok((model, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::*;

    fn meta(classes: &[&str]) -> CheckpointMeta {
        CheckpointMeta::new(
            classes.iter().map(|c| c.to_string()).collect(),
            Preprocessing::default(),
        )
    }

    #[test]
    fn round_trip_gives_the_same_outputs_and_description() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let model = ResNet18::new(2, &device).with_head(2, 7, &device);
        let meta = meta(&["cat", "dog"]);
        save(dir.path(), &model, &meta).unwrap();

        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["model.json", "model.safetensors"]);

        let (loaded, loaded_meta) = load(dir.path(), &device).unwrap();
        assert_eq!(loaded_meta, meta);
        let x = Tensor::<4>::random([1, 3, 64, 64], burn::tensor::Distribution::Default, &device);
        let a: Vec<f32> = model
            .valid()
            .forward(x.clone())
            .into_data()
            .try_into_vec()
            .unwrap();
        let b: Vec<f32> = loaded
            .valid()
            .forward(x)
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn identical_models_give_identical_files() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let model = ResNet18::new(2, &device).with_head(2, 7, &device);
        let meta = meta(&["cat", "dog"]);
        // burn's header metadata comes from a HashMap with a new random order each
        // time; one save in ten agreeing by chance is far less likely than never.
        let hashes: Vec<String> = (0..10)
            .map(|i| {
                let folder = dir.path().join(i.to_string());
                save(&folder, &model, &meta).unwrap();
                fsio::sha256_file(&folder.join(WEIGHTS_FILE)).unwrap()
            })
            .collect();
        assert!(hashes.iter().all(|h| h == &hashes[0]), "{hashes:?}");
        let bytes = std::fs::read(dir.path().join("0").join(WEIGHTS_FILE)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0, "the data must stay 8-byte aligned");
        safetensors::SafeTensors::deserialize(&bytes).unwrap();
        load(&dir.path().join("0"), &device).unwrap();
    }

    #[test]
    fn inconsistent_descriptions_are_refused() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let model = ResNet18::new(2, &device);
        let err = save(dir.path(), &model, &meta(&["cat", "dog", "fox"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("head has 2 outputs"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );

        save(dir.path(), &model, &meta(&["cat", "dog"])).unwrap();
        let mut edited = meta(&["cat", "dog"]);
        edited.arch = "resnet50".into();
        fsio::write_json(&dir.path().join(META_FILE), &edited).unwrap();
        let err = load(dir.path(), &device).unwrap_err().to_string();
        assert!(err.contains("resnet50"), "{err}");

        // A description that disagrees with the weights: the head's shape gives it away.
        fsio::write_json(&dir.path().join(META_FILE), &meta(&["a", "b", "c"])).unwrap();
        let err = load(dir.path(), &device).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("`fc.weight` has shape [2, 512]"),
            "{err}"
        );

        let err = load(&dir.path().join("nothing"), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a catdog model folder"), "{err}");
    }
}
