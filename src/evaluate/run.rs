//! Evaluating a training run's checkpoint on a split of the run's own data.

use burn::module::Module;
use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use super::calibration::{CalibrationReport, FalseRateLimit, OperatingPoint, rates, threshold_for};
use super::predictions::tta_probabilities;
use super::{Metrics, Predictions, predict_samples};
use crate::data::{Manifest, Split};
use crate::error::{Error, Result};
use crate::fsio;
use crate::model::calibration::{Decision, DecisionRule, Judge};
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::{EvalNet, Precision, ResNet18};
use crate::progress::{Progress, Quiet};
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
    /// How answers are decided: [`DecisionRule::Calibrated`] unless changed.
    pub judge: Judge,
    /// A class's threshold to choose on the validation split and measure (`--max-false-rate`).
    pub false_rate: Option<FalseRateLimit>,
    /// Also score test-time augmentation ([`Tta`]).
    pub tta: bool,
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
        let judge = Judge::load(&run.checkpoint(which), &meta, DecisionRule::Calibrated)?;
        Ok(RunModel {
            judge,
            false_rate: None,
            tta: false,
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
    /// evaluation to the checkpoint's evaluation file ([`RunDir::eval`]). An empty split is an error.
    pub fn evaluate(
        &self,
        split: Split,
        batch_size: usize,
        progress: &dyn Progress,
    ) -> Result<(Evaluation, Predictions)> {
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
            &self.judge,
            &samples,
            &self.meta.preprocessing,
            batch_size,
            progress,
        )?;
        let mut evaluation = Evaluation::compute(&predictions, &self.judge, &self.meta.class_names);
        if self.tta {
            let probabilities = tta_probabilities(
                &self.net,
                &samples,
                &predictions.probabilities,
                &self.meta.preprocessing,
                batch_size,
            )?;
            let m = Metrics::compute(&predictions.labels, &probabilities, &self.meta.class_names);
            evaluation.tta = Some(Tta {
                views: TTA_VIEWS.to_owned(),
                accuracy: m.accuracy,
                loss: m.loss,
                roc_auc: m.roc_auc,
            });
        }
        if let Some(limit) = &self.false_rate {
            evaluation.operating_point =
                Some(self.operating_point(limit, split, &predictions, batch_size)?);
        }
        fsio::write_json(&self.run.eval(self.which, split), &evaluation)?;
        Ok((evaluation, predictions))
    }
}

impl RunModel {
    /// The threshold on `limit.class`'s probability chosen on the validation split, and the
    /// rates it gives there and on `predictions` (of `split`).
    fn operating_point(
        &self,
        limit: &FalseRateLimit,
        split: Split,
        predictions: &Predictions,
        batch_size: usize,
    ) -> Result<OperatingPoint> {
        let classes = &self.meta.class_names;
        let Some(class) = classes.iter().position(|c| c == &limit.class) else {
            return Err(Error::setting(
                "--max-false-rate",
                format!(
                    "'{}' is not a class of this model ({})",
                    limit.class,
                    classes.join(", ")
                ),
            ));
        };
        let validation = match split {
            Split::Val => predictions.clone(),
            _ => predict_samples(
                &self.net,
                &self.judge,
                &self.manifest.samples(Split::Val),
                &self.meta.preprocessing,
                batch_size,
                &Quiet,
            )?,
        };
        let scores = |p: &Predictions| -> (Vec<f64>, Vec<bool>) {
            p.judgements
                .iter()
                .zip(&p.labels)
                .map(|(j, &l)| (f64::from(j.probabilities[class]), l == class))
                .unzip()
        };
        let (val_scores, val_positive) = scores(&validation);
        let threshold = threshold_for(&val_scores, &val_positive, limit.rate);
        let (scores, positive) = scores(predictions);
        Ok(OperatingPoint {
            class: limit.class.clone(),
            max_false_rate: limit.rate,
            threshold,
            validation: rates(&val_scores, &val_positive, threshold),
            evaluated: rates(&scores, &positive, threshold),
        })
    }
}

/// What an evaluation file holds: the metrics of the most probable class, and where the model
/// is calibrated, its calibration, the coverage of its prediction sets and its answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub metrics: Metrics,
    /// The rule that made `decisions`.
    pub decision_rule: DecisionRule,
    /// `decisions[t][d]`: photos of true class `t` answered `decision_names[d]`.
    pub decisions: Vec<Vec<u64>>,
    /// The classes, then `unsure` and `neither`.
    pub decision_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conformal: Option<Conformal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_distribution: Option<OutOfDistribution>,
    /// With `--max-false-rate`: the class's threshold and the rates it gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
    /// With `--tta`: the most probable class of the views' mean probabilities, beside the
    /// plain figures above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<Tta>,
}

const TTA_VIEWS: &str = "eval crop and its mirror image, probabilities averaged";

/// Test-time augmentation's figures, as [`Metrics`] defines them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tta {
    pub views: String,
    pub accuracy: f64,
    pub loss: f64,
    pub roc_auc: Option<f64>,
}

/// The prediction sets on the evaluated photos, next to what they promise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conformal {
    pub error_rate: f64,
    /// 1 - error_rate: the share of photos whose set should hold the true class.
    pub promised_coverage: f64,
    /// The share whose set does.
    pub coverage: f64,
    /// The share whose set holds more than one class.
    pub unsure: f64,
}

