//! `catdog imagenet`: what the ImageNet-trained network sees in photos (1000 classes).

use std::path::PathBuf;

use anyhow::{Result, bail};
use catdog::evaluate::image_files;
use catdog::model::EvalNet;
use catdog::model::imagenet_classes::NAMES;
use catdog::model::predict::{Ranked, classify};
use catdog::model::weights::{self, IMAGENET_NUM_CLASSES, WeightsChoice};
use catdog::preprocess::eval_tensor_from_path;
use rayon::prelude::*;
use serde::Serialize;

/// torchvision's ImageNet input size.
const IMAGE_SIZE: u32 = 224;

#[derive(clap::Args)]
pub struct ImagenetArgs {
    /// Photos, or folders to search for photos (recursively, skipping hidden files)
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// `auto` (the downloaded ImageNet weights), a .pth/.safetensors file, or `none` (random)
    #[arg(long, default_value = "auto")]
    pub weights: WeightsChoice,
    /// Classes to show per photo
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,
    /// One JSON object per photo: {"path", "top": [{"index", "name", "probability"}]}
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
struct JsonLine {
    path: String,
    top: Vec<JsonClass>,
}

#[derive(Serialize)]
struct JsonClass {
    index: usize,
    name: &'static str,
    probability: f32,
}

pub fn run(args: ImagenetArgs) -> Result<()> {
    let files = image_files(&args.images)?;
    if files.is_empty() {
        bail!("no files to classify: the folders given hold none");
    }
    let device = args.device.device()?;
    let file = args.weights.resolve()?;
    // Without weights there is nothing to recognise; the seed only makes the random network
    // the same on every run.
    let (model, origin) = weights::load_model(file.as_deref(), IMAGENET_NUM_CLASSES, 0, &device)?;
    // On stderr: stdout may be JSON.
    eprintln!("weights: {origin}");
    let net = EvalNet::new(&model, &device, args.precision.resolve(args.device.device));
    let mut unreadable = 0;
    for batch in files.chunks(usize::from(args.batch_size)) {
        // Decoding and resizing dominate for small batches: do them in parallel.
        let decoded: Vec<_> = batch
            .par_iter()
            .map(|path| (path, eval_tensor_from_path(path, IMAGE_SIZE)))
            .collect();
        let mut paths = Vec::new();
        let mut tensors = Vec::new();
        for (path, result) in decoded {
            match result {
                Ok(tensor) => {
                    paths.push(path);
                    tensors.push(tensor);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    unreadable += 1;
                }
            }
        }
        let rankings = classify(&net, tensors, IMAGE_SIZE as usize, usize::from(args.top));
        for (path, ranking) in paths.into_iter().zip(rankings) {
            if args.json {
                println!("{}", json_line(path, &ranking));
            } else {
                println!("{}", path.display());
                for r in &ranking {
                    let percent = r.probability * 100.0;
                    println!("  {percent:5.1}%  {} ({})", NAMES[r.index], r.index);
                }
            }
        }
    }
    if unreadable > 0 {
        bail!("{unreadable} of {} photos could not be read", files.len());
    }
    Ok(())
}

fn json_line(path: &std::path::Path, ranking: &[Ranked]) -> String {
    let line = JsonLine {
        path: path.display().to_string(),
        top: ranking
            .iter()
            .map(|r| JsonClass {
                index: r.index,
                name: NAMES[r.index],
                probability: r.probability,
            })
            .collect(),
    };
    serde_json::to_string(&line).expect("plain data serialises")
}
