//! From a trained model's outputs to an answer a person can act on: one of the classes,
//! `unsure` or `neither`.
//!
//! Three signals, all fitted after training (`crate::evaluate::calibration` fits them,
//! `catdog calibrate` and the end of `catdog train` store them with the model):
//! - **temperature**: the logits are divided by it before the softmax, so that a photo given
//!   80% is right about 80% of the time. It never changes which class is the most probable.
//! - **conformal sets**: a class is kept for a photo when its calibrated probability is at
//!   least `1 - conformal_threshold`; split-conformal prediction guarantees that the true class
//!   is kept for at least `1 - error_rate` of photos like the validation ones. Two classes kept:
//!   `unsure`.
//! - **out-of-distribution score**: the squared Mahalanobis distance of the pooled features to
//!   the nearest class mean (shared covariance, fitted on the training photos' features). Above
//!   the threshold that 95% of validation photos pass: `neither`. The logits alone cannot say
//!   this: a softmax over cat and dog sums to 1 whatever the photo shows.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointMeta;
use crate::error::{Error, Result};
use crate::fsio;

/// The error rate the conformal sets are fitted for when none is given (`--error-rate`).
pub const ERROR_RATE: f64 = 0.05;
/// The share of real (validation) photos that the out-of-distribution threshold lets pass.
pub const OOD_PASS: f64 = 0.95;
/// The out-of-distribution model beside `model.json` in a checkpoint folder.
pub const OOD_FILE: &str = "ood.safetensors";

/// What `model.json` stores as `calibration`: everything the decision needs beside the
/// weights and [`OOD_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The logits are divided by this before the softmax.
    pub temperature: f64,
    /// The share of photos whose true class the prediction sets may miss.
    pub error_rate: f64,
    /// A class belongs to a photo's prediction set when 1 - its calibrated probability is at
    /// most this (the conformal quantile of that score on the validation split).
    pub conformal_threshold: f64,
    /// A photo whose out-of-distribution score is above this is `neither`.
    pub ood_threshold: f64,
}

impl Calibration {
    /// The classes kept for a photo with these calibrated probabilities, most probable first;
    /// never empty: with none above the threshold, the most probable one (as a classifier
    /// that must answer would).
    pub fn prediction_set(&self, probabilities: &[f32]) -> Vec<usize> {
        let mut kept: Vec<usize> = (0..probabilities.len())
            .filter(|&k| 1.0 - f64::from(probabilities[k]) <= self.conformal_threshold)
            .collect();
        kept.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        if kept.is_empty() {
            kept.push(argmax(probabilities));
        }
        kept
    }
}

/// How answers are decided (`--decision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionRule {
    /// A class, `unsure` or `neither`, from the model's calibration (the most probable class
    /// where the model has none).
    #[default]
    Calibrated,
    /// Always the most probable class, with the raw probabilities: catdog's answers before
    /// calibration.
    Argmax,
}

crate::error::named_choice!(DecisionRule, "--decision",
    DecisionRule::Calibrated => "calibrated", DecisionRule::Argmax => "argmax");

/// The answer for one photo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This class (an index into the model's classes).
    Class(usize),
    /// More than one class is plausible.
    Unsure,
    /// The photo does not look like the photos the model was trained on.
    Neither,
}

impl Decision {
    /// `cat`, `dog` (the model's class names), `unsure` or `neither`.
    pub fn name<'a>(&self, classes: &'a [String]) -> &'a str {
        match self {
            Decision::Class(k) => &classes[*k],
            Decision::Unsure => "unsure",
            Decision::Neither => "neither",
        }
    }

    /// Position in [`Decision::all`]: the classes, then `unsure`, then `neither`.
    pub fn column(&self, classes: usize) -> usize {
        match self {
            Decision::Class(k) => *k,
            Decision::Unsure => classes,
            Decision::Neither => classes + 1,
        }
    }

    /// Every decision for `classes` classes, in [`Decision::column`] order.
    pub fn all(classes: usize) -> Vec<Decision> {
        (0..classes)
            .map(Decision::Class)
            .chain([Decision::Unsure, Decision::Neither])
            .collect()
    }
}

/// What the model says about one photo.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub decision: Decision,
    /// The most probable class (the same before and after calibration).
    pub label: usize,
    /// Calibrated probabilities (the raw ones without a calibration or under
    /// [`DecisionRule::Argmax`]).
    pub probabilities: Vec<f32>,
    /// The softmax of the logits as they are.
    pub raw_probabilities: Vec<f32>,
    /// The out-of-distribution score, where the model has an out-of-distribution model.
    pub ood_score: Option<f64>,
}