/// The out-of-distribution threshold on the evaluated (real) photos.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutOfDistribution {
    pub threshold: f64,
    /// The share of the photos above it, answered `neither` (about 5% by construction).
    pub neither: f64,
}

impl Evaluation {
    /// Scores `predictions` (judged by `judge`) of a model with these classes.
    pub fn compute(predictions: &Predictions, judge: &Judge, classes: &[String]) -> Evaluation {
        let metrics = Metrics::compute(&predictions.labels, &predictions.probabilities, classes);
        let n = classes.len();
        let mut decisions = vec![vec![0u64; n + 2]; n];
        for (&label, judgement) in predictions.labels.iter().zip(&predictions.judgements) {
            decisions[label][judgement.decision.column(n)] += 1;
        }
        let decision_names = Decision::all(n)
            .iter()
            .map(|d| d.name(classes).to_owned())
            .collect();
        let images = predictions.len().max(1) as f64;
        let share = |count: usize| count as f64 / images;
        let calibration = judge.calibration();
        Evaluation {
            metrics,
            decision_rule: judge.rule,
            decisions,
            decision_names,
            calibration: calibration.map(|c| {
                CalibrationReport::compute(&predictions.labels, &predictions.logits, c.temperature)
            }),
            conformal: calibration.map(|c| {
                let sets: Vec<Vec<usize>> = predictions
                    .logits
                    .iter()
                    .map(|z| {
                        c.prediction_set(&crate::model::calibration::softmax(z, c.temperature))
                    })
                    .collect();
                Conformal {
                    error_rate: c.error_rate,
                    promised_coverage: 1.0 - c.error_rate,
                    coverage: share(
                        sets.iter()
                            .zip(&predictions.labels)
                            .filter(|(s, l)| s.contains(*l))
                            .count(),
                    ),
                    unsure: share(sets.iter().filter(|s| s.len() > 1).count()),
                }
            }),
            // Scores exist only where the calibrated rule judged the photos.
            out_of_distribution: calibration
                .filter(|_| judge.rule == DecisionRule::Calibrated)
                .map(|c| OutOfDistribution {
                    threshold: c.ood_threshold,
                    neither: share(
                        predictions
                            .judgements
                            .iter()
                            .filter(|j| j.ood_score.is_some_and(|s| s > c.ood_threshold))
                            .count(),
                    ),
                }),
            operating_point: None,
            tta: None,
        }
    }
}

/// The metrics table, then the answers per true class and the calibration's figures.
impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.metrics)?;
        writeln!(f)?;
        writeln!(
            f,
            "answers ({} decision; rows: true class)",
            self.decision_rule
        )?;
        let corner = "true \\ answer";
        let name_width = self
            .decision_names
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
            .max(corner.len());
        let count_width = name_width.clamp(7, 9);
        write!(f, "{corner:<name_width$}")?;
        for name in &self.decision_names {
            write!(f, " {name:>count_width$}")?;
        }
        writeln!(f)?;
        for (class, row) in self.metrics.classes.iter().zip(&self.decisions) {
            write!(f, "{class:<name_width$}")?;
            for count in row {
                write!(f, " {count:>count_width$}")?;
            }
            writeln!(f)?;
        }
        if let Some(c) = &self.calibration {
            writeln!(
                f,
                "\ncalibration: temperature {:.3}; ECE {:.4} -> {:.4}, NLL {:.4} -> {:.4}, Brier {:.4} -> {:.4}",
                c.temperature,
                c.ece_before,
                c.ece_after,
                c.nll_before,
                c.nll_after,
                c.brier_before,
                c.brier_after
            )?;
        }
        if let Some(c) = &self.conformal {
            writeln!(
                f,
                "prediction sets: the true class kept for {:.2}% of photos (promised: at least {:.2}%); {:.2}% unsure",
                100.0 * c.coverage,
                100.0 * c.promised_coverage,
                100.0 * c.unsure
            )?;
        }
        if let Some(o) = &self.operating_point {
            writeln!(
                f,
                "{} when p({}) > {:.4} (at most {:.2}% of the others on validation): {:.2}% of the others taken for {}, recall {:.2}% (validation: {:.2}%, {:.2}%)",
                o.class,
                o.class,
                o.threshold,
                100.0 * o.max_false_rate,
                100.0 * o.evaluated.false_rate,
                o.class,
                100.0 * o.evaluated.recall,
                100.0 * o.validation.false_rate,
                100.0 * o.validation.recall
            )?;
        }
        if let Some(t) = &self.tta {
            writeln!(
                f,
                "test-time augmentation ({}): accuracy {:.2}% (plain {:.2}%), loss {:.4} (plain {:.4})",
                t.views,
                100.0 * t.accuracy,
                100.0 * self.metrics.accuracy,
                t.loss,
                self.metrics.loss
            )?;
        }
        if let Some(o) = &self.out_of_distribution {
            writeln!(
                f,
                "out of distribution: {:.2}% of these photos score above {:.1} (neither)",
                100.0 * o.neither,
                o.threshold
            )?;
        }
        Ok(())
    }
}
