//! `catdog export`: a trained model in a format other runtimes read.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::prelude::Device;
use catdog::fsio;
use catdog::model::checkpoint;
use catdog::model::onnx::{self, ExportFormat, OnnxInput};
use catdog::run::resolve_model;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The model: a training run's folder (its best/ checkpoint) or a checkpoint folder
    pub model: PathBuf,
    /// The file format: onnx
    #[arg(long)]
    pub format: ExportFormat,
    /// What the graph takes: normalised (float32 [batch, 3, size, size], preprocessed as
    /// catdog does) or rgb8 (uint8 [height, width, 3], one photo of any size; the graph
    /// resizes, crops and normalises it)
    #[arg(long, default_value_t = OnnxInput::default())]
    pub input: OnnxInput,
    /// Where to write the file (default: model.onnx, or model-rgb8.onnx with --input rgb8,
    /// in the current folder)
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let dir = resolve_model(&args.model)?;
    // The graph's weights are read once; the CPU holds them.
    let (model, meta) = checkpoint::load(&dir, &Device::flex())?;
    let bytes = match args.format {
        ExportFormat::Onnx => onnx::export(&model, &meta, args.input),
    };
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from(match args.input {
            OnnxInput::Normalised => "model.onnx",
            OnnxInput::Rgb8 => "model-rgb8.onnx",
        })
    });
    fsio::write_atomic(&out, &bytes)?;
    report(&out, &dir, bytes.len(), args.input, &meta);
    Ok(())
}

fn report(out: &Path, dir: &Path, len: usize, input: OnnxInput, meta: &checkpoint::CheckpointMeta) {
    println!(
        "wrote {} ({:.1} MB, ONNX opset {}) from {}",
        out.display(),
        len as f64 / 1e6,
        onnx::OPSET,
        dir.display()
    );
    println!("{}", input.describe(&meta.preprocessing));
    println!(
        "outputs: logits and probabilities, [batch, {}], classes {}",
        meta.class_names.len(),
        meta.class_names.join(", ")
    );
}