/// A model's decision rule with what it needs: its calibration and out-of-distribution model.
#[derive(Clone, Debug)]
pub struct Judge {
    pub rule: DecisionRule,
    fitted: Option<(Calibration, OodModel)>,
}

impl Judge {
    /// The judge of the checkpoint in `dir`, described by `meta`: calibrated when `model.json`
    /// holds a calibration (whose [`OOD_FILE`] must then be there).
    pub fn load(dir: &Path, meta: &CheckpointMeta, rule: DecisionRule) -> Result<Judge> {
        let fitted = match meta.calibration {
            Some(calibration) => Some((calibration, OodModel::load(&dir.join(OOD_FILE))?)),
            None => None,
        };
        Ok(Judge { rule, fitted })
    }

    /// A judge from fitted parts (or none: the most probable class, always).
    pub fn new(rule: DecisionRule, fitted: Option<(Calibration, OodModel)>) -> Judge {
        Judge { rule, fitted }
    }

    /// The calibration in use, if any.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.fitted.as_ref().map(|(c, _)| c)
    }

    /// The answer for one photo from its logits and pooled features.
    pub fn judge(&self, logits: &[f32], features: &[f32]) -> Judgement {
        let raw = softmax(logits, 1.0);
        let label = argmax(&raw);
        match (&self.fitted, self.rule) {
            (Some((calibration, ood)), DecisionRule::Calibrated) => {
                let probabilities = softmax(logits, calibration.temperature);
                let score = ood.score(features);
                let decision = if score > calibration.ood_threshold {
                    Decision::Neither
                } else {
                    match calibration.prediction_set(&probabilities)[..] {
                        [one] => Decision::Class(one),
                        _ => Decision::Unsure,
                    }
                };
                Judgement {
                    decision,
                    label,
                    probabilities,
                    raw_probabilities: raw,
                    ood_score: Some(score),
                }
            }
            _ => Judgement {
                decision: Decision::Class(label),
                label,
                probabilities: raw.clone(),
                raw_probabilities: raw,
                ood_score: None,
            },
        }
    }
}

/// softmax(logits / temperature), computed in f64: exp(x - max) / sum, the shift keeping exp
/// finite for any logits.
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f32> {
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scaled.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.into_iter().map(|e| (e / total) as f32).collect()
}

/// The most probable class: the first one on a tie.
fn argmax(probabilities: &[f32]) -> usize {
    crate::evaluate::predicted(probabilities)
}

/// Class-conditional Gaussians with one shared covariance over feature vectors: the
/// out-of-distribution score of a photo is its squared Mahalanobis distance to the nearest
/// class mean.
#[derive(Clone, Debug, PartialEq)]
pub struct OodModel {
    dim: usize,
    /// One row of `dim` values per class.
    means: Vec<f64>,
    /// The inverse of the shared covariance, `dim x dim`, row-major.
    precision: Vec<f64>,
}

impl OodModel {
    /// # Panics
    /// If the sizes disagree (a bug in the caller).
    pub fn new(dim: usize, means: Vec<f64>, precision: Vec<f64>) -> OodModel {
        assert!(dim > 0 && means.len().is_multiple_of(dim) && !means.is_empty());
        assert_eq!(precision.len(), dim * dim);
        OodModel {
            dim,
            means,
            precision,
        }
    }

    /// min over classes of (x - mean)ᵀ precision (x - mean).
    pub fn score(&self, features: &[f32]) -> f64 {
        assert_eq!(features.len(), self.dim, "one feature vector");
        let mut diff = vec![0.0; self.dim];
        self.means
            .chunks_exact(self.dim)
            .map(|mean| {
                for ((d, &x), &m) in diff.iter_mut().zip(features).zip(mean) {
                    *d = f64::from(x) - m;
                }
                self.precision
                    .chunks_exact(self.dim)
                    .zip(&diff)
                    .map(|(row, &di)| di * row.iter().zip(&diff).map(|(p, d)| p * d).sum::<f64>())
                    .sum::<f64>()
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// Writes `means` (`classes x dim`) and `precision` (`dim x dim`), f64, as safetensors,
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes =
            |values: &[f64]| -> Vec<u8> { values.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (means, precision) = (bytes(&self.means), bytes(&self.precision));
        let classes = self.means.len() / self.dim;
        let views = [
            ("means", vec![classes, self.dim], &means),
            ("precision", vec![self.dim, self.dim], &precision),
        ]
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F64, shape, data).expect("sizes match");
            (name, view)
        });
        let bytes = safetensors::serialize(views, None::<HashMap<String, String>>)
            .expect("valid tensors serialise");
        fsio::write_atomic(path, &bytes)
    }

