//! Evaluating a training run's checkpoint on a split of the run's own data.

use burn::module::Module;
use burn::prelude::Device;

use super::{Metrics, Predictions, predict_samples};
use crate::data::{Manifest, Split};
use crate::error::{Error, Result};
use crate::fsio;
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::{EvalNet, Precision, ResNet18};
use crate::progress::Progress;
use crate::run::{RunDir, Which};

/// Photos per forward pass when the caller does not choose.
pub const BATCH_SIZE: usize = 32;

/// A run's checkpoint, ready for inference, with the data split it was trained on.
pub struct RunModel {
    pub run: RunDir,
    pub which: Which,
    /// In inference mode, on [`RunModel::device`].
    pub model: ResNet18,
    /// The same network prepared for the predictions of [`RunModel::evaluate`].
    pub net: EvalNet,
    pub meta: CheckpointMeta,
    pub manifest: Manifest,
    /// The device the model is on: the one given to [`RunModel::load`], without autodiff.
    pub device: Device,
}

impl RunModel {
    /// Loads `RUN/best` or `RUN/last` and `RUN/manifest.json`, and checks that the
    /// manifest's files are all there and its classes are the model's.
    pub fn load(
        run: &RunDir,
        which: Which,
        device: &Device,
        precision: Precision,
    ) -> Result<RunModel> {
        let manifest_path = run.manifest();
        if !manifest_path.is_file() {
            return Err(Error::data(
                &run.root,
                "is not a training run (it has no manifest.json)",
                "pass the folder that `catdog train --out` wrote",
            ));
        }
        let manifest = Manifest::load(&manifest_path)?;
        manifest.verify(&manifest_path)?;
        let device = device.clone().without_autodiff();
        let (model, meta) = checkpoint::load(&run.checkpoint(which), &device)?;
        if meta.class_names != manifest.classes {
            return Err(Error::data(
                &manifest_path,
                format!(
                    "its classes {:?} are not the model's {:?}",
                    manifest.classes, meta.class_names
                ),
                "evaluate a model with the manifest it was trained on",
            ));
        }
        // valid(): batch norm uses its running statistics and nothing tracks gradients.
        let model = model.valid();
        Ok(RunModel {
            run: run.clone(),
            which,
            net: EvalNet::new(&model, &device, precision),
            model,
            meta,
            manifest,
            device,
        })
    }

    /// Predicts every photo of `split`, scores the predictions and writes the
    /// metrics to the checkpoint's evaluation file ([`RunDir::eval`]). An empty split is an error.
    pub fn evaluate(
        &self,
        split: Split,
        batch_size: usize,
        progress: &dyn Progress,
    ) -> Result<(Metrics, Predictions)> {
        let samples = self.manifest.samples(split);
        if samples.is_empty() {
            return Err(Error::data(
                self.run.manifest(),
                format!("the {split} split has no photos to evaluate"),
                format!(
                    "use another split, or split the data again with a share for {split} (`catdog split --ratios`)"
                ),
            ));
        }
        let predictions = predict_samples(
            &self.net,
            &samples,
            &self.meta.preprocessing,
            batch_size,
            progress,
        )?;
        let metrics = Metrics::compute(
            &predictions.labels,
            &predictions.probabilities,
            &self.meta.class_names,
        );
        fsio::write_json(&self.run.eval(self.which, split), &metrics)?;
        Ok((metrics, predictions))
    }
}
