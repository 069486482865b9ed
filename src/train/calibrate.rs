//! Fitting a trained checkpoint's calibration on its run's data: the last step of
//! `catdog train`, and `catdog calibrate` for a run trained before, or at another error rate.
//!
//! Needs the pooled features of the training split (for the out-of-distribution model) and of
//! the validation split (for the temperature, the conformal threshold and the
//! out-of-distribution threshold). A frozen-mode run's backbone is the weights file's, so they
//! come from the feature cache; otherwise the trained network computes them (one pass over both
//! splits).

use std::sync::atomic::AtomicBool;

use burn::module::Module;

use super::event::StepProgress;
use super::features::{self, FeatureCache};
use super::{Event, Mode, OnEvent, RunConfig, Step};
use crate::data::decode::Limits;
use crate::data::{Manifest, Split};
use crate::error::{Error, Result};
use crate::evaluate::BATCH_SIZE;
use crate::evaluate::calibration::{self, Fitted, Seen};
use crate::fsio;
use crate::loader::LoaderConfig;
use crate::model::calibration::OOD_FILE;
use crate::model::checkpoint::{self, META_FILE};
use crate::model::{EvalNet, FEATURES, Precision};
use crate::run::{RunDir, Which};

/// Fits the calibration of `run`'s checkpoint `which` at `error_rate` and stores it with the
/// checkpoint: `ood.safetensors` first, then `model.json`'s `calibration` (each written
/// atomically), so that a `model.json` never names an out-of-distribution model that is not
/// there. The caller holds the run's lock.
pub fn calibrate(
    run: &RunDir,
    which: Which,
    error_rate: f64,
    device: &burn::prelude::Device,
    on: OnEvent,
) -> Result<Fitted> {
    calibration::check_error_rate(error_rate)?;
    let manifest = Manifest::load(&run.manifest())?;
    manifest.verify(&run.manifest())?;
    let dir = run.checkpoint(which);
    let (model, mut meta) = checkpoint::load(&dir, &device.clone().without_autodiff())?;
    // Only a shortcut: a run folder without a readable config.json is calibrated all the same,
    // in fp32, by computing the features.
    let config: Option<RunConfig> = fsio::read_json(&run.config(), "run configuration").ok();
    // The features of the precision the run trained in.
    let precision = config
        .as_ref()
        .map_or(Precision::Fp32, |c| c.settings.precision);
    let net = EvalNet::new(&model.valid(), device, precision);
    let cache = config.as_ref().and_then(|c| frozen_cache(c, precision));
    let loader = LoaderConfig {
        batch_size: BATCH_SIZE,
        shuffle: false,
        augment: false,
        seed: 0,
        preprocessing: meta.preprocessing.clone(),
        prefetch: 2,
        limits: Limits::default(),
    };
    let never = AtomicBool::new(false);
    let mut seen = Vec::with_capacity(2);
    for split in [Split::Train, Split::Val] {
        let samples = manifest.samples(split);
        if samples.is_empty() {
            return Err(Error::data(
                run.manifest(),
                format!("the {split} split is empty: there is nothing to calibrate on"),
                "split the data again with a share for train and val (`catdog split --ratios`)",
            ));
        }
        let progress = StepProgress::new(Step::Features(split), on);
        let (features, _) =
            features::extract(&net, &samples, cache.as_ref(), &loader, &progress, &never)?
                .expect("never stopped");
        let labels: Vec<usize> = samples.iter().map(|s| s.label).collect();
        seen.push((labels, features));
    }
    let [(train_labels, train_features), (val_labels, val_features)] =
        <[_; 2]>::try_from(seen).expect("two splits");
    let classes = meta.class_names.len();
    let val_logits: Vec<Vec<f32>> = net
        .head(val_features.clone())
        .chunks_exact(classes)
        .map(<[f32]>::to_vec)
        .collect();
    let no_logits: Vec<Vec<f32>> = Vec::new();
    let fitted = calibration::fit(
        &Seen {
            labels: &train_labels,
            features: &train_features,
            logits: &no_logits,
        },
        &Seen {
            labels: &val_labels,
            features: &val_features,
            logits: &val_logits,
        },
        classes,
        FEATURES,
        error_rate,
    )?;
    fitted.ood.save(&dir.join(OOD_FILE))?;
    meta.calibration = Some(fitted.calibration);
    fsio::write_json(&dir.join(META_FILE), &meta)?;
    on(Event::Calibrated(&fitted));
    Ok(fitted)
}

/// Frozen mode's feature cache, for a run whose config.json says it trained a head on a
/// weights file's fixed backbone (whose features the cache holds).
fn frozen_cache(config: &RunConfig, precision: Precision) -> Option<FeatureCache> {
    let s = &config.settings;
    if s.mode != Mode::Frozen {
        return None;
    }
    Some(FeatureCache::new(
        s.cache_dir.as_ref()?,
        config.weights_sha256.as_ref()?,
        &s.preprocessing,
        precision.on_this_cpu(),
    ))
}
