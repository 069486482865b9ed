//! `catdog predict`: a trained model's verdict on photos.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use catdog::evaluate::{image_files, predict_files, predicted};
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
    /// One JSON object per photo: {"path", "label", "probability", "probabilities"}, or
    /// {"path", "error"} for a file that cannot be read
    #[arg(long)]
    pub json: bool,
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
    label: &'a str,
    probability: f32,
    probabilities: ByClass<'a>,
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
    let classes = &meta.class_names;
    let mut failed = 0;
    let size = usize::from(args.batch_size);
    let net = EvalNet::new(&model, &device, args.precision.resolve(args.device.device));
    predict_files(&net, &meta.preprocessing, &files, size, |path, result| {
        let line = match (result, args.json) {
            (Ok(probabilities), true) => json_line(path, classes, &probabilities),
            (Ok(probabilities), false) => text_line(path, classes, &probabilities),
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
    });
    if failed > 0 {
        bail!("{failed} of {} files could not be classified", files.len());
    }
    Ok(())
}

/// `{"path": ..., "label": "dog", "probability": 0.97, "probabilities": {"cat": 0.03, "dog": 0.97}}`
fn json_line(path: &Path, classes: &[String], probabilities: &[f32]) -> String {
    let best = predicted(probabilities);
    let line = JsonPrediction {
        path: path.display().to_string(),
        label: &classes[best],
        probability: probabilities[best],
        probabilities: ByClass(classes, probabilities),
    };
    serde_json::to_string(&line).expect("plain data serialises")
}

/// `photos/1.jpg: dog 97.0%  (cat 3.0%, dog 97.0%)`
fn text_line(path: &Path, classes: &[String], probabilities: &[f32]) -> String {
    let best = predicted(probabilities);
    let all: Vec<String> = classes
        .iter()
        .zip(probabilities)
        .map(|(class, p)| format!("{class} {:.1}%", 100.0 * p))
        .collect();
    format!(
        "{}: {} {:.1}%  ({})",
        path.display(),
        classes[best],
        100.0 * probabilities[best],
        all.join(", ")
    )
}