    /// Reads a file written by [`OodModel::save`].
    pub fn load(path: &Path) -> Result<OodModel> {
        let bad = |problem: String| {
            Error::weights(
                path,
                problem,
                "fit it again with `catdog calibrate RUN` (it is written with model.json's calibration)",
            )
        };
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                bad("is missing, but model.json has a calibration".into())
            }
            _ => Error::io("cannot read", path, e),
        })?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let view = tensors
                .tensor(name)
                .map_err(|_| bad(format!("has no tensor `{name}`")))?;
            if view.dtype() != Dtype::F64 || view.shape().len() != 2 {
                return Err(bad(format!("`{name}` is not a 2-d f64 tensor")));
            }
            let values = view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            Ok((view.shape().to_vec(), values))
        };
        let (mean_shape, means) = get("means")?;
        let (precision_shape, precision) = get("precision")?;
        let dim = mean_shape[1];
        if dim == 0 || mean_shape[0] == 0 || precision_shape != [dim, dim] {
            return Err(bad(format!(
                "shapes {mean_shape:?} and {precision_shape:?} do not fit together"
            )));
        }
        Ok(OodModel::new(dim, means, precision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(conformal_threshold: f64) -> Calibration {
        Calibration {
            temperature: 2.0,
            error_rate: 0.05,
            conformal_threshold,
            ood_threshold: 4.0,
        }
    }

    #[test]
    fn prediction_sets_keep_the_plausible_classes_and_never_none() {
        let c = calibration(0.3);
        assert_eq!(c.prediction_set(&[0.75, 0.25]), [0]);
        assert_eq!(c.prediction_set(&[0.2, 0.8]), [1]);
        assert_eq!(calibration(0.6).prediction_set(&[0.45, 0.55]), [1, 0]);
        // Nothing within the threshold: the most probable class.
        assert_eq!(calibration(0.1).prediction_set(&[0.45, 0.55]), [1]);
    }

    #[test]
    fn decisions_follow_the_threshold_then_the_sets_and_argmax_ignores_both() {
        // Identity precision, means at 0 and at (10, 0): the score is the squared distance.
        let ood = OodModel::new(2, vec![0.0, 0.0, 10.0, 0.0], vec![1.0, 0.0, 0.0, 1.0]);
        // With two classes, a set holds both only above a threshold of 0.5.
        let judge = Judge::new(DecisionRule::Calibrated, Some((calibration(0.6), ood)));
        let near = [1.0, 1.0];
        // Logit gap 4 at temperature 2: p = sigmoid(2) = 0.88 for class 1.
        let sure = judge.judge(&[0.0, 4.0], &near);
        assert_eq!(sure.decision, Decision::Class(1));
        assert_eq!(sure.ood_score, Some(2.0));
        assert!((sure.probabilities[1] - 0.8808).abs() < 1e-4);
        assert!((sure.raw_probabilities[1] - 0.9820).abs() < 1e-4);
        assert_eq!(judge.judge(&[0.0, 0.5], &near).decision, Decision::Unsure);
        let far = judge.judge(&[0.0, 4.0], &[5.0, 5.0]);
        assert_eq!(
            (far.decision, far.ood_score),
            (Decision::Neither, Some(50.0))
        );

        let argmax = Judge {
            rule: DecisionRule::Argmax,
            ..judge
        };
        let plain = argmax.judge(&[0.0, 0.5], &[5.0, 5.0]);
        assert_eq!(plain.decision, Decision::Class(1));
        assert_eq!(plain.probabilities, plain.raw_probabilities);
        assert_eq!(plain.ood_score, None);
        let names = ["cat".to_owned(), "dog".to_owned()];
        let all: Vec<&str> = Decision::all(2).iter().map(|d| d.name(&names)).collect();
        assert_eq!(all, ["cat", "dog", "unsure", "neither"]);
    }

    #[test]
    fn the_ood_model_round_trips_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OOD_FILE);
        let ood = OodModel::new(2, vec![0.5, -1.0, 3.0, 0.25], vec![2.0, 0.1, 0.1, 1.0]);
        ood.save(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        assert_eq!(OodModel::load(&path).unwrap(), ood);
        ood.save(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        std::fs::write(&path, b"nonsense").unwrap();
        let err = OodModel::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(OOD_FILE) && err.contains("catdog calibrate"),
            "{err}"
        );
    }
}
