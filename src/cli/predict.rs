//! `catdog predict`: a trained model's verdict on photos.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use catdog::evaluate::{image_files, predict_files};
use catdog::model::calibration::{Decision, DecisionRule, Judge, Judgement};
use catdog::model::{EvalNet, checkpoint};
use catdog::run::resolve_model;
use serde::{Serialize, Serializer};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// The model: a training run's folder (its best/ checkpoint) or a checkpoint folder
    pub model: PathBuf,
    /// Photos, or folders to search for photos (recursively, skipping hidden files)
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// One JSON object per photo: {"path", "decision", "label", "probability",
    /// "raw_probability", "probabilities", "ood_score", "logits"}, or {"path", "error"} for a
    /// file that cannot be read
    #[arg(long)]
    pub json: bool,
    /// calibrated (a class, unsure or neither, from the model's calibration) or argmax (always
    /// the most probable class, with the raw probabilities)
    #[arg(long, default_value_t = DecisionRule::default())]
    pub decision: DecisionRule,
    /// Photos per forward pass
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

#[derive(Serialize)]
struct JsonPrediction<'a> {
    path: String,
    /// A class, `unsure` or `neither`.
    decision: &'a str,
    /// The most probable class.
    label: &'a str,
    /// Its calibrated probability.
    probability: f32,
    /// Its probability before calibration.
    raw_probability: f32,
    /// Calibrated, every class.
    probabilities: ByClass<'a>,
    /// The out-of-distribution score (`null` for a model without calibration, or with
    /// `--decision argmax`).
    ood_score: Option<f64>,
    /// The head's raw outputs, in class order: what another runtime running the model (e.g.
    /// an ONNX export) must reproduce.
    logits: &'a [f32],
}

/// Class name to probability, in the model's class order.
struct ByClass<'a>(&'a [String], &'a [f32]);

impl Serialize for ByClass<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().zip(self.1))
    }
}

#[derive(Serialize)]
struct JsonError {
    path: String,
    error: String,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = args.device.device()?;
    let dir = resolve_model(&args.model)?;
    let files = image_files(&args.images)?;
    if files.is_empty() {
        bail!("no files to classify: the folders given hold none");
    }
    let (model, meta) = checkpoint::load(&dir, &device)?;
    let judge = Judge::load(&dir, &meta, args.decision)?;
    if judge.calibration().is_none() && args.decision == DecisionRule::Calibrated {
        eprintln!(
            "note: {} has no calibration, so every answer is the most probable class; fit one with `catdog calibrate RUN`",
            dir.display()
        );
    }
    let classes = &meta.class_names;
    let mut failed = 0;
    let size = usize::from(args.batch_size);
    let net = EvalNet::new(&model, &device, args.precision.resolve(args.device.device));
    predict_files(
        &net,
        &judge,
        &meta.preprocessing,
        &files,
        size,
        |path, result| {
            let line = match (result, args.json) {
                (Ok((logits, judgement)), true) => json_line(path, classes, &logits, &judgement),
                (Ok((_, judgement)), false) => text_line(path, classes, &judgement),
                (Err(reason), json) => {
                    failed += 1;
                    if !json {
                        eprintln!("error: {}: {reason}", path.display());
                        return;
                    }
                    let error = JsonError {
                        path: path.display().to_string(),
                        error: reason.to_string(),
                    };
                    serde_json::to_string(&error).expect("plain data serialises")
                }
            };
            println!("{line}");
        },
    );
    if failed > 0 {
        bail!("{failed} of {} files could not be classified", files.len());
    }
    Ok(())
}

/// `{"path": ..., "decision": "dog", "label": "dog", "probability": 0.93, "raw_probability": 0.97,
/// "probabilities": {"cat": 0.07, "dog": 0.93}, "ood_score": 412.5, "logits": [-1.3, 1.2]}`
fn json_line(path: &Path, classes: &[String], logits: &[f32], judgement: &Judgement) -> String {
    let best = judgement.label;
    let line = JsonPrediction {
        path: path.display().to_string(),
        decision: judgement.decision.name(classes),
        label: &classes[best],
        probability: judgement.probabilities[best],
        raw_probability: judgement.raw_probabilities[best],
        probabilities: ByClass(classes, &judgement.probabilities),
        ood_score: judgement.ood_score,
        logits,
    };
    serde_json::to_string(&line).expect("plain data serialises")
}

/// `photos/1.jpg: dog 93.0%  (cat 7.0%, dog 93.0%)`, `photos/2.jpg: unsure: cat or dog  (...)`,
/// `photos/3.jpg: neither: this does not look like a cat or a dog  (...)`
fn text_line(path: &Path, classes: &[String], judgement: &Judgement) -> String {
    let all: Vec<String> = classes
        .iter()
        .zip(&judgement.probabilities)
        .map(|(class, p)| format!("{class} {:.1}%", 100.0 * p))
        .collect();
    format!(
        "{}: {}  ({})",
        path.display(),
        in_words(classes, judgement),
        all.join(", ")
    )
}

/// The answer as a person reads it.
fn in_words(classes: &[String], judgement: &Judgement) -> String {
    match judgement.decision {
        Decision::Class(k) => format!("{} {:.1}%", classes[k], 100.0 * judgement.probabilities[k]),
        Decision::Unsure => format!("unsure: {}", classes.join(" or ")),
        Decision::Neither => format!(
            "neither: this does not look like {}",
            classes
                .iter()
                .map(|c| format!("a {c}"))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}
