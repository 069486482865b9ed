//! `catdog weights download`, and loading the weights that `--weights` names.

use anyhow::Result;
use catdog::model::ResNet18;
use catdog::model::download::{Downloaded, download_resnet18};
use catdog::model::weights::{HeadWeights, WeightLocations, WeightsChoice, load_into};

#[derive(clap::Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(clap::Subcommand)]
pub enum WeightsCommand {
    /// Fetch torchvision's ImageNet ResNet-18 weights (45 MB) into the cache
    /// ($CATDOG_CACHE, else $XDG_CACHE_HOME/catdog, else ~/.cache/catdog)
    Download,
}

pub fn run(args: WeightsArgs) -> Result<()> {
    match args.command {
        WeightsCommand::Download => {
            let dest = WeightLocations::from_env()?.cached_file();
            match download_resnet18(&dest, true)? {
                Downloaded::AlreadyThere => println!("already there: {}", dest.display()),
                Downloaded::Fetched => println!("downloaded: {}", dest.display()),
            }
            Ok(())
        }
    }
}

/// A ResNet-18 with a `num_classes` head and the weights `choice` names, saying on stderr
/// which ones it got (stdout may be JSON).
pub fn load_model(
    choice: &WeightsChoice,
    num_classes: usize,
    device: &burn::prelude::Device,
) -> Result<ResNet18> {
    let mut model = ResNet18::new(num_classes, device);
    match choice.resolve()? {
        None => eprintln!("weights: none, random initialisation"),
        Some(path) => {
            let report = load_into(&mut model, &path)?;
            let head = match report.head {
                HeadWeights::Loaded => String::new(),
                HeadWeights::Kept { file_classes } => {
                    format!("; its {file_classes}-class head is not used")
                }
            };
            eprintln!(
                "weights: {} ({} tensors{head})",
                path.display(),
                report.tensors
            );
        }
    }
    Ok(model)
}
